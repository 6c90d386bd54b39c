r"""Every training objective's metrics on held-out data, per kept checkpoint.

  python -m vlg.tools.validate --workdir=workdirs/rexvlm_tiny \
      [--steps=0,300,600] [--batches=8] [--batch_size=64] [--write]

Training logs its losses and accuracies on the batches it trains on, which
a model can memorise and which are noisy (an MRC batch of the tiny configs
holds 16 triplets). This tool builds the run's own input mixture (caption
batch and every enabled typed part) from the synthetic world's ``val``
split, which shares no scene with ``train``, with augmentation off, and
computes on the same batches, for every kept checkpoint (or ``--steps``;
``0`` is the model at initialisation, drawn again from the run's seed):

* every metric of the training loss (``vlg.objectives.pretrain``): the
  caption, entity (box concepts and box regression), VSG and MRC losses
  and accuracies. Captions are scored X-VLM style, in-batch, without
  momentum distillation or queues, whatever the run trained with, so that
  runs of different families compare;
* ``box_mean_iou`` / ``box_acc50``: the box head's IoU with the held-out
  boxes (mean, and the share with IoU >= 0.5), over every box pair;
* ``mrc_acc`` over every held-out triplet, beside ``mrc_majority_rate``
  (always answering the most frequent relation of these triplets, the
  best that a head ignoring the images can do) and ``mrc_chance``.

Batch means are combined weighted by their counts (boxes, triplets,
masked tokens), and counts are summed, so the numbers do not depend on
``--batch_size``. ``--write`` appends them to
``WORKDIR/metrics.jsonl`` as ``heldout/<metric>`` at each step, where the
curves tool reads them. A run on prepared (real) data has no held-out split
to switch to: the tool refuses it, naming the source.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app
from absl import flags
from flax import nnx

from vlg import restore
from vlg import sharding
from vlg import train
from vlg import train_state
from vlg import writers
from vlg.data import pipeline
from vlg.objectives import boxes as boxes_lib
from vlg.objectives import pretrain

PREFIX = 'heldout'
_FLAGS = {}


def define_flags() -> None:
  """Defines the flags (only when run as a program)."""
  _FLAGS['workdir'] = flags.DEFINE_string(
      'workdir', None, 'Training workdir (checkpoints/, config, tokenizer).')
  _FLAGS['steps'] = flags.DEFINE_list(
      'steps', [], 'Steps to validate (default: 0 and every kept '
      'checkpoint); 0 is the model at initialisation.')
  _FLAGS['batches'] = flags.DEFINE_integer(
      'batches', 8, 'Held-out batches (the same ones for every step).')
  _FLAGS['batch_size'] = flags.DEFINE_integer(
      'batch_size', 64, 'Examples per batch, for the captions and each part.')
  _FLAGS['split'] = flags.DEFINE_string(
      'split', 'val', "Synthetic world split to read ('val' or 'test').")
  _FLAGS['write'] = flags.DEFINE_bool(
      'write', False, 'Append heldout/<metric> to WORKDIR/metrics.jsonl.')
  flags.mark_flags_as_required(['workdir'])


def heldout_input(input_cfg: ml_collections.ConfigDict, split: str,
                  batch_size: int) -> ml_collections.ConfigDict:
  """``input_cfg`` reading ``split`` of the synthetic world, unaugmented.

  Every source of ``input.data`` and of each enabled part's ``data`` must
  be synthetic; each part's batch becomes ``batch_size``.

  Raises:
    ValueError: a source is not synthetic (named), or a bad split.
  """
  if split == 'train':
    raise ValueError("split='train' is the training data; use 'val' or "
                     "'test'")
  cfg = ml_collections.ConfigDict(input_cfg.to_dict())
  sections = [('input.data', cfg.data)]
  for name, part in pipeline.enabled_parts(cfg).items():
    part.batch_size = batch_size
    if part.get('data'):
      sections.append((f'input.parts.{name}.data', part.data))
  for where, data in sections:
    for name, source in data.items():
      if source.get('source') != 'synthetic':
        raise ValueError(
            f'{where}.{name} is a {source.get("source")!r} source: held-out '
            'validation reads the synthetic world only (real data has no '
            'split to switch to here)')
      source.split = split
  cfg.augment = ()
  return cfg


def make_metrics_fn(config: ml_collections.ConfigDict, graphdef
                    ) -> Callable[[Any, dict[str, Any]], dict[str, jax.Array]]:
  """Jitted ``(params, batch) → metrics``: the pretraining metrics plus the
  box head's per-pair IoU (``box_iou`` [P], ``box_is_box`` [P])."""
  weights = train.loss_weights(config)
  ratios = train.part_ratios(config)
  concept = str((config.input.get('parts') or {}).get('mrc', {}).get(
      'concept', 'masked'))

  @jax.jit
  def metrics_fn(params, batch):
    model = nnx.merge(graphdef, params)
    _, metrics = pretrain.pretrain_loss(
        model, batch, momentum=None, queues={}, rng=jax.random.key(0),
        alpha=0.0, weights=weights, part_ratios=ratios, mrc_concept=concept)
    if 'entity' in ratios:
      img = model.embed_image(batch['ent_image'])
      b, m = batch['ent_valid'].shape
      ids = batch['ent_text_ids'].reshape(b * m, -1)
      mask = batch['ent_text_mask'].reshape(b * m, -1)
      txt = model.embed_text(ids, mask)
      index = jnp.repeat(jnp.arange(b), m)
      fused = model.fuse(txt['text_embeds'], mask,
                         img['image_embeds'][index])
      pred = model.predict_box(fused['fused_cls'])
      iou, _ = boxes_lib.box_iou_giou(
          boxes_lib.cxcywh_to_xyxy(pred),
          boxes_lib.cxcywh_to_xyxy(batch['ent_box'].reshape(b * m, 4)))
      metrics['box_iou'] = iou
      metrics['box_is_box'] = batch['ent_is_box'].reshape(b * m)
    return metrics

  return metrics_fn


