"""Shared parts of the synthetic benchmark builders.

Random streams: every benchmark example draws from its own generator,
``SeedSequence([seed, code, index, attempt])`` with a benchmark ``code`` of
100 or more. The world's own streams are ``[seed, split_code, index, stream]``
with split codes 0–2, so no benchmark draw ever repeats a training draw.
A candidate that cannot be laid out (``PlacementError``) or that fails a
truth check (:class:`Reject`) is dropped and the next ``attempt`` is tried,
so the output is a deterministic function of the flags.

Naming: a noun phrase *filter* is a dict with some of ``category``,
``colour`` and ``size``; ``exists`` decides an indefinite statement ('a red
circle above a blue square') over every pair of matching objects.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from vlg import synthetic as sy
from vlg.synthetic import geometry
from vlg.synthetic import language
from vlg.synthetic import world

T = TypeVar('T')
Filter = Mapping[str, str]

# One code per random stream; all >= 100 (the world's split codes are 0-2).
CODES: dict[str, int] = {
    'valse/existence': 101, 'valse/plurals': 102,
    'valse/counting-small-quant': 103, 'valse/counting-hard': 104,
    'valse/relations': 105, 'valse/action-replacement': 106,
    'valse/actant-swap': 107, 'vsr/random/dev': 111, 'vsr/random/test': 112,
    'vsr/zeroshot/dev': 113, 'vsr/zeroshot/test': 114, 'svo_probes': 121,
    'winoground': 131, 'winoground/colour': 132, 'winoground/size': 133,
    'winoground/noun': 134, 'winoground/action': 135, 'refcocog': 141,
}
MAX_ATTEMPTS = 100
LAYOUT_TRIES = 40  # scene_from_spec's layouts per attempt.
ORDER_ATTEMPT = 10**6  # The 'attempt' of the streams that order cycles.
# What a placeholder record field says about a synthetic example: the foil
# is false by construction (not a model's NLI or grammar score).
NLI_BY_CONSTRUCTION = {'entail': [0.0], 'neutral': [0.0],
                       'contradict': [1.0], 'pred': ['contradict']}
GRAMMATICALITY_BY_CONSTRUCTION = [1.0]
ACTION_PREDICATES = ('points at', 'is connected to', 'covers')


class Reject(Exception):
  """A candidate example failed a check; the builder tries the next one."""


def require(condition: bool, message: str) -> None:
  """Raises :class:`Reject` with ``message`` unless ``condition`` holds."""
  if not condition:
    raise Reject(message)


def rng_for(seed: int, code: int, index: int,
            attempt: int = 0) -> np.random.Generator:
  """The generator of one attempt at one benchmark example."""
  seq = np.random.SeedSequence([seed, code, index, attempt])
  return np.random.Generator(np.random.PCG64(seq))


def retry(make: Callable[[np.random.Generator], T], seed: int, code: int,
          index: int) -> T:
  """``make(rng)`` for attempts 0, 1, ... until one is neither rejected nor
  unplaceable.

  Raises:
    RuntimeError: all ``MAX_ATTEMPTS`` attempts failed.
  """
  last = None
  for attempt in range(MAX_ATTEMPTS):
    try:
      return make(rng_for(seed, code, index, attempt))
    except (Reject, sy.PlacementError) as e:
      last = e
  raise RuntimeError(f'benchmark stream {code}, example {index}: no valid '
                     f'candidate in {MAX_ATTEMPTS} attempts (last: {last})')


def pick(rng: np.random.Generator, options: Sequence[T]) -> T:
  """One element of ``options``, uniformly."""
  if not options:
    raise Reject('nothing to choose from')
  return options[int(rng.integers(len(options)))]


def cycle(seed: int, code: int, k: int, options: Sequence[T]) -> T:
  """Item ``k`` of a stream that visits ``options`` in a fresh random order
  every round, so each option is used equally often."""
  n = len(options)
  order = rng_for(seed, code, k // n, ORDER_ATTEMPT).permutation(n)
  return options[int(order[k % n])]


def colours_for(category: str, cfg: world.WorldConfig,
                heldout_ok: bool) -> tuple[str, ...]:
  """Colours a benchmark may give ``category`` (held-out ones only if ok)."""
  return world.allowed_colours(category, 'test' if heldout_ok else 'train',
                               cfg)


def spec(rng: np.random.Generator, cfg: world.WorldConfig,
         categories: Sequence[str] = world.CATEGORIES,
         colour: str | None = None, size: str | None = None,
         heldout_ok: bool = False,
         avoid: Iterable[tuple[str, str]] = ()) -> world.ObjectSpec:
  """A random object spec; ``avoid`` lists forbidden (colour, category)."""
  avoid = set(avoid)
  options = [(c, k) for k in categories for c in colours_for(k, cfg,
                                                              heldout_ok)
             if (c, k) not in avoid and (colour is None or c == colour)]
  c, k = pick(rng, options)
  return world.ObjectSpec(k, c, size or pick(rng, world.SIZES))


def fillers(rng: np.random.Generator, cfg: world.WorldConfig, n: int,
            avoid_categories: Iterable[str] = (),
            avoid: Iterable[tuple[str, str]] = (),
            heldout_ok: bool = False) -> list[world.ObjectSpec]:
  """``n`` distractor specs outside the given categories / compositions."""
  categories = [c for c in world.CATEGORIES if c not in set(avoid_categories)]
  return [spec(rng, cfg, categories, heldout_ok=heldout_ok, avoid=avoid)
          for _ in range(n)]


def layout(specs: Sequence[world.ObjectSpec], rng: np.random.Generator,
           cfg: world.WorldConfig,
           relations: Iterable[tuple[int, str, int]] = ()) -> world.Scene:
  """``scene_from_spec`` with this package's try budget."""
  return sy.scene_from_spec(specs, rng, cfg, list(relations),
                            max_tries=LAYOUT_TRIES)


