"""The ``entity`` part: X-VLM's (box, text) pairs of one image
(docs/objectives.md §3.1–3.3); its objective is ``vlg/objectives/entity.py``.

Slots, M = ``max_pairs``::

  ent_image        uint8 [R, R, 3]   one image per row
  ent_text_ids     int32 [M, L]      box texts (object labels, region texts,
  ent_text_mask    int32 [M, L]      and optionally one whole-image caption)
  ent_mlm_ids      int32 [M, L]
  ent_mlm_labels   int32 [M, L]      -100 on padding pairs
  ent_box          float32 [M, 4]    (cx, cy, w, h) in the augmented image
  ent_patch_mask   int32 [M, 1+G*G]  [CLS] + patches the box covers
  ent_valid        int32 [M]         1 on real pairs
  ent_is_box       int32 [M]         1 on real box pairs (not whole-image)
  ent_text_group   int32 [M]         equal for identical texts
  ent_box_group    int32 [M]         equal for pairs of the same box of the
                                     row (the whole-image pair has its own
                                     id); -1 on padding, and on every pair
                                     when ``group_by_box`` is False

Pairs with equal ``ent_text_group``, and pairs of one row with equal
``ent_box_group``, show the model the same text or the same box concept:
the entity loss makes them ITC positives of each other and never ITM
negatives (``vlg/objectives/pairs.py``). ``group_by_box=False`` leaves only
the text rule for ITM and the diagonal as ITC target.
"""

from __future__ import annotations

from typing import Any

import grain
import ml_collections
import numpy as np

from vlg.data import box_masks
from vlg.data import ops
from vlg.data.parts import common


def check_model(model_cfg: ml_collections.ConfigDict,
                part_cfg: ml_collections.ConfigDict) -> None:
  """The box regression needs X-VLM's box head."""
  del part_cfg
  if not model_cfg.get('box_head', False):
    raise ValueError('input.parts.entity needs model.box_head=True')


def slot_sizes(input_cfg: ml_collections.ConfigDict,
               part_cfg: ml_collections.ConfigDict) -> tuple[int, int]:
  """(pairs M, text length L) of every row."""
  return (int(part_cfg.max_pairs),
          int(part_cfg.get('max_text_len', input_cfg.max_text_len)))


class Transform(grain.transforms.RandomMap):
  """Record → up to ``max_pairs`` (box, text) pairs of one image."""

  prefix = 'ent_'
  requires = ('objects', 'regions')
  # With flagged_only, only records flagged as carrying boxes.
  flag = 'has_boxes'

  def __init__(self, tokenizer, input_cfg, part_cfg):
    self.aug = common.BoxAugment(input_cfg)
    self.texts = common.Texts(tokenizer, int(input_cfg.max_words),
                        float(input_cfg.mlm_probability))
    self.max_pairs, self.max_len = slot_sizes(input_cfg, part_cfg)
    self.use_objects = bool(part_cfg.get('objects', True))
    self.use_regions = bool(part_cfg.get('regions', True))
    self.whole_image = bool(part_cfg.get('whole_image_caption', True))
    self.group_by_box = bool(part_cfg.get('group_by_box', True))
    self.grid, self.patch = common.grid(input_cfg, part_cfg)
    if not (self.use_objects or self.use_regions):
      raise ValueError('input.parts.entity needs objects or regions')

  def random_map(self, record: dict[str, Any], rng: np.random.Generator):
    elems = []
    if self.use_objects:
      elems += [(o.get('label'), o.get('box'))
                for o in record.get('objects', [])]
    if self.use_regions:
      elems += [(r.get('text'), r.get('box'))
                for r in record.get('regions', [])]
    texts = common.strings([t for t, _ in elems],
                           'object label or region text')
    boxes = ops.box_array([b for _, b in elems], 'object or region box')
    box_ids = common.box_ids(boxes)
    anchor = int(rng.integers(len(elems))) if elems else 0
    caption = None
    if self.whole_image and record.get('captions'):
      caption = record['captions'][rng.integers(len(record['captions']))]
    image, boxes, all_texts, kept = self.aug(
        record['image'], boxes, texts + ([caption] if caption else []),
        anchor, rng)
    order = [i for i in rng.permutation(len(elems)) if kept[i]]
    order.sort(key=lambda i: i != anchor)  # The anchor is always kept.
    pairs = [(all_texts[i], boxes[i], True, box_ids[i]) for i in order]
    if caption is not None:  # The whole image is a box of its own.
      pairs.insert(0, (all_texts[-1], common.WHOLE_IMAGE, False,
                       len(elems)))
    pairs = pairs[:self.max_pairs]
    m, length = self.max_pairs, self.max_len
    out = {
        'image': image,
        'text_ids': np.zeros((m, length), np.int32),
        'text_mask': np.zeros((m, length), np.int32),
        'mlm_ids': np.zeros((m, length), np.int32),
        'mlm_labels': np.full((m, length), common.IGNORE, np.int32),
        'box': np.tile(common.WHOLE_IMAGE, (m, 1)),
        'valid': np.zeros((m,), np.int32),
        'is_box': np.zeros((m,), np.int32),
        'text_group': np.zeros((m,), np.int32),
        'box_group': np.full((m,), -1, np.int32),
    }
    for j, (text, box, is_box, box_id) in enumerate(pairs):
      ids, mask = self.texts.encode(text, length)
      out['text_ids'][j], out['text_mask'][j] = ids, mask
      out['mlm_ids'][j], out['mlm_labels'][j] = self.texts.mask(ids, rng)
      out['box'][j] = box
      out['valid'][j], out['is_box'][j] = 1, int(is_box)
      out['text_group'][j] = common.text_group(ops.pre_caption(text,
                                                        self.texts.max_words))
      if self.group_by_box:
        out['box_group'][j] = box_id
    whole = out['is_box'] == 0
    out['patch_mask'] = box_masks.box_patch_mask_np(
        out['box'], self.grid, self.patch, self.grid * self.patch,
        whole_image=whole).astype(np.int32)
    return common.prefixed(self.prefix, out, record)

  @classmethod
  def example_spec(cls, input_cfg, part_cfg):
    """(shape, dtype) of every slot :meth:`random_map` returns."""
    m, length = slot_sizes(input_cfg, part_cfg)
    grid, _ = common.grid(input_cfg, part_cfg)
    res = int(input_cfg.resolution)
    text, pair = ((m, length), np.int32), ((m,), np.int32)
    return common.prefixed_spec(cls.prefix, {
        'image': ((res, res, 3), np.uint8), 'text_ids': text,
        'text_mask': text, 'mlm_ids': text, 'mlm_labels': text,
        'box': ((m, 4), np.float32), 'valid': pair, 'is_box': pair,
        'text_group': pair, 'box_group': pair,
        'patch_mask': ((m, 1 + grid * grid), np.int32)})

