"""Example → record: read the image, convert boxes once, drop what is bad.

:func:`finalise` is the single place where an :class:`~base.Example` of any
format becomes a record of the contract of ``vlg/data/sources.py`` (the
image kept encoded, or referenced by path):

- the image is found in the ``--images`` folders, read and fully decoded
  (a missing or corrupt image is a problem, ``missing_image`` /
  ``corrupt_image``); with ``store='bytes'`` its original bytes are kept,
  or it is re-encoded as JPEG so its shorter (or longer) side is
  ``reencode_size`` (never enlarged);
- boxes ``(x1, y1, x2, y2)`` become normalised ``(cx, cy, w, h)`` relative
  to the original image (the annotated size, else the decoded one); a box
  partly outside the image is clipped to it (counted), one with no area
  (``degenerate_box``) or entirely outside (``box_outside_image``) is a
  problem and is dropped with the relations that use it;
- with a relation vocabulary, relations outside it are dropped (benign
  ``rare_relation``), and so are those whose left/right mirror is outside
  it (``mirror_relation_missing``): the training flip swaps "left" and
  "right" in relation strings, and MRC must find the result in the
  vocabulary;
- a record left with no caption, object or region is dropped (benign
  ``nothing_usable``).

Runs in ``prepare``'s worker processes: no jax, only picklable arguments.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any

from PIL import Image

from vlg.data import ops
from vlg.data import records
from vlg.prepare import base

STORES = ('bytes', 'path')
SIDES = ('shorter', 'longer')


@dataclasses.dataclass(frozen=True)
class Options:
  """How images are kept and which relations are kept.

  Attributes:
    image_dirs: folders searched in order for an example's image path.
    store: ``'bytes'`` (the encoded image inside the record) or ``'path'``
      (the path relative to the folder it was found in, and that folder's
      index in ``image_dirs``).
    reencode_size: with ``store='bytes'``, re-encode as JPEG so the
      ``reencode_side`` side is at most this many pixels (0: keep bytes).
    reencode_side: ``'shorter'`` or ``'longer'``.
    jpeg_quality: quality of re-encoded images.
    relation_vocab: the normalised relations to keep (None: keep all).
  """
  image_dirs: tuple[str, ...] = ('',)
  store: str = 'bytes'
  reencode_size: int = 0
  reencode_side: str = 'shorter'
  jpeg_quality: int = 95
  relation_vocab: frozenset[str] | None = None

  def __post_init__(self):
    if self.store not in STORES:
      raise ValueError(f'store={self.store!r}; valid: {list(STORES)}')
    if self.reencode_side not in SIDES:
      raise ValueError(f'reencode_side={self.reencode_side!r}; valid: '
                       f'{list(SIDES)}')
    if self.reencode_size < 0:
      raise ValueError(f'reencode_size={self.reencode_size} must be >= 0')
    if self.reencode_size and self.store != 'bytes':
      raise ValueError('reencode_size needs store="bytes"')


@dataclasses.dataclass
class Finalised:
  """The record (None if dropped), the problems met, boxes clipped."""
  record: dict[str, Any] | None
  problems: list[base.Problem]
  boxes_clipped: int = 0


def normalise_box(xyxy: tuple[float, ...], units: str,
                  size: tuple[int, int]
                  ) -> tuple[list[float] | None, bool, str]:
  """``(x1, y1, x2, y2)`` → normalised ``[cx, cy, w, h]`` clipped to the
  image.

  Returns:
    (box or None, whether it was clipped, the problem reason if None).
  """
  x1, y1, x2, y2 = (float(v) for v in xyxy)
  if units == base.PIXELS:
    width, height = size
    x1, x2, y1, y2 = x1 / width, x2 / width, y1 / height, y2 / height
  if not (x2 > x1 and y2 > y1):
    return None, False, 'degenerate_box'
  c = [min(max(v, 0.0), 1.0) for v in (x1, y1, x2, y2)]
  if not (c[2] > c[0] and c[3] > c[1]):
    return None, False, 'box_outside_image'
  clipped = c != [x1, y1, x2, y2]
  return ([(c[0] + c[2]) / 2, (c[1] + c[3]) / 2, c[2] - c[0], c[3] - c[1]],
          clipped, '')


def _find_image(path: str, dirs: tuple[str, ...]) -> tuple[str, int] | None:
  for k, folder in enumerate(dirs):
    full = os.path.join(folder, path)
    if os.path.isfile(full):
      return full, k
  return None


def _reencode(image: Image.Image, opts: Options) -> bytes | None:
  """JPEG bytes of the resized image, or None when no resize is needed."""
  w, h = image.size
  side = min(w, h) if opts.reencode_side == 'shorter' else max(w, h)
  if not opts.reencode_size or side <= opts.reencode_size:
    return None
  scale = opts.reencode_size / side
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  out = io.BytesIO()
  image.convert('RGB').resize(size, Image.BICUBIC).save(
      out, format='JPEG', quality=opts.jpeg_quality)
  return out.getvalue()


def _image(example: base.Example, opts: Options
           ) -> tuple[dict[str, Any], tuple[int, int]] | base.Problem:
  """The record's image fields and the decoded size, or a problem."""
  fields: dict[str, Any] = {}
  data = example.image_bytes
  name = example.image_path or 'the embedded image'
  if data is None:
    found = _find_image(example.image_path, opts.image_dirs)
    if found is None:
      return base.Problem(example.where, 'missing_image',
                          f'image {example.image_path!r} not found in '
                          f'{list(opts.image_dirs)}')
    name, k = found
    try:
      with open(name, 'rb') as f:
        data = f.read()
    except OSError as e:
      return base.Problem(example.where, 'missing_image',
                          f'cannot read {name} ({e.strerror})')
    if opts.store == 'path':
      fields = {'image_path': example.image_path, 'image_dir': k}
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      size = image.size
      smaller = _reencode(image, opts) if opts.store == 'bytes' else None
  except Exception as e:  # PIL raises many types for corrupt files.
    return base.Problem(example.where, 'corrupt_image',
                        f'cannot decode image {name}: {e}')
  if opts.store == 'bytes':
    fields = {'image_bytes': smaller if smaller is not None else data}
  return fields, size


