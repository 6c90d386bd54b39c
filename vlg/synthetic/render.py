"""Drawing a scene to pixels (PIL and numpy only: runs in grain workers).

Scenes are drawn at ``supersample`` times the resolution and box-filtered down,
which anti-aliases edges cheaply. Each shape is drawn through the supersampled
pixel grid of its box (PIL's coordinates are inclusive), so after
downsampling its pixels lie within its box and reach every side (pointed tips
reach it with a partly covered pixel). Draw order: background, objects by
layer (a covering shape on top), then arrows and lines, which by layout never
cross an object.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from PIL import ImageDraw

from vlg.synthetic import geometry
from vlg.synthetic import world


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
  pts = []
  for k in range(2 * points):
    angle = -math.pi / 2 + k * math.pi / points
    r = 1.0 if k % 2 == 0 else inner
    pts.append((r * math.cos(angle), r * math.sin(angle)))
  return _fill_unit_square(pts)


def _fill_unit_square(pts):
  """Stretches a polygon to span [0, 1] on both axes (a tight box)."""
  xs, ys = [p[0] for p in pts], [p[1] for p in pts]
  return [((x - min(xs)) / (max(xs) - min(xs)),
           (y - min(ys)) / (max(ys) - min(ys))) for x, y in pts]


_T0, _T1 = 1 / 3, 2 / 3  # The cross's arms are a third of its side wide.
# Polygon vertices in unit-box coordinates (x right, y down).
POLYGONS = {
    'triangle': [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)],
    'diamond': [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)],
    'hexagon': [(0.25, 0.0), (0.75, 0.0), (1.0, 0.5), (0.75, 1.0),
                (0.25, 1.0), (0.0, 0.5)],
    'cross': [(_T0, 0.0), (_T1, 0.0), (_T1, _T0), (1.0, _T0), (1.0, _T1),
              (_T1, _T1), (_T1, 1.0), (_T0, 1.0), (_T0, _T1), (0.0, _T1),
              (0.0, _T0), (_T0, _T0)],
    'star': _star(),
}


def _background(bg: world.Background, size: int) -> Image.Image:
  """The background image, ``size`` pixels square."""
  if bg.kind == 'plain':
    return Image.new('RGB', (size, size), bg.rgb)
  if bg.kind == 'gradient':
    a, b = np.array(bg.rgb), np.array(bg.rgb2)
    mid = (a + b) // 2
    # seed picks the direction: left-right, top-bottom or a diagonal.
    grid = np.array({0: [[a, b], [a, b]], 1: [[a, a], [b, b]],
                     2: [[a, mid], [mid, b]], 3: [[mid, a], [b, mid]]}[
                         bg.seed % 4])
  elif bg.kind == 'texture':
    rng = np.random.default_rng(bg.seed)
    noise = rng.integers(-bg.amplitude, bg.amplitude + 1, (6, 6, 3))
    grid = np.array(bg.rgb) + noise
  else:
    raise ValueError(f'unknown background kind {bg.kind!r}')
  small = Image.fromarray(np.clip(grid, 0, 100).astype(np.uint8))
  return small.resize((size, size), Image.Resampling.BILINEAR)


def _draw_object(draw: ImageDraw.ImageDraw, obj: world.SceneObject,
                 ss: int) -> None:
  x0, y0, x1, y1 = obj.box
  # Inclusive supersampled pixel coordinates of the box.
  a0, b0, a1, b1 = x0 * ss, y0 * ss, x1 * ss - 1, y1 * ss - 1
  if obj.category == 'square':
    draw.rectangle([a0, b0, a1, b1], fill=obj.rgb)
  elif obj.category == 'circle':
    draw.ellipse([a0, b0, a1, b1], fill=obj.rgb)
  elif obj.category == 'ring':
    # Rounded down, so the hole is at least RING_HOLE of the side.
    width = int(obj.side * ss * (1 - geometry.RING_HOLE) / 2)
    draw.ellipse([a0, b0, a1, b1], outline=obj.rgb, width=max(1, width))
  else:
    draw.polygon([(a0 + u * (a1 - a0), b0 + v * (b1 - b0))
                  for u, v in POLYGONS[obj.category]], fill=obj.rgb)


def _draw_path(draw: ImageDraw.ImageDraw, scene: world.Scene,
               action: world.Action, ss: int) -> None:
  res = scene.resolution
  path = geometry.arrow_path(scene.objects[action.subject].box,
                             scene.objects[action.object].box, res)
  if path is None:
    raise ValueError(f'{action} cannot be drawn: the objects are too close')

  def px(x: float, y: float) -> tuple[float, float]:
    # Continuous image coordinates -> supersampled pixel-centre coordinates.
    return x * ss - 0.5, y * ss - 0.5

  start, end = px(*path[:2]), px(*path[2:])
  if action.predicate == 'points at':
    tip, c1, c2 = (px(*p) for p in geometry.arrow_head(path, res))
    draw.polygon([tip, c1, c2], fill=world.ACTION_RGB)
    end = ((c1[0] + c2[0]) / 2, (c1[1] + c2[1]) / 2)
  width = max(1, round(geometry.stroke_width(res) * ss))
  draw.line([start, end], fill=world.ACTION_RGB, width=width)


def render_scene(scene: world.Scene,
                 cfg: world.WorldConfig | None = None) -> np.ndarray:
  """The scene's image: uint8 [R, R, 3], R = ``scene.resolution``.

  Args:
    scene: what to draw.
    cfg: supplies ``supersample`` (2 when None).
  """
  ss = cfg.supersample if cfg is not None else 2
  res = scene.resolution
  # The background is smooth: made at the resolution, enlarged without blur.
  image = _background(scene.background, res)
  if ss > 1:
    image = image.resize((res * ss, res * ss), Image.Resampling.NEAREST)
  draw = ImageDraw.Draw(image)
  for obj in sorted(scene.objects, key=lambda o: o.layer):
    _draw_object(draw, obj, ss)
  for action in scene.actions:
    if action.predicate != 'covers':
      _draw_path(draw, scene, action, ss)
  if ss > 1:
    image = image.reduce(ss)
  return np.array(image)
