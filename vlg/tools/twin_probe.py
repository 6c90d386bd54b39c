"""Winoground-style scores on held-out contrast pairs of the world.

A contrast pair (``vlg/synthetic/contrast.py``) is two images one minimal
edit apart — two shapes swapped, two colours swapped, an arrow or a
covering reversed — each with a caption true of it and false of the other.
Scoring both captions on both images asks exactly what VSR- and
Winoground-style sets ask, on scenes drawn like the training world's
(its 'val' split, so never trained on): does the model prefer each image's
own caption? Chance is 0.5 for ``pair_acc`` (one comparison of a caption
pair on one image) and 0.25 for ``text`` (both images prefer their own
caption) and ``image`` (both captions prefer their own image), as in
Winoground; the pairs are built whether or not the run trained with
contrast pairs, so the same numbers compare runs with and without them.

``vlg.tools.validate`` reports these as ``twin_<score>_<metric>`` and
``twin_<score>_pair_acc/<edit>``, and, from the MLM head on the recoloured
pairs (:func:`binding_metrics`), whether the model binds a colour to its
shape: with every colour word of image a's caption masked, the head
should restore the words on image a (``twin_mlm_colour_acc``) and not on
its twin, where the two shapes have each other's colours
(``twin_mlm_colour_acc_on_twin``: restoring the original words there is
wrong). A model that only knows which colours are in the image restores
them equally often on both.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from vlg.data import ops
from vlg.synthetic import contrast
from vlg.synthetic import render
from vlg.synthetic import world
from vlg.tools import word_probe

SCORES = ('itm', 'itc')


@dataclasses.dataclass(frozen=True)
class Twins:
  """``n`` held-out contrast pairs, ready to score: images [n, R, R, 3]
  and one caption's ``ids`` / ``mask`` [n, L] for each side (a: image 2k,
  b: its twin), and each pair's edit."""
  image_a: np.ndarray
  image_b: np.ndarray
  ids_a: np.ndarray
  mask_a: np.ndarray
  ids_b: np.ndarray
  mask_b: np.ndarray
  edits: tuple[str, ...]


def held_out_twins(world_cfg: world.WorldConfig, tokenizer, *, num: int,
                   max_words: int, max_len: int, resolution: int,
                   split: str = 'val', max_draws: int = 100_000) -> Twins:
  """The first ``num`` contrast pairs of ``split`` of ``world_cfg`` with
  every pair drawn as a contrast pair (``contrast_rate`` 1), each with its
  first candidate caption (the texts are deterministic, so every step and
  every run scores the same pairs), rendered at ``resolution`` pixels.

  Raises:
    ValueError: fewer than ``num`` pairs in ``max_draws`` index pairs.
  """
  cfg = dataclasses.replace(world_cfg, contrast_rate=1.0)
  rows = {k: [] for k in ('image_a', 'image_b', 'ids_a', 'mask_a', 'ids_b',
                          'mask_b')}
  edits = []
  for base in range(0, 2 * max_draws, 2):
    if len(edits) == num:
      break
    pair = contrast.pair(split, base, cfg)
    if pair is None:
      continue
    for side, scene, texts in (('a', pair.scene, pair.texts[0]),
                               ('b', pair.twin, pair.texts[1])):
      rows[f'image_{side}'].append(
          ops.resize(render.render_scene(scene, cfg), resolution))
      ids, mask = tokenizer.encode(ops.pre_caption(texts[0], max_words),
                                   max_len)
      rows[f'ids_{side}'].append(ids)
      rows[f'mask_{side}'].append(mask)
    edits.append(pair.edit)
  if len(edits) < num:
    raise ValueError(f'only {len(edits)} contrast pairs in the first '
                     f'{max_draws} index pairs of {split!r}; asked {num}')
  return Twins(**{k: np.stack(v) for k, v in rows.items()},
               edits=tuple(edits))


def scores_from(aa: np.ndarray, ab: np.ndarray, ba: np.ndarray,
                bb: np.ndarray) -> dict[str, float]:
  """Winoground's text and image scores and the single-comparison
  accuracy from the four score vectors s(image, caption) of n pairs (``ab``:
  image a with caption b). Ties count as wrong."""
  text = (aa > ab) & (bb > ba)
  image = (aa > ba) & (bb > ab)
  return {'text': float(np.mean(text)), 'image': float(np.mean(image)),
          'group': float(np.mean(text & image)),
          'pair_acc': float(np.mean(np.concatenate([aa > ab, bb > ba])))}


