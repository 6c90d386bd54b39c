"""The built-in world's ImageNet: the vision tower learns its object labels
before pretraining.

The papers never start a vision tower from random weights: ALBEF and X-VLM
from DeiT-B/16 (ImageNet-1k), the relation paper from an AugReg ViT-B/16
(ImageNet-21k) (docs/weights.md). A tiny ViT trained from scratch on the
world's captions alone does not learn to tell the world's shapes apart
within a tiny run's budget: a caption supervises about one shape word, and
ITC, ITM and MLM can mostly be served by colours, so every true pair whose
caption needs a shape is rejected (docs/results.md, "What the tiny ViT
does not see"). This stage is the labelled pretraining the papers rely on,
on the world's own images: before the first step of a fresh run, the
vision tower with a linear head over the mean of its final patch tokens
learns which objects an image holds: their categories, their colours, the
two together and their sizes with their categories (multi-label, one
sigmoid cross-entropy per label, the labels an object-and-attribute corpus
such as Visual Genome gives; or, with ``target='patch'``, per patch), on
images of the run's synthetic train split, and the run starts from the
tower (``model.init.vision``; the head is dropped, the EMA copy starts
equal to it).

``config.vision_pretrain``::

  steps          0 = off (the default); batches of the stage
  batch_size     images a step
  lr, warmup_steps, min_lr, weight_decay
                 AdamW: linear warm-up from min_lr, cosine to min_lr
  target         'image': multi-label presence of each label (category,
                 colour, pair, sized category) in the image (sigmoid
                 cross-entropy through a linear head over the mean patch
                 token); 'patch': per patch token, which label of each
                 group covers the patch's centre, or none (softmax
                 cross-entropy through a linear head on every patch token:
                 a label per patch instead of per image, as a detector's
                 or segmenter's pretraining sees)
  label_weights  {category, colour, colour_category, size_category}: each
                 label group's weight in the loss (0 leaves a group out of
                 training; its held-out accuracy is still reported)

The stage's compute counts in a run's budget: it logs XLA's FLOPs per
step and writes them, with its held-out accuracy, beside the tower
(``<workdir>/vision_pretrain/tower.json``). It runs once per workdir: a
resumed run reuses the written tower (or, past its first checkpoint, needs
none). In a multi-process job process 0 trains the tower and the others
wait for the file on the shared workdir, as for the tokenizer.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx

from vlg import checkpointing
from vlg.data import batch_truth
from vlg.data import ops
from vlg.models import vit
from vlg.synthetic import source
from vlg.synthetic import world
from vlg.weights import common
from vlg.weights import init as weights_init

TOWER_DIR = 'vision_pretrain'
TOWER_FILE = 'tower.npz'
SUMMARY_FILE = 'tower.json'
# Held-out images scored at the end (the world's val split, never a
# benchmark set's).
NUM_VAL = 512

# The label groups, each a multi-label presence vector: an object's
# category, its colour, the two together (what binds them), and its size
# class with its category (the captions' 'large' and 'small').
PAIRS = tuple((c, k) for k in world.CATEGORIES for c in world.COLOURS)
SIZED = tuple((s, k) for k in world.CATEGORIES for s in world.SIZES)
GROUPS = (('category', len(world.CATEGORIES)), ('colour', len(world.COLOURS)),
          ('colour_category', len(PAIRS)), ('size_category', len(SIZED)))
NUM_LABELS = sum(n for _, n in GROUPS)
TARGETS = ('image', 'patch')
# target='patch': per patch, a class per group, 0 = no object (so each
# group has one class more than it has labels).
NUM_PATCH_CLASSES = sum(n + 1 for _, n in GROUPS)


def default_config() -> ml_collections.ConfigDict:
  """``config.vision_pretrain`` of every recipe: off."""
  return ml_collections.ConfigDict(dict(
      steps=0, batch_size=16, lr=1e-3, warmup_steps=50, min_lr=1e-5,
      weight_decay=0.02, target='image',
      # Chosen by held-out accuracy of the stage and of tiny ALBEF after
      # it (docs/results.md): the categories at full weight, colours and
      # pairs at a tenth (at full weight they held category accuracy at
      # 0.74 against 0.80, while a tenth still learns colours to 0.94);
      # sizes left out (they cost categories and colours).
      label_weights=ml_collections.ConfigDict(dict(
          category=1.0, colour=0.1, colour_category=0.1,
          size_category=0.0))))


def tower_path(workdir: str) -> str:
  return os.path.join(workdir, TOWER_DIR, TOWER_FILE)


def enabled(config: ml_collections.ConfigDict) -> bool:
  vp = config.get('vision_pretrain')
  return bool(vp) and int(vp.get('steps', 0)) > 0


def group_slices(extra: int = 0) -> list[tuple[str, slice]]:
  """(group name, its columns of a [.., NUM_LABELS] label array); with
  ``extra=1``, of a [.., NUM_PATCH_CLASSES] per-patch logit array."""
  out, start = [], 0
  for name, n in GROUPS:
    out.append((name, slice(start, start + n + extra)))
    start += n + extra
  return out


def labels(record: dict[str, Any]) -> np.ndarray:
  """[NUM_LABELS] float32, the groups of :data:`GROUPS` concatenated: 1
  where the image holds an object of the category / colour / colour and
  category / size class and category."""
  objects = record['objects']
  categories = {o['category'] for o in objects}
  colours = {o['color'] for o in objects}
  pairs = {(o['color'], o['category']) for o in objects}
  sized = {(o['size'], o['category']) for o in objects}
  return np.array([c in categories for c in world.CATEGORIES] +
                  [c in colours for c in world.COLOURS] +
                  [p in pairs for p in PAIRS] +
                  [p in sized for p in SIZED], np.float32)


def patch_labels(record: dict[str, Any], grid: int) -> np.ndarray:
  """[grid * grid, len(GROUPS)] int32, patches in row-major order: per
  group, 1 + the index of the category / colour / pair / sized category of
  the object whose box holds the patch's centre (the smallest such box,
  where boxes overlap), 0 where no box does."""
  out = np.zeros((grid, grid, len(GROUPS)), np.int32)
  area = np.full((grid, grid), np.inf)
  centres = (np.arange(grid) + 0.5) / grid
  for o in record['objects']:
    x, y, w, h = (float(v) for v in o['box'])
    inside = (((centres >= y) & (centres < y + h))[:, None] &
              ((centres >= x) & (centres < x + w))[None, :])
    inside &= w * h < area
    area[inside] = w * h
    out[inside] = (1 + world.CATEGORIES.index(o['category']),
                   1 + world.COLOURS.index(o['color']),
                   1 + PAIRS.index((o['color'], o['category'])),
                   1 + SIZED.index((o['size'], o['category'])))
  return out.reshape(grid * grid, len(GROUPS))


def patch_loss(logits: jax.Array, targets: jax.Array,
               weights: dict[str, float] | None = None) -> jax.Array:
  """Softmax cross-entropy per patch and group ([B, N, NUM_PATCH_CLASSES]
  logits, [B, N, len(GROUPS)] classes), averaged over the patches and
  summed over the groups with their ``weights`` (default 1 each)."""
  weights = weights or {}
  return sum(
      weights.get(name, 1.0) *
      optax.softmax_cross_entropy_with_integer_labels(
          logits[..., cols], targets[..., g]).mean()
      for g, (name, cols) in enumerate(group_slices(extra=1)))


def group_weights(config: ml_collections.ConfigDict) -> dict[str, float]:
  """``vision_pretrain.label_weights`` checked: one finite weight >= 0 per
  label group, not all zero; a group the config does not name (one saved
  before the group existed) takes :func:`default_config`'s weight."""
  given = dict(config.vision_pretrain.get('label_weights') or {})
  names = [name for name, _ in GROUPS]
  unknown = sorted(set(given) - set(names))
  if unknown:
    raise ValueError(f'vision_pretrain.label_weights: unknown group(s) '
                     f'{unknown}; the groups are {names}')
  defaults = default_config().label_weights
  weights = {name: float(given.get(name, defaults[name])) for name in names}
  bad = {k: v for k, v in weights.items() if not (np.isfinite(v) and v >= 0)}
  if bad or not any(weights.values()):
    raise ValueError(f'vision_pretrain.label_weights={weights}: each must be '
                     'a finite number >= 0, and one at least above 0')
  return weights


