"""Open Images boxes (``openimages``): box CSV(s) + class descriptions.

``--src=BOXES.csv[,MORE_BOXES.csv...],class-descriptions-boxable.csv``, told
apart by their first line: a box CSV starts with the header ``ImageID,
Source, LabelName, Confidence, XMin, XMax, YMin, YMax, IsOccluded,
IsTruncated, IsGroupOf, IsDepiction, IsInside`` (coordinates already
normalised to [0, 1]); the class descriptions map ``LabelName`` (``/m/...``)
to a display name, with or without a header. Rows are streamed; the rows of
one image must be contiguous, as in the official files (sort by ImageID
otherwise). One record per image: ``objects`` [{label = display name,
label_id, confidence, is_group_of, is_occluded, is_truncated, is_depiction,
is_inside, box}]; images are ``{ImageID}.jpg`` in ``--images``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator

from vlg.prepare import base

REQUIRED = ('ImageID', 'LabelName', 'XMin', 'XMax', 'YMin', 'YMax')
FLAGS = {'IsOccluded': 'is_occluded', 'IsTruncated': 'is_truncated',
         'IsGroupOf': 'is_group_of', 'IsDepiction': 'is_depiction',
         'IsInside': 'is_inside'}


def _first_line(path: str) -> str:
  try:
    with open(path, encoding='utf-8') as f:
      return f.readline()
  except OSError as e:
    raise base.AnnotationError(f'{path}: cannot read ({e.strerror})') from e


def _flag(value: str | None) -> bool | None:
  return {'1': True, '0': False}.get((value or '').strip())


class OpenImages:
  """Streams Open Images box CSVs, one record per image."""

  has_relations = False

  def __init__(self, srcs: list[str]):
    self.box_files = [p for p in srcs
                      if _first_line(p).lstrip('\ufeff').startswith('ImageID')]
    others = [p for p in srcs if p not in self.box_files]
    if not self.box_files or len(others) != 1:
      raise ValueError(
          'openimages takes --src=BOXES.csv[,...],class-descriptions-'
          f'boxable.csv; found box CSVs {self.box_files} and other files '
          f'{others} (a box CSV starts with the header "ImageID,...")')
    self.names = self._class_names(others[0])

  @staticmethod
  def _class_names(path: str) -> dict[str, str]:
    names = {}
    with open(path, encoding='utf-8', newline='') as f:
      for n, row in enumerate(csv.reader(f), start=1):
        if n == 1 and row and row[0].lstrip('\ufeff') == 'LabelName':
          continue
        if len(row) < 2 or not row[0].strip():
          raise base.AnnotationError(f'{path} line {n}: expected '
                                     f'"LabelName,DisplayName", got {row!r}')
        names[row[0].strip()] = row[1].strip()
    return names

  def items(self) -> Iterator[base.Item]:
    seen: set[str] = set()
    for path in self.box_files:
      with open(path, encoding='utf-8-sig', newline='') as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
          raise base.AnnotationError(f'{path}: missing columns {missing}')
        current, example = None, None
        for n, row in enumerate(reader, start=2):
          image = (row.get('ImageID') or '').strip()
          if image != current:
            if example is not None:
              yield example
            if image in seen:
              raise base.AnnotationError(
                  f'{path} line {n}: rows of ImageID {image} are not '
                  'contiguous; sort the CSV by ImageID')
            seen.add(image)
            current = image
            example = base.Example(
                where=f'{path} ImageID {image}',
                image_id=int(image, 16) if _is_hex(image)
                else base.image_id_of(image),
                image_path=f'{image}.jpg', box_units=base.NORMALISED)
          self._add_row(row, f'{path} line {n}', example)
        if example is not None:
          yield example

  def _add_row(self, row: dict[str, str], where: str,
               example: base.Example) -> None:
    label = self.names.get((row.get('LabelName') or '').strip())
    try:
      x1, x2, y1, y2 = (float(row[k]) for k in ('XMin', 'XMax', 'YMin',
                                                 'YMax'))
      confidence = (float(row['Confidence']) if row.get('Confidence')
                    else None)
    except (TypeError, ValueError):
      label = None
    if label is None:
      example.problems.append(base.Problem(
          where, 'malformed_annotation',
          f'unknown LabelName {row.get("LabelName")!r} or non-numeric '
          'XMin/XMax/YMin/YMax/Confidence'))
      return
    obj = {'label': label, 'label_id': row['LabelName'].strip(),
           'xyxy': (x1, y1, x2, y2), 'where': where}
    if confidence is not None:
      obj['confidence'] = confidence
    for column, key in FLAGS.items():
      if column in row:
        obj[key] = _flag(row[column])
    example.objects.append(obj)


def _is_hex(text: str) -> bool:
  return bool(text) and all(c in '0123456789abcdefABCDEF' for c in text)
