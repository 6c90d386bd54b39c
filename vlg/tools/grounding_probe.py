r"""Where the fusion looks: cross-attention on the object a word names.

  python -m vlg.tools.grounding_probe --workdir=workdirs/albef_tiny \
      [--step=N] [--scenes=200] [--split=val]

To tell "the red circle is above the blue square" from its twin, the
fusion must find the circle and the square among the image tokens. This
tool measures whether its cross-attention does: on held-out scenes of the
run's synthetic world, each object whose colour and category no other
object shares is named by the text "a <colour> <category>", and the
attention of the category word's token over the image tokens ([CLS] and
patches), averaged over heads, is split into

* ``ground_mass/layer<k>``: the share on the patches that the object's box
  overlaps, in fusion layer k;
* ``ground_uniform``: that share under uniform attention (the box's
  patches over all image tokens), the no-grounding baseline;
* ``ground_lift/layer<k>``: their ratio (1: the word looks anywhere; a
  grounded word's lift is many times 1);
* ``ground_cls/layer<k>``: the share on the image [CLS] token.

The weights are each fusion layer's own (``BertLayer.cross_attention_probs``)
on the states the layers receive (``fuse(..., return_layers=True)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from flax import nnx

from vlg import restore
from vlg.data import batch_truth
from vlg.data import ops
from vlg.synthetic import layout
from vlg.synthetic import render
from vlg.synthetic import world
from vlg.tools import word_probe

_FLAGS = {}


def cross_attention(model, image: jax.Array, text_ids: jax.Array,
                    text_mask: jax.Array) -> jax.Array:
  """float32 [fusion layers, B, heads, L, image tokens]: each fusion
  layer's cross-attention probabilities (no dropout)."""
  image_embeds = model.embed_image(image)['image_embeds']
  txt = model.embed_text(text_ids, text_mask)
  stack = model.fuse(txt['text_embeds'], text_mask, image_embeds,
                     return_layers=True)['fusion_layers']
  return jnp.stack([
      layer.cross_attention_probs(stack[k], text_mask, image_embeds)
      for k, layer in enumerate(model.text.fusion)])


def patch_mask(box: Sequence[int], grid: int, resolution: int) -> np.ndarray:
  """bool [grid * grid] (row-major): the patches a pixel box
  (x0, y0, x1, y1), half-open, overlaps."""
  side = resolution / grid
  x0, y0, x1, y1 = box
  cols = [c for c in range(grid) if c * side < x1 and (c + 1) * side > x0]
  rows = [r for r in range(grid) if r * side < y1 and (r + 1) * side > y0]
  mask = np.zeros((grid, grid), bool)
  mask[np.ix_(rows, cols)] = True
  return mask.ravel()


def grounding_metrics(probs: np.ndarray, positions: np.ndarray,
                      masks: np.ndarray) -> dict[str, float]:
  """The metrics of the module docstring from cross-attention ``probs``
  [F, B, H, L, 1 + P] ([CLS] first), the word's token position [B] and
  the object's patch masks [B, P] of each row."""
  rows = np.arange(len(positions))
  word = np.stack([probs[:, b, :, p] for b, p in zip(rows, positions)],
                  axis=1).mean(axis=2)  # [F, B, 1 + P]
  inside = (word[:, :, 1:] * masks[None]).sum(-1)  # [F, B]
  uniform = float((masks.sum(-1) / (1 + masks.shape[1])).mean())
  res = {'ground_uniform': uniform, 'ground_num': float(len(rows))}
  for k in range(probs.shape[0]):
    mass = float(inside[k].mean())
    res[f'ground_mass/layer{k}'] = mass
    res[f'ground_lift/layer{k}'] = mass / uniform
    res[f'ground_cls/layer{k}'] = float(word[k, :, 0].mean())
  return res