def label_loss(logits: jax.Array, targets: jax.Array,
               weights: dict[str, float] | None = None) -> jax.Array:
  """Sigmoid cross-entropy, averaged within each label group and summed
  over the groups with their ``weights`` (default 1 each), so the 56
  sparse pair labels do not drown out the 8 categories."""
  per_label = optax.sigmoid_binary_cross_entropy(logits, targets)
  weights = weights or {}
  return sum(weights.get(name, 1.0) * per_label[:, cols].mean()
             for name, cols in group_slices())


class Classifier(nnx.Module):
  """The run's vision tower and a linear head: over its mean patch token
  (``per_patch=False``: [B, NUM_LABELS] logits) or on every patch token
  (``per_patch=True``: [B, N, NUM_PATCH_CLASSES])."""

  def __init__(self, model_cfg: ml_collections.ConfigDict, *,
               per_patch: bool = False, rngs: nnx.Rngs):
    self.per_patch = per_patch
    self.vision = vit.VisionTransformer(model_cfg, rngs=rngs)
    self.head = nnx.Linear(int(model_cfg.vision_width),
                           NUM_PATCH_CLASSES if per_patch else NUM_LABELS,
                           rngs=rngs)

  def __call__(self, images: jax.Array) -> jax.Array:
    patches = self.vision(images)[:, 1:]
    return self.head(patches if self.per_patch else patches.mean(axis=1))


