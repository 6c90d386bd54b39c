"""The ``mrc`` part: (subject, object, relation) triplets of one image for
masked relation classification (docs/objectives.md §5); its objective is
``vlg/objectives/mrc.py``.

Slots, Q = ``num_relations``; subject and object as entity label texts::

  mrc_image, mrc_{subject,object}_ids / _mask [Q, Le],
  mrc_{subject,object}_box float32 [Q, 4],
  mrc_{subject,object}_patch_mask [Q, 1+G*G], mrc_label int32 [Q],
  mrc_valid int32 [Q]
"""

from __future__ import annotations

from typing import Any

import grain
import ml_collections
import numpy as np

from vlg.data import box_masks
from vlg.data import ops
from vlg.data import relations as relations_lib
from vlg.data.parts import common


def relation_vocab(part_cfg: ml_collections.ConfigDict
                   ) -> relations_lib.RelationVocab:
  """The MRC relation vocabulary: ``vocab`` (a saved file) or the
  synthetic world's relations."""
  path = part_cfg.get('vocab', '')
  if path:
    return relations_lib.RelationVocab.load(path)
  from vlg.synthetic import world  # pylint: disable=g-import-not-at-top
  # world.RELATIONS's order is the class order.
  return relations_lib.RelationVocab([(r, 1) for r in world.RELATIONS])


def check_model(model_cfg: ml_collections.ConfigDict,
                part_cfg: ml_collections.ConfigDict) -> None:
  """The MRC head scores every relation of the vocabulary."""
  n = len(relation_vocab(part_cfg))
  if int(model_cfg.get('mrc_classes', 0)) != n:
    raise ValueError(f'input.parts.mrc has {n} relations but '
                     f'model.mrc_classes={model_cfg.get("mrc_classes", 0)}; '
                     f'pass --config.model.mrc_classes={n}')


def slot_sizes(part_cfg: ml_collections.ConfigDict) -> tuple[int, int]:
  """(triplets Q, label text length Le) of every row."""
  return int(part_cfg.num_relations), int(part_cfg.get('max_text_len', 12))


class Transform(grain.transforms.RandomMap):
  """Record → up to ``num_relations`` (subject, object, relation) triplets."""

  prefix = 'mrc_'
  requires = ('relations',)
  # With flagged_only, only records flagged as carrying a scene graph.
  flag = 'has_graph'

  def __init__(self, tokenizer, input_cfg, part_cfg, vocab=None):
    self.aug = common.BoxAugment(input_cfg)
    self.texts = common.Texts(tokenizer, int(input_cfg.max_words), 0.0)
    self.num, self.max_len = slot_sizes(part_cfg)
    self.grid, self.patch = common.grid(input_cfg, part_cfg)
    self.vocab = relation_vocab(part_cfg) if vocab is None else vocab

  def random_map(self, record: dict[str, Any], rng: np.random.Generator):
    rels = list(record.get('relations', []))
    picked = [rels[i] for i in rng.permutation(len(rels))[:self.num]]
    boxes = [b for r in picked for b in (r.get('subject_box'),
                                         r.get('object_box'))]
    # Predicates ride along with the labels so a flip turns 'left of' into
    # 'right of' exactly when it mirrors the boxes.
    texts = [t for r in picked for t in (r.get('subject_label'),
                                         r.get('object_label'))]
    texts += [r.get('predicate') for r in picked]
    texts = common.strings(texts, 'relation label or predicate')
    # Every box of the sampled triplets must survive the crop: the anchor of
    # the crop is their union.
    boxes_arr = ops.box_array(boxes, 'relation subject or object box')
    if picked:
      image, aug_boxes, texts, _ = self.aug(
          record['image'],
          np.concatenate([boxes_arr, union_box(boxes_arr)[None]]),
          texts, len(boxes_arr), rng)
      boxes_arr = aug_boxes[:-1]
    else:
      image, _, _, _ = self.aug(record['image'], np.zeros((0, 4)), [], 0, rng)
    predicates = texts[2 * len(picked):]
    q, length = self.num, self.max_len
    out = {'image': image, 'label': np.zeros((q,), np.int32),
           'valid': np.zeros((q,), np.int32)}
    for role in ('subject', 'object'):
      out[f'{role}_ids'] = np.zeros((q, length), np.int32)
      out[f'{role}_mask'] = np.zeros((q, length), np.int32)
      out[f'{role}_box'] = np.tile(common.WHOLE_IMAGE, (q, 1))
    for j in range(len(picked)):
      for k, role in enumerate(('subject', 'object')):
        ids, mask = self.texts.encode(texts[2 * j + k], length)
        out[f'{role}_ids'][j], out[f'{role}_mask'][j] = ids, mask
        out[f'{role}_box'][j] = boxes_arr[2 * j + k]
      out['label'][j] = self.vocab.encode(predicates[j])
      out['valid'][j] = 1
    for role in ('subject', 'object'):
      out[f'{role}_patch_mask'] = box_masks.box_patch_mask_np(
          out[f'{role}_box'], self.grid, self.patch,
          self.grid * self.patch).astype(np.int32)
    return common.prefixed(self.prefix, out, record)

  @classmethod
  def example_spec(cls, input_cfg, part_cfg):
    """(shape, dtype) of every slot :meth:`random_map` returns."""
    q, length = slot_sizes(part_cfg)
    grid, _ = common.grid(input_cfg, part_cfg)
    res = int(input_cfg.resolution)
    spec = {'image': ((res, res, 3), np.uint8), 'label': ((q,), np.int32),
            'valid': ((q,), np.int32)}
    for role in ('subject', 'object'):
      spec[f'{role}_ids'] = spec[f'{role}_mask'] = ((q, length), np.int32)
      spec[f'{role}_box'] = ((q, 4), np.float32)
      spec[f'{role}_patch_mask'] = ((q, 1 + grid * grid), np.int32)
    return common.prefixed_spec(cls.prefix, spec)


def union_box(boxes: np.ndarray) -> np.ndarray:
  """The (cx, cy, w, h) box enclosing every box of ``boxes`` [K, 4]."""
  x1 = (boxes[:, 0] - boxes[:, 2] / 2).min()
  y1 = (boxes[:, 1] - boxes[:, 3] / 2).min()
  x2 = (boxes[:, 0] + boxes[:, 2] / 2).max()
  y2 = (boxes[:, 1] + boxes[:, 3] / 2).max()
  return np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1],
                  np.float32)