# Per-batch counts: summed over batches.
COUNTS = ('mrc_num', 'mlm_num_masked', 'box_mlm_num_masked',
          'vsg_mlm_num_masked')
# Batch means weighted by a per-batch count; any other metric is a plain
# mean over batches (whose sizes are equal).
WEIGHTED_BY = {'mrc_acc': 'mrc_num', 'mrc_loss': 'mrc_num',
               **{f'{p}mlm_{m}': f'{p}mlm_num_masked'
                  for p in ('', 'box_', 'vsg_') for m in ('acc', 'loss')}}
# Recomputed over every batch at once rather than averaged.
RECOMPUTED = ('box_iou', 'box_is_box', 'box_mean_iou', 'box_num',
              'mrc_majority_rate')


def combine(per_batch: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
  """Held-out metrics over batches (see the module docstring)."""
  out: dict[str, float] = {}
  for key in per_batch[0]:
    if key in RECOMPUTED:
      continue
    values = np.array([float(b[key]) for b in per_batch], np.float64)
    count = WEIGHTED_BY.get(key)
    if key in COUNTS:
      out[key] = float(values.sum())
    elif count is not None and count in per_batch[0]:
      w = np.array([float(b[count]) for b in per_batch], np.float64)
      out[key] = float(np.sum(values * w) / max(np.sum(w), 1.0))
    else:
      out[key] = float(values.mean())
  if 'box_iou' in per_batch[0]:
    iou = np.concatenate([np.asarray(b['box_iou'], np.float64)[
        np.asarray(b['box_is_box']) > 0] for b in per_batch])
    out['box_num'] = float(iou.size)
    out['box_mean_iou'] = float(iou.mean()) if iou.size else float('nan')
    out['box_acc50'] = float((iou >= 0.5).mean()) if iou.size else float(
        'nan')
  return out


def majority_rate(labels: np.ndarray) -> float:
  """Accuracy of always answering the most frequent label."""
  labels = np.asarray(labels)
  return float(np.bincount(labels).max() / labels.size) if labels.size else (
      float('nan'))


def validate(workdir: str, *, steps: Sequence[int] = (), batches: int = 8,
             batch_size: int = 64, split: str = 'val', write: bool = False,
             mesh=None, log: Callable[[str], None] = print
             ) -> dict[int, dict[str, float]]:
  """Held-out metrics of ``workdir`` at ``steps``; see the module doc.

  Returns:
    ``{step: metrics}``.
  """
  run = restore.load_run(workdir, mesh=mesh)
  try:
    kept = run.kept_steps
    missing = sorted(set(steps) - set(kept) - {0})
    if missing:
      raise ValueError(f'--steps {missing} are not kept checkpoints of '
                       f'{workdir}; kept steps: {kept} (0: initialisation)')
    steps = sorted(set(steps)) if steps else [0] + list(kept)
    config = run.config
    input_cfg = heldout_input(config.input, split, batch_size)
    stream = iter(pipeline.make_dataset(
        input_cfg, run.tokenizer, global_batch=batch_size,
        seed=int(config.seed)))
    data = [next(stream) for _ in range(batches)]
    labels = np.concatenate([
        np.asarray(b['mrc_label']).ravel()[np.asarray(b['mrc_valid']).ravel()
                                           > 0] for b in data]
                            ) if 'mrc_label' in data[0] else None
    log(f'{workdir}: {len(steps)} step(s) {steps} on {batches} held-out '
        f'batch(es) of {batch_size} from the {split!r} split')
    fn = make_metrics_fn(config, run.graphdef)
    writer = writers.create_writer(workdir, jax.process_index()) if write else (
        None)
    results = {}
    with jax.set_mesh(run.mesh):
      for step in steps:
        start = time.time()
        params = _params_at(run, step)
        per_batch = [jax.device_get(fn(params, pipeline.to_global(
            b, run.mesh, run.rules))) for b in data]
        res = combine(per_batch)
        if labels is not None:
          res['mrc_majority_rate'] = majority_rate(labels)
          res['mrc_chance'] = 1.0 / int(config.model.mrc_classes)
        results[step] = res
        log(f'step {step}: ' + ', '.join(
            f'{k} {v:.4f}' for k, v in sorted(res.items())) +
            f' ({time.time() - start:.0f}s)')
        if writer is not None:
          writer.write_scalars(step, {f'{PREFIX}/{k}': v
                                      for k, v in res.items()})
    if writer is not None:
      writer.flush()
    return results
  finally:
    run.close()


def _params_at(run: restore.Run, step: int):
  """The run's params at a kept ``step``; at 0, drawn from its seed."""
  if step != 0:
    return run.at_step(step).params
  _, _, specs = train_state.abstract_model(run.config.model, run.rules)
  return train_state.init_params(run.config.model, int(run.config.seed),
                                 sharding.named(run.mesh, specs))


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  validate(_FLAGS['workdir'].value,
           steps=[int(s) for s in _FLAGS['steps'].value],
           batches=_FLAGS['batches'].value,
           batch_size=_FLAGS['batch_size'].value,
           split=_FLAGS['split'].value, write=_FLAGS['write'].value)


if __name__ == '__main__':
  define_flags()
  app.run(main)
