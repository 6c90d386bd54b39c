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
  best that a head ignoring the images can do) and ``mrc_chance``;
* ``itm_random_acc`` / ``itm_random_auroc``: the ITM head on the held-out
  captions with negatives drawn uniformly, beside ``itm_random_prior``
  (2/3, always answering "not matched"). The caption ``itm_acc`` above
  draws its negatives from the model's own ITC similarities, as training
  does; once ITC is sharp many of them are captions that are true of the
  image too (false negatives), which a perfect matcher answers "matched",
  so it can score below 2/3 there and ``itm_acc`` cannot show ITM
  learning. With uniform
  negatives (one negative text per image and one negative image per text,
  among the batch entries of another image, 3B pairs as in training; drawn
  once from a fixed seed, so every step sees the same pairs) accuracy at
  the argmax and the AUROC of p(match), positives against negatives pooled
  over all batches, measure the matcher itself;
* false negatives, from the world's ground truth (``vlg.data.synthetic.
  truth``): each held-out caption is rebuilt from its image id and
  ``caption_index`` and checked against every scene of its batch.
  ``fn_pair_rate`` is the share of in-batch (image, caption of another
  image) pairs whose caption is true of the image; ``fn_random_share`` the
  share of the uniform negatives above (both directions) that are true;
  ``fn_hard_share`` the expected share of training's hard negatives that
  are true, exact from their sampling weights (the softmax of the model's
  in-batch ITC logits over the entries of another image,
  ``itm.hard_negative_weights``): ``Σ_j w[b, j] · true[b, j]`` averaged
  over images b (and likewise over texts). Borderline relations count as
  not true. These need the caption sources to share one world
  configuration, and captions in its grammar; otherwise they are left out,
  with a log line.

