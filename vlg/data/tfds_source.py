"""The ``tfds`` source: a prepared TFDS dataset read with ``tfds.data_source``.

Where a TFDS builder exists for a corpus (``coco_captions``, ``ref_coco``,
...) or a dataset was prepared with one's own ``GeneratorBasedBuilder``, its
ArrayRecord files can be read directly instead of running
``vlg.tools.prepare``. :class:`TfdsSource` maps each TFDS example to the record
contract of ``vlg/data/sources.py`` through config keys; a ``'/'`` in a key
descends into nested features (a key that itself holds ``'/'``, like COCO's
``'image/id'``, is matched first). Config entry::

  {'source': 'tfds', 'name': 'coco_captions/2017', 'split': 'train',
   'data_dir': '/data/tensorflow_datasets',   # default: TFDS_DATA_DIR
   'image_key': 'image',                      # Image feature or encoded bytes
   'caption_key': 'captions/text',            # str, bytes or a list of them
   'boxes_key': 'objects/bbox',               # optional, with labels_key
   'labels_key': 'objects/label',             # ClassLabel ids or texts
   'box_format': None,                        # only for non-BBox features
   'id_key': 'image/id',                      # optional; default the index
   'weight': 1.0}

Boxes come as TFDS stores them (``BBoxFeature`` default ``REL_YXYX``:
normalised ``[ymin, xmin, ymax, xmax]``; the feature's own ``bbox_format`` is
honoured) and are returned as vlg's normalised ``[cx, cy, w, h]``. Integer
labels are turned into names with the dataset info's ``ClassLabel`` names.

Nothing is ever downloaded or generated here (``download=False``): a dataset
that is not prepared under ``data_dir`` raises an error saying how to prepare
it. A config key the dataset's features do not have is a config error raised
at construction. A bad example (empty caption, undecodable image, a box
outside the image or without area, labels not matching boxes) raises
:class:`vlg.data.ops.BadExampleError` naming the dataset, split, index and
key, so :class:`vlg.data.sources.CheckedSource` applies the bad-input policy.

Images of ``Image`` features are read undecoded and decoded here with PIL (as
every vlg source does), so reading needs no TensorFlow. No jax here (grain
workers import it).
"""

from __future__ import annotations

import hashlib
import operator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from vlg.data import ops

HOW_TO_PREPARE = (
    'Prepare it once, as ArrayRecord, before training (vlg never downloads '
    'at run time): `tfds build NAME --data_dir=DIR --file_format=array_record`'
    " or, in Python, `tfds.builder(NAME, data_dir=DIR).download_and_prepare("
    "file_format='array_record')`; then set data_dir to DIR.")
BOX_FORMATS = ('REL_YXYX', 'REL_XYXY', 'YXYX', 'XYXY', 'XYWH')
# Pixel boxes divided by the image size may pass 1 by a rounding error.
_TOLERANCE = 1e-6
# Record field → the config key naming its feature.
_CONFIG_KEYS = {'image': 'image_key', 'captions': 'caption_key',
                'boxes': 'boxes_key', 'labels': 'labels_key', 'id': 'id_key'}


def _find_path(features, key: str, what: str, dataset: str) -> tuple[
    list[str], Any]:
  """``key`` → (the feature names along it, the feature it names).

  At each level the longest ``'/'``-joined prefix naming a feature is taken,
  so literal names such as ``'image/id'`` win over nesting. Sequences of
  dicts are descended into (their values read as dicts of lists).
  """
  path, feature, rest = [], features, key.split('/')
  while rest:
    if isinstance(feature, tfds.features.Sequence):
      feature = feature.feature
    names = (list(feature.keys())
             if isinstance(feature, tfds.features.FeaturesDict) else [])
    for i in range(len(rest), 0, -1):
      head = '/'.join(rest[:i])
      if head in names:
        path.append(head)
        feature, rest = feature[head], rest[i:]
        break
    else:
      raise ValueError(
          f'tfds dataset {dataset}: {what}={key!r} names no feature '
          f'(at {"/".join(path) or "the top level"} the features are '
          f'{sorted(names)}); check the key against the dataset info')
  if isinstance(feature, tfds.features.Sequence):
    feature = feature.feature
  return path, feature


def _nested(path: list[str], leaf: Any) -> dict[str, Any]:
  out = leaf
  for name in reversed(path):
    out = {name: out}
  return out


