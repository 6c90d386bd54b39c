"""Whether a text of the world's grammar is true of a scene.

The world's texts (``language.py``) are built from a small grammar, so any of
them can be read back and checked against any scene's ground truth. That is
what a real corpus does not have and what diagnosis needs: how often is a
caption drawn as a "negative" for an image in fact true of it (a false
negative of ITC and ITM)? Readers: ``vlg.tools.validate`` (the share of
sampled ITM negatives that are true), ``caption_stats`` below (the rates of
a world configuration), and tests.

Semantics, following the grammar of ``language.py``:

- ``a``/``an`` NP: some object matches NP (size, colour, category where
  named).
- NUMBER plural NP ('two red circles'): exactly that many objects match.
- 'N objects: ...' head: the scene has exactly N objects.
- relation caption 'a NP1 PHRASE a NP2': some object matching NP1 and some
  other object matching NP2 are related by PHRASE (``geometry.truth``).
- 'the NP' (regions, sentences): exactly one object matches NP, and for
  'the NP1 PHRASE the NP2' / 'the NP1 VERB the NP2' the two are related.
- statements, clause by clause: 'there is a NP' (some object matches),
  'there is a single NP' and 'there is [exactly] 1 NP' (exactly one),
  'there are [exactly] N plural' (exactly N; N in words or digits), 'there
  is no NP' / 'there are no plural' (none), 'there are some | a number of
  plural' and a bare 'there are plural' (two or more).

A relation that is borderline in a scene (``geometry`` answers None) makes
the statement None: neither clearly true nor clearly false.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

from vlg.synthetic import geometry
from vlg.synthetic import language
from vlg.synthetic import world

_SINGULAR = {plural: c for c, plural in language.PLURALS.items()}
_NUMBERS = {w: n for n, w in enumerate(language.NUMBER_WORDS)}
# Longest first, so 'of the same colour as' wins over shorter phrases.
_RELATION_WORDS = sorted(
    [(words, pred) for table in (language.PHRASES, language.VERBS,
                                 language.ALTERNATIVE_PHRASES,
                                 language.ALTERNATIVE_VERBS)
     for pred, words in table.items()],
    key=lambda wp: -len(wp[0]))
_PREFIXES = sorted((p for p in language.PREFIXES if p), key=len, reverse=True)


class ParseError(ValueError):
  """A text that is not in the world's grammar."""


@dataclasses.dataclass(frozen=True)
class NounPhrase:
  """[size] [colour] category; None where the phrase does not say."""
  category: str | None
  colour: str | None = None
  size: str | None = None

  def matches(self, obj: world.SceneObject) -> bool:
    return ((self.category is None or obj.category == self.category) and
            (self.colour is None or obj.colour == self.colour) and
            (self.size is None or obj.size == self.size))


def _noun_phrase(words: Sequence[str], plural: bool) -> NounPhrase:
  if not words:
    raise ParseError('empty noun phrase')
  *mods, head = words
  if plural:
    if head == 'objects':
      category = None
    elif head in _SINGULAR:
      category = _SINGULAR[head]
    else:
      raise ParseError(f'{head!r} is not a plural category')
  elif head in world.CATEGORIES:
    category = head
  else:
    raise ParseError(f'{head!r} is not a category')
  size = colour = None
  for word in mods:
    if word in world.SIZES and size is None and colour is None:
      size = word
    elif word in world.PALETTE and colour is None:
      colour = word
    else:
      raise ParseError(f'{word!r} is not a size or colour here')
  return NounPhrase(category, colour, size)


@dataclasses.dataclass(frozen=True)
class Claim:
  """One checkable statement.

  kind: 'exists' (some object matches ``np``), 'count' (exactly ``n``
  match), 'several' (two or more match), 'unique' (exactly one matches: a
  definite 'the NP'), 'total' (the scene has exactly ``n`` objects) or
  'relation' (``np`` PREDICATE ``np2``, subject and object unique when
  ``definite``).
  """
  kind: str
  np: NounPhrase | None = None
  n: int = 0
  predicate: str = ''
  np2: NounPhrase | None = None
  definite: bool = False


def _number(word: str) -> int | None:
  """'two' or '2' as 2; None for any other word."""
  if word.isdigit():
    return int(word)
  return _NUMBERS.get(word)


