"""The synthetic world's vocabulary, configuration and scene data types.

A scene is a square canvas of ``resolution`` pixels holding 1–6 coloured
shapes on a plain or lightly textured dark background, plus drawn "actions"
(arrows, lines, one shape covering another). Everything about a scene is
known exactly: each object's category, colour name, size class and pixel box.

Boxes are integer pixel boxes ``(x0, y0, x1, y1)``, half-open: the object's
pixels lie in columns ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1`` and touch all
four sides. Normalised boxes are ``(cx, cy, w, h)`` relative to the image.

Colours are far apart in RGB (every pair differs by at least 90 in some
channel, more than the ±12 per-channel shade jitter of each object and the
pipeline's ±10% brightness jitter can close together), so neither can change
a colour's name; backgrounds are dark greys (every channel below 100) that no
object colour approaches.

The relations between objects are defined in ``geometry.py``; sampling and
layout live in ``layout.py``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

CATEGORIES = ('circle', 'square', 'triangle', 'star', 'cross', 'diamond',
              'hexagon', 'ring')
PALETTE = {
    'red': (225, 45, 45),
    'green': (50, 185, 60),
    'blue': (55, 95, 235),
    'yellow': (240, 225, 50),
    'purple': (160, 70, 210),
    'orange': (250, 130, 25),
    'cyan': (40, 205, 215),
}
COLOURS = tuple(PALETTE)
SIZES = ('small', 'large')
# Fixed order: the index of a predicate is its class id in relation objectives.
RELATIONS = ('left of', 'right of', 'above', 'below', 'near', 'far from',
             'inside', 'contains', 'touching', 'bigger than', 'smaller than',
             'same colour as', 'points at', 'is connected to', 'covers')
# Predicates made visible by drawing: an arrow, a line, a shape on top.
DRAWN_RELATIONS = ('points at', 'is connected to', 'covers')
SPLITS = {'train': 0, 'val': 1, 'test': 2}
DEFAULT_HELDOUT = (('red', 'star'), ('blue', 'hexagon'), ('green', 'triangle'))
ACTION_RGB = (235, 235, 235)
SHADE_JITTER = 12
MIN_RESOLUTION = 48


class PlacementError(ValueError):
  """A scene with the requested objects and relations could not be laid out."""


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Knobs of the synthetic world (all defaults give the documented regime).

  Attributes:
    resolution: side of the square image in pixels (>= 48).
    seed: world seed; a scene is determined by (split, index, seed).
    min_objects: fewest objects a random scene asks for.
    max_objects: most objects (<= 6); crowded scenes may place fewer.
    num_captions: captions per image.
    caption_relation_rate: fraction of captions that state a relation.
    caption_sentence_rate: fraction of those that are sentences ('the star
      is above the ring'), not phrases ('a star above a ring').
    caption_statement_rate: fraction of captions that are statements of
      'there' clauses ('there are exactly 2 stars and there is no ring').
    statement_min_clauses: a statement has at least this many clauses
    statement_max_clauses: and at most this many.
    count_rate: fraction of coarse captions that add a count ('two stars').
    caption_min_named: a coarse caption names at least this many objects
      (all of them in a smaller scene).
    caption_max_named: and at most this many.
    caption_total_rate: chance that a coarse caption naming every object of
      its scene starts with their number ('one object: a red circle').
    caption_detail_weights: relative chances that a noun phrase of a coarse
      caption names an object by category alone ('a circle'), colour ('a red
      circle'), size ('a large circle') or all three (see
      ``language.DETAILS``). With the defaults a random other caption is true
      of an image in under 1% of in-batch pairs, as in COCO-like data; the
      loose captions of ``LOOSE_CAPTIONS`` (1–3 objects, a fifth of them by
      category alone) are true of another image 5% of the time and of some
      other image of a batch of 32 for ~70% of images (``truth.caption_stats``).
    graph_rate: fraction of images flagged as carrying a scene graph.
    box_rate: fraction of images flagged as carrying box annotations.
    action_rate: chance, tried twice per scene, of drawing an action (an
      arrow, a line or one shape covering another).
    touch_rate: chance that a scene has a pair of touching shapes.
    inside_rate: chance that a scene has a small shape inside a ring.
    repeat_rate: chance that an object repeats an earlier object's category
      (so counts and plurals occur).
    comparative_rate: chance that a pair's scene-graph entry adds a
      comparative ('bigger than', 'same colour as').
    texture_rate: fraction of backgrounds that are textured, not plain.
    heldout: (colour, category) compositions the 'train' split never shows.
    supersample: drawing scale before box-filter downsampling (anti-alias).
    contrast_rate: fraction of index pairs (2k, 2k + 1) that are contrast
      pairs: image 2k + 1 is image 2k after one minimal edit and the captions
      of both state relations that tell them apart (``contrast.py``).
    contrast_captions: a contrast pair's captions: 'independent' (each
      image's drawn from its own candidates) or 'mirrored' (one caption
      each, the twin's made of the same words: 'the red circle is left of
      the blue square' / 'the blue square is left of the red circle', as
      in counterfactual caption collections).
  """
  resolution: int = 64
  seed: int = 0
  min_objects: int = 1
  max_objects: int = 6
  num_captions: int = 5
  caption_relation_rate: float = 0.1
  caption_sentence_rate: float = 0.5
  caption_statement_rate: float = 0.2
  statement_min_clauses: int = 2
  statement_max_clauses: int = 3
  count_rate: float = 0.2
  caption_min_named: int = 3
  caption_max_named: int = 4
  caption_total_rate: float = 1.0
  caption_detail_weights: tuple[float, ...] = (0.0, 0.5, 0.0, 0.5)
  graph_rate: float = 0.15
  box_rate: float = 0.15
  action_rate: float = 0.25
  touch_rate: float = 0.1
  inside_rate: float = 0.1
  repeat_rate: float = 0.25
  comparative_rate: float = 0.3
  texture_rate: float = 0.5
  heldout: tuple[tuple[str, str], ...] = DEFAULT_HELDOUT
  supersample: int = 2
  contrast_rate: float = 0.0
  contrast_captions: str = 'independent'

  def __post_init__(self):
    # Configs arrive from ml_collections as lists; keep the dataclass hashable.
    heldout = tuple((str(c), str(k)) for c, k in self.heldout)
    object.__setattr__(self, 'heldout', heldout)
    weights = tuple(float(w) for w in self.caption_detail_weights)
    object.__setattr__(self, 'caption_detail_weights', weights)
    if len(weights) != 4 or min(weights) < 0 or sum(weights) <= 0:
      raise ValueError('caption_detail_weights needs 4 non-negative weights '
                       '(category, colour, size, full) with a positive sum, '
                       f'got {weights}')
    if not 1 <= self.caption_min_named <= self.caption_max_named:
      raise ValueError('need 1 <= caption_min_named <= caption_max_named, '
                       f'got {self.caption_min_named}, '
                       f'{self.caption_max_named}')
    for colour, category in heldout:
      if colour not in PALETTE or category not in CATEGORIES:
        raise ValueError(f'heldout composition {(colour, category)} is not in '
                         f'the vocabulary; colours {COLOURS}, categories '
                         f'{CATEGORIES}')
    if self.resolution < MIN_RESOLUTION:
      raise ValueError(f'resolution={self.resolution}; need >= '
                       f'{MIN_RESOLUTION} for shapes to stay recognisable')
    if not 1 <= self.min_objects <= self.max_objects <= 6:
      raise ValueError('need 1 <= min_objects <= max_objects <= 6, got '
                       f'{self.min_objects}, {self.max_objects}')
    if not 1 <= self.statement_min_clauses <= self.statement_max_clauses:
      raise ValueError('need 1 <= statement_min_clauses <= '
                       f'statement_max_clauses, got '
                       f'{self.statement_min_clauses}, '
                       f'{self.statement_max_clauses}')
    if self.caption_relation_rate + self.caption_statement_rate > 1:
      raise ValueError('caption_relation_rate + caption_statement_rate must '
                       'be at most 1, got '
                       f'{self.caption_relation_rate} + '
                       f'{self.caption_statement_rate}')
    for name in ('caption_relation_rate', 'caption_sentence_rate',
                 'caption_statement_rate', 'count_rate', 'caption_total_rate',
                 'graph_rate',
                 'box_rate', 'action_rate', 'touch_rate', 'inside_rate',
                 'repeat_rate', 'comparative_rate', 'texture_rate',
                 'contrast_rate'):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f'{name}={getattr(self, name)} is not in [0, 1]')
    if self.contrast_captions not in CONTRAST_CAPTIONS:
      raise ValueError(f'contrast_captions={self.contrast_captions!r}; '
                       f'valid: {CONTRAST_CAPTIONS}')
    if self.supersample < 1 or self.num_captions < 1 or self.seed < 0:
      raise ValueError('need supersample >= 1, num_captions >= 1, seed >= 0')


