"""Records of the synthetic world and its grain data source.

``make_record`` turns (split, index, cfg) into one record of the source
contract of ``vlg/data/sources.py``; ``SyntheticSource`` serves them lazily
through grain's RandomAccessDataSource protocol. Layout, texts and annotation
flags draw from separate streams (``world.scene_rng``), so changing a text or
annotation knob never moves a pixel. No jax here: grain workers import this.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from vlg.synthetic import contrast
from vlg.synthetic import language
from vlg.synthetic import layout
from vlg.synthetic import render
from vlg.synthetic import world

Record = dict[str, Any]


def scene_record(scene: world.Scene, cfg: world.WorldConfig,
                 rng: np.random.Generator,
                 caption_texts: list[str] | None = None) -> Record:
  """The texts and annotations of ``scene`` (all record fields but the
  image, image id and flags); ``rng`` draws the texts, and the captions
  from ``caption_texts`` when given (a contrast pair's)."""
  res = scene.resolution
  boxes = [o.norm_box(res) for o in scene.objects]
  objects = [{'label': o.label, 'category': o.category, 'color': o.colour,
              'size': o.size, 'box': box}
             for o, box in zip(scene.objects, boxes)]
  relations = [{'subject': s, 'object': o, 'predicate': p,
                'subject_label': scene.objects[s].label,
                'object_label': scene.objects[o].label,
                'subject_box': boxes[s].copy(), 'object_box': boxes[o].copy()}
               for s, p, o in scene.relations]
  return {
      'captions': (language.captions(scene, rng, cfg)
                   if caption_texts is None else
                   contrast.sample_captions(caption_texts, rng, cfg)),
      'objects': objects,
      'regions': [{'text': text, 'box': boxes[i].copy()}
                  for text, i in language.regions(scene, rng)],
      'relations': relations,
      'paragraph': language.paragraph(scene),
  }


def scene_and_record(split: str, index: int, cfg: world.WorldConfig
                     ) -> tuple[world.Scene, Record]:
  """The scene of image ``index`` and its :func:`scene_record` (a contrast
  pair's twin and captions where ``index`` is in one); what
  :func:`make_record` draws, for tools that rebuild a batch's truth."""
  rng = world.scene_rng(split, index, cfg, stream=1)
  contrast_pair = contrast.pair(split, index, cfg)
  if contrast_pair is None:
    scene = layout.generate_scene(split, index, cfg)
    return scene, scene_record(scene, cfg, rng)
  side = index % 2
  scene = (contrast_pair.scene, contrast_pair.twin)[side]
  record = scene_record(scene, cfg, rng, contrast_pair.texts[side])
  record['mirror'] = contrast.pair_mirrored(split, index, cfg)
  return scene, record


def make_record(split: str, index: int,
                cfg: world.WorldConfig = world.WorldConfig()) -> Record:
  """Image ``index`` of ``split`` as a record::

    {'image': uint8 [R, R, 3], 'image_id': int (split_code * 10**9 + index),
     'captions': [str] * num_captions,
     'objects': [{'label', 'category', 'color', 'size',
                  'box': float32 (cx, cy, w, h)}],
     'regions': [{'text', 'box'}],
     'relations': [{'subject', 'object', 'predicate', 'subject_label',
                    'object_label', 'subject_box', 'object_box'}],
     'paragraph': str, 'has_graph': bool, 'has_boxes': bool,
     'mirror': bool (contrast pairs only)}

  ``mirror`` is the pipeline's flip decided once for both images of a
  contrast pair (``contrast.pair_mirrored``). ``has_graph`` / ``has_boxes``
  flag the images whose scene graph / boxes count as annotated (fractions
  ``graph_rate`` / ``box_rate``): a typed part with ``flagged_only`` reads
  only those (``vlg/data/parts/common.py``); the fields are filled for
  every image, so evaluators and the other parts can always read them.
  """
  scene, texts = scene_and_record(split, index, cfg)
  record = {'image': render.render_scene(scene, cfg),
            'image_id': world.image_id(split, index)}
  record.update(texts)
  record.update(annotation_flags(split, index, cfg))
  return record


def annotation_flags(split: str, index: int,
                     cfg: world.WorldConfig = world.WorldConfig()
                     ) -> dict[str, bool]:
  """``has_graph`` and ``has_boxes`` of image ``index``, as
  :func:`make_record` sets them, without drawing the scene: a part that
  reads only flagged images (``input.parts.<name>.flagged_only``) skips the
  others without rendering them."""
  flags = world.scene_rng(split, index, cfg, stream=2).random(2)
  return {'has_graph': bool(flags[0] < cfg.graph_rate),
          'has_boxes': bool(flags[1] < cfg.box_rate)}


class SyntheticSource:
  """``num_examples`` synthetic records of one split, generated on access.

  Implements grain's RandomAccessDataSource protocol (``__len__``,
  ``__getitem__``); holds only the split, config and length, so it pickles
  into grain worker processes. ``group_size`` is 2 when the world has
  contrast pairs: the pipeline shuffles pairs, not images, so twins meet
  in a batch.
  """

  def __init__(self, split: str = 'train',
               cfg: world.WorldConfig = world.WorldConfig(),
               num_examples: int = 100_000):
    world.split_code(split)  # Fails early on an unknown split.
    if not 0 < num_examples <= 10**9:
      raise ValueError(f'num_examples={num_examples} not in (0, 10**9]')
    self.split, self.cfg, self.num_examples = split, cfg, int(num_examples)
    self.group_size = 2 if cfg.contrast_rate > 0 else 1

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index) -> Record:
    index = operator.index(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(f'index {index} out of range for {self.describe()}')
    return make_record(self.split, index, self.cfg)

  def annotation_flags(self, index: int) -> dict[str, bool]:
    """Record ``index``'s ``has_graph`` / ``has_boxes`` without making it."""
    return annotation_flags(self.split, operator.index(index), self.cfg)

  def describe(self) -> str:
    """A short description for logs."""
    c = self.cfg
    return (f'SyntheticSource(split={self.split!r}, n={self.num_examples}, '
            f'resolution={c.resolution}, seed={c.seed}, '
            f'objects={c.min_objects}-{c.max_objects}, '
            f'heldout={len(c.heldout)}, contrast_rate={c.contrast_rate})')

  __repr__ = describe