def composition(obj: world.SceneObject | world.ObjectSpec) -> tuple[str, str]:
  """(colour, category) of an object or spec."""
  return obj.colour, obj.category


def matching(scene: world.Scene, f: Filter) -> list[int]:
  """Indices of the objects that a noun-phrase filter matches."""
  return [k for k, o in enumerate(scene.objects)
          if all(getattr(o, key) == value for key, value in f.items())]


def phrase(f: Filter) -> str:
  """The words of a filter: '[size] [colour] category'."""
  return ' '.join(f[k] for k in ('size', 'colour', 'category') if k in f)


def exists(scene: world.Scene, subject: Filter, predicate: str,
           obj: Filter) -> bool | None:
  """Whether 'a <subject> <predicate> a <obj>' holds: True when some pair of
  matching objects is related, False when every pair is clearly not (or no
  object matches), None when some pair is borderline."""
  values = [geometry.relation_truth(scene, i, predicate, j)
            for i in matching(scene, subject) for j in matching(scene, obj)
            if i != j]
  if any(v is True for v in values):
    return True
  return None if any(v is None for v in values) else False


def unique_filter(scene: world.Scene, i: int,
                  details: Sequence[str] = ('colour', 'full')
                  ) -> dict[str, str] | None:
  """The first filter of ``details`` that matches object ``i`` only."""
  obj = scene.objects[i]
  for detail in details:
    keys = {'category': ('category',), 'colour': ('colour', 'category'),
            'size': ('size', 'category'),
            'full': ('size', 'colour', 'category')}[detail]
    f = {k: getattr(obj, k) for k in keys}
    if matching(scene, f) == [i]:
      return f
  return None


def plural(category: str) -> str:
  """The plural of a category noun."""
  return language.PLURALS[category]


def sentence(text: str) -> str:
  """Capitalised, with a full stop."""
  return text[0].upper() + text[1:] + '.'


def save_image(scene: world.Scene, cfg: world.WorldConfig, path: str) -> None:
  """Renders ``scene`` to ``path``: PNG, or JPEG (quality 95, no chroma
  subsampling) for a ``.jpg`` name."""
  image = Image.fromarray(sy.render_scene(scene, cfg))
  if path.endswith('.jpg'):
    image.save(path, format='JPEG', quality=95, subsampling=0)
  else:
    image.save(path, format='PNG')


def makedirs(*paths: str) -> None:
  for path in paths:
    os.makedirs(path, exist_ok=True)


def write_json(path: str, data: Any) -> None:
  """One JSON document (UTF-8, deterministic)."""
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(data, f, ensure_ascii=False)
    f.write('\n')


def write_jsonl(path: str, rows: Iterable[Mapping[str, Any]]) -> int:
  """JSON lines; returns the number of lines."""
  n = 0
  with open(path, 'w', encoding='utf-8') as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + '\n')
      n += 1
  return n


def pair_specs(rng: np.random.Generator, cfg: world.WorldConfig,
               predicate: str, heldout_ok: bool = False,
               subject: tuple[str, str] | None = None,
               obj: tuple[str, str] | None = None,
               both_ways: bool = False
               ) -> tuple[world.ObjectSpec, world.ObjectSpec]:
  """(subject, object) specs for which ``predicate`` can be laid out.

  'inside'/'contains' need a small shape and a large ring; 'touching' and
  'covers' shapes of TOUCH_SHAPES (a coverer of COVER_SHAPES) in different
  colours; anything else two different compositions. ``subject`` / ``obj``
  fix a role's (colour, category); ``both_ways`` makes the pair fit the
  predicate in either direction (for a reversed 'covers').

  Raises:
    Reject: a fixed composition cannot take its role.
  """
  everything = world.CATEGORIES
  roles = [(everything, None), (everything, None)]
  if predicate in ('inside', 'contains'):
    shapes = tuple(c for c in everything if c != 'ring')
    roles = [(shapes, 'small'), (('ring',), 'large')]
    if predicate == 'contains':
      roles.reverse()
  elif predicate in ('touching', 'covers'):
    cover = geometry.COVER_SHAPES
    roles = [(cover if predicate == 'covers' else geometry.TOUCH_SHAPES,
              None), (cover if both_ways and predicate == 'covers' else
                      geometry.TOUCH_SHAPES, None)]
  specs = []
  for (categories, size), fixed in zip(roles, (subject, obj)):
    if fixed is not None:
      require(fixed[1] in categories, f'{fixed} cannot take this role')
      specs.append(world.ObjectSpec(fixed[1], fixed[0],
                                    size or pick(rng, world.SIZES)))
    else:
      specs.append(None)
  for k, (categories, size) in enumerate(roles):
    if specs[k] is None:
      other = specs[1 - k]
      avoid = [composition(other)] if other else []
      if other and predicate in ('touching', 'covers'):
        avoid = [(other.colour, c) for c in everything]
      specs[k] = spec(rng, cfg, categories, size=size, heldout_ok=heldout_ok,
                      avoid=avoid)
  require(composition(specs[0]) != composition(specs[1]), 'same composition')
  if predicate in ('touching', 'covers'):
    require(specs[0].colour != specs[1].colour, 'same colour')
  return specs[0], specs[1]