def _clause(text: str) -> Claim:
  """One 'there is ...' / 'there are ...' clause of a statement."""
  m = re.match(r'^there (?:is|are) (.+)$', text)
  if not m:
    raise ParseError(f'{text!r} is not a "there" clause')
  words = m.group(1).split()
  if words[0] == 'no':
    plural = words[-1] not in world.CATEGORIES
    return Claim('count', _noun_phrase(words[1:], plural=plural), n=0)
  if words[0] == 'exactly' and len(words) > 2:
    n = _number(words[1])
    if n is None:
      raise ParseError(f'{words[1]!r} is not a number')
    return Claim('count', _noun_phrase(words[2:], plural=n != 1), n=n)
  if words[:2] == ['a', 'single']:
    return Claim('count', _noun_phrase(words[2:], plural=False), n=1)
  if words[0] == 'some':
    return Claim('several', _noun_phrase(words[1:], plural=True))
  if words[:3] == ['a', 'number', 'of']:
    return Claim('several', _noun_phrase(words[3:], plural=True))
  if words[0] in ('a', 'an'):
    return Claim('exists', _noun_phrase(words[1:], plural=False))
  n = _number(words[0])
  if n is not None:
    return Claim('count', _noun_phrase(words[1:], plural=n != 1), n=n)
  return Claim('several', _noun_phrase(words, plural=True))


def _item(text: str) -> Claim:
  words = text.split()
  if len(words) >= 2 and words[0] in ('a', 'an'):
    return Claim('exists', _noun_phrase(words[1:], plural=False))
  if len(words) >= 2 and words[0] in _NUMBERS:
    n = _NUMBERS[words[0]]
    return Claim('count', _noun_phrase(words[1:], plural=n != 1), n=n)
  if len(words) >= 2 and words[0] == 'the':
    return Claim('unique', _noun_phrase(words[1:], plural=False))
  raise ParseError(f'{text!r} is not an item')


def _relation(text: str) -> Claim | None:
  """'a NP PHRASE a NP' or 'the NP PHRASE/VERB the NP', else None."""
  padded = f' {text} '
  for words, pred in _RELATION_WORDS:
    for article in ('a', 'an', 'the'):
      key = f' {words} {article} '
      at = padded.find(key)
      if at < 0:
        continue
      left = padded[:at].split()
      right = padded[at + len(key):].split()
      if not left or left[0] not in ('a', 'an', 'the'):
        continue
      definite = left[0] == 'the'
      if definite != (article == 'the'):
        continue
      try:
        return Claim('relation', _noun_phrase(left[1:], False),
                     predicate=pred, np2=_noun_phrase(right, False),
                     definite=definite)
      except ParseError:
        continue
  return None


def parse(text: str) -> list[Claim]:
  """The claims of a caption, region text or sentence of the grammar.

  Raises:
    ParseError: ``text`` is not in the world's grammar.
  """
  text = ' '.join(text.lower().strip().rstrip('.').split())
  for prefix in _PREFIXES:
    if text.startswith(prefix):
      text = text[len(prefix):]
      break
  if text.startswith(('there is ', 'there are ')) and ':' not in text:
    for suffix in language.STATEMENT_SUFFIXES:
      if suffix and text.endswith(suffix):
        text = text[:-len(suffix)]
        break
    return [_clause(p) for p in re.split(r', | and ', text)]
  claims = []
  head = re.match(r'^(?:there (?:is|are) )?(\w+) objects?: ', text)
  if head and head.group(1) in _NUMBERS:
    claims.append(Claim('total', n=_NUMBERS[head.group(1)]))
    text = text[head.end():]
  relation = _relation(text)
  if relation is not None and not claims:
    return [relation]
  parts = re.split(r', | and ', text)
  claims.extend(_item(p) for p in parts)
  return claims


def _holds(claim: Claim, scene: world.Scene) -> bool | None:
  objs = scene.objects
  if claim.kind == 'total':
    return len(objs) == claim.n
  matching = [i for i, o in enumerate(objs) if claim.np.matches(o)]
  if claim.kind == 'exists':
    return bool(matching)
  if claim.kind == 'count':
    return len(matching) == claim.n
  if claim.kind == 'several':
    return len(matching) >= 2
  if claim.kind == 'unique':
    return len(matching) == 1
  # A relation: some (subject, object) pair for which it holds.
  objects = [j for j, o in enumerate(objs) if claim.np2.matches(o)]
  if claim.definite and (len(matching) != 1 or len(objects) != 1):
    return False
  answers = [geometry.relation_truth(scene, i, claim.predicate, j)
             for i in matching for j in objects if i != j]
  if any(a is True for a in answers):
    return True
  return None if any(a is None for a in answers) else False


def is_true(scene: world.Scene, text: str | Sequence[Claim]) -> bool | None:
  """Whether ``text`` (or its parsed claims) is true of ``scene``.

  Returns:
    True when every claim holds, False when one clearly fails, None when
    none fails but a relation is borderline.

  Raises:
    ParseError: ``text`` is not in the world's grammar.
  """
  claims = parse(text) if isinstance(text, str) else text
  answers = [_holds(c, scene) for c in claims]
  if any(a is False for a in answers):
    return False
  return None if any(a is None for a in answers) else True


