"""Exact geometry of the synthetic world and the definitions of its relations.

Boxes are integer pixel boxes ``(x0, y0, x1, y1)``, half-open, and tight on
the drawn shape. For a subject box S and an object box O let

  side(B) = max(B.x1 - B.x0, B.y1 - B.y0)
  dx = max(O.x0 - S.x1, S.x0 - O.x1)   horizontal gap (< 0: x-overlap)
  dy = max(O.y0 - S.y1, S.y0 - O.y1)   vertical gap
  dist = hypot(max(dx, 0), max(dy, 0)) distance between the boxes
  L = (side(S) + side(O)) / 2          the pair's mean size

Each relation is true exactly when (NEAR = 0.6, FAR = 1.5):

  left of          S.x1 <= O.x0 (S's box ends where O's begins, or before)
  right of         S.x0 >= O.x1
  above            S.y1 <= O.y0
  below            S.y0 >= O.y1
  near             the boxes do not overlap (dx >= 0 or dy >= 0) and
                   dist <= NEAR * L
  far from         dist >= FAR * L
  inside           O is a ring and every corner of S's box lies at least
                   1 px inside O's hole, the disc of radius
                   RING_HOLE * side(O) / 2 about O's box centre (so S's
                   pixels never meet the ring's)
  contains         O inside S
  touching         both shapes are TOUCH_SHAPES (shapes that reach the middle
                   of every side of their box), the boxes abut (dx == 0 and
                   dy < 0, or dy == 0 and dx < 0) and their centres agree
                   within 1 px across the shared side, so the shapes' pixels
                   meet there
  bigger than      S is 'large' and O is 'small' (large sides are >= 1.6x
                   every small side: ``world.side_range``)
  smaller than     S is 'small' and O is 'large'
  same colour as   S and O have the same colour name
  points at        an arrow is drawn from S to O: its shaft starts just
                   outside S's box on the line between the box centres and
                   its head's tip ends just outside O's box (``arrow_path``)
  is connected to  a line is drawn between S and O the same way, no head
                   (symmetric)
  covers           S is drawn on top of O and partly over it: the boxes
                   overlap by ~40% of the smaller side along one axis, centred
                   on the other; S is a solid shape (COVER_SHAPES), O one of
                   TOUCH_SHAPES of another colour, so S visibly hides part
                   of O

Objects not deliberately related (touching, inside, covers) are placed with
at least ``world.min_gap`` pixels between their boxes, and no arrow or line
passes over any object, so none of these is ever borderline in a scene. The
definitions are scale-free (crops and resizing keep them) and mirror-exact:
flipping the image swaps 'left of' and 'right of' and keeps everything else.

``relation_truth`` also says when a statement is *clearly false* (for foils
and false VSR-style statements): the converse holds (right of for left of,
near for far from, small-vs-large for bigger than), the colours differ, the
boxes are apart for touching/inside, or the action is not drawn. Everything
in between is None: neither state it nor deny it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

import numpy as np

from vlg.synthetic import world

Box = tuple[int, int, int, int]
Triple = tuple[int, str, int]
NEAR = 0.6
FAR = 1.5
RING_HOLE = 0.7
INSIDE_MARGIN = 1.0
_AXES = ('left of', 'right of', 'above', 'below')
TOUCH_SHAPES = ('circle', 'square', 'cross', 'diamond', 'hexagon', 'ring')
COVER_SHAPES = ('circle', 'square', 'cross', 'diamond', 'hexagon')


def side(box: Box) -> int:
  """The larger side of a box."""
  return max(box[2] - box[0], box[3] - box[1])


def gaps(s: Box, o: Box) -> tuple[int, int]:
  """(dx, dy): the gaps between two boxes along x and y (< 0: overlap)."""
  return max(o[0] - s[2], s[0] - o[2]), max(o[1] - s[3], s[1] - o[3])


def distance(s: Box, o: Box) -> float:
  """Euclidean distance between two boxes (0 when they meet or overlap)."""
  dx, dy = gaps(s, o)
  return math.hypot(max(dx, 0), max(dy, 0))


def _disjoint(s: Box, o: Box) -> bool:
  return max(gaps(s, o)) >= 0


def _contained(s: Box, o: Box) -> bool:
  return o[0] <= s[0] and o[1] <= s[1] and s[2] <= o[2] and s[3] <= o[3]


def in_hole(inner: Box, ring: Box) -> bool:
  """Whether ``inner`` lies inside the hole of a ring drawn in ``ring``."""
  cx, cy = (ring[0] + ring[2]) / 2, (ring[1] + ring[3]) / 2
  radius = RING_HOLE * side(ring) / 2 - INSIDE_MARGIN
  return all(math.hypot(x - cx, y - cy) <= radius
             for x in (inner[0], inner[2]) for y in (inner[1], inner[3]))


def abut(s: Box, o: Box) -> bool:
  """Boxes that share a side and are centred on each other across it."""
  dx, dy = gaps(s, o)
  if dx == 0 and dy < 0:
    return abs((s[1] + s[3]) - (o[1] + o[3])) <= 2
  if dy == 0 and dx < 0:
    return abs((s[0] + s[2]) - (o[0] + o[2])) <= 2
  return False


def _decide(true: bool, false: bool) -> bool | None:
  return True if true else (False if false else None)


def _has_action(actions, predicate: str, i: int, j: int) -> bool:
  return any(a.predicate == predicate and (a.subject, a.object) == (i, j)
             for a in actions)


def truth(objects: Sequence[world.SceneObject],
          actions: Sequence[world.Action], i: int, predicate: str,
          j: int) -> bool | None:
  """``relation_truth`` on bare objects and actions (see the module doc)."""
  if i == j:
    raise ValueError(f'a relation needs two different objects, got {i}, {j}')
  s, o = objects[i], objects[j]
  a, b = s.box, o.box
  if predicate == 'left of':
    return _decide(a[2] <= b[0], a[0] >= b[2])
  if predicate == 'right of':
    return _decide(a[0] >= b[2], a[2] <= b[0])
  if predicate == 'above':
    return _decide(a[3] <= b[1], a[1] >= b[3])
  if predicate == 'below':
    return _decide(a[1] >= b[3], a[3] <= b[1])
  if predicate in ('near', 'far from'):
    mean = (side(a) + side(b)) / 2
    near = _disjoint(a, b) and distance(a, b) <= NEAR * mean
    far = distance(a, b) >= FAR * mean
    return _decide(near, far) if predicate == 'near' else _decide(far, near)
  if predicate in ('inside', 'contains'):
    inner, outer = (s, o) if predicate == 'inside' else (o, s)
    return _decide(outer.category == 'ring' and in_hole(inner.box, outer.box),
                   not _contained(inner.box, outer.box))
  if predicate == 'touching':
    shapes = s.category in TOUCH_SHAPES and o.category in TOUCH_SHAPES
    return _decide(shapes and abut(a, b), max(gaps(a, b)) >= 1)
  if predicate in ('bigger than', 'smaller than'):
    big = s.size == 'large' and o.size == 'small'
    small = s.size == 'small' and o.size == 'large'
    return _decide(big, small) if predicate == 'bigger than' else _decide(
        small, big)
  if predicate == 'same colour as':
    return s.colour == o.colour
  if predicate in ('points at', 'covers'):
    return _has_action(actions, predicate, i, j)
  if predicate == 'is connected to':
    return (_has_action(actions, predicate, i, j) or
            _has_action(actions, predicate, j, i))
  raise ValueError(f'predicate {predicate!r} not in {world.RELATIONS}')


def relation_truth(scene: world.Scene, i: int, predicate: str,
                   j: int) -> bool | None:
  """Whether ``objects[i] <predicate> objects[j]`` holds in ``scene``.

  Returns:
    True when the definition holds, False when the statement is clearly
    false (see the module docstring), None when it is borderline.
  """
  return truth(scene.objects, scene.actions, i, predicate, j)


def true_relations(scene: world.Scene, i: int, j: int) -> list[str]:
  """Every predicate (in RELATIONS order) true of objects[i], objects[j]."""
  return [p for p in world.RELATIONS
          if truth(scene.objects, scene.actions, i, p, j) is True]


# --- The scene graph -------------------------------------------------------


def _primary(objects, actions, s, o, rng):
  """One spatial relation for a pair: constructs first, else an axis
  relation or near/far (the axis with the larger gap when both hold)."""
  def true(p):
    return truth(objects, actions, s, p, o) is True

  if max(gaps(objects[s].box, objects[o].box)) <= 0:
    for pred in ('inside', 'contains', 'touching'):
      if true(pred):
        return pred
  axes = [p for p in _AXES if true(p)]
  distances = [p for p in ('near', 'far from') if true(p)]
  if distances and (not axes or rng.random() < 0.35):
    return distances[0]
  if len(axes) == 2:
    dx, dy = gaps(objects[s].box, objects[o].box)
    return axes[0] if dx >= dy else axes[1]
  return axes[0] if axes else None


def scene_graph(objects: Sequence[world.SceneObject],
                actions: Sequence[world.Action], rng: np.random.Generator,
                comparative_rate: float = 0.3,
                forced: Iterable[Triple] = ()) -> tuple[Triple, ...]:
  """The curated scene graph of a layout.

  Holds ``forced`` triples, every drawn action, one spatial relation per pair
  (random direction: 'left of' and 'right of' equally often) and, with
  probability ``comparative_rate`` per pair, a comparative. Every triple is
  true by ``truth``; pairs with a forced triple get no other spatial one.
  """
  rels = [tuple(r) for r in forced]
  forced_pairs = {frozenset((s, o)) for s, _, o in rels}
  for a in actions:
    if (a.subject, a.predicate, a.object) not in rels:
      rels.append((a.subject, a.predicate, a.object))
  for i, j in itertools.combinations(range(len(objects)), 2):
    s, o = (i, j) if rng.random() < 0.5 else (j, i)
    pred = _primary(objects, actions, s, o, rng)
    if pred and frozenset((i, j)) not in forced_pairs:
      rels.append((s, pred, o))
    if rng.random() < comparative_rate:
      for pred in ('same colour as', 'bigger than', 'smaller than'):
        if truth(objects, actions, s, pred, o) is True:
          rels.append((s, pred, o))
          break
  return tuple(rels)


# --- Arrows and lines --------------------------------------------------------


def stroke_width(resolution: int) -> float:
  """Width (pixels) of arrow shafts and lines."""
  return max(1.0, resolution / 64)


def action_gap(resolution: int) -> float:
  """Distance (pixels) between an arrow's or line's ends and the boxes."""
  return max(1.5, 0.03 * resolution)


def head_size(resolution: int) -> tuple[float, float]:
  """(length, half width) of an arrow head, in pixels."""
  return max(4.5, 0.09 * resolution), max(3.0, 0.06 * resolution)


def arrow_path(s: Box, o: Box,
               resolution: int) -> tuple[float, float, float, float] | None:
  """Where an arrow or line from box ``s`` to box ``o`` is drawn.

  The path runs along the line between the box centres, from
  ``action_gap`` px outside ``s`` to ``action_gap`` px outside ``o``.

  Returns:
    (x_start, y_start, x_end, y_end) in pixels (continuous coordinates, the
    image spanning [0, resolution]), or None when the path would be too short
    to show an arrow (shorter than 2.5 head lengths).
  """
  (ax, ay), (bx, by) = _centre(s), _centre(o)
  length = math.hypot(bx - ax, by - ay)
  if length == 0:
    return None
  ux, uy = (bx - ax) / length, (by - ay) / length
  gap = action_gap(resolution)
  t_s = _exit(s, ux, uy) + gap
  t_o = _exit(o, ux, uy) + gap
  if length - t_s - t_o < 2.5 * head_size(resolution)[0]:
    return None
  return (ax + ux * t_s, ay + uy * t_s, bx - ux * t_o, by - uy * t_o)


def arrow_head(path: tuple[float, float, float, float],
               resolution: int) -> list[tuple[float, float]]:
  """The arrow head triangle (tip first) at the end of ``path``."""
  x0, y0, x1, y1 = path
  length, half = head_size(resolution)
  norm = math.hypot(x1 - x0, y1 - y0)
  ux, uy = (x1 - x0) / norm, (y1 - y0) / norm
  bx, by = x1 - ux * length, y1 - uy * length
  return [(x1, y1), (bx - uy * half, by + ux * half),
          (bx + uy * half, by - ux * half)]


def path_is_clear(path: tuple[float, float, float, float], own: Sequence[Box],
                  others: Sequence[Box], resolution: int) -> bool:
  """Whether a drawn arrow along ``path`` stays off every object's box.

  Its outline (the shaft and the head's edges, plus half the stroke width)
  must stay inside the image, 2 px away from ``others`` (boxes of objects it
  does not join) and 0.5 px away from ``own`` (the two boxes it joins), so
  its pixels never mix with an object's. A line needs less room than the
  arrow, so the same test serves both.
  """
  x0, y0, x1, y1 = path
  tip, c1, c2 = arrow_head(path, resolution)
  pts = np.concatenate([_segment((x0, y0), (x1, y1)), _segment(tip, c1),
                        _segment(tip, c2), _segment(c1, c2)])
  half = stroke_width(resolution) / 2
  return bool(pts.min() >= half and pts.max() <= resolution - half and
              _min_distance(pts, others) >= 2 + half and
              _min_distance(pts, own) >= 0.5 + half)


def _segment(a, b) -> np.ndarray:
  """Points every 0.25 px along the segment from a to b."""
  n = max(2, int(math.hypot(b[0] - a[0], b[1] - a[1]) * 4) + 1)
  t = np.linspace(0.0, 1.0, n)[:, None]
  return np.asarray(a) + (np.asarray(b) - np.asarray(a)) * t


def _min_distance(pts: np.ndarray, boxes: Sequence[Box]) -> float:
  if not boxes:
    return math.inf
  b = np.asarray(boxes, np.float64)[:, None, :]
  dx = np.maximum(np.maximum(b[..., 0] - pts[:, 0], pts[:, 0] - b[..., 2]), 0)
  dy = np.maximum(np.maximum(b[..., 1] - pts[:, 1], pts[:, 1] - b[..., 3]), 0)
  return float(np.hypot(dx, dy).min())


def _centre(box: Box) -> tuple[float, float]:
  return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _exit(box: Box, ux: float, uy: float) -> float:
  """Distance from a box's centre to its boundary along (ux, uy)."""
  half_w, half_h = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
  tx = half_w / abs(ux) if ux else math.inf
  ty = half_h / abs(uy) if uy else math.inf
  return min(tx, ty)