def _world(config: ml_collections.ConfigDict) -> world.WorldConfig:
  cfg = batch_truth.caption_world(config.input)
  if cfg is None:
    raise ValueError(
        'vision_pretrain.steps > 0 trains the vision tower on the synthetic '
        "world's object labels, but config.input.data is not one synthetic "
        'world; on real data start from a pretrained tower with '
        '--config.model.init.vision=PATH (docs/weights.md), or set '
        '--config.vision_pretrain.steps=0')
  return cfg


def _images(split: str, indices, cfg: world.WorldConfig, size: int,
            grid: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Images resized to ``size`` and their labels: per image, or per patch
  of a ``grid`` x ``grid`` layout where ``grid`` is given."""
  records = [source.make_record(split, int(i), cfg) for i in indices]
  images = np.stack([ops.resize(r['image'], size) for r in records])
  if grid:
    return images, np.stack([patch_labels(r, grid) for r in records])
  return images, np.stack([labels(r) for r in records])


def _held_out_summary(logits: np.ndarray, targets: np.ndarray,
                      per_patch: bool) -> dict[str, float]:
  """Per group: held-out accuracy and the majority baseline's. Per image:
  the mean per-label accuracy of the sigmoid outputs. Per patch: the
  accuracy of the argmax class over the patches an object covers (the
  baseline: always the most frequent object class)."""
  out = {}
  if not per_patch:
    correct = (logits > 0) == (targets > 0.5)
    for group, cols in group_slices():
      out[f'val_{group}_accuracy'] = float(correct[:, cols].mean())
      rate = targets[:, cols].mean(0)
      out[f'val_{group}_majority'] = float(np.maximum(rate, 1 - rate).mean())
    return out
  for g, (group, cols) in enumerate(group_slices(extra=1)):
    truth = targets[..., g]
    covered = truth > 0
    pred = logits[..., cols].argmax(-1)
    out[f'val_{group}_accuracy'] = float((pred == truth)[covered].mean())
    counts = np.bincount(truth[covered], minlength=cols.stop - cols.start)
    out[f'val_{group}_majority'] = float(counts.max() / counts.sum())
  return out


def compiled_flops(step_fn, *args) -> float | None:
  """XLA's FLOP count of one call of the jitted ``step_fn`` on ``args``
  (lowered and compiled, not run; None where the backend has none)."""
  try:
    cost = step_fn.lower(*args).compile().cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = (cost or {}).get('flops')
  return float(flops) if flops else None


def train_tower(config: ml_collections.ConfigDict, out_path: str
                ) -> dict[str, Any]:
  """Trains the tower of ``config.model`` on the world's object labels and
  saves it as ``{'vision/<path>': array}`` (``model.init.vision`` reads
  it); returns the summary also written to ``tower.json`` beside it."""
  vp = config.vision_pretrain
  steps, batch = int(vp.steps), int(vp.batch_size)
  if not 0 <= int(vp.warmup_steps) < steps:
    raise ValueError(f'vision_pretrain.warmup_steps={vp.warmup_steps} must '
                     f'be below vision_pretrain.steps={steps}')
  weights = group_weights(config)
  target = str(vp.get('target', 'image'))
  if target not in TARGETS:
    raise ValueError(f'vision_pretrain.target={target!r}; one of {TARGETS}')
  per_patch = target == 'patch'
  cfg = _world(config)
  # caption_world found every source the same world; the first one's split
  # and size are the stage's.
  data = next(iter(config.input.data.values()))
  split = data.get('split', 'train')
  num_examples = int(data.get('num_examples', 100_000))
  size = int(config.model.image_size)
  grid = size // int(config.model.patch_size) if per_patch else None
  with nnx.use_eager_sharding(False):
    model = Classifier(config.model, per_patch=per_patch,
                       rngs=nnx.Rngs(int(config.seed)))
  schedule = optax.warmup_cosine_decay_schedule(
      float(vp.min_lr), float(vp.lr), int(vp.warmup_steps), steps,
      float(vp.min_lr))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adamw(schedule, weight_decay=float(vp.weight_decay))
  opt_state = tx.init(params)

  def loss_fn(p, x, y):
    loss = patch_loss if per_patch else label_loss
    return loss(nnx.merge(graphdef, p, rest)(x), y, weights)

  @jax.jit
  def step(p, o, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss

  @jax.jit
  def predict(p, x):
    return nnx.merge(graphdef, p, rest)(x)

  order = np.random.default_rng(int(config.seed)).permutation(num_examples)
  x, y = _images(split, order[:batch], cfg, size, grid)
  flops = compiled_flops(step, params, opt_state, x, y)
  logging.info('vision_pretrain: %d steps of %d images, %s labels, '
               'weights %s (%s)', steps, batch, target, weights,
               f'{flops / 1e9:.2f} GFLOP a step, {steps * flops / 1e12:.2f} '
               'TFLOP in all' if flops else 'no FLOP count on this backend')
  start = time.time()
  for s in range(1, steps + 1):
    if s > 1:
      idx = np.arange((s - 1) * batch, s * batch) % num_examples
      x, y = _images(split, order[idx], cfg, size, grid)
    params, opt_state, loss = step(params, opt_state, x, y)
    if s % max(1, steps // 10) == 0 or s == steps:
      loss = float(loss)
      if not np.isfinite(loss):
        raise FloatingPointError(
            f'vision_pretrain: loss {loss} at step {s}; lower '
            '--config.vision_pretrain.lr')
      elapsed = time.time() - start
      eta = elapsed / s * (steps - s)
      logging.info('vision_pretrain step %d/%d | loss %.4f | ETA %s', s,
                   steps, loss, time.strftime('%H:%M:%S', time.gmtime(eta)))

  vx, vy = _images('val', range(NUM_VAL), cfg, size, grid)
  logits = np.concatenate([np.asarray(predict(params, vx[i:i + 64]))
                           for i in range(0, NUM_VAL, 64)])
  summary = {
      'steps': steps, 'batch_size': batch, 'target': target,
      'label_weights': weights,
      'gflop_per_step': flops / 1e9 if flops else None,
      'tflop': steps * flops / 1e12 if flops else None,
      'seconds': round(time.time() - start, 1),
  }
  summary.update(_held_out_summary(logits, vy, per_patch))
  logging.info('vision_pretrain: held-out per-label accuracy (majority) %s',
               ', '.join(f"{g} {summary[f'val_{g}_accuracy']:.3f} "
                         f"({summary[f'val_{g}_majority']:.3f})"
                         for g, _ in GROUPS))
  flat = common.flatten(nnx.to_pure_dict(params))
  arrays = {k: np.asarray(v) for k, v in flat.items()
            if k.startswith(weights_init.VLG_PREFIX)}
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  tmp = out_path + '.tmp.npz'
  np.savez(tmp, **arrays)
  with open(os.path.join(os.path.dirname(out_path), SUMMARY_FILE), 'w') as f:
    json.dump(summary, f, indent=2)
  os.replace(tmp, out_path)  # Atomic: a crash leaves no half-written tower.
  return summary


def _has_checkpoint(workdir: str) -> bool:
  directory = checkpointing.checkpoint_dir(workdir)
  return (os.path.isdir(directory) and
          checkpointing.open_read_only(directory).latest_step() is not None)


def prepare(config: ml_collections.ConfigDict, workdir: str, *,
            process_index: int = 0, timeout_s: float = 3600.0
            ) -> ml_collections.ConfigDict:
  """``config`` with ``model.init.vision`` at the run's pretrained tower,
  training it first where needed; ``config`` itself where the stage is
  off or the run resumes from a checkpoint (which holds the tower)."""
  if not enabled(config) or _has_checkpoint(workdir):
    return config
  if config.model.get('init') and config.model.init.get('vision'):
    raise ValueError(
        f'vision_pretrain.steps={config.vision_pretrain.steps} and '
        f'model.init.vision={config.model.init.vision} both give the '
        'vision tower; set one of them')
  path = tower_path(workdir)
  if os.path.exists(path):
    logging.info('vision_pretrain: reusing %s', path)
  elif process_index == 0:
    train_tower(config, path)
  else:
    start = time.time()
    while not os.path.exists(path):
      if time.time() - start > timeout_s:
        raise TimeoutError(f'{path} did not appear within {timeout_s:.0f} '
                           's; process 0 trains it (check its log)')
      time.sleep(2.0)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.init.vision = path
  return config