def truth_matrix(scenes: Sequence[world.Scene],
                 texts: Sequence[str]) -> np.ndarray:
  """bool [len(scenes), len(texts)]: text j is true of scene i (borderline
  counts as not true)."""
  claims = [parse(t) for t in texts]
  return np.array([[is_true(s, c) is True for c in claims] for s in scenes],
                  bool).reshape(len(scenes), len(texts))


# Why a caption is or is not true of a scene, from the easiest reason to
# read off the image to the hardest (:func:`negative_kind`).
NEGATIVE_KINDS = ('true', 'borderline', 'word', 'binding', 'count',
                  'relation')


def _asserted(claims: Sequence[Claim]) -> list[NounPhrase]:
  """The noun phrases a caption says are in the scene (not 'no NP')."""
  return [n for c in claims if not (c.kind == 'count' and c.n == 0)
          for n in (c.np, c.np2) if n is not None]


def negative_kind(scene: world.Scene, text: str | Sequence[Claim]) -> str:
  """What a reader must get right to reject ``text`` for ``scene``.

  One of :data:`NEGATIVE_KINDS`: 'true' and 'borderline' (``is_true``
  True or None); otherwise the first that applies of

  - 'word': a size, colour or category the text says is there is on no
    object of the scene (a bag of words rejects it);
  - 'binding': every such word is on some object, but a noun phrase
    matches no single object ('a red circle' beside a red square and a
    blue circle);
  - 'relation': every asserted noun phrase matches an object and only a
    relation between them fails (with 'the', both phrases unique);
  - 'count': the rest: numbers, totals, 'no', uniqueness.

  Raises:
    ParseError: ``text`` is not in the world's grammar.
  """
  claims = parse(text) if isinstance(text, str) else text
  answers = [_holds(c, scene) for c in claims]
  if not any(a is False for a in answers):
    return 'borderline' if any(a is None for a in answers) else 'true'
  phrases = _asserted(claims)
  seen = {w for o in scene.objects for w in (o.category, o.colour, o.size)}
  if any(w is not None and w not in seen
         for n in phrases for w in (n.category, n.colour, n.size)):
    return 'word'
  if not all(any(n.matches(o) for o in scene.objects) for n in phrases):
    return 'binding'
  failed = [c for c, a in zip(claims, answers) if a is False]
  if all(c.kind == 'relation' and (not c.definite or all(
      _holds(Claim('unique', n), scene) for n in (c.np, c.np2)))
         for c in failed):
    return 'relation'
  return 'count'


def kind_matrix(scenes: Sequence[world.Scene],
                texts: Sequence[str]) -> np.ndarray:
  """int8 [len(scenes), len(texts)]: the index in :data:`NEGATIVE_KINDS`
  of :func:`negative_kind` of text j for scene i."""
  claims = [parse(t) for t in texts]
  index = {k: i for i, k in enumerate(NEGATIVE_KINDS)}
  return np.array([[index[negative_kind(s, c)] for c in claims]
                   for s in scenes], np.int8).reshape(len(scenes), len(texts))


def caption_stats(cfg: world.WorldConfig, num_scenes: int = 1000,
                  batch_size: int = 32, split: str = 'train',
                  seed: int = 0) -> dict[str, float]:
  """How often the world's captions are true of other images.

  Draws ``num_scenes`` scenes of ``split`` and one caption of each (as the
  caption pipeline draws one per example), groups them into batches of
  ``batch_size`` and reports:

  - ``pair_false_negative_rate``: share of in-batch (image, other caption)
    pairs where the caption is true of the image — what ITC and uniformly
    drawn ITM negatives see;
  - ``images_with_true_other``: share of images with at least one other
    caption of their batch true of them;
  - ``relation_caption_rate``: share of captions that state a relation.
  """
  # The records' own module; it imports this one.
  from vlg.synthetic import source  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  scenes, texts = [], []
  for index in range(num_scenes):
    scene, record = source.scene_and_record(split, index, cfg)
    caps = record['captions']
    scenes.append(scene)
    texts.append(caps[int(rng.integers(len(caps)))])
  pairs = true_pairs = with_true = 0
  n_batches = num_scenes // batch_size
  for b in range(n_batches):
    sl = slice(b * batch_size, (b + 1) * batch_size)
    m = truth_matrix(scenes[sl], texts[sl])
    off = ~np.eye(batch_size, dtype=bool)
    pairs += off.sum()
    true_pairs += (m & off).sum()
    with_true += (m & off).any(axis=1).sum()
  relation = sum(parse(t)[0].kind == 'relation' for t in texts)
  return {
      'pair_false_negative_rate': float(true_pairs / max(pairs, 1)),
      'images_with_true_other': float(
          with_true / max(n_batches * batch_size, 1)),
      'relation_caption_rate': float(relation / max(len(texts), 1)),
  }
