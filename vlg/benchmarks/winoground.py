"""Winoground (Thrush et al., CVPR 2022).

Layout (the facebook/winoground release; its licence forbids redistribution,
so users bring their own copy): ``data/examples.jsonl``, one line per
example::

  {"id": 0, "caption_0": "an old person kisses a young person",
   "caption_1": "a young person kisses an old person", "image_0": "ex_0_img_0",
   "image_1": "ex_0_img_1", "tag": "Adjective-Age", "secondary_tag": "",
   "num_main_preds": 1, "collapsed_tag": "Relation"}

and the images at ``data/images/<stem>.png``. In the released file (400
lines) ``id`` and ``num_main_preds`` are integers, ``secondary_tag`` is ``""``
for 299 examples and may list several tags (``"Symbolic, Series"``), and
``collapsed_tag`` is one of Object, Relation, Both. A flat copy with
``examples.jsonl`` and ``images/`` directly under the root is read as well.
The tags are optional here (``''`` / None when absent).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from vlg.benchmarks import common

IMAGE_EXTENSION = '.png'


@dataclasses.dataclass(frozen=True)
class WinogroundExample:
  """Two images and two captions with the same words in a different order.

  Attributes:
    id: the example id.
    image_0: stem of the image that ``caption_0`` describes.
    image_1: stem of the image that ``caption_1`` describes.
    caption_0: the caption of ``image_0``.
    caption_1: the caption of ``image_1``.
    tag: the linguistic swap tag (e.g. ``'Noun'``).
    secondary_tag: further tags, comma-separated, or ''.
    num_main_preds: number of main predicates, if given.
    collapsed_tag: 'Object', 'Relation' or 'Both' in the release.
  """
  id: int
  image_0: str
  image_1: str
  caption_0: str
  caption_1: str
  tag: str = ''
  secondary_tag: str = ''
  num_main_preds: int | None = None
  collapsed_tag: str = ''

  def image_files(self) -> tuple[str, ...]:
    """File names relative to :func:`images_dir`."""
    return (self.image_0 + IMAGE_EXTENSION, self.image_1 + IMAGE_EXTENSION)


def examples_file(root: str | os.PathLike) -> str:
  """``root/data/examples.jsonl`` or ``root/examples.jsonl`` (or root itself).

  Raises:
    FileNotFoundError: neither exists.
  """
  root = os.fspath(root)
  if os.path.isfile(root):
    return root
  candidates = [os.path.join(root, 'data', 'examples.jsonl'),
                os.path.join(root, 'examples.jsonl')]
  for path in candidates:
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(f'no Winoground examples file; looked for '
                          f'{candidates}')


def images_dir(root: str | os.PathLike) -> str:
  """The image folder: ``root/data/images`` if it exists, else ``root/images``.

  For a root holding neither, the released layout's ``data/images`` is
  returned, so an error about missing images names the expected place.
  """
  root = os.fspath(root)
  nested = os.path.join(root, 'data', 'images')
  flat = os.path.join(root, 'images')
  if os.path.isdir(nested) or not os.path.isdir(flat):
    return nested
  return flat


def image_path(root: str | os.PathLike, stem: str) -> str:
  """The path of the image with this stem (``ex_0_img_0``) under ``root``."""
  return os.path.join(images_dir(root), stem + IMAGE_EXTENSION)


def _parse(record: Any) -> WinogroundExample:
  record = common.require_dict(record)
  optional = dict(required=False, default='', allow_empty=True)
  return WinogroundExample(
      id=common.get_int(record, 'id', allow_str=True),
      image_0=common.get_str(record, 'image_0'),
      image_1=common.get_str(record, 'image_1'),
      caption_0=common.get_str(record, 'caption_0'),
      caption_1=common.get_str(record, 'caption_1'),
      tag=common.get_str(record, 'tag', **optional),
      secondary_tag=common.get_str(record, 'secondary_tag', **optional),
      num_main_preds=common.get_int(record, 'num_main_preds', required=False,
                                    allow_str=True),
      collapsed_tag=common.get_str(record, 'collapsed_tag', **optional))


def load_winoground(root: str | os.PathLike, skip_bad: bool = False
                    ) -> common.Loaded[WinogroundExample]:
  """Reads Winoground's ``examples.jsonl``.

  Args:
    root: the dataset folder (with ``data/examples.jsonl`` or
      ``examples.jsonl``), or the JSONL file itself.
    skip_bad: skip (and count) bad lines instead of raising.

  Returns:
    The examples in file order; images are at ``image_path(root, stem)``.

  Raises:
    FileNotFoundError: no examples file under ``root``.
    BenchmarkFormatError: (unless ``skip_bad``) a line that is not JSON, or a
      missing or wrongly typed field; names file and line. Duplicate ids are
      always an error (results are keyed by id).
  """
  collector = common.Collector(examples_file(root), skip_bad)
  examples, seen = [], {}
  for where, example in common.parse_jsonl(collector, _parse):
    if example.id in seen:
      collector.fail(where, f'duplicate id {example.id} (first at '
                     f'{seen[example.id]})')
    seen[example.id] = where
    examples.append(example)
  return common.make_loaded(examples, [collector])