Batch means are combined weighted by their counts (boxes, triplets,
masked tokens, ITM pairs, negatives), and counts are summed, so the
numbers do not depend on ``--batch_size``. ``--write`` appends them to
``WORKDIR/metrics.jsonl`` as ``heldout/<metric>`` at each step, where the
curves tool reads them. A run on prepared (real) data has no held-out split
to switch to: the tool refuses it, naming the source.
"""

from __future__ import annotations

import dataclasses
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
from vlg.data import ops
from vlg.data import pipeline
from vlg.data.synthetic import layout
from vlg.data.synthetic import source as synthetic_source
from vlg.data.synthetic import truth as truth_lib
from vlg.data.synthetic import world
from vlg.evaluators import common as eval_common
from vlg.objectives import boxes as boxes_lib
from vlg.objectives import itc
from vlg.objectives import itm as itm_lib
from vlg.objectives import pairs
from vlg.objectives import pretrain

PREFIX = 'heldout'
# Accuracy of always answering "not matched" on 1 positive : 2 negatives.
ITM_PRIOR = 2 / 3
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
                    ) -> Callable[[Any, dict[str, Any], dict[str, Any]],
                                  dict[str, jax.Array]]:
  """Jitted ``(params, batch, negatives) → metrics``.

  The pretraining metrics plus per-example outputs that
  :func:`combine` and :func:`itm_probe_metrics` pool over batches: the box
  head's per-pair IoU (``box_iou`` [P], ``box_is_box`` [P]), the caption
  ITM logits of the uniform negatives ``negatives`` (``neg_image``,
  ``neg_text``, [B] each; ``itm_random_logits`` [3B, 2] in the row order
  of ``itm.itm_pairs``) and the in-batch ITC logits from which training
  draws its hard negatives (``itm_sim_i2t``, ``itm_sim_t2i`` [B, B]).
  """
  weights = train.loss_weights(config)
  ratios = train.part_ratios(config)
  concept = str((config.input.get('parts') or {}).get('mrc', {}).get(
      'concept', 'masked'))

  @jax.jit
  def metrics_fn(params, batch, negatives):
    model = nnx.merge(graphdef, params)
    _, metrics = pretrain.pretrain_loss(
        model, batch, momentum=None, queues={}, rng=jax.random.key(0),
        alpha=0.0, weights=weights, part_ratios=ratios, mrc_concept=concept)
    img = model.embed_image(batch['image'])
    txt = model.embed_text(batch['text_ids'], batch['text_mask'])
    _, _, sims = pairs.masked_itc(
        img['image_feat'], txt['text_feat'], itc.clamp_temp(model.temp[...]),
        jnp.ones(batch['image_id'].shape, jnp.int32))
    metrics['itm_sim_i2t'] = sims['sim_i2t']
    metrics['itm_sim_t2i'] = sims['sim_t2i']
    image_index, text_index = itm_lib.itm_pairs(negatives['neg_image'],
                                                negatives['neg_text'])
    fused = model.fuse(txt['text_embeds'][text_index],
                       batch['text_mask'][text_index],
                       img['image_embeds'][image_index])
    metrics['itm_random_logits'] = model.itm_logits(
        fused['fused_cls']).astype(jnp.float32)
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
# Recomputed over every batch at once rather than averaged (the ITM probe's
# by :func:`itm_probe_metrics`).
RECOMPUTED = ('box_iou', 'box_is_box', 'box_mean_iou', 'box_num',
              'mrc_majority_rate', 'itm_random_logits', 'itm_sim_i2t',
              'itm_sim_t2i')


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


def uniform_negatives(image_ids: np.ndarray, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One negative image per text and one negative text per image, uniform.

  Each is drawn uniformly among the batch entries of another image (equal
  ids are never negatives, as in training's ITM).

  Returns:
    ``(neg_image, neg_text, has_negative)``: int32 [B] the negative image of
    each text and the negative text of each image, bool [B] whether entry b
    has any (a row without one gets its own index and is left out of the
    ITM probe).
  """
  ids = np.asarray(image_ids).reshape(-1)
  allowed = ids[:, None] != ids[None, :]
  neg_image = np.arange(ids.size, dtype=np.int32)
  neg_text = np.arange(ids.size, dtype=np.int32)
  for b in range(ids.size):
    candidates = np.flatnonzero(allowed[b])
    if candidates.size:
      neg_image[b] = rng.choice(candidates)
      neg_text[b] = rng.choice(candidates)
  return neg_image, neg_text, allowed.any(axis=1)


@dataclasses.dataclass(frozen=True)
class CaptionProbe:
  """The fixed ITM probe of one held-out caption batch.

  Attributes:
    image_ids: [B] the batch's image ids.
    neg_image, neg_text, has_negative: :func:`uniform_negatives`.
    truth: [B, B] bool, True where caption j is true of image i, or None
      where the captions could not be checked (see :func:`caption_probes`).
  """
  image_ids: np.ndarray
  neg_image: np.ndarray
  neg_text: np.ndarray
  has_negative: np.ndarray
  truth: np.ndarray | None


def caption_world(input_cfg: ml_collections.ConfigDict
                  ) -> world.WorldConfig | None:
  """The world configuration of every caption source of ``input.data``, as
  ``vlg.data.sources`` builds it; None if the sources differ (a batch does
  not say which source an example came from)."""
  worlds = [world.WorldConfig(**dict(source.get('world', {})))
            for source in input_cfg.data.values()]
  return worlds[0] if all(w == worlds[0] for w in worlds) else None


