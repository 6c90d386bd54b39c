"""The ``vsg`` part: an image and its verbalised scene graph
(docs/objectives.md §4); its objective is ``vlg/objectives/vsg.py``.

Slots::

  vsg_image, vsg_image_id, vsg_text_ids / vsg_text_mask / vsg_mlm_ids /
  vsg_mlm_labels [Lv]
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from vlg.data import ops
from vlg.data import relations as relations_lib
from vlg.data.parts import common


class Transform(grain.transforms.RandomMap):
  """Record → (image, verbalised scene graph) of K sampled triplets."""

  prefix = 'vsg_'
  requires = ('relations',)
  # With flagged_only, only records flagged as carrying a scene graph.
  flag = 'has_graph'

  def __init__(self, tokenizer, input_cfg, part_cfg):
    self.resolution = int(input_cfg.resolution)
    self.augment = tuple(a for a in input_cfg.augment if a != 'flip')
    self.texts = common.Texts(tokenizer, 10_000,
                              float(input_cfg.mlm_probability))
    self.k = int(part_cfg.k)
    self.sort = bool(part_cfg.get('sort', True))
    self.max_len = int(part_cfg.max_text_len)
    self.crop_scale = tuple(input_cfg.crop_scale)

  def random_map(self, record: dict[str, Any], rng: np.random.Generator):
    image = ops.to_square(record['image'])
    rels = list(record.get('relations', []))
    boxes = ops.box_array([o.get('box') for o in record.get('objects', [])],
                          'object box')
    if 'crop' in self.augment:  # Keeps every object: no triplet is cut.
      image, _, _ = ops.random_square_crop(image, boxes, rng, self.crop_scale)
    image = ops.resize(image, self.resolution)
    if 'brightness' in self.augment:
      image = ops.brightness(image, rng)
    ids, mask = relations_lib.encode_vsg(
        self.texts.tokenizer, relations_lib.verbalise_scene_graph(
            rels, self.k, rng, sort=self.sort), self.max_len)
    mlm_ids, mlm_labels = self.texts.mask(ids, rng)
    out = {'image': image, 'image_id': np.int32(
        int(record['image_id']) % (2**31 - 1)),
           'text_ids': ids, 'text_mask': mask, 'mlm_ids': mlm_ids,
           'mlm_labels': mlm_labels}
    return common.prefixed(self.prefix, out, record)

  @classmethod
  def example_spec(cls, input_cfg, part_cfg):
    """(shape, dtype) of every slot :meth:`random_map` returns."""
    res, text = int(input_cfg.resolution), ((int(part_cfg.max_text_len),),
                                            np.int32)
    return common.prefixed_spec(cls.prefix, {
        'image': ((res, res, 3), np.uint8), 'image_id': ((), np.int32),
        'text_ids': text, 'text_mask': text, 'mlm_ids': text,
        'mlm_labels': text})
