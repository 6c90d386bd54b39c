r"""Every training objective's metrics on held-out data, per kept checkpoint.

  python -m vlg.tools.validate --workdir=workdirs/rexvlm_tiny \
      [--steps=0,300,600] [--batches=8] [--batch_size=64] [--twins=200] \
      [--write]

Training logs its losses and accuracies on the batches it trains on, which
a model can memorise and which are noisy (an MRC batch of the tiny configs
holds 16 triplets). This tool builds the run's own input mixture (caption
batch and every enabled typed part) from the synthetic world's ``val``
split, which shares no scene with ``train``, with augmentation off, and
computes on the same batches, for every kept checkpoint (or ``--steps``;
``0`` is the model at initialisation, drawn again from the run's seed
with its pretrained towers, or its checkpoint 0 where one is kept):

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
  over all batches, measure the matcher itself; ``itm_random_recall`` and
  ``itm_random_specificity`` split the accuracy into positives and
  negatives, and ``itm_random_acc_best_threshold`` (the accuracy at the
  best threshold on these very pairs: a diagnostic of calibration, not a
  score) shows how much of the gap to a perfect matcher is the head's
  threshold rather than its ranking;
* false negatives, from the world's ground truth (``vlg.synthetic.
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
  not true. ``hard_neg_kind/<kind>`` splits those hard negatives, with the
  same weights, by what rejecting one takes (``truth.negative_kind``):
  ``word`` (a word names nothing in the image), ``binding`` (every word is
  there, on the wrong objects), ``relation`` (the objects are there, the
  relation is not), ``count``, and ``true`` / ``borderline``; the share a
  bag-of-words matcher could not reject is what teaches an ITM head
  binding and relations. Where the world has contrast pairs,
  ``hard_neg_twin`` is the share of hard negatives that are the entry's
  own twin, and ``twin_in_batch`` the share of entries whose twin is in
  the batch to be drawn. The uniform negatives are split the same way:
  ``itm_random_num/<kind>``, ``itm_random_specificity/<kind>`` and
  ``itm_random_auroc/<kind>`` (the positives against that kind's
  negatives: does the head rank a wrong binding below a true caption?).
  These need the caption sources to share one world
  configuration, and captions in its grammar; otherwise they are left out,
  with a log line;
* ``mlm_word_acc/<class>``: the MLM head's accuracy on the held-out
  captions with every word of one class of the world (shape, colour, size,
  number, relation) masked at once (``vlg.tools.word_probe``), beside
  ``mlm_word_num/<class>``, the number of masked tokens: which attributes
  the model reads off the image;
* ``twin_<score>_{text,image,group,pair_acc}``: Winoground's scores, ITM's
  and ITC's, on ``--twins`` held-out contrast pairs of the run's world
  (``vlg.tools.twin_probe``): two images one edit apart (shapes swapped,
  colours swapped, an arrow reversed), each with a caption true of it and
  false of the other; ``twin_<score>_pair_acc/<edit>`` per edit. Chance
  is 0.25 (text, image), 1/6 (group) and 0.5 (pair_acc).
  ``twin_mlm_colour_acc`` / ``twin_mlm_colour_acc_on_twin``: the MLM head
  restoring the masked colour words of a recoloured pair's caption on its
  own image / on the twin, where they are wrong: a head that binds colour
  to shape scores high and low; one that only knows which colours are
  present, the same on both.

Batch means are combined weighted by their counts (boxes, triplets,
masked tokens, ITM pairs, negatives), and counts are summed, so the
numbers do not depend on ``--batch_size``. ``--write`` appends them to
``WORKDIR/metrics.jsonl`` as ``heldout/<metric>`` at each step, where the
curves tool reads them. A run on prepared (real) data has no held-out split
to switch to: the tool refuses it, naming the source.
"""

from __future__ import annotations