# WorldConfig.contrast_captions values.
CONTRAST_CAPTIONS = ('independent', 'mirrored')

# Fields added after tokenizers, vision towers and studies were first keyed
# on a world's settings, each with the value that leaves the world as it
# was: :func:`settings_for_key` drops them at that value, so what was
# cached before they existed still matches.
ADDED_FIELDS = {'contrast_captions': 'independent'}


def settings_for_key(settings: dict) -> dict:
  """A world's settings (``dataclasses.asdict`` or a config's dict) without
  the :data:`ADDED_FIELDS` that are at their neutral value."""
  return {k: v for k, v in settings.items()
          if not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])}

# The coarser captions of earlier worlds, for ablations:
# ``WorldConfig(**LOOSE_CAPTIONS)`` or, in a config,
# ``input.data.synthetic.world.caption_min_named=1`` and so on.
LOOSE_CAPTIONS = dict(caption_min_named=1, caption_max_named=3,
                      caption_total_rate=0.0,
                      caption_detail_weights=(0.2, 0.35, 0.1, 0.35))


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
  """What an object is, before it is placed: the input of ``scene_from_spec``.

  ``side`` (pixels) is drawn from the size class's range when None.
  """
  category: str
  colour: str
  size: str
  side: int | None = None

  def __post_init__(self):
    if self.category not in CATEGORIES:
      raise ValueError(f'category {self.category!r} not in {CATEGORIES}')
    if self.colour not in PALETTE:
      raise ValueError(f'colour {self.colour!r} not in {COLOURS}')
    if self.size not in SIZES:
      raise ValueError(f'size {self.size!r} not in {SIZES}')


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """A placed object: its attributes, exact pixel box and drawing colour.

  ``layer`` orders drawing (higher on top); a shape that covers another has
  the higher layer.
  """
  category: str
  colour: str
  size: str
  box: tuple[int, int, int, int]
  rgb: tuple[int, int, int]
  layer: int = 0

  @property
  def label(self) -> str:
    """The full description, e.g. 'large red circle'."""
    return f'{self.size} {self.colour} {self.category}'

  @property
  def side(self) -> int:
    return max(self.box[2] - self.box[0], self.box[3] - self.box[1])

  def norm_box(self, resolution: int) -> np.ndarray:
    """The box as float32 (cx, cy, w, h) relative to the image."""
    x0, y0, x1, y1 = self.box
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0],
                    np.float32) / np.float32(resolution)