def twin_metrics(score_fn: Callable[[dict[str, np.ndarray]], Any],
                 twins: Twins, batch_size: int = 64) -> dict[str, float]:
  """``twin_<score>_<metric>`` for each score of :data:`SCORES` that
  ``score_fn`` (a batch of ``image``, ``text_ids``, ``text_mask`` → dict of
  per-row scores, e.g. ``predict.image_text_scores`` with bound params)
  returns, and ``twin_<score>_pair_acc/<edit>`` per edit; ``twin_num`` and
  ``twin_num/<edit>`` count the pairs. Every call gets ``batch_size`` rows
  (the last batch padded with copies of its first row, then dropped), so
  the batch divides over a mesh as training's does."""
  def score(image, side):
    out = {s: [] for s in SCORES}
    columns = (image, getattr(twins, f'ids_{side}'),
               getattr(twins, f'mask_{side}'))
    for start in range(0, len(image), batch_size):
      rows = [c[start:start + batch_size] for c in columns]
      n = len(rows[0])
      rows = [np.concatenate([r, np.repeat(r[:1], batch_size - n, 0)])
              for r in rows]
      got = score_fn(dict(zip(('image', 'text_ids', 'text_mask'), rows)))
      for s in SCORES:
        if s in got:
          out[s].append(np.asarray(got[s], np.float64)[:n])
    return {s: np.concatenate(v) for s, v in out.items() if v}

  grid = {(i, t): score(getattr(twins, f'image_{i}'), t)
          for i in 'ab' for t in 'ab'}
  edits = np.asarray(twins.edits)
  res = {'twin_num': float(len(edits))}
  for s in grid['a', 'a']:
    vecs = [grid[key][s] for key in (('a', 'a'), ('a', 'b'), ('b', 'a'),
                                     ('b', 'b'))]
    res.update({f'twin_{s}_{k}': v for k, v in scores_from(*vecs).items()})
    for edit in contrast.EDITS:
      sel = edits == edit
      if sel.any():
        res[f'twin_{s}_pair_acc/{edit}'] = scores_from(
            *(v[sel] for v in vecs))['pair_acc']
        res[f'twin_num/{edit}'] = float(sel.sum())
  return res


def binding_metrics(mlm_predict: Callable[..., Any], twins: Twins,
                    colour_ids: np.ndarray, mask_id: int,
                    batch_size: int = 64) -> dict[str, float]:
  """MLM colour restoration on the recoloured pairs (module docstring).

  Args:
    mlm_predict: ``(image [B, ...], text_ids [1, B, L], text_mask [B, L])
      → [1, B, L]`` argmax ids of the MLM head (e.g.
      ``validate.make_mlm_predict_fn`` with bound params).
    twins: the held-out pairs.
    colour_ids: the tokenizer's ids of the colour words
      (``word_probe.class_token_ids(tok)['colour']``).
    mask_id: the tokenizer's [MASK] id.
    batch_size: rows per call (the last call padded, as in
      :func:`twin_metrics`).

  Returns:
    ``twin_mlm_colour_acc``, ``twin_mlm_colour_acc_on_twin`` and
    ``twin_mlm_colour_num`` (masked tokens); {} without recoloured pairs
    or colour words.
  """
  keep = np.asarray(twins.edits) == 'recolour'
  if not keep.any() or not len(colour_ids):
    return {}
  ids, mask = twins.ids_a[keep], twins.mask_a[keep]
  masked, targets = word_probe.mask_class(ids, mask, colour_ids, mask_id)
  if not targets.any():
    return {}
  right = {}
  for side in ('a', 'b'):
    images = getattr(twins, f'image_{side}')[keep]
    preds = []
    for start in range(0, len(images), batch_size):
      rows = [c[start:start + batch_size] for c in (images, masked, mask)]
      n = len(rows[0])
      rows = [np.concatenate([r, np.repeat(r[:1], batch_size - n, 0)])
              for r in rows]
      preds.append(np.asarray(mlm_predict(rows[0], rows[1][None],
                                          rows[2]))[0][:n])
    right[side] = (np.concatenate(preds) == ids)[targets]
  return {'twin_mlm_colour_acc': float(right['a'].mean()),
          'twin_mlm_colour_acc_on_twin': float(right['b'].mean()),
          'twin_mlm_colour_num': float(targets.sum())}