def _to_str(value: Any, where: str) -> str:
  if isinstance(value, (bytes, np.bytes_)):
    try:
      return bytes(value).decode('utf-8')
    except UnicodeDecodeError as e:
      raise ops.BadExampleError(f'{where}: text is not UTF-8 ({e})') from e
  if isinstance(value, str):
    return str(value)
  raise ops.BadExampleError(f'{where}: expected text, got '
                            f'{type(value).__name__}')


def _texts(value: Any, where: str) -> list[str]:
  if isinstance(value, (str, bytes, np.str_, np.bytes_)):
    value = [value]
  elif isinstance(value, np.ndarray):
    value = value.reshape(-1).tolist()
  return [_to_str(v, where) for v in value]


def _as_rgb(image: np.ndarray, where: str) -> np.ndarray:
  if image.dtype != np.uint8:
    raise ops.BadExampleError(f'{where}: image dtype is {image.dtype}, '
                              'expected uint8')
  if image.ndim == 2:
    image = image[:, :, None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or 0 in image.shape:
    raise ops.BadExampleError(f'{where}: image shape {image.shape} is not '
                              '[H, W, 1|3|4]')
  if image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  return np.ascontiguousarray(image[:, :, :3])


def normalised_xyxy(boxes: np.ndarray, box_format: str,
                   image_hw: tuple[int, int]) -> np.ndarray:
  """TFDS boxes ``[N, 4]`` in ``box_format`` → normalised [x0, y0, x1, y1].

  Args:
    boxes: the boxes, ``REL_*`` formats normalised to [0, 1], the others in
      pixels.
    box_format: one of :data:`BOX_FORMATS` (TFDS ``BBoxFormat`` names).
    image_hw: (height, width) of the image, for pixel formats.

  Returns:
    float64 ``[N, 4]``; not checked against the image.
  """
  b = np.asarray(boxes, np.float64).reshape(-1, 4)
  if box_format in ('REL_YXYX', 'YXYX'):
    b = b[:, [1, 0, 3, 2]]
  elif box_format == 'XYWH':
    b = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
  elif box_format not in ('REL_XYXY', 'XYXY'):
    raise ValueError(f'box format {box_format!r}; valid: {list(BOX_FORMATS)}')
  if not box_format.startswith('REL_'):
    h, w = image_hw
    b = b / np.array([w, h, w, h], np.float64)
  return b


class TfdsSource:
  """Random access to one split of a prepared TFDS dataset as vlg records."""

  def __init__(self, name: str, split: str = 'train',
               data_dir: str | None = None, *, image_key: str = 'image',
               caption_key: str | None = None, boxes_key: str | None = None,
               labels_key: str | None = None, box_format: str | None = None,
               id_key: str | None = None):
    """Opens ``split`` of the TFDS dataset ``name`` under ``data_dir``.

    Args:
      name: the TFDS name, ``'dataset[/config][:version]'``.
      split: a TFDS split, slices allowed (``'train[:10%]'``).
      data_dir: the TFDS data folder; None for TFDS's default
        (``TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      image_key: the image feature (``Image``, encoded bytes or uint8 array).
      caption_key: the caption text(s); None for box-only data.
      boxes_key: the boxes (``BBoxFeature`` or a float [N, 4] tensor).
      labels_key: one label per box (``ClassLabel`` or text).
      box_format: a TFDS ``BBoxFormat`` name, needed only when ``boxes_key``
        is not a ``BBoxFeature`` with a format.
      id_key: an integer or text image id; None to use the index.

    Raises:
      FileNotFoundError: the dataset is not prepared there (says how to).
      ValueError: a key names no feature, a bad key combination, a split the
        dataset does not have, or a file format without random access.
    """
    self.name, self.split = name, split
    self.dataset = f'{name!r} split {split!r}'
    if caption_key is None and boxes_key is None:
      raise ValueError(f'tfds dataset {self.dataset}: set caption_key and/or '
                       'boxes_key (with labels_key); the records would be '
                       'empty')
    if (boxes_key is None) != (labels_key is None):
      raise ValueError(f'tfds dataset {self.dataset}: boxes_key and '
                       'labels_key go together (one label per box)')
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise FileNotFoundError(
          f'tfds dataset {name!r} is not prepared under data_dir='
          f'{data_dir or "(TFDS default)"} and no builder of that name is '
          f'registered. {HOW_TO_PREPARE}') from e
    if not builder.is_prepared():
      raise FileNotFoundError(
          f'tfds dataset {name!r} is not prepared: no dataset_info.json in '
          f'{builder.data_dir}. {HOW_TO_PREPARE}')
    info = builder.info
    features = info.features
    self.keys = {'image': image_key, 'captions': caption_key,
                 'boxes': boxes_key, 'labels': labels_key, 'id': id_key}
    self._paths, decoders = {}, None
    for field, key in self.keys.items():
      if key is None:
        continue
      path, feature = _find_path(features, key, _CONFIG_KEYS[field],
                                 self.dataset)
      self._paths[field] = path
      if field == 'image' and isinstance(feature, tfds.features.Image):
        decoders = _nested(path, tfds.decode.SkipDecoding())
      if field == 'boxes':
        self.box_format = self._box_format(feature, box_format, boxes_key)
      if field == 'labels':
        self.label_names = self._label_names(feature, labels_key)
    try:
      self._source = tfds.data_source(
          name, split=split, data_dir=data_dir, download=False,
          decoders=decoders)
    except NotImplementedError as e:
      raise ValueError(
          f'tfds dataset {name!r} under {builder.data_dir} is prepared as '
          f'{info.file_format}, which has no random access. Re-prepare it in '
          f'another data_dir. {HOW_TO_PREPARE} ({e})') from e
    except ValueError as e:
      raise ValueError(f'tfds dataset {name!r} under {builder.data_dir}: '
                       f'{e} (splits: {sorted(info.splits)})') from e
    self.data_dir = builder.data_dir

  def _box_format(self, feature, box_format: str | None, key: str) -> str:
    own = getattr(feature, 'bbox_format', None)
    own = getattr(own, 'value', own)
    if own is not None and box_format is not None and own != box_format:
      raise ValueError(f'tfds dataset {self.dataset}: box_format='
                       f'{box_format!r} but the feature {key!r} says {own!r}')
    chosen = own or box_format
    if chosen is None:
      raise ValueError(
          f'tfds dataset {self.dataset}: boxes_key={key!r} is not a '
          f'BBoxFeature with a format; set box_format to one of '
          f'{list(BOX_FORMATS)}')
    if chosen not in BOX_FORMATS:
      raise ValueError(f'tfds dataset {self.dataset}: box format {chosen!r}; '
                       f'valid: {list(BOX_FORMATS)}')
    return chosen

  def _label_names(self, feature, key: str) -> list[str] | None:
    if isinstance(feature, tfds.features.ClassLabel):
      return list(feature.names)
    if np.dtype(getattr(feature, 'np_dtype', np.float32)) == object:
      return None  # Text features and string tensors.
    raise ValueError(f'tfds dataset {self.dataset}: labels_key={key!r} is a '
                     f'{type(feature).__name__}; it must be a ClassLabel or '
                     'a text feature')

  def __len__(self) -> int:
    return len(self._source)

  def _get(self, example: dict[str, Any], field: str, where: str) -> Any:
    value = example
    for name in self._paths[field]:
      if not isinstance(value, dict) or name not in value:
        raise ops.BadExampleError(
            f'{where}: the example has no {self.keys[field]!r}')
      value = value[name]
    return value

  def __getitem__(self, index) -> dict[str, Any]:
    index = operator.index(index)
    if not 0 <= index < len(self):
      raise IndexError(f'index {index} out of range for {self!r}')
    where = f'tfds {self.dataset} example {index}'
    example = self._source[index]
    image = self._image(example, where)
    captions = []
    if 'captions' in self._paths:
      captions = self._captions(example, where)
    objects = []
    if 'boxes' in self._paths:
      objects = self._objects(example, image.shape[:2], where)
    return {'image': image, 'image_id': self._image_id(example, index, where),
            'captions': captions, 'objects': objects, 'regions': [],
            'relations': [], 'paragraph': '', 'has_graph': False,
            'has_boxes': bool(objects)}

  def _image(self, example: dict[str, Any], where: str) -> np.ndarray:
    key_where = f'{where} key {self.keys["image"]!r}'
    value = self._get(example, 'image', where)
    if isinstance(value, (bytes, np.bytes_)):
      return _as_rgb(ops.decode_image(bytes(value), key_where), key_where)
    if isinstance(value, np.ndarray):
      return _as_rgb(value, key_where)
    raise ops.BadExampleError(f'{key_where}: expected encoded image bytes or '
                              f'a uint8 array, got {type(value).__name__}')

  def _captions(self, example: dict[str, Any], where: str) -> list[str]:
    key_where = f'{where} key {self.keys["captions"]!r}'
    captions = _texts(self._get(example, 'captions', where), key_where)
    if not captions:
      raise ops.BadExampleError(f'{key_where}: no caption')
    for i, caption in enumerate(captions):
      try:  # The transform normalises captions; catch empty ones here.
        ops.pre_caption(caption)
      except ops.BadExampleError as e:
        raise ops.BadExampleError(f'{key_where} caption {i}: {e}') from e
    return captions

  def _objects(self, example: dict[str, Any], image_hw: tuple[int, int],
               where: str) -> list[dict[str, Any]]:
    boxes_where = f'{where} key {self.keys["boxes"]!r}'
    raw = np.asarray(self._get(example, 'boxes', where), np.float64)
    if raw.size % 4 or (raw.ndim > 1 and raw.shape[-1] != 4):
      raise ops.BadExampleError(f'{boxes_where}: boxes of shape {raw.shape} '
                                'are not [N, 4]')
    xyxy = normalised_xyxy(raw, self.box_format, image_hw)
    for i, box in enumerate(xyxy):
      problem = None
      if not (np.all(np.isfinite(box)) and box.min() >= -_TOLERANCE and
              box.max() <= 1 + _TOLERANCE):
        problem = 'lies outside the image'
      elif box[2] <= box[0] or box[3] <= box[1]:
        problem = 'has no area'
      if problem:
        raise ops.BadExampleError(
            f'{boxes_where} box {i}: {raw.reshape(-1, 4)[i].tolist()} '
            f'({self.box_format}) {problem}')
    x0, y0, x1, y1 = np.clip(xyxy, 0, 1).T
    boxes = np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)
    labels = self._labels(example, where)
    if len(labels) != len(boxes):
      raise ops.BadExampleError(
          f'{where}: {len(boxes)} boxes ({self.keys["boxes"]!r}) but '
          f'{len(labels)} labels ({self.keys["labels"]!r})')
    return [{'label': label, 'box': box.astype(np.float32)}
            for label, box in zip(labels, boxes)]

  def _labels(self, example: dict[str, Any], where: str) -> list[str]:
    key_where = f'{where} key {self.keys["labels"]!r}'
    value = self._get(example, 'labels', where)
    if self.label_names is None:
      return _texts(value, key_where)
    ids = np.asarray(value).reshape(-1)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
      raise ops.BadExampleError(f'{key_where}: class ids of dtype '
                                f'{ids.dtype}, expected integers')
    bad = [int(i) for i in ids if not 0 <= i < len(self.label_names)]
    if bad:
      raise ops.BadExampleError(f'{key_where}: class ids {bad} outside the '
                                f'{len(self.label_names)} ClassLabel names')
    return [self.label_names[int(i)] for i in ids]

  def _image_id(self, example: dict[str, Any], index: int, where: str) -> int:
    if 'id' not in self._paths:
      return index
    value = self._get(example, 'id', where)
    if isinstance(value, (str, bytes, np.str_, np.bytes_)):
      text = _to_str(value, f'{where} key {self.keys["id"]!r}')
      return int.from_bytes(
          hashlib.blake2b(text.encode('utf-8'), digest_size=8).digest(),
          'little') >> 1
    try:
      return operator.index(value)
    except TypeError as e:
      raise ops.BadExampleError(
          f'{where} key {self.keys["id"]!r}: id {value!r} is not an integer '
          'or text') from e

  def __repr__(self) -> str:
    return (f'TfdsSource({self.name!r}, split={self.split!r}, '
            f'{len(self)} examples)')


def from_config(cfg: Any) -> TfdsSource:
  """A :class:`TfdsSource` from a config entry (see the module docstring)."""
  known = {'source', 'weight', 'name', 'split', 'data_dir', 'image_key',
           'caption_key', 'boxes_key', 'labels_key', 'box_format', 'id_key'}
  unknown = sorted(set(cfg.keys()) - known)
  if unknown:
    raise ValueError(f'tfds source config has unknown keys {unknown}; valid: '
                     f'{sorted(known)}')
  if not cfg.get('name'):
    raise ValueError("tfds source config needs 'name' (the TFDS dataset)")
  return TfdsSource(
      cfg['name'], cfg.get('split', 'train'), cfg.get('data_dir') or None,
      image_key=cfg.get('image_key', 'image'),
      caption_key=cfg.get('caption_key'), boxes_key=cfg.get('boxes_key'),
      labels_key=cfg.get('labels_key'), box_format=cfg.get('box_format'),
      id_key=cfg.get('id_key'))
