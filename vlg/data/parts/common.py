"""What the typed part transforms share: record views, box-aware
augmentation, tokenisation with MLM masking, slot prefixes.

Box-aware augmentation (entity and MRC): a random square crop that fully
contains an anchor box, other boxes kept only if more than half of their
area lies inside (then clipped), a flip that mirrors boxes and swaps
left/right words, resize, brightness. No jax here (grain workers).
"""

from __future__ import annotations

import zlib
from typing import Any

import ml_collections
import numpy as np

from vlg.data import masking
from vlg.data import ops
from vlg.data import tokenizer as tokenizer_lib

IGNORE = -100
WHOLE_IMAGE = np.array([0.5, 0.5, 1.0, 1.0], np.float32)


class RecordsWith:
  """A random-access view of a source whose record ``i`` is the first record
  at or after ``i`` (cyclically) that has the annotation a part needs —
  e.g. VSG needs a scene graph, and ~1 in 5 synthetic scenes has none.
  With ``flag`` (``has_graph``, ``has_boxes``) the record must also be
  flagged as annotated: the part then learns only from the share of images
  a corpus annotates (the world's ``graph_rate`` / ``box_rate``), as in
  web data where only some images come from Visual Genome; records whose
  source tells their flags cheaply (``annotation_flags``) are skipped
  without being read. Deterministic per index, so grain's shuffling and
  checkpointing hold."""

  def __init__(self, source, fields: tuple[str, ...], max_skip: int = 1000,
               flag: str | None = None):
    self.source, self.fields, self.max_skip = source, fields, max_skip
    self.flag = flag
    self._peek = (getattr(source, 'annotation_flags', None) if flag
                  else None)

  def __len__(self) -> int:
    return len(self.source)

  def _flagged(self, index: int) -> bool:
    """False only where the source tells cheaply that ``index`` is not
    flagged; the record read is checked too."""
    flags = self._peek(index) if self._peek is not None else None
    return flags is None or bool(flags.get(self.flag))

  def __getitem__(self, index: int):
    n = len(self.source)
    for j in range(min(self.max_skip, n)):
      i = (index + j) % n
      if self.flag and not self._flagged(i):
        continue
      record = self.source[i]
      if self.flag and not record.get(self.flag):
        continue
      if any(record.get(f) for f in self.fields):
        return record
    wanted = ' or '.join(self.fields)
    if self.flag:
      wanted += f' flagged {self.flag}'
    raise ops.BadExampleError(
        f'no record with {wanted} in {self.max_skip} records from index '
        f'{index} of {self.source!r}'
        + ('; the source flags too few records (the synthetic world\'s '
           'graph_rate / box_rate), or set the part\'s flagged_only=False'
           if self.flag else ''))

  def __repr__(self) -> str:
    flag = f', flag={self.flag!r}' if self.flag else ''
    return f'RecordsWith({self.source!r}, {self.fields}{flag})'


def strings(texts: list[Any], what: str) -> list[str]:
  """``texts`` if all are strings, else a bad example."""
  for t in texts:
    if not isinstance(t, str):
      raise ops.BadExampleError(f'{what} must be a string, got {t!r}')
  return texts


def text_group(text: str) -> np.int32:
  """A stable int32 id of a normalised text (crc32, not Python's hash)."""
  return np.int32(zlib.crc32(text.encode('utf-8')) & 0x7FFFFFFF)


def box_ids(boxes: np.ndarray) -> np.ndarray:
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


class BoxAugment:
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


class Texts:
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
        mask_id=self.tokenizer.mask_id,
        special_ids=self.tokenizer.special_ids,
        pad_id=self.tokenizer.pad_id, p=self.mlm_probability)
    return mlm_ids.astype(np.int32), labels.astype(np.int32)


def grid(input_cfg, part_cfg) -> tuple[int, int]:
  patch = int(part_cfg.patch_size)
  res = int(input_cfg.resolution)
  if res % patch:
    raise ValueError(f'input.resolution {res} is not a multiple of the '
                     f'patch size {patch}')
  return res // patch, patch


def num_bad_slot(prefix: str) -> str:
  """The slot counting a part's skipped bad records (``_num_bad_ent``)."""
  return f'_num_bad_{prefix.rstrip("_")}'


def prefixed(prefix: str, out: dict[str, np.ndarray], record
              ) -> dict[str, np.ndarray]:
  """A transform's slots under its prefix, plus its bad-record count."""
  out = {prefix + k: v for k, v in out.items()}
  out[num_bad_slot(prefix)] = np.int32(record.get('_num_bad', 0))
  return out


def prefixed_spec(prefix: str, spec: dict[str, tuple[tuple[int, ...], type]]
                  ) -> dict[str, tuple[tuple[int, ...], type]]:
  """:func:`prefixed` for (shape, dtype) slot specs (``example_spec``)."""
  out = {prefix + k: v for k, v in spec.items()}
  out[num_bad_slot(prefix)] = ((), np.int32)
  return out