def _boxes(entries: list[dict[str, Any]], units: str, size: tuple[int, int],
           problems: list[base.Problem]
           ) -> tuple[list[dict[str, Any]], list[int | None], int]:
  """Entries with normalised ``box``; old index → new index (None: dropped);
  number clipped."""
  kept, mapping, clipped = [], [], 0
  for entry in entries:
    box, was_clipped, reason = normalise_box(entry['xyxy'], units, size)
    if box is None:
      problems.append(base.Problem(
          entry.get('where', '?'), reason,
          f'box (x1, y1, x2, y2)={tuple(entry["xyxy"])} in {units} of a '
          f'{size[0]}x{size[1]} image has no area inside it'))
      mapping.append(None)
      continue
    clipped += was_clipped
    out = {k: v for k, v in entry.items() if k not in ('xyxy', 'where')}
    out['box'] = box
    mapping.append(len(kept))
    kept.append(out)
  return kept, mapping, clipped


def finalise(example: base.Example, opts: Options) -> Finalised:
  """The record of ``example`` (see the module docstring)."""
  problems = list(example.problems)
  image = _image(example, opts)
  if isinstance(image, base.Problem):
    return Finalised(None, problems + [image])
  fields, decoded_size = image
  size = example.size or decoded_size
  if example.size and example.size != decoded_size:
    problems.append(base.Problem(
        example.where, 'annotated_size_differs',
        f'annotated size {example.size} but the image is {decoded_size}; '
        'boxes are normalised by the annotated size', benign=True))
  objects, mapping, clipped = _boxes(example.objects, example.box_units,
                                     size, problems)
  regions, _, clipped_regions = _boxes(example.regions, example.box_units,
                                       size, problems)
  relations = []
  for rel in example.relations:
    s, o = mapping[rel['subject']], mapping[rel['object']]
    if s is None or o is None:
      problems.append(base.Problem(rel['where'], 'relation_box_dropped',
                                   'its subject or object box was dropped',
                                   benign=True))
    elif (opts.relation_vocab is not None and
          rel['predicate'] not in opts.relation_vocab):
      problems.append(base.Problem(
          rel['where'], 'rare_relation',
          f'relation {rel["predicate"]!r} is below --min_relation_count',
          benign=True))
    elif (opts.relation_vocab is not None and ops.swap_left_right(
        rel['predicate']) not in opts.relation_vocab):
      problems.append(base.Problem(
          rel['where'], 'mirror_relation_missing',
          f'a flip turns {rel["predicate"]!r} into '
          f'{ops.swap_left_right(rel["predicate"])!r}, which is not in the '
          'vocabulary', benign=True))
    else:
      relations.append({
          'subject': s, 'object': o, 'predicate': rel['predicate'],
          'subject_label': objects[s]['label'],
          'object_label': objects[o]['label'],
          'subject_box': list(objects[s]['box']),
          'object_box': list(objects[o]['box'])})
  if not (example.captions or objects or regions):
    problems.append(base.Problem(example.where, 'nothing_usable',
                                 'no caption, object or region left',
                                 benign=True))
    return Finalised(None, problems, clipped + clipped_regions)
  record = {
      'image_id': int(example.image_id), 'captions': list(example.captions),
      'objects': objects, 'regions': regions, 'relations': relations,
      'paragraph': example.paragraph,
      'has_graph': bool(example.has_graph and relations),
      'has_boxes': bool(objects or regions),
      'image_size': list(decoded_size), 'origin': example.where}
  record.update(fields)
  return Finalised(record, problems, clipped + clipped_regions)


def serialised(item: base.Item, opts: Options
               ) -> tuple[bytes | None, list[base.Problem], int]:
  """An item → (record bytes or None, problems, boxes clipped); what
  ``prepare``'s workers compute."""
  if isinstance(item, base.Problem):
    return None, [item], 0
  done = finalise(item, opts)
  data = records.serialise(done.record) if done.record is not None else None
  return data, done.problems, done.boxes_clipped
