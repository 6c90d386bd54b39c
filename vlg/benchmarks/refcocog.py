"""RefCOCOg (umd split) referring expressions with their target boxes.

Main layout, the refer toolkit's (lichengunc/refer) ``data/refcocog/``:

* ``refs(umd).p``: a pickled list of refs, each ``{'ref_id', 'ann_id',
  'image_id', 'split', 'category_id', 'file_name', 'sentences': [{'sent',
  'raw', 'tokens', 'sent_id'}, ...], ...}``. It was written by Python 2, so it
  is read with ``encoding='latin1'``, and with an unpickler that refuses every
  class: the file holds only lists, dicts, strings and numbers, and a pickle
  that names a class could run code.
* ``instances.json``: COCO-style ``images`` (``id``, ``file_name``,
  ``width``, ``height``) and ``annotations`` (``id``, ``image_id``, ``bbox``
  as ``[x, y, w, h]`` in pixels, ``category_id``).

The image file comes from ``instances.json``: a ref's own ``file_name``
(``COCO_train2014_000000581857_16.jpg``) carries the annotation id as a
suffix and is not a file on disk. The expression is the toolkit's normalised
``sent`` (``raw`` is kept too). One example per sentence; the umd split has
val 4,896 and test 9,602 expressions.

Flat alternative: a JSON-lines file with one expression per line and the
fields of :class:`RefExample` (``box`` as a list of 4 numbers; ``raw``,
``category_id`` and ``split`` optional). It is what ``dataclasses.asdict``
of the examples gives, so converted or synthetic sets need no pickle; with a
``split`` field, lines of other splits are left out.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
from collections.abc import Mapping
from typing import Any

from vlg.benchmarks import common

Box = tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class RefExample:
  """One referring expression and the box of the object it refers to.

  Attributes:
    image_file: the COCO image file name (e.g. ``COCO_train2014_...jpg``).
    expression: the referring expression (the toolkit's ``sent``).
    box: the target box ``(x, y, w, h)`` in pixels, top-left origin.
    width: image width in pixels.
    height: image height in pixels.
    ref_id: the ref (object + its expressions) id.
    sent_id: the sentence id.
    image_id: the COCO image id.
    ann_id: the COCO annotation id of the target.
    category_id: the COCO category of the target, if known.
    raw: the expression as the annotator wrote it ('' if absent).
    split: the split the ref belongs to.
  """
  image_file: str
  expression: str
  box: Box
  width: int
  height: int
  ref_id: int
  sent_id: int
  image_id: int = -1
  ann_id: int = -1
  category_id: int | None = None
  raw: str = ''
  split: str = ''

  def image_files(self) -> tuple[str, ...]:
    return (self.image_file,)


class _NoClassesUnpickler(pickle.Unpickler):
  """Unpickles plain containers only; any class reference is refused."""

  def find_class(self, module: str, name: str):
    raise pickle.UnpicklingError(f'refusing to load {module}.{name}: a refs '
                                 'file holds only lists, dicts and strings')


def _load_refs(path: str) -> list[Any]:
  with open(path, 'rb') as f:
    data = f.read()
  try:
    refs = _NoClassesUnpickler(io.BytesIO(data), encoding='latin1').load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
    raise common.BenchmarkFormatError(path, '', f'not a refs pickle ({e})')
  if not isinstance(refs, list):
    raise common.BenchmarkFormatError(path, '', 'expected a pickled list of '
                                      f'refs, got {type(refs).__name__}')
  return refs


def _box(value: Any, key: str = 'bbox') -> Box:
  if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(
      isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
    raise common.FieldError(f'field {key!r} must be 4 numbers [x, y, w, h], '
                            f'got {value!r}')
  x, y, w, h = (float(v) for v in value)
  if w <= 0 or h <= 0:
    raise common.FieldError(f'field {key!r} has a non-positive size: '
                            f'{value!r}')
  return (x, y, w, h)


def _index(path: str, items: Any, what: str) -> dict[int, Mapping[str, Any]]:
  if not isinstance(items, list):
    raise common.BenchmarkFormatError(path, f'key {what!r}', 'expected a list')
  out = {}
  for i, item in enumerate(items):
    try:
      out[common.get_int(common.require_dict(item), 'id')] = item
    except common.FieldError as e:
      raise common.BenchmarkFormatError(path, f'{what}[{i}]', str(e)) from e
  return out


def _ref_examples(ref: Any, images: Mapping[int, Any],
                  anns: Mapping[int, Any]) -> list[RefExample]:
  ref = common.require_dict(ref)
  ref_id = common.get_int(ref, 'ref_id')
  ann_id = common.get_int(ref, 'ann_id')
  image_id = common.get_int(ref, 'image_id')
  if ann_id not in anns:
    raise common.FieldError(f'ann_id {ann_id} is not in instances.json')
  if image_id not in images:
    raise common.FieldError(f'image_id {image_id} is not in instances.json')
  ann, image = anns[ann_id], images[image_id]
  if common.get_int(ann, 'image_id') != image_id:
    raise common.FieldError(f'annotation {ann_id} belongs to image '
                            f'{ann["image_id"]}, not {image_id}')
  box = _box(ann.get('bbox'))
  sentences = ref.get('sentences')
  if not isinstance(sentences, list) or not sentences:
    raise common.FieldError("field 'sentences' must be a non-empty list")
  fixed = dict(
      image_file=common.get_str(image, 'file_name'), box=box,
      width=common.get_int(image, 'width'),
      height=common.get_int(image, 'height'), ref_id=ref_id,
      image_id=image_id, ann_id=ann_id,
      category_id=common.get_int(ref, 'category_id', required=False),
      split=common.get_str(ref, 'split'))
  examples = []
  for i, sentence in enumerate(sentences):
    try:
      sentence = common.require_dict(sentence)
      examples.append(RefExample(
          expression=common.get_str(sentence, 'sent'),
          sent_id=common.get_int(sentence, 'sent_id'),
          raw=common.get_str(sentence, 'raw', required=False, default=''),
          **fixed))
    except common.FieldError as e:
      raise common.FieldError(f'sentences[{i}]: {e}') from None
  return examples


def _load_refer(root: str, split: str, split_by: str, skip_bad: bool
                ) -> common.Loaded[RefExample]:
  refs_path = os.path.join(root, f'refs({split_by}).p')
  instances_path = os.path.join(root, 'instances.json')
  instances = common.read_json(instances_path)
  if not isinstance(instances, dict):
    raise common.BenchmarkFormatError(instances_path, '', 'expected a JSON '
                                      'object with images and annotations')
  images = _index(instances_path, instances.get('images'), 'images')
  anns = _index(instances_path, instances.get('annotations'), 'annotations')
  collector = common.Collector(refs_path, skip_bad)
  examples, num_filtered = [], 0
  for index, ref in enumerate(_load_refs(refs_path)):
    collector.num_records += 1
    ref_split = ref.get('split') if isinstance(ref, dict) else None
    if isinstance(ref_split, str) and ref_split != split:
      num_filtered += 1
      continue
    try:
      examples.extend(_ref_examples(ref, images, anns))
    except common.FieldError as e:
      ref_id = ref.get('ref_id') if isinstance(ref, dict) else None
      collector.bad(f'ref {index} (ref_id {ref_id})', str(e))
  return common.make_loaded(examples, [collector], num_filtered)


def _jsonl_example(record: Any) -> RefExample:
  record = common.require_dict(record)
  return RefExample(
      image_file=common.get_str(record, 'image_file'),
      expression=common.get_str(record, 'expression'),
      box=_box(record.get('box'), 'box'),
      width=common.get_int(record, 'width'),
      height=common.get_int(record, 'height'),
      ref_id=common.get_int(record, 'ref_id'),
      sent_id=common.get_int(record, 'sent_id'),
      image_id=common.get_int(record, 'image_id', required=False, default=-1),
      ann_id=common.get_int(record, 'ann_id', required=False, default=-1),
      category_id=common.get_int(record, 'category_id', required=False),
      raw=common.get_str(record, 'raw', required=False, default='',
                         allow_empty=True),
      split=common.get_str(record, 'split', required=False, default=''))


def _load_jsonl(path: str, split: str, skip_bad: bool
                ) -> common.Loaded[RefExample]:
  collector = common.Collector(path, skip_bad)
  examples, num_filtered = [], 0
  for _, example in common.parse_jsonl(collector, _jsonl_example):
    if example.split and example.split != split:
      num_filtered += 1
      continue
    examples.append(example)
  return common.make_loaded(examples, [collector], num_filtered)


def load_refcocog(root: str | os.PathLike, split: str = 'val',
                  split_by: str = 'umd', skip_bad: bool = False
                  ) -> common.Loaded[RefExample]:
  """Reads RefCOCOg expressions of one split.

  Args:
    root: the refer toolkit folder (``refs(umd).p`` + ``instances.json``), or
      a ``.jsonl`` file in the flat layout (module docstring).
    split: 'train', 'val' or 'test'.
    split_by: which refs file: ``refs(<split_by>).p``.
    skip_bad: skip (and count) bad refs / lines instead of raising.

  Returns:
    One example per expression, refs in file order; ``num_records`` counts
    refs (refer layout) or lines (JSONL), ``num_filtered`` those of other
    splits.

  Raises:
    BenchmarkFormatError: an unreadable refs pickle or instances file; or
      (unless ``skip_bad``) a ref whose annotation or image is missing or
      malformed; names the file and the ref index / line.
  """
  root = os.fspath(root)
  if os.path.isfile(root):
    return _load_jsonl(root, split, skip_bad)
  return _load_refer(root, split, split_by, skip_bad)