import functools
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
from vlg import train_state
from vlg import writers
from vlg.data import batch_truth
from vlg.data import pipeline
from vlg.evaluators import batching
from vlg.objectives import itc
from vlg.objectives import itm as itm_lib
from vlg.objectives import pairs
from vlg.objectives import part
from vlg.objectives import pretrain
from vlg.tools import itm_probe
from vlg.tools import twin_probe
from vlg.tools import word_probe

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
  _FLAGS['twins'] = flags.DEFINE_integer(
      'twins', 200, 'Held-out contrast pairs to score (0: none).')
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
  :func:`combine` and ``itm_probe.itm_probe_metrics`` pool over batches:
  each enabled part's ``PART.heldout`` outputs (the entity part's per-pair
  box IoU, ``box_iou`` [P], ``box_is_box`` [P]), the caption
  ITM logits of the uniform negatives ``negatives`` (``neg_image``,
  ``neg_text``, [B] each; ``itm_random_logits`` [3B, 2] in the row order
  of ``itm.itm_pairs``) and the in-batch ITC logits from which training
  draws its hard negatives (``itm_sim_i2t``, ``itm_sim_t2i`` [B, B]).
  """
  loss_fn = pretrain.make_loss_fn(config)
  heldout = [part.part_objective(name).heldout
             for name in pretrain.part_configs(config)]

  @jax.jit
  def metrics_fn(params, batch, negatives):
    model = nnx.merge(graphdef, params)
    _, metrics = loss_fn(model, batch, momentum=None, queues={},
                         rng=jax.random.key(0), alpha=0.0)
    img = model.embed_image(batch['image'])
    txt = model.embed_text(batch['text_ids'], batch['text_mask'])
    _, _, sims = pairs.masked_itc(
        img['image_feat'], txt['text_feat'], itc.clamp_temp(model.temp[...]),
        jnp.ones(batch['image_id'].shape, jnp.int32))
    metrics['itm_sim_i2t'] = sims['sim_i2t']
    metrics['itm_sim_t2i'] = sims['sim_t2i']
    image_index, text_index = itm_lib.itm_pairs(negatives['neg_image'],
                                                negatives['neg_text'])
    metrics['itm_random_logits'] = model.itm_logits(model.fuse_cls(
        txt['text_embeds'][text_index], batch['text_mask'][text_index],
        img['image_embeds'][image_index])).astype(jnp.float32)
    for outputs in heldout:  # Each part's per-example outputs.
      if outputs is not None:
        metrics.update(outputs(model, batch))
    return metrics

  return metrics_fn


def make_mlm_predict_fn(graphdef) -> Callable[..., jax.Array]:
  """Jitted ``(params, image [B, ...], text_ids [C, B, L], text_mask [B, L])
  → [C, B, L]`` argmax of the MLM head over C maskings of the same
  captions (the word probe's classes); each image is encoded once."""

  @jax.jit
  def predict(params, image, text_ids, text_mask):
    model = nnx.merge(graphdef, params)
    image_embeds = model.embed_image(image)['image_embeds']

    def one_masking(ids):
      txt = model.embed_text(ids, text_mask)
      fused = model.fuse(txt['text_embeds'], text_mask, image_embeds)
      return jnp.argmax(model.mlm_logits(fused['fused_embeds']), axis=-1)

    return jax.lax.map(one_masking, text_ids)

  return predict


def word_probe_metrics(predict, params, data, class_ids, mask_id, mesh,
                       rules) -> dict[str, float]:
  """``word_probe.word_metrics`` over the held-out caption batches: one
  call of ``predict`` per batch scores every class's masking."""
  names = list(class_ids)
  totals: dict[str, list[int]] = {}
  for batch in data:
    masked = [word_probe.mask_class(batch['text_ids'], batch['text_mask'],
                                    class_ids[name], mask_id)
              for name in names]
    inputs = pipeline.to_global(
        {'image': batch['image'], 'text_mask': batch['text_mask']}, mesh,
        rules)
    predicted = jax.device_get(predict(
        params, inputs['image'], np.stack([ids for ids, _ in masked]),
        inputs['text_mask']))
    for name, (_, targets), pred in zip(names, masked, predicted):
      word_probe.accumulate(totals, name, pred, batch['text_ids'], targets)
  return word_probe.word_metrics(totals)


# Per-batch counts: summed over batches.
COUNTS = ('mrc_num', 'mlm_num_masked', 'box_mlm_num_masked',
          'vsg_mlm_num_masked')
# Batch means weighted by a per-batch count; any other metric is a plain
# mean over batches (whose sizes are equal).
WEIGHTED_BY = {'mrc_acc': 'mrc_num', 'mrc_loss': 'mrc_num',
               **{f'{p}mlm_{m}': f'{p}mlm_num_masked'
                  for p in ('', 'box_', 'vsg_') for m in ('acc', 'loss')}}
# Recomputed over every batch at once rather than averaged (the ITM probe's
# by ``itm_probe.itm_probe_metrics``).
RECOMPUTED = ('box_iou', 'box_is_box', 'box_mean_iou', 'box_num',
              'mrc_majority_rate', 'itm_random_logits', 'itm_sim_i2t',
              'itm_sim_t2i')


def combine(per_batch: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
  """Held-out metrics over batches (see the module docstring)."""
  out: dict[str, float] = {}
  for key in per_batch[0]:
    # Per-example vectors (the drawn ITM negatives) are no held-out metric.
    if key in RECOMPUTED or np.ndim(per_batch[0][key]):
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
             batch_size: int = 64, split: str = 'val', twins: int = 200,
             write: bool = False,
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
    probes = itm_probe.caption_probes(data, input_cfg, run.tokenizer, split,
                            int(config.seed), log=log)
    fn_rates = itm_probe.false_negative_rates(probes)
    world_cfg = batch_truth.caption_world(input_cfg)
    pairs_of_twins = None
    if twins and world_cfg is not None:
      pairs_of_twins = twin_probe.held_out_twins(
          world_cfg, run.tokenizer, num=twins,
          max_words=int(input_cfg.max_words),
          max_len=int(input_cfg.max_text_len),
          resolution=int(input_cfg.resolution), split=split)
    elif twins:
      log('twin scores left out: the caption sources are not one synthetic '
          'world')
    labels = np.concatenate([
        np.asarray(b['mrc_label']).ravel()[np.asarray(b['mrc_valid']).ravel()
                                           > 0] for b in data]
                            ) if 'mrc_label' in data[0] else None
    log(f'{workdir}: {len(steps)} step(s) {steps} on {batches} held-out '
        f'batch(es) of {batch_size} from the {split!r} split')
    fn = make_metrics_fn(config, run.graphdef)
    predict = make_mlm_predict_fn(run.graphdef)
    if pairs_of_twins is not None:
      twin_scores, twin_mlm = (
          batching.BatchRunner(f, batch_size=batch_size, mesh=run.mesh,
                               rules=run.rules)
          for f in (run.predict_fns['image_text_scores'],
                    _mlm_rows(predict)))
    class_ids = word_probe.class_token_ids(run.tokenizer)
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
        res.update(itm_probe.itm_probe_metrics(per_batch, probes))
        res.update(fn_rates)
        res.update(word_probe_metrics(predict, params, data, class_ids,
                                      run.tokenizer.mask_id, run.mesh,
                                      run.rules))
        if pairs_of_twins is not None:
          res.update(twin_probe.twin_metrics(
              functools.partial(twin_scores.run, params), pairs_of_twins))
          res.update(twin_probe.binding_metrics(
              functools.partial(twin_mlm.run, params), pairs_of_twins,
              class_ids.get('colour', np.zeros(0, int)),
              run.tokenizer.mask_id))
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


def _mlm_rows(predict):
  """``predict`` (:func:`make_mlm_predict_fn`'s) as a batch-dict function
  for ``evaluators.batching.BatchRunner``: one masking of each row's text,
  ``{'mlm_ids': [B, L]}``."""
  def rows(params, batch):
    return {'mlm_ids': predict(params, batch['image'],
                               batch['text_ids'][None],
                               batch['text_mask'])[0]}
  return rows


def _params_at(run: restore.Run, step: int):
  """The run's params at a kept ``step``. At 0 without a checkpoint there,
  the run's start: drawn from its seed, with the pretrained towers its
  ``model.init`` names (the labelled stage's), as ``vlg.train`` starts."""
  if step != 0 or 0 in run.kept_steps:
    return run.at_step(step).params
  _, _, specs = train_state.abstract_model(run.config.model, run.rules)
  return train_state.start_params(run.config.model, int(run.config.seed),
                                  sharding.named(run.mesh, specs))


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  validate(_FLAGS['workdir'].value,
           steps=[int(s) for s in _FLAGS['steps'].value],
           batches=_FLAGS['batches'].value,
           batch_size=_FLAGS['batch_size'].value,
           split=_FLAGS['split'].value, twins=_FLAGS['twins'].value,
           write=_FLAGS['write'].value)


if __name__ == '__main__':
  define_flags()
  app.run(main)
