"""VALSE-style relation, action-replacement and actant-swap examples.

Sentences are the world's: 'the red circle is left of the star', each object
named by its shortest unique description (``language.relation_sentence``).

* relations: the caption's relation is replaced by one that is clearly false
  of the pair ('left of' -> 'right of', 'near' -> 'far from', 'inside' ->
  'contains', 'touching' -> 'far from' or the opposite side), as VALSE
  replaces a preposition.
* action-replacement: the drawn verb is replaced ('points at' <-> 'is
  connected to', i.e. arrow <-> line; 'covers' -> one of them).
* actant-swap: subject and object of an asymmetric drawn verb are swapped
  ('the red circle points at the square' -> 'the square points at the red
  circle').

The caption must be true (``relation_truth`` True) and the foil clearly
false (False, not borderline), else the candidate is rejected.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlg import synthetic as sy
from vlg.synthetic import world
from vlg.synthetic.benchmarks import common

RELATIONS = ('left of', 'right of', 'above', 'below', 'near', 'far from',
             'inside', 'contains', 'touching')
RELATION_FOILS = {
    'left of': ('right of',), 'right of': ('left of',), 'above': ('below',),
    'below': ('above',), 'near': ('far from',), 'far from': ('near',),
    'inside': ('contains',), 'contains': ('inside',),
    'touching': ('far from', 'left of', 'right of', 'above', 'below'),
}
ACTION_FOILS = {
    'points at': ('is connected to',), 'is connected to': ('points at',),
    'covers': ('points at', 'is connected to'),
}
SWAP_VERBS = ('points at', 'covers')

Made = tuple[world.Scene, dict[str, Any]]


def _scene(rng: np.random.Generator, cfg: world.WorldConfig,
           predicate: str) -> world.Scene:
  """Objects 0 and 1 related by ``predicate``, plus 0–3 distractors."""
  subject, obj = common.pair_specs(rng, cfg, predicate)
  others = common.fillers(rng, cfg, int(rng.integers(0, 4)),
                          avoid=[common.composition(subject),
                                 common.composition(obj)])
  return common.layout([subject, obj] + others, rng, cfg,
                       [(0, predicate, 1)])


def _text(scene: world.Scene, s: int, predicate: str, o: int) -> str:
  text = sy.relation_sentence(scene, s, predicate, o)
  common.require(text is not None, 'no unique names')
  return common.sentence(text)


def _foil(rng: np.random.Generator, scene: world.Scene, predicate: str,
          options: tuple[str, ...]) -> str:
  """A foil predicate of ``options`` that is clearly false of (0, 1), once
  ``predicate`` is checked true of them."""
  common.require(sy.relation_truth(scene, 0, predicate, 1) is True,
                 'caption not true')
  false = [p for p in options if sy.relation_truth(scene, 0, p, 1) is False]
  return common.pick(rng, false)


def relations(rng: np.random.Generator, cfg: world.WorldConfig, seed: int,
              k: int) -> Made:
  """A spatial relation and its replacement by a clearly false one."""
  predicate = common.cycle(seed, common.CODES['valse/relations'], k,
                           RELATIONS)
  scene = _scene(rng, cfg, predicate)
  foil = _foil(rng, scene, predicate, RELATION_FOILS[predicate])
  return scene, dict(caption=_text(scene, 0, predicate, 1),
                     foil=_text(scene, 0, foil, 1), classes=predicate,
                     classes_foil=foil)


def action_replacement(rng: np.random.Generator, cfg: world.WorldConfig,
                       seed: int, k: int) -> Made:
  """A drawn verb and its replacement by another, not drawn, verb."""
  verb = common.cycle(seed, common.CODES['valse/action-replacement'], k,
                      common.ACTION_PREDICATES)
  scene = _scene(rng, cfg, verb)
  foil = _foil(rng, scene, verb, ACTION_FOILS[verb])
  return scene, dict(caption=_text(scene, 0, verb, 1),
                     foil=_text(scene, 0, foil, 1), classes=verb,
                     classes_foil=foil)


def actant_swap(rng: np.random.Generator, cfg: world.WorldConfig, seed: int,
                k: int) -> Made:
  """An asymmetric drawn verb with subject and object swapped."""
  verb = common.cycle(seed, common.CODES['valse/actant-swap'], k, SWAP_VERBS)
  scene = _scene(rng, cfg, verb)
  common.require(sy.relation_truth(scene, 0, verb, 1) is True and
                 sy.relation_truth(scene, 1, verb, 0) is False, 'swap check')
  return scene, dict(caption=_text(scene, 0, verb, 1),
                     foil=_text(scene, 1, verb, 0),
                     classes=sy.referring_expression(scene, 0),
                     classes_foil=sy.referring_expression(scene, 1))
