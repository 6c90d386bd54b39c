"""Typed batch parts beside the caption batch: entities, MRC and VSG.

The papers vlg follows train on typed data (captions, detection-style
entities, scene graphs), each type with its own batch size and sampling
ratio. vlg builds one stream per enabled part of
``config.input.parts`` and zips them, so a step sees every part at once and
the objectives sum the parts' losses weighted by their ``ratio`` — the same
objective in expectation as sampling one type per step, with one compiled
step (docs/objectives.md §3.3). Each part's transform turns a record (the
contract of ``vlg/data/sources.py``) into fixed-shape numpy slots,
prefixed by the part (docs/data.md §4):

entity (X-VLM box concepts, docs/objectives.md §3.1–3.3), M = ``max_pairs``::

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

mrc (docs/objectives.md §5), Q = ``num_relations``; subject/object as entity
label texts::

  mrc_image, mrc_{subject,object}_ids / _mask [Q, Le],
  mrc_{subject,object}_patch_mask [Q, 1+G*G], mrc_label int32 [Q],
  mrc_valid int32 [Q]

vsg (docs/objectives.md §4)::

  vsg_image, vsg_image_id, vsg_text_ids / vsg_text_mask / vsg_mlm_ids /
  vsg_mlm_labels [Lv]

Box-aware augmentation (entity and MRC): a random square crop that fully
contains an anchor box, other boxes kept only if more than half of their
area lies inside (then clipped), a flip that mirrors boxes and swaps
left/right words, resize, brightness. No jax here (grain workers).
"""

from __future__ import annotations

import zlib
from typing import Any

import grain
import ml_collections
import numpy as np

from vlg.data import box_masks
from vlg.data import masking
from vlg.data import ops
from vlg.data import relations as relations_lib
from vlg.data import tokenizer as tokenizer_lib

IGNORE = -100
WHOLE_IMAGE = np.array([0.5, 0.5, 1.0, 1.0], np.float32)


class RecordsWith:
  """A random-access view of a source whose record ``i`` is the first record
  at or after ``i`` (cyclically) that has the annotation a part needs —
  e.g. VSG needs a scene graph, and ~1 in 5 synthetic scenes has none.
  Deterministic per index, so grain's shuffling and checkpointing hold."""

  def __init__(self, source, fields: tuple[str, ...], max_skip: int = 1000):
    self.source, self.fields, self.max_skip = source, fields, max_skip

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int):
    n = len(self.source)
    for j in range(min(self.max_skip, n)):
      record = self.source[(index + j) % n]
      if any(record.get(f) for f in self.fields):
        return record
    raise ops.BadExampleError(
        f'no record with {" or ".join(self.fields)} in {self.max_skip} '
        f'records from index {index} of {self.source!r}')

  def __repr__(self) -> str:
    return f'RecordsWith({self.source!r}, {self.fields})'


def _strings(texts: list[Any], what: str) -> list[str]:
  """``texts`` if all are strings, else a bad example."""
  for t in texts:
    if not isinstance(t, str):
      raise ops.BadExampleError(f'{what} must be a string, got {t!r}')
  return texts


def text_group(text: str) -> np.int32:
  """A stable int32 id of a normalised text (crc32, not Python's hash)."""
  return np.int32(zlib.crc32(text.encode('utf-8')) & 0x7FFFFFFF)


