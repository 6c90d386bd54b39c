"""Texts about a scene: captions, region descriptions, paragraphs, sentences.

Every text is lower case, true of the pixels, and built from a small grammar
that tests and benchmark builders can parse:

  noun phrase   [size] [colour] category   ('large red circle', 'star')
  count         number plural               ('two circles', 'three objects',
                                             'two large red stars'): exactly
                                             that many objects match
  coarse caption  [prefix] [N 'objects: '] item{, item} and item, where
                  item = 'a'/'an' NP | count, at most one item per category
                  and 'N objects' counts every object
  relation caption  [prefix] a NP PHRASE a NP  ('a star near a red ring')
                  or a sentence (below)
  statement     clause{, clause} and clause [' in the image' | ' in the
                picture'], a clause being 'there is' a NP | 'there is a
                single' NP | 'there is' | 'there are' [exactly] N plural |
                'there are some' | 'a number of' plural | 'there is no' NP |
                'there are no' plural, with N a number word or digits
  region        'a' full-label | 'the' ref | 'the' ref PHRASE 'the' ref
  sentence      'the' ref VERB 'the' ref    ('the star is above the ring')
  paragraph     'there are N objects: ' item, ... and item '. ' sentence
                '. ' sentence ...

with PHRASES and VERBS below ('covers' is also 'in front of', as VSR names
it: ALTERNATIVE_PHRASES, ALTERNATIVE_VERBS). A *ref* is the shortest of 'category', 'colour
category', 'size colour category' that matches exactly one object; texts
that refer to an object ('the ...', relation captions) are only made for
objects with a ref. Coarse captions use indefinite noun phrases: 'a circle'
says some circle exists. The words 'left' and 'right' occur only in 'left of'
and 'right of', so a horizontal flip that swaps them keeps every text true.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np

from vlg.synthetic import geometry
from vlg.synthetic import world

NUMBER_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six')
PLURALS = {c: c + ('es' if c.endswith('ss') else 's')
           for c in world.CATEGORIES}
# A relation as a modifier of a noun phrase: 'the star above the ring'.
PHRASES = {
    'left of': 'left of', 'right of': 'right of', 'above': 'above',
    'below': 'below', 'near': 'near', 'far from': 'far from',
    'inside': 'inside', 'contains': 'containing', 'touching': 'touching',
    'bigger than': 'bigger than', 'smaller than': 'smaller than',
    'same colour as': 'of the same colour as', 'points at': 'pointing at',
    'is connected to': 'connected to', 'covers': 'covering',
}
# A relation as the verb of a sentence: 'the star is above the ring'.
VERBS = {
    'left of': 'is left of', 'right of': 'is right of', 'above': 'is above',
    'below': 'is below', 'near': 'is near', 'far from': 'is far from',
    'inside': 'is inside', 'contains': 'contains', 'touching': 'is touching',
    'bigger than': 'is bigger than', 'smaller than': 'is smaller than',
    'same colour as': 'is the same colour as', 'points at': 'points at',
    'is connected to': 'is connected to', 'covers': 'covers',
}
# Other words for a relation, used by captions half the time.
ALTERNATIVE_PHRASES = {'covers': 'in front of'}
ALTERNATIVE_VERBS = {'covers': 'is in front of'}
PREFIXES = ('', 'a picture of ', 'an image of ', 'an image with ')
# Where a statement caption may end.
STATEMENT_SUFFIXES = ('', ' in the image', ' in the picture')
_SUFFIX_CUM_P = (0.5, 0.75, 1.0)
# The clauses of a statement caption and their relative chances.
STATEMENT_CLAUSES = ('exists', 'count', 'single', 'several', 'none')
_CLAUSE_CUM_P = (0.25, 0.55, 0.7, 0.85, 1.0)
# How much of an object a noun phrase names.
DETAILS = ('category', 'colour', 'size', 'full')
_PREFIX_CUM_P = (0.55, 0.7, 0.85, 1.0)


def with_article(phrase: str) -> str:
  """'a' or 'an' + phrase."""
  return ('an ' if phrase[0] in 'aeiou' else 'a ') + phrase


def noun_phrase(obj: world.SceneObject, detail: str = 'full') -> str:
  """The words naming ``obj`` at ``detail`` (one of DETAILS), no article."""
  if detail == 'category':
    return obj.category
  if detail == 'colour':
    return f'{obj.colour} {obj.category}'
  if detail == 'size':
    return f'{obj.size} {obj.category}'
  if detail == 'full':
    return f'{obj.size} {obj.colour} {obj.category}'
  raise ValueError(f'detail {detail!r} not in {DETAILS}')


def _plural(phrase: str) -> str:
  words = phrase.split()
  return ' '.join(words[:-1] + [PLURALS[words[-1]]])


class _Names:
  """How many objects of a scene each noun phrase matches, and the refs."""

  def __init__(self, objects: Sequence[world.SceneObject]):
    self.objects = objects
    self.counts = collections.Counter(
        (d, noun_phrase(o, d)) for o in objects for d in DETAILS)
    self.refs = []
    for obj in objects:
      ref = None
      for detail in ('category', 'colour', 'full'):
        if self.count(obj, detail) == 1:
          ref = noun_phrase(obj, detail)
          break
      self.refs.append(ref)

  def count(self, obj: world.SceneObject, detail: str) -> int:
    return self.counts[(detail, noun_phrase(obj, detail))]

  def count_phrase(self, obj: world.SceneObject, detail: str) -> str:
    n = self.count(obj, detail)
    return f'{NUMBER_WORDS[n]} {_plural(noun_phrase(obj, detail))}'

  def relation_phrase(self, i, predicate, j, article='the', details=None,
                      words=None):
    if self.refs[i] is None or self.refs[j] is None:
      return None
    nps = []
    for k, detail in zip((i, j), details or (None, None)):
      np_ = self.refs[k]
      if detail is not None and self.count(self.objects[k], detail) == 1:
        np_ = noun_phrase(self.objects[k], detail)
      nps.append(f'the {np_}' if article == 'the' else with_article(np_))
    return f'{nps[0]} {words or PHRASES[predicate]} {nps[1]}'

  def sentence(self, i, predicate, j, words=None):
    if self.refs[i] is None or self.refs[j] is None:
      return None
    return (f'the {self.refs[i]} {words or VERBS[predicate]} '
            f'the {self.refs[j]}')


def count_phrase(objects: Sequence[world.SceneObject], obj: world.SceneObject,
                 detail: str) -> str:
  """'three red circles': how many ``objects`` match ``obj`` at ``detail``."""
  return _Names(objects).count_phrase(obj, detail)


def referring_expression(scene: world.Scene, i: int) -> str | None:
  """The shortest of 'circle', 'red circle', 'large red circle' that names
  object ``i`` and no other (no article), or None when none does."""
  return _Names(scene.objects).refs[i]


def relation_sentence(scene: world.Scene, i: int, predicate: str,
                      j: int) -> str | None:
  """'the red circle is left of the star' (None without both refs).

  States the predicate as given; check it first with
  ``geometry.relation_truth`` when it may be false (foils do so on purpose).
  """
  return _Names(scene.objects).sentence(i, predicate, j)


def relation_phrase(scene: world.Scene, i: int, predicate: str, j: int,
                    article: str = 'the',
                    details: tuple[str | None, str | None] | None = None
                    ) -> str | None:
  """'the star above the ring' or, with article 'a', 'a star above a ring'.

  Args:
    scene: the scene.
    i: subject index.
    predicate: a relation in RELATIONS.
    j: object index.
    article: 'the' (a referring expression, box of the subject) or 'a'
      (a caption).
    details: noun phrase details (from DETAILS, or None for the ref) for
      subject and object; a detail too coarse to name its object uniquely
      falls back to the ref.

  Returns:
    The phrase, or None when one of the objects has no ref.
  """
  return _Names(scene.objects).relation_phrase(i, predicate, j, article,
                                               details)


def _join(items: Sequence[str]) -> str:
  if len(items) == 1:
    return items[0]
  return ', '.join(items[:-1]) + ' and ' + items[-1]


def _pick(rng: np.random.Generator, options: Sequence[str],
          cum_p: Sequence[float]) -> str:
  u = rng.random()
  # The last option also takes u past a rounded-down final cumulative.
  return next((o for o, c in zip(options, cum_p) if u < c), options[-1])


def _coarse_caption(names: _Names, rng: np.random.Generator,
                    cfg: world.WorldConfig) -> str:
  """Names ``caption_min_named``–``caption_max_named`` objects (one item
  per category; several objects of a category become an exact count), now
  and then with a count (``count_rate``); one that names every object
  says how many there are (``caption_total_rate``)."""
  objs = names.objects
  low = min(cfg.caption_min_named, len(objs))
  high = min(cfg.caption_max_named, len(objs))
  chosen = rng.permutation(len(objs))[:int(rng.integers(low, high + 1))]
  weights = np.asarray(cfg.caption_detail_weights, np.float64)
  detail_cum_p = tuple(np.cumsum(weights / weights.sum()))
  groups = collections.OrderedDict()
  for k in chosen:
    groups.setdefault(objs[k].category, []).append(objs[k])
  items = []
  for category, group in groups.items():
    if len(group) == 1:
      items.append(with_article(noun_phrase(
          group[0], _pick(rng, DETAILS, detail_cum_p))))
    elif all(o.colour == group[0].colour for o in group) and rng.random() < .5:
      items.append(names.count_phrase(group[0], 'colour'))
    else:
      items.append(names.count_phrase(group[0], 'category'))
  head = ''
  if rng.random() < cfg.count_rate:
    others = [o for o in objs if o.category not in groups and
              names.count(o, 'category') > 1]
    if others and rng.random() < 0.5:
      items.append(names.count_phrase(others[0], 'category'))
    elif len(objs) > 1:
      head = f'{NUMBER_WORDS[len(objs)]} objects: '
  if (not head and len(chosen) == len(objs) and
      rng.random() < cfg.caption_total_rate):
    # Everything is named: say so, or 'a red circle' is as true of every
    # larger scene with a red circle.
    head = (f'{NUMBER_WORDS[len(objs)]} '
            f'{"object" if len(objs) == 1 else "objects"}: ')
  return _pick(rng, PREFIXES, _PREFIX_CUM_P) + head + _join(items)


def _relation_caption(names: _Names, scene: world.Scene,
                      rng: np.random.Generator,
                      cfg: world.WorldConfig) -> str | None:
  """States one scene-graph relation, often loosely ('near'): as a phrase
  ('a star above a red ring') or, ``cfg.caption_sentence_rate`` of the
  time, a sentence ('the star is above the ring')."""
  rels = [(s, p, o) for s, p, o in scene.relations
          if names.refs[s] is not None and names.refs[o] is not None]
  if not rels:
    return None
  s, pred, o = rels[int(rng.integers(len(rels)))]
  if rng.random() < 0.5 and geometry.relation_truth(scene, s, 'near',
                                                    o) is True:
    pred = 'near'
  alternative = pred in ALTERNATIVE_VERBS and rng.random() < 0.5
  if rng.random() < cfg.caption_sentence_rate:
    return names.sentence(
        s, pred, o, ALTERNATIVE_VERBS[pred] if alternative else None)
  details = tuple('full' if rng.random() < 0.5 else None for _ in range(2))
  return _pick(rng, PREFIXES, _PREFIX_CUM_P) + names.relation_phrase(
      s, pred, o, 'a', details,
      ALTERNATIVE_PHRASES[pred] if alternative else None)


def _number(n: int, rng: np.random.Generator) -> str:
  """'2' or 'two', each half the time."""
  return str(n) if rng.random() < 0.5 else NUMBER_WORDS[n]


def _clause(kind: str, names: _Names, rng: np.random.Generator,
            cfg: world.WorldConfig) -> str | None:
  """One true 'there' clause of ``kind`` (STATEMENT_CLAUSES) about the
  scene, or None when the scene has nothing to say it of."""
  objs = names.objects
  if kind == 'none':
    present = {o.category for o in objs}
    absent = [c for c in world.CATEGORIES if c not in present]
    if not absent:
      return None
    category = absent[int(rng.integers(len(absent)))]
    return _pick(rng, (f'there is no {category}',
                       f'there are no {PLURALS[category]}',
                       f'there are exactly {_number(0, rng)} '
                       f'{PLURALS[category]}'), (0.4, 0.8, 1.0))
  obj = objs[int(rng.integers(len(objs)))]
  if kind == 'exists':
    weights = np.asarray(cfg.caption_detail_weights, np.float64)
    detail = _pick(rng, DETAILS, tuple(np.cumsum(weights / weights.sum())))
    return f'there is {with_article(noun_phrase(obj, detail))}'
  detail = 'colour' if rng.random() < 0.5 else 'category'
  n = names.count(obj, detail)
  one, many = noun_phrase(obj, detail), _plural(noun_phrase(obj, detail))
  if kind == 'single':
    return f'there is a single {one}' if n == 1 else None
  if kind == 'several':
    if n < 2:
      return None
    return _pick(rng, (f'there are some {many}',
                       f'there are a number of {many}', f'there are {many}'),
                 (0.4, 0.8, 1.0))
  exactly = 'exactly ' if rng.random() < 0.5 else ''
  if n == 1:
    return f'there is {exactly}{_number(1, rng)} {one}'
  return f'there are {exactly}{_number(n, rng)} {many}'


def _statement_caption(names: _Names, rng: np.random.Generator,
                       cfg: world.WorldConfig) -> str | None:
  """``cfg.statement_min_clauses``–``statement_max_clauses`` distinct
  'there' clauses, the first about an object of the scene, joined as a
  list and now and then ending 'in the image' ('there are exactly 2
  stars, there is a red circle and there is no ring')."""
  n = int(rng.integers(cfg.statement_min_clauses,
                       cfg.statement_max_clauses + 1))
  clauses = []
  for _ in range(4 * n):
    kind = _pick(rng, STATEMENT_CLAUSES, _CLAUSE_CUM_P)
    if not clauses and kind == 'none':
      continue
    text = _clause(kind, names, rng, cfg)
    if text is not None and text not in clauses:
      clauses.append(text)
    if len(clauses) == n:
      break
  if not clauses:
    return None
  return _join(clauses) + _pick(rng, STATEMENT_SUFFIXES, _SUFFIX_CUM_P)


def captions(scene: world.Scene, rng: np.random.Generator,
             cfg: world.WorldConfig) -> list[str]:
  """``cfg.num_captions`` coarse captions, distinct where the scene allows.

  A fraction ``cfg.caption_relation_rate`` states a relation (when some
  relation joins two objects with refs), ``cfg.caption_statement_rate``
  is a statement of 'there' clauses; the rest name objects, colours and
  sizes, with a count now and then (``cfg.count_rate``).
  """
  names = _Names(scene.objects)
  out = []
  for _ in range(cfg.num_captions):
    for _ in range(4):
      text = None
      u = rng.random()
      if u < cfg.caption_relation_rate:
        text = _relation_caption(names, scene, rng, cfg)
      elif u < cfg.caption_relation_rate + cfg.caption_statement_rate:
        text = _statement_caption(names, rng, cfg)
      text = text or _coarse_caption(names, rng, cfg)
      if text not in out:
        break
    out.append(text)
  return out


def regions(scene: world.Scene,
            rng: np.random.Generator) -> list[tuple[str, int]]:
  """(text, object index) pairs: each object with a ref ('a large red
  circle' or 'the red circle'), then each scene-graph relation between
  objects with refs ('the star above the ring', the box of the star)."""
  names = _Names(scene.objects)
  out = []
  for i, obj in enumerate(scene.objects):
    if names.refs[i] is not None:
      out.append((f'the {names.refs[i]}' if rng.random() < 0.5 else
                  with_article(obj.label), i))
  for s, pred, o in scene.relations:
    text = names.relation_phrase(s, pred, o)
    if text is not None:
      out.append((text, s))
  return out


def object_list(scene: world.Scene) -> str:
  """'there are three objects: a large red circle and two small stars'."""
  names = _Names(scene.objects)
  items, seen = [], set()
  for obj in scene.objects:
    if obj.label not in seen:
      seen.add(obj.label)
      items.append(names.count_phrase(obj, 'full') if names.count(
          obj, 'full') > 1 else with_article(obj.label))
  n = len(scene.objects)
  head = ('there is one object: ' if n == 1 else
          f'there are {NUMBER_WORDS[n]} objects: ')
  return head + _join(items)


def paragraph(scene: world.Scene) -> str:
  """A dense description: every object, then every scene-graph relation
  between objects with refs, one sentence each."""
  names = _Names(scene.objects)
  sentences = [object_list(scene)]
  for s, pred, o in scene.relations:
    text = names.sentence(s, pred, o)
    if text is not None:
      sentences.append(text)
  return '. '.join(sentences)
