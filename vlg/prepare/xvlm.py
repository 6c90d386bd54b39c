"""X-VLM's region JSON lines (``xvlm_regions``): one image per line.

Each line: ``{"elems": [{"caption": str or [str], "bb": [x, y, w, h] in
pixels of the original image, "attributes"?: str or [str]}], "caption"?:
str or [str], "image_id"?, image}`` where the image is a path under
``image_rpath`` / ``image`` / ``image_path`` (relative to ``--images``) or
base64 bytes under ``binary``. The image size comes from the image itself.
Each element becomes a region ``{text: first caption, texts: all captions,
attributes, box}``; the line's ``caption`` becomes the record's captions.
A line that is not JSON is a problem (``malformed_json``) naming the line.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from typing import Any

from vlg.prepare import base

PATH_KEYS = ('image_rpath', 'image', 'image_path')


class XvlmRegions:
  """Reads one or more X-VLM JSON-lines files, streaming line by line."""

  has_relations = False

  def __init__(self, srcs: list[str]):
    if not srcs:
      raise ValueError('xvlm_regions needs at least one --src JSON-lines file')
    self.srcs = srcs

  def items(self) -> Iterator[base.Item]:
    for path in self.srcs:
      try:
        f = open(path, encoding='utf-8')
      except OSError as e:
        raise base.AnnotationError(f'{path}: cannot read ({e.strerror})'
                                   ) from e
      with f:
        for n, line in enumerate(f, start=1):
          if line.strip():
            yield self._item(line, f'{path} line {n}')

  def _item(self, line: str, where: str) -> base.Item:
    try:
      entry = json.loads(line)
    except json.JSONDecodeError as e:
      return base.Problem(where, 'malformed_json', f'not JSON ({e})')
    if not isinstance(entry, dict) or not isinstance(entry.get('elems', []),
                                                     list):
      return base.Problem(where, 'malformed_entry',
                          'a line must be an object with an "elems" list')
    example = base.Example(where=where, image_id=0)
    path = next((entry[k] for k in PATH_KEYS if isinstance(entry.get(k),
                                                           str)), None)
    if path is not None:
      example.image_path = path
    elif isinstance(entry.get('binary'), str):
      try:
        example.image_bytes = base64.b64decode(entry['binary'], validate=True)
      except binascii.Error as e:
        return base.Problem(where, 'corrupt_image', f'bad base64 "binary" '
                            f'({e})')
    else:
      return base.Problem(where, 'malformed_entry', 'no image: needs one of '
                          f'{list(PATH_KEYS)} (a path) or "binary"')
    raw_id = entry.get('image_id', path if path is not None else where)
    example.image_id = base.image_id_of(raw_id)
    if 'caption' in entry:
      captions = base.texts_of(entry['caption'])
      if captions is None:
        example.problems.append(base.Problem(
            where, 'malformed_annotation',
            '"caption" must be a string or a list of strings'))
      else:
        example.captions = base.clean_texts(captions, where, example.problems)
    for j, elem in enumerate(entry.get('elems', [])):
      self._region(elem, f'{where} elems[{j}]', example)
    return example

  def _region(self, elem: Any, where: str, example: base.Example) -> None:
    captions = base.texts_of(elem.get('caption')) if isinstance(
        elem, dict) else None
    box = base.xywh_box(elem.get('bb')) if isinstance(elem, dict) else None
    if captions is None or box is None:
      example.problems.append(base.Problem(
          where, 'malformed_annotation',
          'needs "caption" (str or [str]) and "bb" [x, y, w, h]'))
      return
    captions = base.clean_texts(captions, where, example.problems)
    if not captions:
      return
    attributes = base.texts_of(elem.get('attributes', [])) or []
    example.regions.append({
        'text': captions[0], 'texts': captions,
        'attributes': [a.strip() for a in attributes if a.strip()],
        'xyxy': box, 'where': where})