def _box_ids(boxes: np.ndarray) -> np.ndarray:
  """int32 [K]: for each of K annotated boxes the index of the first box
  with identical coordinates — an object label and the region texts whose
  subject it is get one id. Compared before augmentation, which moves equal
  boxes equally."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  same = np.all(boxes[:, None] == boxes[None, :], axis=-1)
  return np.argmax(same, axis=1).astype(np.int32)


def crop_keeping_anchor(image: np.ndarray, boxes: np.ndarray, anchor: int,
                        rng: np.random.Generator, scale: tuple[float, float],
                        min_inside: float = 0.5
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A square crop containing box ``anchor``; the other boxes are kept if
  more than ``min_inside`` of their area is inside, and clipped to it.

  Returns:
    (cropped image, boxes re-normalised to the crop and clipped [K, 4],
    kept [K] bool).
  """
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  crop, _, (x0, y0, side) = ops.random_square_crop(
      image, boxes[anchor:anchor + 1], rng, scale)
  x1, y1 = boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2
  x2, y2 = boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2
  cx1, cy1 = np.clip(x1, x0, x0 + side), np.clip(y1, y0, y0 + side)
  cx2, cy2 = np.clip(x2, x0, x0 + side), np.clip(y2, y0, y0 + side)
  inside = np.maximum(cx2 - cx1, 0) * np.maximum(cy2 - cy1, 0)
  area = np.maximum((x2 - x1) * (y2 - y1), 1e-12)
  kept = inside / area > min_inside
  kept[anchor] = True
  out = np.stack([((cx1 + cx2) / 2 - x0) / side, ((cy1 + cy2) / 2 - y0) / side,
                  (cx2 - cx1) / side, (cy2 - cy1) / side], -1)
  return crop, out.astype(np.float32), kept


class _BoxAugment:
  """Crop around an anchor, flip (mirror boxes, swap left/right words),
  resize and brightness, as configured by ``input.augment``."""

  def __init__(self, input_cfg: ml_collections.ConfigDict):
    self.resolution = int(input_cfg.resolution)
    self.augment = tuple(input_cfg.augment)
    self.crop_scale = tuple(input_cfg.crop_scale)

  def __call__(self, image, boxes, texts, anchor, rng):
    image = ops.to_square(image)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    kept = np.ones(len(boxes), bool)
    if 'crop' in self.augment and len(boxes):
      image, boxes, kept = crop_keeping_anchor(image, boxes, anchor, rng,
                                               self.crop_scale)
    if 'flip' in self.augment and rng.random() < 0.5:
      image, boxes, texts = ops.hflip(image, boxes, texts)
    image = ops.resize(image, self.resolution)
    if 'brightness' in self.augment:
      image = ops.brightness(image, rng)
    return image, boxes, texts, kept