@dataclasses.dataclass(frozen=True)
class Action:
  """A drawn relation: 'points at' (arrow from subject to object), 'is
  connected to' (a line between them) or 'covers' (subject drawn on top)."""
  predicate: str
  subject: int
  object: int


@dataclasses.dataclass(frozen=True)
class Background:
  """A background: 'plain', 'gradient' (two colours) or 'texture' (smooth
  low-frequency noise of amplitude ``amplitude`` around ``rgb``, from
  ``seed``)."""
  kind: str
  rgb: tuple[int, int, int]
  rgb2: tuple[int, int, int] = (0, 0, 0)
  seed: int = 0
  amplitude: int = 0


@dataclasses.dataclass(frozen=True)
class Scene:
  """A laid-out scene: objects, drawn actions, scene graph and background.

  ``relations`` is the scene graph: (subject, predicate, object) triples of
  object indices, each true by the definitions in ``geometry.py``. It is a
  curated selection (every drawn action, one spatial relation per pair,
  comparatives now and then), not every true statement; ask
  ``geometry.relation_truth`` about any other.
  """
  resolution: int
  objects: tuple[SceneObject, ...]
  actions: tuple[Action, ...]
  relations: tuple[tuple[int, str, int], ...]
  background: Background


def split_code(split: str) -> int:
  """The integer code of a split ('train' 0, 'val' 1, 'test' 2)."""
  if split not in SPLITS:
    raise ValueError(f'split {split!r} is not one of {list(SPLITS)}')
  return SPLITS[split]


def image_id(split: str, index: int) -> int:
  """An image id unique across splits: split_code * 10**9 + index."""
  if not 0 <= index < 10**9:
    raise IndexError(f'index {index} out of range [0, 10**9)')
  return split_code(split) * 10**9 + index


def scene_rng(split: str, index: int, cfg: WorldConfig,
              stream: int = 0) -> np.random.Generator:
  """The generator of one image's draws; streams keep layout (0), texts (1)
  and annotation flags (2) independent, so text knobs never move pixels."""
  seq = np.random.SeedSequence([cfg.seed, split_code(split), index, stream])
  return np.random.Generator(np.random.PCG64(seq))


def side_range(size: str, resolution: int) -> tuple[int, int]:
  """Inclusive range of box sides (pixels) of a size class.

  Large sides are at least 1.6 times every small side, so 'bigger than' is
  never borderline.
  """
  small = (max(5, round(0.12 * resolution)), round(0.155 * resolution))
  if size == 'small':
    return small
  if size == 'large':
    return math.ceil(1.6 * small[1]), round(0.34 * resolution)
  raise ValueError(f'size {size!r} not in {SIZES}')


def min_gap(resolution: int) -> int:
  """Least gap (pixels) between boxes of objects not deliberately related."""
  return max(2, round(0.03 * resolution))


def allowed_colours(category: str, split: str,
                    cfg: WorldConfig) -> tuple[str, ...]:
  """Colours a ``category`` may take in ``split`` (train hides held-out)."""
  if split != 'train':
    return COLOURS
  return tuple(c for c in COLOURS if (c, category) not in cfg.heldout)