def batch_truth(batch: dict[str, np.ndarray], cfg: world.WorldConfig,
                split: str, tokenizer, input_cfg: ml_collections.ConfigDict
                ) -> np.ndarray:
  """[B, B] bool: the caption of example j is true of the scene of image i.

  Rebuilds each example's scene from its image id and its caption from
  ``caption_index`` (the record's captions are drawn by
  ``source.scene_record``, as ``source.make_record`` does), and checks that
  the rebuilt caption tokenises to the batch's ``text_ids``: with ``flip``
  augmentation a caption's left and right would be swapped and no longer
  the world's text. Truth is of the whole caption, also where the model
  sees it truncated to ``max_text_len`` tokens.

  Raises:
    ValueError: ``input.augment`` has ``flip``, an image id is not of
      ``split``, or a rebuilt caption is not the batch's text.
    truth.ParseError: a caption is not in the world's grammar.
  """
  if 'flip' in tuple(input_cfg.augment):
    raise ValueError('input.augment has flip, which swaps left and right in '
                     'the captions; the truth of the rebuilt texts needs '
                     'augmentation off (see heldout_input)')
  base = world.image_id(split, 0)
  scenes, texts = [], []
  for image_id, k, ids in zip(np.asarray(batch['image_id']),
                              np.asarray(batch['caption_index']),
                              np.asarray(batch['text_ids'])):
    index = int(image_id) - base
    if not 0 <= index < 10**9:
      raise ValueError(f'image id {int(image_id)} is not of the {split!r} '
                       'split of the synthetic world')
    scene = layout.generate_scene(split, index, cfg)
    captions = synthetic_source.scene_record(
        scene, cfg, world.scene_rng(split, index, cfg, stream=1))['captions']
    text = captions[int(k)]
    want, _ = tokenizer.encode(
        ops.pre_caption(text, int(input_cfg.max_words)),
        int(input_cfg.max_text_len))
    if not np.array_equal(want, ids):
      raise ValueError(
          f'caption {int(k)} of {split} image {index}, {text!r}, does not '
          'tokenise to the batch\'s text: the batch was not drawn from this '
          'world configuration without augmentation')
    scenes.append(scene)
    texts.append(text)
  return truth_lib.truth_matrix(scenes, texts)


def caption_probes(data: Sequence[dict[str, np.ndarray]],
                   input_cfg: ml_collections.ConfigDict, tokenizer,
                   split: str, seed: int,
                   log: Callable[[str], None] = print) -> list[CaptionProbe]:
  """The ITM probe of every held-out batch: uniform negatives from one
  generator seeded with ``seed`` and, where the captions can be checked
  (one world configuration, captions in its grammar), their truth."""
  rng = np.random.default_rng(seed)
  cfg = caption_world(input_cfg)
  if cfg is None:
    log('The caption sources have different world configurations: the '
        'false-negative metrics are left out')
  truths = [None] * len(data)
  if cfg is not None:
    try:
      truths = [batch_truth(b, cfg, split, tokenizer, input_cfg)
                for b in data]
    except truth_lib.ParseError as e:
      log(f'A held-out caption is not in the world\'s grammar ({e}): the '
          'false-negative metrics are left out')
      truths = [None] * len(data)
  probes = []
  for batch, truth in zip(data, truths):
    ids = np.asarray(batch['image_id'])
    probes.append(CaptionProbe(ids, *uniform_negatives(ids, rng), truth))
  return probes


def false_negative_rates(probes: Sequence[CaptionProbe]) -> dict[str, float]:
  """``fn_pair_rate`` and ``fn_random_share`` (see the module docstring),
  pooled over batches; empty if a batch's truth is unknown."""
  if not probes or any(p.truth is None for p in probes):
    return {}
  pairs_true = pairs_num = neg_true = neg_num = 0
  for p in probes:
    other = p.image_ids[:, None] != p.image_ids[None, :]
    pairs_true += int((p.truth & other).sum())
    pairs_num += int(other.sum())
    rows = np.flatnonzero(p.has_negative)
    # Image b's negative text, and text b's negative image.
    neg_true += int(p.truth[rows, p.neg_text[rows]].sum() +
                    p.truth[p.neg_image[rows], rows].sum())
    neg_num += 2 * rows.size
  nan = float('nan')
  return {'fn_pair_rate': pairs_true / pairs_num if pairs_num else nan,
          'fn_random_share': neg_true / neg_num if neg_num else nan}


