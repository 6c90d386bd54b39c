"""ALBEF's caption JSON (``albef_json``): a list of ``{"image", "caption"}``.

``image`` is a path (relative to ``--images`` or absolute); ``caption`` a
string or a list of strings (COCO, VG, SBU, CC3M, CC12M as ALBEF ships
them). One record per entry, as ALBEF samples them; the image id is derived
from the image path, so entries of the same image share it (and are never
ITM negatives of each other).
"""

from __future__ import annotations

from collections.abc import Iterator

from vlg.prepare import base


class AlbefJson:
  """Reads one or more ALBEF caption JSON files, in order."""

  has_relations = False

  def __init__(self, srcs: list[str]):
    if not srcs:
      raise ValueError('albef_json needs at least one --src JSON file')
    self.srcs = srcs

  def items(self) -> Iterator[base.Item]:
    for path in self.srcs:
      for i, entry in base.json_list_entries(path, 'the top level'):
        where = f'{path} entry {i}'
        if not isinstance(entry, dict) or not isinstance(
            entry.get('image'), str) or 'caption' not in entry:
          yield base.Problem(where, 'malformed_entry',
                             'needs "image" (a path) and "caption"')
          continue
        captions = base.texts_of(entry['caption'])
        if captions is None:
          yield base.Problem(where, 'malformed_entry', '"caption" must be a '
                             'string or a list of strings')
          continue
        problems = []
        captions = base.clean_texts(captions, where, problems)
        if not captions:
          yield base.Problem(where, 'empty_text',
                             'no caption left: ' + ('; '.join(
                                 p.detail for p in problems) or
                                                    'the list is empty'))
          continue
        yield base.Example(where=where,
                           image_id=base.stable_id(entry['image']),
                           image_path=entry['image'], captions=captions,
                           problems=problems)
