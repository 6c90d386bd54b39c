"""VALSE-style existence, plurality and counting examples.

Each maker takes ``(rng, cfg, seed, k)`` and returns the scene and the
instrument's text fields; the caption is checked true and the foil false
against the scene's objects before it is returned (else :class:`Reject`).

* existence (as Visual7W's "There are no people." / "There are people."):
  even ``k`` affirm a present category ('something_to_zero' foils: 'there
  is a star' / 'there is no star'), odd ``k`` deny an absent one
  ('zero_to_something').
* plurals (as VALSE's checklist foils): even ``k`` a singular caption of a
  noun phrase matching exactly one object ('there is exactly one red
  circle') and a plural foil ('there are some red circles'); odd ``k`` the
  reverse, with 2–4 matching objects.
* counting: 'there are exactly 3 circles' vs 'there are exactly 2 circles';
  counting-small-quant uses counts 0–3, counting-hard every ordered pair of
  different counts 0–5, so each number is as often the caption's as the
  foil's and no number prior helps.
"""

from __future__ import annotations

import collections
import itertools
from typing import Any

import numpy as np

from vlg.synthetic import language
from vlg.synthetic import world
from vlg.synthetic.benchmarks import common

SUFFIXES = ('', ' in the image', ' in the picture')
SMALL_COUNTS = (0, 1, 2, 3)
HARD_PAIRS = tuple(itertools.permutations(range(6), 2))

Made = tuple[world.Scene, dict[str, Any]]


def _plural_phrase(f: common.Filter) -> str:
  words = common.phrase(f).split()
  return ' '.join(words[:-1] + [common.plural(words[-1])])


def existence(rng: np.random.Generator, cfg: world.WorldConfig, seed: int,
              k: int) -> Made:
  """A scene of 1–4 objects and an existence statement about a category."""
  del seed
  affirm = k % 2 == 0
  specs = [common.spec(rng, cfg) for _ in range(int(rng.integers(1, 5)))]
  scene = common.layout(specs, rng, cfg)
  counts = collections.Counter(o.category for o in scene.objects)
  suffix = common.pick(rng, SUFFIXES)
  if affirm:
    category = common.pick(rng, sorted(counts))
    singular = counts[category] == 1
  else:
    category = common.pick(rng, [c for c in world.CATEGORIES
                                 if c not in counts])
    singular = bool(rng.random() < 0.5)
  count = counts[category]
  if singular:
    yes = f'there is {language.with_article(category)}{suffix}'
    no = f'there is no {category}{suffix}'
  else:
    yes = f'there are {common.plural(category)}{suffix}'
    no = f'there are no {common.plural(category)}{suffix}'
  caption, foil = (yes, no) if affirm else (no, yes)
  # The affirmative is true iff the category is present (singular: once).
  common.require((count > 0) == affirm and (not affirm or singular ==
                                            (count == 1)), 'existence check')
  foil_counts = [0] if affirm else ([1] if singular else [2, 3, 4, 5, 6])
  return scene, dict(
      caption=common.sentence(caption), foil=common.sentence(foil),
      answer=count, classes=count, classes_foil=foil_counts,
      provenance_of_foils=('something_to_zero' if affirm else
                           'zero_to_something'))


def plurals(rng: np.random.Generator, cfg: world.WorldConfig, seed: int,
            k: int) -> Made:
  """Exactly one vs several objects matching a noun phrase."""
  del seed
  to_plural = k % 2 == 0  # 'change NP to PL': the caption is singular.
  category = common.pick(rng, world.CATEGORIES)
  colours = common.colours_for(category, cfg, heldout_ok=False)
  f = {'category': category}
  if rng.random() < 0.5:
    f['colour'] = common.pick(rng, colours)
  n = 1 if to_plural else int(rng.integers(2, 5))
  targets = [world.ObjectSpec(category, f.get('colour') or common.pick(
      rng, colours), common.pick(rng, world.SIZES)) for _ in range(n)]
  if 'colour' in f:  # Other colours of the category may be distractors.
    others = common.fillers(rng, cfg, int(rng.integers(0, min(3, 6 - n) + 1)),
                            avoid=[(f['colour'], category)])
  else:
    others = common.fillers(rng, cfg, int(rng.integers(0, min(3, 6 - n) + 1)),
                            avoid_categories=[category])
  scene = common.layout(targets + others, rng, cfg)
  count = len(common.matching(scene, f))
  common.require(count == n, 'plural count')
  suffix = common.pick(rng, SUFFIXES)
  one, many = common.phrase(f), _plural_phrase(f)
  single = common.pick(rng, (f'there is exactly one {one}{suffix}',
                             f'there is a single {one}{suffix}'))
  several = common.pick(rng, (f'there are some {many}{suffix}',
                              f'there are a number of {many}{suffix}'))
  caption, foil = (single, several) if to_plural else (several, single)
  common.require((count == 1) == to_plural, 'plural check')
  noun, nouns = category, common.plural(category)
  return scene, dict(
      caption=common.sentence(caption), foil=common.sentence(foil),
      classes=noun if to_plural else nouns,
      classes_foil=nouns if to_plural else noun,
      orig_caption=common.sentence(
          f'there is {language.with_article(one)}{suffix}' if to_plural
          else f'there are {many}{suffix}'),
      foil_method=('checklist method, change NP to PL' if to_plural else
                   'checklist method, change NP to SG'))


def _count_text(n: int, category: str, suffix: str) -> str:
  if n == 1:
    return f'there is exactly 1 {category}{suffix}'
  return f'there are exactly {n} {common.plural(category)}{suffix}'


def _counting(rng: np.random.Generator, cfg: world.WorldConfig, n: int,
              m: int) -> Made:
  category = common.pick(rng, world.CATEGORIES)
  colours = common.colours_for(category, cfg, heldout_ok=False)
  small = 0.8 if n >= 4 else 0.5  # Room for many objects at 64 px.
  targets = [world.ObjectSpec(category, common.pick(rng, colours),
                              'small' if rng.random() < small else 'large')
             for _ in range(n)]
  room = min(3, 6 - n)
  others = common.fillers(rng, cfg, int(rng.integers(min(1, room) if n == 0
                                                     else 0, room + 1)),
                          avoid_categories=[category])
  scene = common.layout(targets + others, rng, cfg)
  count = len(common.matching(scene, {'category': category}))
  common.require(count == n != m, 'count check')
  suffix = common.pick(rng, SUFFIXES)
  return scene, dict(
      caption=common.sentence(_count_text(n, category, suffix)),
      foil=common.sentence(_count_text(m, category, suffix)),
      answer=n, classes=n, classes_foil=m)


def counting_small_quant(rng: np.random.Generator, cfg: world.WorldConfig,
                         seed: int, k: int) -> Made:
  """Counts 0–3, caption count balanced by cycling, foil another of 0–3."""
  n = common.cycle(seed, common.CODES['valse/counting-small-quant'], k,
                   SMALL_COUNTS)
  m = common.pick(rng, [c for c in SMALL_COUNTS if c != n])
  return _counting(rng, cfg, n, m)


def counting_hard(rng: np.random.Generator, cfg: world.WorldConfig,
                  seed: int, k: int) -> Made:
  """Every ordered pair of different counts 0–5, equally often."""
  n, m = common.cycle(seed, common.CODES['valse/counting-hard'], k,
                      HARD_PAIRS)
  return _counting(rng, cfg, n, m)