class _Texts:
  """Tokenisation and MLM masking shared by the part transforms."""

  def __init__(self, tokenizer: tokenizer_lib.Tokenizer, max_words: int,
               mlm_probability: float):
    self.tokenizer, self.max_words = tokenizer, max_words
    self.mlm_probability = mlm_probability

  def encode(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    return self.tokenizer.encode(ops.pre_caption(text, self.max_words),
                                 max_len)

  def mask(self, ids: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    mlm_ids, labels = masking.mask_tokens(
        ids, rng, vocab_size=self.tokenizer.vocab_size,
        mask_id=tokenizer_lib.MASK_ID, special_ids=tokenizer_lib.SPECIAL_IDS,
        pad_id=tokenizer_lib.PAD_ID, p=self.mlm_probability)
    return mlm_ids.astype(np.int32), labels.astype(np.int32)


def _grid(input_cfg, part_cfg) -> tuple[int, int]:
  patch = int(part_cfg.patch_size)
  res = int(input_cfg.resolution)
  if res % patch:
    raise ValueError(f'input.resolution {res} is not a multiple of the '
                     f'patch size {patch}')
  return res // patch, patch


class EntityTransform(grain.transforms.RandomMap):
  """Record → up to ``max_pairs`` (box, text) pairs of one image."""

  prefix = 'ent_'
  requires = ('objects', 'regions')

  def __init__(self, tokenizer, input_cfg, part_cfg):
    self.aug = _BoxAugment(input_cfg)
    self.texts = _Texts(tokenizer, int(input_cfg.max_words),
                        float(input_cfg.mlm_probability))
    self.max_pairs = int(part_cfg.max_pairs)
    self.max_len = int(part_cfg.get('max_text_len', input_cfg.max_text_len))
    self.use_objects = bool(part_cfg.get('objects', True))
    self.use_regions = bool(part_cfg.get('regions', True))
    self.whole_image = bool(part_cfg.get('whole_image_caption', True))
    self.group_by_box = bool(part_cfg.get('group_by_box', True))
    self.grid, self.patch = _grid(input_cfg, part_cfg)
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
    texts = _strings([t for t, _ in elems], 'object label or region text')
    boxes = ops.box_array([b for _, b in elems], 'object or region box')
    box_ids = _box_ids(boxes)
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
      pairs.insert(0, (all_texts[-1], WHOLE_IMAGE, False, len(elems)))
    pairs = pairs[:self.max_pairs]
    m, length = self.max_pairs, self.max_len
    out = {
        'image': image,
        'text_ids': np.zeros((m, length), np.int32),
        'text_mask': np.zeros((m, length), np.int32),
        'mlm_ids': np.zeros((m, length), np.int32),
        'mlm_labels': np.full((m, length), IGNORE, np.int32),
        'box': np.tile(WHOLE_IMAGE, (m, 1)),
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
      out['text_group'][j] = text_group(ops.pre_caption(text,
                                                        self.texts.max_words))
      if self.group_by_box:
        out['box_group'][j] = box_id
    whole = out['is_box'] == 0
    out['patch_mask'] = box_masks.box_patch_mask_np(
        out['box'], self.grid, self.patch, self.grid * self.patch,
        whole_image=whole).astype(np.int32)
    return _prefixed(self.prefix, out, record)


def _prefixed(prefix: str, out: dict[str, np.ndarray], record
              ) -> dict[str, np.ndarray]:
  out = {prefix + k: v for k, v in out.items()}
  out[f'_num_bad_{prefix.rstrip("_")}'] = np.int32(record.get('_num_bad', 0))
  return out


class MrcTransform(grain.transforms.RandomMap):
  """Record → up to ``num_relations`` (subject, object, relation) triplets."""

  prefix = 'mrc_'
  requires = ('relations',)

  def __init__(self, tokenizer, input_cfg, part_cfg, vocab):
    self.aug = _BoxAugment(input_cfg)
    self.texts = _Texts(tokenizer, int(input_cfg.max_words), 0.0)
    self.num = int(part_cfg.num_relations)
    self.max_len = int(part_cfg.get('max_text_len', 12))
    self.grid, self.patch = _grid(input_cfg, part_cfg)
    self.vocab = vocab

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
    texts = _strings(texts, 'relation label or predicate')
    # Every box of the sampled triplets must survive the crop: the anchor of
    # the crop is their union.
    boxes_arr = ops.box_array(boxes, 'relation subject or object box')
    if picked:
      image, aug_boxes, texts, _ = self.aug(
          record['image'],
          np.concatenate([boxes_arr, _union_box(boxes_arr)[None]]),
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
      out[f'{role}_box'] = np.tile(WHOLE_IMAGE, (q, 1))
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
    return _prefixed(self.prefix, out, record)


def _union_box(boxes: np.ndarray) -> np.ndarray:
  x1 = (boxes[:, 0] - boxes[:, 2] / 2).min()
  y1 = (boxes[:, 1] - boxes[:, 3] / 2).min()
  x2 = (boxes[:, 0] + boxes[:, 2] / 2).max()
  y2 = (boxes[:, 1] + boxes[:, 3] / 2).max()
  return np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1],
                  np.float32)


class VsgTransform(grain.transforms.RandomMap):
  """Record → (image, verbalised scene graph) of K sampled triplets."""

  prefix = 'vsg_'
  requires = ('relations',)

  def __init__(self, tokenizer, input_cfg, part_cfg):
    self.resolution = int(input_cfg.resolution)
    self.augment = tuple(a for a in input_cfg.augment if a != 'flip')
    self.texts = _Texts(tokenizer, 10_000, float(input_cfg.mlm_probability))
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
    return _prefixed(self.prefix, out, record)
