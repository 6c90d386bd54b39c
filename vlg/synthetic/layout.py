"""Scene sampling and layout: random scenes, scenes from a specification, edits.

A scene is laid out in *units*: a single object, or a pair whose relative
position a deliberate construct fixes ('inside' a ring, 'touching', 'covers',
or an arrow or line: a pair set apart in a random direction with room for
it). Units are placed at random with at least ``world.min_gap`` px between
their boxes (more around an arrow's pair), so objects not in one unit are
clearly apart: never touching, never overlapping. An arrow or line is drawn
only if its path keeps clear of every other object; where it does not, the
pair stays, undrawn. The relations are defined in ``geometry.py``.

``generate_scene`` draws everything from (split, index, seed).
``scene_from_spec`` lays out given objects so that given relations hold; it
and the edits (``edit_object``, ``swap_positions``, ``reverse_action``,
``with_actions``) build benchmark minimal pairs: the same scene with subject
and object swapped, one attribute changed, an arrow reversed or replaced by a
line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from vlg.synthetic import geometry
from vlg.synthetic import world

_CONSTRUCTS = ('inside', 'contains', 'touching', 'covers')
_SPATIAL = ('left of', 'right of', 'above', 'below', 'near', 'far from')
_PATHS = ('points at', 'is connected to')
_BORDER = 1  # Pixels kept free along the image border.
_TRIES = 64  # Random positions tried per unit.

Triple = tuple[int, str, int]


@dataclasses.dataclass
class _Unit:
  members: list[tuple[int, int, int]]  # (object index, x offset, y offset)
  w: int
  h: int
  margin: int = 0  # Least gap to other units, if more than min_gap.


def sample_background(rng: np.random.Generator,
                      cfg: world.WorldConfig) -> world.Background:
  """A dark, near-neutral background: plain, a gradient or a soft texture."""
  level = int(rng.integers(18, 76))
  rgb = tuple(int(v) for v in np.clip(level + rng.integers(-8, 9, 3), 0, 90))
  u = rng.random()
  if u < cfg.texture_rate:
    return world.Background('texture', rgb, seed=int(rng.integers(2**31)),
                            amplitude=int(rng.integers(4, 11)))
  if u < (1 + cfg.texture_rate) / 2:
    rgb2 = np.clip(np.array(rgb) + rng.integers(-25, 26, 3), 0, 90)
    return world.Background('gradient', rgb, tuple(int(v) for v in rgb2),
                            seed=int(rng.integers(4)))
  return world.Background('plain', rgb)


def _respec(spec: world.ObjectSpec, rng: np.random.Generator, split: str,
            cfg: world.WorldConfig, categories: Sequence[str] | None = None,
            size: str | None = None) -> world.ObjectSpec:
  """``spec`` with its category moved into ``categories`` and its size set,
  re-colouring only if the new composition is held out in ``split``."""
  category = spec.category
  if categories is not None and category not in categories:
    category = categories[int(rng.integers(len(categories)))]
  options = world.allowed_colours(category, split, cfg)
  colour = spec.colour if spec.colour in options else options[
      int(rng.integers(len(options)))]
  size = size or spec.size
  side = spec.side if size == spec.size else None
  return world.ObjectSpec(category, colour, size, side)


def _sample_specs(rng: np.random.Generator, split: str, cfg: world.WorldConfig,
                  n: int) -> list[world.ObjectSpec]:
  specs = []
  for k in range(n):
    if k and rng.random() < cfg.repeat_rate:
      source = specs[int(rng.integers(k))]
      category = source.category
      colour = source.colour if rng.random() < 0.5 else None
    else:
      category = world.CATEGORIES[int(rng.integers(len(world.CATEGORIES)))]
      colour = None
    options = world.allowed_colours(category, split, cfg)
    if colour not in options:
      colour = options[int(rng.integers(len(options)))]
    specs.append(world.ObjectSpec(category, colour,
                                  world.SIZES[int(rng.integers(2))]))
  return specs


def _sample_plan(rng, split, cfg, specs):
  """Picks the deliberate constructs, arrows and lines included."""
  specs = list(specs)
  free = [int(k) for k in rng.permutation(len(specs))]
  constructs = []

  def pair():
    return (free.pop(), free.pop()) if len(free) >= 2 else None

  if rng.random() < cfg.inside_rate and (p := pair()):
    s, o = p
    specs[o] = _respec(specs[o], rng, split, cfg, ('ring',), 'large')
    specs[s] = _respec(specs[s], rng, split, cfg, None, 'small')
    constructs.append((s, 'inside', o))
  kinds = []
  if rng.random() < cfg.touch_rate:
    kinds.append('touching')
  for _ in range(2):
    if rng.random() < cfg.action_rate:
      kinds.append(world.DRAWN_RELATIONS[int(rng.integers(3))])
  for kind in kinds:
    if kind in _PATHS and (p := pair()):
      constructs.append((p[0], kind, p[1]))
    elif kind not in _PATHS and (p := pair()):
      specs[p[0]] = _respec(specs[p[0]], rng, split, cfg, (
          geometry.COVER_SHAPES if kind == 'covers' else geometry.TOUCH_SHAPES))
      specs[p[1]] = _respec(specs[p[1]], rng, split, cfg, geometry.TOUCH_SHAPES)
      if specs[p[0]].colour == specs[p[1]].colour:
        # Same-coloured shapes that meet would read as one blob.
        options = [c for c in world.allowed_colours(specs[p[1]].category,
                                                    split, cfg)
                   if c != specs[p[0]].colour]
        specs[p[1]] = dataclasses.replace(
            specs[p[1]], colour=options[int(rng.integers(len(options)))])
      constructs.append((p[0], kind, p[1]))
  return specs, constructs


def _sides(specs, constructs, rng, resolution):
  """Box sides: sampled per size class, then fitted to the constructs."""
  sides = []
  for spec in specs:
    lo, hi = world.side_range(spec.size, resolution)
    sides.append(spec.side or int(rng.integers(lo, hi + 1)))
  for s, pred, o in constructs:
    if pred == 'inside':
      if specs[o].side is None:
        sides[o] = world.side_range('large', resolution)[1]
      if specs[s].side is None:
        sides[s] = _inner_side(sides[o], resolution, rng)
    elif pred in ('touching', 'covers') and (
        sides[s] - sides[o]) % 2 and specs[o].side is None:
      # Equal parity centres the pair on each other exactly.
      lo, hi = world.side_range(specs[o].size, resolution)
      sides[o] += 1 if sides[o] < hi else -1
  return sides


def _inner_side(ring_side: int, resolution: int,
                rng: np.random.Generator) -> int:
  lo, hi = world.side_range('small', resolution)
  fits = []
  for s in range(lo, hi + 1):
    off = (ring_side - s) // 2
    if (ring_side - s) % 2 == 0 and geometry.in_hole(
        (off, off, off + s, off + s), (0, 0, ring_side, ring_side)):
      fits.append(s)
  if not fits:
    raise world.PlacementError(f'no small shape fits inside a ring of side '
                               f'{ring_side} at resolution {resolution}')
  return fits[int(rng.integers(len(fits)))]


def _path_offset(ss, so, rng, resolution, tries=8):
  """Where a shape of side ``ss`` goes, relative to one of side ``so`` at the
  origin, so that an arrow between them has room: a random direction, and
  2.5 head lengths plus up to 0.1 * resolution of path between the boxes."""
  room = resolution - 2 * _BORDER
  for _ in range(tries):
    angle = rng.uniform(0, 2 * np.pi)
    ux, uy = np.cos(angle), np.sin(angle)
    along = 1 / max(abs(ux), abs(uy))  # Centre-to-side per half side.
    length = (2.5 * geometry.head_size(resolution)[0] +
              rng.uniform(0, 0.1 * resolution))
    centres = ((ss + so) / 2 * along + 2 * geometry.action_gap(resolution) +
               length + 1)
    dx = round(so / 2 + centres * ux - ss / 2)
    dy = round(so / 2 + centres * uy - ss / 2)
    if max(so, dx + ss) - min(0, dx) <= room and (
        max(so, dy + ss) - min(0, dy) <= room):
      break
  return dx, dy


def _units(n, sides, constructs, rng, resolution):
  units, taken = [], set()
  for s, pred, o in constructs:
    ss, so = sides[s], sides[o]
    if pred == 'inside':
      off = (so - ss) // 2
      members = [(o, 0, 0), (s, off, off)]
    elif pred in _PATHS:
      members = [(o, 0, 0), (s, *_path_offset(ss, so, rng, resolution))]
    else:
      axis, after = int(rng.integers(2)), bool(rng.integers(2))
      if pred == 'touching':
        along = so if after else -ss
      else:
        depth = max(2, round(0.4 * min(ss, so)))
        along = so - depth if after else depth - ss
      across = (so - ss) // 2
      dx, dy = (along, across) if axis == 0 else (across, along)
      members = [(o, 0, 0), (s, dx, dy)]
    x_min = min(m[1] for m in members)
    y_min = min(m[2] for m in members)
    members = [(k, x - x_min, y - y_min) for k, x, y in members]
    # An arrow head may reach past the pair's box: keep others off it.
    margin = int(geometry.head_size(resolution)[1] +
                 geometry.stroke_width(resolution)) + 3 if pred in (
                     _PATHS) else 0
    units.append(_Unit(members, max(x + sides[k] for k, x, _ in members),
                       max(y + sides[k] for k, _, y in members), margin))
    taken.update((s, o))
  units += [_Unit([(k, 0, 0)], sides[k], sides[k])
            for k in range(n) if k not in taken]
  return units


def _place(units, resolution, rng):
  """Random positions, larger units first, keeping ``min_gap`` between boxes.

  Returns:
    Per unit its (x, y) origin, or None where no free position was found.
  """
  gap = world.min_gap(resolution)
  placed, pos = [], [None] * len(units)
  for k in sorted(range(len(units)), key=lambda k: -units[k].w * units[k].h):
    w, h, margin = units[k].w, units[k].h, units[k].margin
    hi_x, hi_y = resolution - _BORDER - w, resolution - _BORDER - h
    if hi_x < _BORDER or hi_y < _BORDER:
      continue
    xs = rng.integers(_BORDER, hi_x + 1, _TRIES).tolist()
    ys = rng.integers(_BORDER, hi_y + 1, _TRIES).tolist()
    for x, y in zip(xs, ys):
      box = (x, y, x + w, y + h)
      if all(max(geometry.gaps(box, p)) >= max(gap, margin, m)
             for p, m in placed):
        pos[k] = (x, y)
        placed.append((box, margin))
        break
  return pos


def _assemble(specs, sides, units, pos, constructs, rng, resolution):
  """Objects (in spec order, unplaced ones dropped) and the drawn actions of
  the constructs (an arrow or line only where its path is clear)."""
  boxes, unit_of = {}, {}
  for u, (unit, p) in enumerate(zip(units, pos)):
    for k, ox, oy in unit.members:
      if p is not None:
        x0, y0 = p[0] + ox, p[1] + oy
        boxes[k] = (x0, y0, x0 + sides[k], y0 + sides[k])
        unit_of[k] = u
  coverers = {s for s, pred, _ in constructs if pred == 'covers'}
  new = {old: i for i, old in enumerate(sorted(boxes))}
  objects = []
  for old in sorted(boxes):
    spec = specs[old]
    jitter = rng.integers(-world.SHADE_JITTER, world.SHADE_JITTER + 1,
                          3).tolist()
    rgb = tuple(min(255, max(0, c + d))
                for c, d in zip(world.PALETTE[spec.colour], jitter))
    objects.append(world.SceneObject(spec.category, spec.colour, spec.size,
                                     boxes[old], rgb, int(old in coverers)))
  actions = [world.Action('covers', new[s], new[o])
             for s, pred, o in constructs if pred == 'covers' and s in new]
  for s, pred, o in constructs:
    if pred in _PATHS and s in new and path_is_drawable(
        objects, new[s], new[o], resolution):
      actions.append(world.Action(pred, new[s], new[o]))
  return objects, actions, {new[k]: u for k, u in unit_of.items()}


def path_is_drawable(objects: Sequence[world.SceneObject], i: int, j: int,
                     resolution: int) -> bool:
  """Whether an arrow or line from objects[i] to objects[j] can be drawn:
  long enough and clear of every other object (``geometry.path_is_clear``)."""
  path = geometry.arrow_path(objects[i].box, objects[j].box, resolution)
  others = [o.box for k, o in enumerate(objects) if k not in (i, j)]
  return path is not None and geometry.path_is_clear(
      path, [objects[i].box, objects[j].box], others, resolution)


_MAX_SCENE_DRAWS = 20


def generate_scene(split: str, index: int,
                   cfg: world.WorldConfig = world.WorldConfig()) -> world.Scene:
  """The scene of image ``index`` of ``split``, fully determined by
  (split, index, cfg.seed) and the layout knobs of ``cfg``.

  The 'train' split never shows a composition in ``cfg.heldout``.
  """
  # A crowded draw can fail to place every unit; redraw (from streams
  # disjoint from the text/flag streams) so a scene always has an object.
  for attempt in range(_MAX_SCENE_DRAWS):
    rng = world.scene_rng(split, index, cfg,
                          stream=0 if attempt == 0 else 100 + attempt)
    res = cfg.resolution
    background = sample_background(rng, cfg)
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    specs = _sample_specs(rng, split, cfg, n)
    specs, constructs = _sample_plan(rng, split, cfg, specs)
    sides = _sides(specs, constructs, rng, res)
    units = _units(len(specs), sides, constructs, rng, res)
    pos = _place(units, res, rng)
    objects, actions, _ = _assemble(specs, sides, units, pos, constructs,
                                    rng, res)
    if objects:
      break
  else:
    raise world.PlacementError(
        f'No object could be placed in {split} scene {index} after '
        f'{_MAX_SCENE_DRAWS} draws')
  return world.Scene(res, tuple(objects), tuple(actions),
                     geometry.scene_graph(objects, actions, rng,
                                          cfg.comparative_rate),
                     background)


def _validate_request(specs, relations):
  """Splits requested relations into constructs, paths and checks."""
  constructs, paths, checks, used = [], [], [], set()
  for s, pred, o in relations:
    if pred not in world.RELATIONS:
      raise ValueError(f'predicate {pred!r} not in {world.RELATIONS}')
    if not (0 <= s < len(specs) and 0 <= o < len(specs)) or s == o:
      raise ValueError(f'relation {(s, pred, o)} needs two object indices')
    a, b = specs[s], specs[o]
    if pred in _CONSTRUCTS:
      if used & {s, o}:
        raise ValueError(f'object {s} or {o} is already in a construct')
      used |= {s, o}
      if pred == 'contains':
        s, o, a, b = o, s, b, a
      if pred in ('inside', 'contains') and (
          b.category != 'ring' or b.size != 'large' or a.size != 'small'):
        raise ValueError(f'{pred!r} needs a small shape and a large ring')
      if pred in ('touching', 'covers') and (not {
          a.category, b.category} <= set(geometry.TOUCH_SHAPES) or
                                             a.colour == b.colour):
        raise ValueError(f'{pred!r} needs shapes in {geometry.TOUCH_SHAPES} '
                         'of different colours')
      if pred == 'covers' and a.category not in geometry.COVER_SHAPES:
        raise ValueError(f'a covering shape must be in {geometry.COVER_SHAPES}')
      constructs.append((s, 'inside' if pred == 'contains' else pred, o))
    elif pred in _PATHS:
      paths.append((s, pred, o))
    elif pred in _SPATIAL:
      checks.append((s, pred, o))
    elif not ((pred == 'same colour as' and a.colour == b.colour) or
              (pred == 'bigger than' and (a.size, b.size) == ('large', 'small'))
              or (pred == 'smaller than' and
                  (a.size, b.size) == ('small', 'large'))):
      raise ValueError(f'the specs contradict {(s, pred, o)}')
  return constructs, paths, checks


def scene_from_spec(objects: Sequence[world.ObjectSpec | tuple[str, str, str]],
                    rng: np.random.Generator,
                    cfg: world.WorldConfig = world.WorldConfig(),
                    relations: Iterable[Triple] = (),
                    background: world.Background | None = None,
                    max_tries: int = 200) -> world.Scene:
  """Lays out the given objects so that every given relation holds.

  Example (a Winoground-style pair)::

    specs = [('circle', 'red', 'large'), ('square', 'blue', 'small')]
    a = scene_from_spec(specs, rng, cfg, [(0, 'above', 1)])
    b = scene_from_spec([('circle', 'blue', 'large'),
                         ('square', 'red', 'small')], rng, cfg,
                        [(0, 'above', 1)])

  Args:
    objects: ObjectSpecs or (category, colour, size) tuples, in index order
      (held-out compositions are allowed: the caller decides).
    rng: the generator of every random draw.
    cfg: the world (resolution, supersampling).
    relations: (subject, predicate, object) triples to make true. Spatial ones
      are sampled until they hold; 'inside'/'contains', 'touching' and
      'covers' are built (each object in at most one; they need a small shape
      in a large ring, or TOUCH_SHAPES); 'points at' and 'is connected to'
      are drawn; comparatives must agree with the specs.
    background: the background; sampled when None.
    max_tries: layouts tried before giving up.

  Returns:
    The scene, objects in the given order; its scene graph starts with
    ``relations``.

  Raises:
    ValueError: a relation is malformed or contradicts the specs.
    world.PlacementError: no layout satisfied the relations.
  """
  specs = [o if isinstance(o, world.ObjectSpec) else world.ObjectSpec(*o)
           for o in objects]
  if not 1 <= len(specs) <= 6:
    raise ValueError(f'a scene holds 1 to 6 objects, got {len(specs)}')
  relations = [tuple(r) for r in relations]
  constructs, paths, checks = _validate_request(specs, relations)
  res = cfg.resolution
  background = background or sample_background(rng, cfg)
  for _ in range(max_tries):
    sides = _sides(specs, constructs, rng, res)
    units = _units(len(specs), sides, constructs, rng, res)
    pos = _place(units, res, rng)
    if any(p is None for p in pos):
      continue
    objs, actions, unit_of = _assemble(specs, sides, units, pos, constructs,
                                       rng, res)
    for s, pred, o in paths:
      if unit_of[s] == unit_of[o]:
        raise ValueError(f'{(s, pred, o)}: the two are already in a construct')
      if path_is_drawable(objs, s, o, res):
        actions.append(world.Action(pred, s, o))
    if all(geometry.truth(objs, actions, s, p, o) is True
           for s, p, o in relations):
      return world.Scene(res, tuple(objs), tuple(actions),
                         geometry.scene_graph(objs, actions, rng,
                                              cfg.comparative_rate, relations),
                         background)
  raise world.PlacementError(f'no layout of {len(specs)} objects satisfied '
                             f'{relations} in {max_tries} tries')