def hard_negative_true_share(sim_i2t: np.ndarray, sim_t2i: np.ndarray,
                             image_ids: np.ndarray, truth: np.ndarray
                             ) -> tuple[float, int]:
  """Expected number of true captions among training's hard negatives.

  With ``w = itm.hard_negative_weights(sim_i2t, sim_t2i, image_ids)`` (the
  sampling distributions of the hard negatives), image b's negative text
  is true with probability ``Σ_j w_i2t[b, j] · truth[b, j]`` and text b's
  negative image with ``Σ_j w_t2i[b, j] · truth[j, b]``.

  Args:
    sim_i2t, sim_t2i: [B, B] in-batch ITC logits image → text, text → image.
    image_ids: [B] image ids.
    truth: [B, B] bool, caption j true of image i.

  Returns:
    ``(expected true negatives, negatives)`` summed over both directions
    and the entries that have a negative (training weights the others out).
  """
  w_i2t, w_t2i = itm_lib.hard_negative_weights(
      jnp.asarray(sim_i2t, jnp.float32), jnp.asarray(sim_t2i, jnp.float32),
      jnp.asarray(image_ids))
  p_i2t = np.exp(np.asarray(w_i2t, np.float64))
  p_t2i = np.exp(np.asarray(w_t2i, np.float64))
  truth = np.asarray(truth, bool)
  ids = np.asarray(image_ids).reshape(-1)
  has = (ids[:, None] != ids[None, :]).any(axis=1)
  expected = (p_i2t * truth).sum(axis=1) + (p_t2i * truth.T).sum(axis=1)
  return float(expected[has].sum()), int(2 * has.sum())


def itm_probe_metrics(per_batch: Sequence[dict[str, np.ndarray]],
                      probes: Sequence[CaptionProbe]) -> dict[str, float]:
  """The uniform-negative ITM metrics and ``fn_hard_share`` of one step.

  ``per_batch`` are the metrics function's outputs on the batches of
  ``probes``. Accuracy and AUROC pool every scored pair (B positives and
  the 2B negatives of the entries that have one); the AUROC ranks the
  match-minus-mismatch logit, which orders the pairs as p(match) does
  without its float32 saturation to exact ties.
  """
  scores, labels, correct = [], [], []
  hard_true = hard_num = 0.0
  for out, probe in zip(per_batch, probes):
    logits = np.asarray(out['itm_random_logits'], np.float64)
    b = probe.image_ids.size
    keep = np.concatenate([np.ones(b, bool), probe.has_negative,
                           probe.has_negative])
    label = np.asarray(itm_lib.itm_labels(b))
    scores.append((logits[:, 1] - logits[:, 0])[keep])
    labels.append(label[keep])
    correct.append((np.argmax(logits, axis=-1) == label)[keep])
    if probe.truth is not None:
      true, num = hard_negative_true_share(
          out['itm_sim_i2t'], out['itm_sim_t2i'], probe.image_ids,
          probe.truth)
      hard_true += true
      hard_num += num
  correct = np.concatenate(correct)
  scores = np.concatenate(scores)
  labels = np.concatenate(labels).astype(bool)
  res = {
      'itm_random_acc': float(correct.mean()) if correct.size else float(
          'nan'),
      'itm_random_auroc': eval_common.auroc(scores[labels], scores[~labels]),
      'itm_random_prior': ITM_PRIOR,
  }
  if probes and all(p.truth is not None for p in probes):
    res['fn_hard_share'] = hard_true / hard_num if hard_num else float('nan')
  return res


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
    probes = caption_probes(data, input_cfg, run.tokenizer, split,
                            int(config.seed), log=log)
    fn_rates = false_negative_rates(probes)
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
        per_batch = [jax.device_get(fn(
            params, pipeline.to_global(b, run.mesh, run.rules),
            pipeline.to_global({'neg_image': p.neg_image,
                                'neg_text': p.neg_text}, run.mesh,
                               run.rules)))
                     for b, p in zip(data, probes)]
        res = combine(per_batch)
        res.update(itm_probe_metrics(per_batch, probes))
        res.update(fn_rates)
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
