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
from collections.abc import Callable, Sequence

import numpy as np

from vlg.data import ops
from vlg.synthetic import contrast
from vlg.synthetic import render
from vlg.synthetic import world
from vlg.tools import word_probe

SCORES = ('itm', 'itc')
CAPTIONS = ('first', 'longest')


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
                   split: str = 'val', max_draws: int = 100_000,
                   edits: Sequence[str] | None = None,
                   caption: str = 'first') -> Twins:
  """The first ``num`` contrast pairs of ``split`` of ``world_cfg`` with
  every pair drawn as a contrast pair (``contrast_rate`` 1), each with one
  of its candidate captions (the texts are deterministic, so every step
  and every run scores the same pairs), rendered at ``resolution`` pixels;
  only pairs of ``edits`` (names of ``contrast.EDITS``; None: all).

  ``caption`` picks the caption of each side: ``'first'`` (the world's
  first candidate, named with the fewest words that single the objects
  out: often the shapes alone, as in 'the square is left of the star') or
  ``'longest'`` (the candidate with the most words, the first of them on a
  tie: every object named with its size, colour and shape). The two ask
  the same relation; 'longest' lets a model that reads colours but not
  shapes find the objects (``vlg.tools.twin_fit --caption``).

  Raises:
    ValueError: fewer than ``num`` pairs in ``max_draws`` index pairs, an
      unknown edit or an unknown ``caption``.
  """
  unknown = sorted(set(edits or ()) - set(contrast.EDITS))
  if unknown:
    raise ValueError(f'unknown edit(s) {unknown}; known: {contrast.EDITS}')
  if caption not in CAPTIONS:
    raise ValueError(f'caption={caption!r}; valid: {CAPTIONS}')
  cfg = dataclasses.replace(world_cfg, contrast_rate=1.0)
  rows = {k: [] for k in ('image_a', 'image_b', 'ids_a', 'mask_a', 'ids_b',
                          'mask_b')}
  got = []
  for base in range(0, 2 * max_draws, 2):
    if len(got) == num:
      break
    pair = contrast.pair(split, base, cfg)
    if pair is None or (edits is not None and pair.edit not in edits):
      continue
    for side, scene, texts in (('a', pair.scene, pair.texts[0]),
                               ('b', pair.twin, pair.texts[1])):
      rows[f'image_{side}'].append(
          ops.resize(render.render_scene(scene, cfg), resolution))
      text = texts[0] if caption == 'first' else max(
          texts, key=lambda t: len(t.split()))
      ids, mask = tokenizer.encode(ops.pre_caption(text, max_words),
                                   max_len)
      rows[f'ids_{side}'].append(ids)
      rows[f'mask_{side}'].append(mask)
    got.append(pair.edit)
  if len(got) < num:
    raise ValueError(f'only {len(got)} contrast pairs in the first '
                     f'{max_draws} index pairs of {split!r}; asked {num}')
  return Twins(**{k: np.stack(v) for k, v in rows.items()},
               edits=tuple(got))


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


RowScorer = Callable[[int, Callable[[Sequence[int]], dict[str, np.ndarray]]],
                     dict[str, np.ndarray]]


def _columns(**columns: np.ndarray):
  """A row builder over equal-length arrays (``BatchRunner.run``'s)."""
  return lambda rows: {k: v[list(rows)] for k, v in columns.items()}


def twin_metrics(score_rows: RowScorer, twins: Twins) -> dict[str, float]:
  """``twin_<score>_<metric>`` for each score of :data:`SCORES` that
  ``score_rows`` returns, and ``twin_<score>_pair_acc/<edit>`` per edit;
  ``twin_num`` and ``twin_num/<edit>`` count the pairs.

  ``score_rows(n, build_rows)`` scores rows ``0..n-1`` (``image``,
  ``text_ids``, ``text_mask``) and returns per-row scores: the run's
  ``image_text_scores`` through ``evaluators.batching.BatchRunner.run``
  with bound params, as ``vlg.tools.validate`` passes it.
  """
  n = len(twins.edits)
  grid = {}
  for i in 'ab':
    for t in 'ab':
      got = score_rows(n, _columns(
          image=getattr(twins, f'image_{i}'),
          text_ids=getattr(twins, f'ids_{t}'),
          text_mask=getattr(twins, f'mask_{t}')))
      grid[i, t] = {s: np.asarray(got[s], np.float64) for s in SCORES
                    if s in got}
  edits = np.asarray(twins.edits)
  res = {'twin_num': float(n)}
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


def binding_metrics(predict_rows: RowScorer, twins: Twins,
                    colour_ids: np.ndarray, mask_id: int) -> dict[str, float]:
  """MLM colour restoration on the recoloured pairs (module docstring).

  Args:
    predict_rows: ``(n, build_rows) → {'mlm_ids': [n, L]}``, the MLM
      head's argmax ids for rows ``0..n-1`` (``image``, ``text_ids``,
      ``text_mask``), e.g. through ``evaluators.batching.BatchRunner.run``.
    twins: the held-out pairs.
    colour_ids: the tokenizer's ids of the colour words
      (``word_probe.class_token_ids(tok)['colour']``).
    mask_id: the tokenizer's [MASK] id.

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
    got = predict_rows(len(ids), _columns(
        image=getattr(twins, f'image_{side}')[keep], text_ids=masked,
        text_mask=mask))
    right[side] = (np.asarray(got['mlm_ids']) == ids)[targets]
  return {'twin_mlm_colour_acc': float(right['a'].mean()),
          'twin_mlm_colour_acc_on_twin': float(right['b'].mean()),
          'twin_mlm_colour_num': float(targets.sum())}
