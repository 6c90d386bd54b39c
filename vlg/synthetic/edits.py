"""Edits of a laid-out scene, for benchmark minimal pairs.

Each edit returns a new scene whose layout still obeys the world's rules
(``check_scene``) and whose scene graph is recomputed, or raises
``world.PlacementError`` when the edited layout would break them (the caller
then tries another scene):

- ``edit_object``: change one object's category, colour or size in place
  (existence, attribute and plurality foils; SVO subject/object swaps);
- ``swap_positions``: exchange where two objects are (actant swap,
  Winoground word order: 'a red circle above a blue square' becomes true of
  the other image);
- ``reverse_action``: flip an arrow's direction or which shape is on top
  (actant swap of a drawn verb);
- ``with_actions``: replace the drawn actions (verb replacement: an arrow
  becomes a line).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

from vlg.synthetic import geometry
from vlg.synthetic import layout
from vlg.synthetic import world


def check_scene(scene: world.Scene) -> list[str]:
  """The ways ``scene`` breaks the layout rules (empty when it is valid).

  Rules: boxes inside the image with their size class's side; objects at
  least ``world.min_gap`` apart unless touching, inside a ring or covering
  (TOUCH_SHAPES, boxes overlapping, the coverer on a higher layer); arrows and
  lines long enough and clear of other objects.
  """
  res, objs, problems = scene.resolution, scene.objects, []
  for k, obj in enumerate(objs):
    lo, hi = world.side_range(obj.size, res)
    if min(obj.box) < 0 or max(obj.box) > res:
      problems.append(f'object {k} {obj.box} is outside the image')
    if not lo <= obj.side <= hi:
      problems.append(f'object {k} side {obj.side} is not {obj.size}')
  covers = {frozenset((a.subject, a.object)): a for a in scene.actions
            if a.predicate == 'covers'}
  for i, j in itertools.combinations(range(len(objs)), 2):
    cover = covers.get(frozenset((i, j)))
    if cover is not None:
      s, o = objs[cover.subject], objs[cover.object]
      if (max(geometry.gaps(s.box, o.box)) >= 0 or s.layer <= o.layer or
          s.category not in geometry.COVER_SHAPES or
          o.category not in geometry.TOUCH_SHAPES or s.colour == o.colour):
        problems.append(f'object {cover.subject} does not cover {cover.object}')
      continue
    if max(geometry.gaps(objs[i].box, objs[j].box)) >= world.min_gap(res):
      continue
    if not any(geometry.relation_truth(scene, i, p, j)
               for p in ('touching', 'inside', 'contains')):
      problems.append(f'objects {i} and {j} are too close')
  for a in scene.actions:
    if a.predicate != 'covers' and not layout.path_is_drawable(
        objs, a.subject, a.object, res):
      problems.append(f'the {a.predicate!r} path {a.subject}->{a.object} is '
                      'too short or crosses an object')
  return problems


def _finish(scene: world.Scene, rng: np.random.Generator | None,
            comparative_rate: float) -> world.Scene:
  problems = check_scene(scene)
  if problems:
    raise world.PlacementError('; '.join(problems))
  rng = rng if rng is not None else np.random.default_rng(0)
  return dataclasses.replace(scene, relations=geometry.scene_graph(
      scene.objects, scene.actions, rng, comparative_rate))


def _recentre(side: int, centre2: tuple[int, int]) -> tuple[int, int, int, int]:
  """A box of ``side`` whose doubled centre is ``centre2`` (rounded down)."""
  x0, y0 = (centre2[0] - side) // 2, (centre2[1] - side) // 2
  return (x0, y0, x0 + side, y0 + side)


def _centre2(box) -> tuple[int, int]:
  return box[0] + box[2], box[1] + box[3]


def edit_object(scene: world.Scene, i: int,
                rng: np.random.Generator | None = None, *,
                category: str | None = None, colour: str | None = None,
                size: str | None = None,
                comparative_rate: float = 0.3) -> world.Scene:
  """Object ``i`` with a new category, colour and/or size, same centre.

  A new size draws a new side (from ``rng``) and re-centres the box; the
  drawing shade keeps its jitter. Raises ``world.PlacementError`` when the
  result breaks a layout rule (e.g. a bigger shape now too close).
  """
  obj = scene.objects[i]
  spec = world.ObjectSpec(category or obj.category, colour or obj.colour,
                          size or obj.size)
  box = obj.box
  if spec.size != obj.size:
    lo, hi = world.side_range(spec.size, scene.resolution)
    gen = rng if rng is not None else np.random.default_rng(0)
    box = _recentre(int(gen.integers(lo, hi + 1)), _centre2(obj.box))
  shift = np.array(obj.rgb) - np.array(world.PALETTE[obj.colour])
  rgb = np.clip(np.array(world.PALETTE[spec.colour]) + shift, 0, 255)
  new = dataclasses.replace(obj, category=spec.category, colour=spec.colour,
                            size=spec.size, box=box,
                            rgb=tuple(int(v) for v in rgb))
  objects = scene.objects[:i] + (new,) + scene.objects[i + 1:]
  return _finish(dataclasses.replace(scene, objects=objects), rng,
                 comparative_rate)


def swap_positions(scene: world.Scene, i: int, j: int,
                   rng: np.random.Generator | None = None,
                   comparative_rate: float = 0.3) -> world.Scene:
  """Objects ``i`` and ``j`` exchange places (each keeps its own size).

  Raises:
    ValueError: one of them is in a construct (touching, inside, covers).
    world.PlacementError: the swapped layout breaks a layout rule.
  """
  for k, m in itertools.permutations(range(len(scene.objects)), 2):
    if k in (i, j) and any(geometry.relation_truth(scene, a, p, b) for p in (
        'touching', 'inside', 'contains', 'covers') for a, b in ((k, m),
                                                                 (m, k))):
      raise ValueError(f'object {k} is in a construct with object {m}')
  a, b = scene.objects[i], scene.objects[j]
  objects = list(scene.objects)
  objects[i] = dataclasses.replace(a, box=_recentre(a.side, _centre2(b.box)))
  objects[j] = dataclasses.replace(b, box=_recentre(b.side, _centre2(a.box)))
  return _finish(dataclasses.replace(scene, objects=tuple(objects)), rng,
                 comparative_rate)


def reverse_action(scene: world.Scene, k: int,
                   rng: np.random.Generator | None = None,
                   comparative_rate: float = 0.3) -> world.Scene:
  """Action ``k`` reversed: the arrow points the other way, or the covered
  shape is drawn on top instead."""
  act = scene.actions[k]
  actions = list(scene.actions)
  actions[k] = world.Action(act.predicate, act.object, act.subject)
  objects = list(scene.objects)
  if act.predicate == 'covers':
    s, o = objects[act.subject], objects[act.object]
    objects[act.subject] = dataclasses.replace(s, layer=o.layer)
    objects[act.object] = dataclasses.replace(o, layer=s.layer)
  return _finish(dataclasses.replace(scene, objects=tuple(objects),
                                     actions=tuple(actions)), rng,
                 comparative_rate)


def with_actions(scene: world.Scene, actions: Sequence[world.Action],
                 rng: np.random.Generator | None = None,
                 comparative_rate: float = 0.3) -> world.Scene:
  """The scene with its drawn actions replaced by ``actions``.

  Turning an arrow into a line (or back) keeps the geometry; a 'covers'
  action must join a pair that is laid out overlapping.
  """
  for a in actions:
    if a.predicate not in world.DRAWN_RELATIONS:
      raise ValueError(f'{a.predicate!r} is not one of '
                       f'{world.DRAWN_RELATIONS}')
  return _finish(dataclasses.replace(scene, actions=tuple(actions)), rng,
                 comparative_rate)
