"""What a format reader yields: examples with raw boxes, and problems.

A format reader (one module per annotation family in this package) turns the
user's annotation files into a deterministic stream of *items*, one per
image: an :class:`Example` (annotations of one image, boxes still in the
file's units, the image not read yet) or a :class:`Problem` (an entry that
cannot be used, e.g. a malformed JSON line). Keeping the image unread lets
``vlg.tools.prepare`` skip the items of shards it already wrote, and lets
it read images in worker processes. ``vlg.prepare.finalise`` turns an
example into a record of the contract of ``vlg/data/sources.py``.

Nothing here imports jax.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator
from typing import Any

from vlg.data import ops

# Box units of an example: pixels of the original image, or already
# normalised to [0, 1] by the annotation (Open Images).
PIXELS = 'pixels'
NORMALISED = 'normalised'


@dataclasses.dataclass(frozen=True)
class Problem:
  """An annotation or image that cannot be used.

  Attributes:
    where: the file and entry, e.g. ``captions.json image id=9``.
    reason: a short code counted in the summary, e.g. ``corrupt_image``.
    detail: what is wrong, for the error message.
    benign: expected and harmless (an image without annotations): always
      counted, never an error.
  """
  where: str
  reason: str
  detail: str
  benign: bool = False

  def message(self) -> str:
    return f'{self.where}: {self.detail} [{self.reason}]'


@dataclasses.dataclass
class Example:
  """The annotations of one image, before its image is read.

  Boxes are ``(x1, y1, x2, y2)`` in ``box_units`` under the key ``'xyxy'``
  of each object / region dict; relations name their subject and object by
  index into ``objects``. ``image_path`` is resolved against the image
  folders (``--images``); ``image_bytes`` holds an image embedded in the
  annotation (X-VLM's ``binary``). ``size`` is the annotated (width,
  height); when absent it is read from the image.
  """
  where: str
  image_id: int
  image_path: str = ''
  image_bytes: bytes | None = None
  size: tuple[int, int] | None = None
  box_units: str = PIXELS
  captions: list[str] = dataclasses.field(default_factory=list)
  objects: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  regions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  relations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  paragraph: str = ''
  has_graph: bool = False
  problems: list[Problem] = dataclasses.field(default_factory=list)


Item = Example | Problem


class AnnotationError(ValueError):
  """A whole annotation file is unusable (unreadable, not JSON, wrong
  layout): always fatal, the message names the file."""


def load_json(path: str) -> Any:
  """The parsed JSON file; errors name the file."""
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except OSError as e:
    raise AnnotationError(f'{path}: cannot read ({e.strerror})') from e
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise AnnotationError(f'{path}: not valid JSON ({e})') from e


def require(value: Any, kind: type | tuple[type, ...], path: str,
            what: str) -> Any:
  """``value`` if it is a ``kind``, else an :class:`AnnotationError`."""
  if not isinstance(value, kind):
    name = getattr(kind, '__name__', None) or '/'.join(
        k.__name__ for k in kind)
    raise AnnotationError(f'{path}: {what} must be a JSON {name}, got '
                          f'{type(value).__name__}')
  return value


def stable_id(text: str) -> int:
  """A 60-bit image id derived from a string (same string, same id)."""
  return int(hashlib.sha1(text.encode('utf-8')).hexdigest()[:15], 16)


def image_id_of(value: Any) -> int:
  """An int image id from an annotation's id (int, numeric string or any
  other string, hashed)."""
  if isinstance(value, bool):
    return stable_id(str(value))
  if isinstance(value, int):
    return value
  text = str(value)
  return int(text) if text.isdigit() else stable_id(text)


def texts_of(value: Any) -> list[str] | None:
  """A caption field (a string or a list of strings) as a list; None if it
  is neither."""
  if isinstance(value, str):
    return [value]
  if isinstance(value, list) and all(isinstance(t, str) for t in value):
    return list(value)
  return None


def empty_text_problem(text: str, where: str) -> Problem | None:
  """An ``empty_text`` problem if training's text normalisation
  (``ops.pre_caption``) leaves nothing of ``text`` (blank, or only
  punctuation such as ``'?!...'``), else None: what prepare accepts,
  training accepts."""
  if not ops.is_empty_after_normalisation(text):
    return None
  return Problem(where, 'empty_text', f'text {text!r} is empty after '
                 'normalisation (lower-casing, removing punctuation)')


def clean_texts(texts: list[str], where: str,
                problems: list[Problem]) -> list[str]:
  """The stripped texts that are not empty after normalisation; each other
  one is a problem (``empty_text``)."""
  kept = []
  for t in texts:
    problem = empty_text_problem(t, where)
    if problem is None:
      kept.append(t.strip())
    else:
      problems.append(problem)
  return kept


def xywh_box(value: Any) -> tuple[float, float, float, float] | None:
  """``[x, y, w, h]`` (4 finite numbers) as ``(x1, y1, x2, y2)``; None if
  malformed."""
  if (not isinstance(value, (list, tuple)) or len(value) != 4 or
      not all(_is_number(v) for v in value)):
    return None
  x, y, w, h = (float(v) for v in value)
  return (x, y, x + w, y + h)


def box_from_fields(entry: dict[str, Any]) -> tuple[float, ...] | None:
  """``(x1, y1, x2, y2)`` from an entry's ``x, y, w|width, h|height``
  fields (Visual Genome, GQA); None if malformed."""
  w = entry.get('w', entry.get('width'))
  h = entry.get('h', entry.get('height'))
  return xywh_box([entry.get('x'), entry.get('y'), w, h])


def _is_number(v: Any) -> bool:
  return (isinstance(v, (int, float)) and not isinstance(v, bool) and
          math.isfinite(v))


def annotated_size(entry: dict[str, Any]) -> tuple[int, int] | None:
  """The entry's positive integer ``(width, height)``, if it has one."""
  w, h = entry.get('width'), entry.get('height')
  if _is_number(w) and _is_number(h) and w > 0 and h > 0:
    return int(w), int(h)
  return None


def json_list_entries(path: str, what: str) -> Iterator[tuple[int, Any]]:
  """``(index, entry)`` of a file holding a JSON list."""
  data = require(load_json(path), list, path, what)
  yield from enumerate(data)
