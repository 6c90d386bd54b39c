"""Contrast pairs: training scenes that come with a minimally different twin.

A share ``WorldConfig.contrast_rate`` of the index pairs (2k, 2k + 1) of a
split are *contrast pairs*: scene 2k + 1 is scene 2k after one edit of
``edits.py`` — two shapes swap places (``swap``), two shapes swap colours
(``recolour``) or a drawn arrow or covering is reversed (``reverse``) — and
every caption of either image states a relation that is true of it and
clearly false of its twin ('the red circle is left of the blue square' /
'the blue square is left of the red circle'). A coarse caption ('three
objects: ...') would be as true of the twin, so a pair has none. With
``WorldConfig.contrast_captions='mirrored'`` each image has one caption,
and the twin's is made of the same words, so that only the relation (or
which colour is on which shape) tells them apart, even to a bag of words.

Why: in a corpus of independent scenes, a caption that can be rejected only
by reading a relation is almost never another image's caption; ITM's
negatives, drawn from the batch, then ask about words and bindings and
hardly ever about relations (docs/results.md, "Why VSR- and
Winoground-style stay at chance"). A corpus with minimal pairs — as
counterfactual image-text collections are — puts such negatives in the
batch, provided the pair is drawn together: the pipeline keeps 2k and
2k + 1 adjacent when it shuffles (``SyntheticSource.group_size``), and both
images of a pair are mirrored or neither (``pair_mirrored``), so a mirror
never turns one twin's caption true of the other.

Everything here is the corpus's construction: training itself sees only
images and captions, never the ground truth used to choose them.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

from vlg.synthetic import edits
from vlg.synthetic import geometry
from vlg.synthetic import language
from vlg.synthetic import layout
from vlg.synthetic import truth
from vlg.synthetic import world

EDITS = ('swap', 'recolour', 'reverse')
_PAIR_STREAM = 3
_MAX_TRIES = 12


class Pair(NamedTuple):
  """A contrast pair: image 2k's scene, its twin (image 2k + 1), the
  candidate captions of each (true of it, false of the other) and the edit
  (one of :data:`EDITS`)."""
  scene: world.Scene
  twin: world.Scene
  texts: tuple[list[str], list[str]]
  edit: str


def _pair_rng(split: str, base: int, cfg: world.WorldConfig
              ) -> np.random.Generator:
  return world.scene_rng(split, base, cfg, stream=_PAIR_STREAM)


def _edits(scene: world.Scene, split: str, cfg: world.WorldConfig,
           rng: np.random.Generator):
  """Candidate (edit name, edited scene, changed objects), randomly ordered;
  an edit that breaks a layout rule is skipped."""
  objs = scene.objects
  pairs = [(i, j) for i, j in itertools.combinations(range(len(objs)), 2)
           if (objs[i].category, objs[i].colour) !=
           (objs[j].category, objs[j].colour)]
  options = []
  for i, j in pairs:
    options.append(('swap', i, j))
    if objs[i].colour != objs[j].colour:
      options.append(('recolour', i, j))
  options += [('reverse', k, None) for k in range(len(scene.actions))]
  for n in rng.permutation(len(options))[:_MAX_TRIES]:
    kind, i, j = options[int(n)]
    try:
      if kind == 'swap':
        yield kind, edits.swap_positions(scene, i, j, rng,
                                         cfg.comparative_rate), (i, j)
      elif kind == 'recolour':
        a, b = objs[i], objs[j]
        allowed_a = world.allowed_colours(a.category, split, cfg)
        allowed_b = world.allowed_colours(b.category, split, cfg)
        if b.colour not in allowed_a or a.colour not in allowed_b:
          continue
        edited = edits.edit_object(scene, i, rng, colour=b.colour,
                                   comparative_rate=cfg.comparative_rate)
        yield kind, edits.edit_object(
            edited, j, rng, colour=a.colour,
            comparative_rate=cfg.comparative_rate), (i, j)
      else:
        act = scene.actions[i]
        yield kind, edits.reverse_action(scene, i, rng,
                                         cfg.comparative_rate), (
                                             act.subject, act.object)
    except (ValueError, world.PlacementError):
      continue


def contrast_texts(scene: world.Scene, twin: world.Scene,
                   changed: tuple[int, int]) -> list[str]:
  """Relation captions about the changed objects that are true of ``scene``
  and clearly false of ``twin`` (distinct, in a fixed order)."""
  names = language._Names(scene.objects)  # pylint: disable=protected-access
  i, j = changed
  others = [k for k in range(len(scene.objects)) if k not in changed]
  pairs = [(i, j), (j, i)] + [p for k in others
                              for p in ((i, k), (k, i), (j, k), (k, j))]
  out = []
  for s, o in pairs:
    for predicate in world.RELATIONS:
      if geometry.relation_truth(scene, s, predicate, o) is not True:
        continue
      texts = [names.sentence(s, predicate, o)]
      for details in ((None, None), ('full', 'full'), ('full', None),
                      (None, 'full')):
        texts.append(names.relation_phrase(s, predicate, o, 'a', details))
      for text in texts:
        if (text is not None and text not in out and
            truth.is_true(scene, text) is True and
            truth.is_true(twin, text) is False):
          out.append(text)
  return out


def mirrored_texts(texts: tuple[list[str], list[str]],
                   rng: np.random.Generator
                   ) -> tuple[list[str], list[str]] | None:
  """One caption of each side made of the same words ('the red circle is
  left of the blue square' / 'the blue square is left of the red circle'),
  drawn with ``rng`` among all such couples; None when there is none."""
  couples = [(a, b) for a in texts[0] for b in texts[1]
             if sorted(a.split()) == sorted(b.split())]
  if not couples:
    return None
  a, b = couples[int(rng.integers(len(couples)))]
  return [a], [b]


def pair(split: str, index: int, cfg: world.WorldConfig) -> Pair | None:
  """The contrast pair holding image ``index``, or None when ``index`` is
  not in one (the pair was not drawn as a contrast pair, or no edit of
  scene 2k gives captions that tell the two apart)."""
  if cfg.contrast_rate <= 0:
    return None
  base = index - index % 2
  rng = _pair_rng(split, base, cfg)
  if rng.random() >= cfg.contrast_rate:
    return None
  scene = layout.generate_scene(split, base, cfg)
  for edit, twin, changed in _edits(scene, split, cfg, rng):
    texts = (contrast_texts(scene, twin, changed),
             contrast_texts(twin, scene, changed))
    if texts[0] and texts[1] and cfg.contrast_captions == 'mirrored':
      texts = mirrored_texts(texts, rng) or ([], [])
    if texts[0] and texts[1]:
      return Pair(scene, twin, texts, edit)
  return None


def pair_mirrored(split: str, index: int, cfg: world.WorldConfig) -> bool:
  """Whether the pipeline mirrors both images of ``index``'s pair (its
  ``flip`` augmentation, decided once for the pair, half of the pairs)."""
  base = index - index % 2
  return bool(world.scene_rng(split, base, cfg, stream=_PAIR_STREAM + 1
                              ).random() < 0.5)


def sample_captions(texts: list[str], rng: np.random.Generator,
                    cfg: world.WorldConfig) -> list[str]:
  """``cfg.num_captions`` of ``texts``, distinct while they last."""
  order = list(rng.permutation(len(texts)))
  while len(order) < cfg.num_captions:
    order += list(rng.permutation(len(texts)))
  return [texts[int(k)] for k in order[:cfg.num_captions]]
