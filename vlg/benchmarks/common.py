"""Shared parts of the benchmark readers: errors, results, field checks.

Every reader in :mod:`vlg.benchmarks` follows one bad-input policy:

* A file that cannot be parsed as a whole (not JSON, wrong top-level type, a
  CSV header without a required column, a duplicate JSON key) always raises
  :class:`BenchmarkFormatError`, a ``ValueError`` whose message starts with the
  file path and the line (or key) where the problem is.
* A bad *record* (a JSON line that does not parse, a missing required field, a
  field of the wrong type) raises the same error by default. With
  ``skip_bad=True`` the record is skipped instead, the skip is logged as a
  warning, and the message is kept in :attr:`Loaded.skipped`, so a skipped
  record is never silent and a run can report how many it lost.

Readers return a :class:`Loaded` (a read-only sequence of frozen example
dataclasses plus counts; the retrieval reader a ``RetrievalSet`` with the same
counts), so evaluators can log "N evaluated / N in the file".
No jax or TensorFlow here: plain Python, so grain workers and tools can import
it cheaply.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable, Generic, Protocol, TypeVar

from vlg.data import ops

T = TypeVar('T')


class BenchmarkFormatError(ValueError):
  """A benchmark file (or one record in it) does not have the expected form.

  Attributes:
    path: the file.
    where: where in the file, e.g. ``'line 12'`` or ``"key 'coref_test_3'"``;
      empty for whole-file problems.
  """

  def __init__(self, path: str, where: str, message: str):
    self.path, self.where = str(path), where
    location = f'{self.path}: {where}' if where else self.path
    super().__init__(f'{location}: {message}')


class FieldError(Exception):
  """A record-level problem; the reader turns it into BenchmarkFormatError."""


@dataclasses.dataclass(frozen=True)
class Loaded(collections.abc.Sequence, Generic[T]):
  """The examples read from benchmark files, with what was left out.

  It is a read-only sequence of examples (``len``, indexing, iteration), so it
  can be used where a list is expected.

  Attributes:
    examples: the examples, in file order.
    files: the files read.
    num_records: records found in the files, before skipping or filtering.
    skipped: one message per bad record skipped (``skip_bad=True`` only).
    num_filtered: good records left out on purpose by the reader's own filter
      (e.g. VALSE examples failing the ``mturk.caption >= 2`` validity test).
  """
  examples: tuple[T, ...]
  files: tuple[str, ...]
  num_records: int
  skipped: tuple[str, ...] = ()
  num_filtered: int = 0

  @property
  def num_skipped(self) -> int:
    """How many bad records were skipped."""
    return len(self.skipped)

  def __len__(self) -> int:
    return len(self.examples)

  def __getitem__(self, index):
    return self.examples[index]

  def __iter__(self) -> Iterator[T]:
    return iter(self.examples)

  def __repr__(self) -> str:
    return (f'Loaded({len(self.examples)} examples from {len(self.files)} '
            f'file(s), {self.num_records} records, {self.num_skipped} skipped, '
            f'{self.num_filtered} filtered)')


class Collector:
  """Applies the bad-record policy for one file and counts what it saw."""

  def __init__(self, path: str, skip_bad: bool):
    self.path, self.skip_bad = str(path), skip_bad
    self.num_records = 0
    self.skipped: list[str] = []

  def bad(self, where: str, message: str) -> None:
    """Raises for a bad record, or records the skip when ``skip_bad``."""
    error = BenchmarkFormatError(self.path, where, message)
    if not self.skip_bad:
      raise error
    self.skipped.append(str(error))

  def fail(self, where: str, message: str) -> None:
    """Raises for a whole-file problem (never skipped)."""
    raise BenchmarkFormatError(self.path, where, message)

  def log_skips(self) -> None:
    """Warns once about the skipped records of this file, if any."""
    if self.skipped:
      logging.warning('%s: skipped %d bad record(s) of %d; first: %s',
                      self.path, len(self.skipped), self.num_records,
                      self.skipped[0])


def make_loaded(examples: Iterable[T], collectors: Iterable[Collector],
                num_filtered: int = 0) -> Loaded[T]:
  """Builds a :class:`Loaded` from the examples and the per-file collectors."""
  collectors = list(collectors)
  for c in collectors:
    c.log_skips()
  return Loaded(examples=tuple(examples),
                files=tuple(c.path for c in collectors),
                num_records=sum(c.num_records for c in collectors),
                skipped=tuple(m for c in collectors for m in c.skipped),
                num_filtered=num_filtered)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
  keys = [k for k, _ in pairs]
  if len(set(keys)) != len(keys):
    seen = set()
    duplicate = next(k for k in keys if k in seen or seen.add(k))
    raise FieldError(f'duplicate key {duplicate!r} in a JSON object')
  return dict(pairs)


def read_json(path: str) -> Any:
  """Reads a whole-file JSON document; any problem is a file-level error.

  Duplicate keys are an error too: ``json.load`` would silently keep the
  last one and an example would vanish unnoticed.
  """
  with open(path, encoding='utf-8-sig') as f:
    text = f.read()
  try:
    return json.loads(text, object_pairs_hook=_no_duplicate_keys)
  except json.JSONDecodeError as e:
    raise BenchmarkFormatError(path, f'line {e.lineno} column {e.colno}',
                               f'not valid JSON ({e.msg})') from e
  except FieldError as e:
    raise BenchmarkFormatError(path, '', str(e)) from e


def iter_jsonl(collector: Collector) -> Iterator[tuple[str, Any]]:
  """Yields ``('line N', object)`` for each non-blank line of a JSONL file.

  A line that is not valid JSON is reported through ``collector.bad`` (which
  raises unless skipping) and not yielded. Blank lines are not records.
  """
  with open(collector.path, encoding='utf-8-sig') as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      collector.num_records += 1
      where = f'line {number}'
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        collector.bad(where, f'not valid JSON ({e.msg} at column {e.colno})')
        continue
      yield where, record


def parse_jsonl(collector: Collector, parse: Callable[[Any], T]
                ) -> Iterator[tuple[str, T]]:
  """Yields ``(where, parse(record))`` for each JSONL record that parses.

  A record whose ``parse`` raises ``FieldError`` is reported through
  ``collector.bad`` (which raises unless skipping) and not yielded.
  """
  for where, record in iter_jsonl(collector):
    try:
      yield where, parse(record)
    except FieldError as e:
      collector.bad(where, str(e))


def _type_name(value: Any) -> str:
  return 'null' if value is None else type(value).__name__


def require_dict(record: Any) -> Mapping[str, Any]:
  """Checks that a record is a JSON object."""
  if not isinstance(record, Mapping):
    raise FieldError(f'expected a JSON object, got {_type_name(record)}')
  return record


def _missing(record: Mapping[str, Any], key: str) -> bool:
  return key not in record or record[key] is None


def get_str(record: Mapping[str, Any], key: str, *, required: bool = True,
            default: str | None = None, allow_empty: bool = False
            ) -> str | None:
  """A string field; a number is *not* converted (it signals a mix-up)."""
  if _missing(record, key):
    if required:
      raise FieldError(f'missing required field {key!r}')
    return default
  value = record[key]
  if not isinstance(value, str):
    raise FieldError(f'field {key!r} must be a string, got '
                     f'{_type_name(value)} {value!r}')
  if not allow_empty and not value.strip():
    raise FieldError(f'field {key!r} is empty')
  return value


def get_int(record: Mapping[str, Any], key: str, *, required: bool = True,
            default: int | None = None, allow_str: bool = False
            ) -> int | None:
  """An integer field (``true``/``false`` are not integers here).

  ``allow_str`` also accepts a string of digits (CSV cells, ids written as
  strings by other tools).
  """
  if _missing(record, key):
    if required:
      raise FieldError(f'missing required field {key!r}')
    return default
  value = record[key]
  if isinstance(value, int) and not isinstance(value, bool):
    return value
  if allow_str and isinstance(value, str):
    try:
      return int(value.strip())
    except ValueError:
      pass
  raise FieldError(f'field {key!r} must be an integer, got '
                   f'{_type_name(value)} {value!r}')


_TRUE = frozenset({'true', 't', '1', 'yes'})
_FALSE = frozenset({'false', 'f', '0', 'no'})


def parse_bool(value: Any, key: str) -> bool:
  """A boolean from JSON ``true``/``false``, 0/1, or a 'True'/'False' string.

  CSV files (and pandas exports) write booleans as ``True``/``False``
  strings, so both spellings must give the same example.
  """
  if isinstance(value, bool):
    return value
  if isinstance(value, int) and value in (0, 1):
    return bool(value)
  if isinstance(value, str):
    lowered = value.strip().lower()
    if lowered in _TRUE:
      return True
    if lowered in _FALSE:
      return False
  raise FieldError(f'field {key!r} must be a boolean (true/false), got '
                   f'{_type_name(value)} {value!r}')


def get_bool(record: Mapping[str, Any], key: str) -> bool:
  """A required boolean field (see :func:`parse_bool`)."""
  if _missing(record, key):
    raise FieldError(f'missing required field {key!r}')
  return parse_bool(record[key], key)


# ------------------------------------------------------------------ images


class HasImages(Protocol):
  """An example that can name the image files it needs."""

  def image_files(self) -> tuple[str, ...]:
    ...


def image_path(root: str, name: str) -> str:
  """The path of image ``name`` (relative to the image root) on disk.

  An absolute ``name`` is returned unchanged, as ``os.path.join`` does.
  """
  return os.path.join(root, name)


def check_images(examples: Iterable[HasImages | str], image_root: str,
                 decode: bool = False) -> tuple[list[Any], list[str]]:
  """Finds which examples have all their images under ``image_root``.

  Benchmark images go missing (dead SVO-Probes URLs, partial COCO copies), so
  an evaluator must say how many examples it really scored and which images it
  lacked; results are comparable only on the same example set. With
  ``decode`` (what evaluators ask for when they are built) an image must
  also decode: a corrupt file counts as missing, with a warning naming it,
  instead of failing the first evaluation hours into a run.

  Args:
    examples: examples with an ``image_files()`` method, or image names.
    image_root: the folder the image names are relative to.
    decode: also decode every image once.

  Returns:
    ``(present, missing)``: the examples whose images all exist, in order
    (``len(present)`` is "N evaluated"), and the sorted distinct image names
    that were not found.
  """
  exists: dict[str, bool] = {}
  present, missing, corrupt = [], set(), {}
  for example in examples:
    names = ((example,) if isinstance(example, str)
             else example.image_files())
    ok = True
    for name in names:
      if name not in exists:
        path = image_path(image_root, name)
        exists[name] = os.path.isfile(path)
        if exists[name] and decode:
          try:
            with open(path, 'rb') as f:
              ops.decode_image(f.read(), path)
          except (OSError, ops.BadExampleError) as e:
            exists[name], corrupt[name] = False, str(e)
      if not exists[name]:
        missing.add(name)
        ok = False
    if ok:
      present.append(example)
  if corrupt:
    logging.warning('%d image(s) under %s do not decode; their examples are '
                    'skipped and counted: %s', len(corrupt), image_root,
                    list(corrupt.values())[:5])
  return present, sorted(missing)