def named_objects(world_cfg: world.WorldConfig, tokenizer, *, scenes: int,
                  resolution: int, grid: int, max_len: int,
                  split: str = 'val') -> dict[str, np.ndarray]:
  """Rows for :func:`probe`: an image, the text "a <colour> <category>"
  for each object no other object of its scene shares both with, the
  category token's position and the object's patch mask."""
  shape_ids = set(int(i) for i in word_probe.class_token_ids(tokenizer)[
      'shape'])
  out = {k: [] for k in ('image', 'text_ids', 'text_mask', 'position',
                         'mask')}
  for index in range(scenes):
    scene = layout.generate_scene(split, index, world_cfg)
    image = ops.resize(render.render_scene(scene, world_cfg), resolution)
    scale = resolution / scene.resolution
    for obj in scene.objects:
      same = [o for o in scene.objects
              if (o.colour, o.category) == (obj.colour, obj.category)]
      ids, mask = tokenizer.encode(f'a {obj.colour} {obj.category}', max_len)
      where = [p for p, t in enumerate(ids) if int(t) in shape_ids]
      if len(same) != 1 or len(where) != 1:
        continue
      box = [v * scale for v in obj.box]
      out['image'].append(image)
      out['text_ids'].append(ids)
      out['text_mask'].append(mask)
      out['position'].append(where[0])
      out['mask'].append(patch_mask(box, grid, resolution))
  if not out['image']:
    raise ValueError('no object could be named: the tokenizer keeps no '
                     'category word whole, or the scenes are empty')
  return {k: np.stack(v) for k, v in out.items()}


def probe(run: restore.Run, *, scenes: int = 200, split: str = 'val',
          batch_size: int = 64) -> dict[str, float]:
  """The grounding metrics of ``run``'s checkpoint (module docstring).

  Raises:
    ValueError: the run's caption sources are not one synthetic world, or
      its image tokens are not [CLS] + a square patch grid.
  """
  cfg = run.config
  world_cfg = batch_truth.caption_world(cfg.input)
  if world_cfg is None:
    raise ValueError(f'{run.workdir}: the caption sources are not one '
                     'synthetic world; the probe needs its scenes')
  resolution = int(cfg.input.resolution)
  grid = resolution // int(cfg.model.patch_size)
  rows = named_objects(world_cfg, run.tokenizer, scenes=scenes,
                       resolution=resolution, grid=grid,
                       max_len=int(cfg.input.max_text_len), split=split)

  @jax.jit
  def attend(params, image, ids, mask):
    return cross_attention(nnx.merge(run.graphdef, params), image, ids,
                           mask)

  probs = []
  with jax.set_mesh(run.mesh):
    for start in range(0, len(rows['image']), batch_size):
      sl = slice(start, start + batch_size)
      probs.append(np.asarray(jax.device_get(attend(
          run.params, rows['image'][sl], rows['text_ids'][sl],
          rows['text_mask'][sl]))))
  probs = np.concatenate(probs, axis=1)
  if probs.shape[-1] != 1 + grid * grid:
    raise ValueError(f'{probs.shape[-1]} image tokens; expected [CLS] + '
                     f'{grid}x{grid} patches')
  return grounding_metrics(probs, rows['position'], rows['mask'])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  step = _FLAGS['step'].value
  run = restore.load_run(_FLAGS['workdir'].value, step)
  try:
    res = probe(run, scenes=_FLAGS['scenes'].value,
                split=_FLAGS['split'].value)
  finally:
    run.close()
  print(f'{run.workdir} step {run.step}: ' + ', '.join(
      f'{k} {v:.4f}' for k, v in sorted(res.items())))


def define_flags() -> None:
  """Defines the flags (only when run as a program)."""
  _FLAGS['workdir'] = flags.DEFINE_string(
      'workdir', None, 'Training workdir (checkpoints/, config, tokenizer).')
  _FLAGS['step'] = flags.DEFINE_integer(
      'step', None, 'Kept step to probe (default: the latest).')
  _FLAGS['scenes'] = flags.DEFINE_integer(
      'scenes', 200, 'Held-out scenes whose objects are named.')
  _FLAGS['split'] = flags.DEFINE_string(
      'split', 'val', "Synthetic world split ('val' or 'test').")
  flags.mark_flags_as_required(['workdir'])


if __name__ == '__main__':
  define_flags()
  app.run(main)
