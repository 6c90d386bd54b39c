"""VALSE instrument files (Parcalabescu et al., ACL 2022).

Layout: one JSON file per instrument (``counting-hard.json``, ...), each a
single object keyed by example id::

  {"counting_visual7w_1": {"dataset": "visual7w", "image_file": "v7w_1.jpg",
    "caption": "There are exactly 4 cars parked.", "foil": "... 0 cars ...",
    "classes": 4, "classes_foil": 0, "linguistic_phenomena": "counting",
    "mturk": {"foil": 0, "caption": 2, "other": 1}, ...}, ...}

What the 11 published files actually contain (checked on the copies in
``tests/testdata/real_benchmarks/valse``): every record has ``mturk`` as an
object of three integers (``caption``, ``foil``, ``other``); no record lacks
it. ``classes`` / ``classes_foil`` vary by instrument: strings (nouns, verbs,
``yes``/``no``), integers (counting, existence), a list of integers
(``classes_foil`` in existence) and, once, ``false`` (plurals,
``plurals:coco2017:215792``). ``dataset_idx`` is a string in some files and an
integer in others; extra fields (``nli_scores``, ``orig_caption``,
``only_caption``, ``key`` ...) are ignored. Example keys are unique within a
file but repeat across files (``actions_test_0`` is in both action files), so
an example is identified by (instrument, key). In 24 records (14 actant-swap,
9 counting-hard, 1 existence) the foil equals the caption; annotators
rejected all of them (``mturk.caption <= 1``), so the valid set has none, but
a reader of ``valid_only=False`` data should expect exact ties there.

The reader still accepts a record without ``mturk`` (or with ``null``): it is
kept with ``mturk_caption=None`` and counts as not valid, so the default
``valid_only=True`` leaves it out and counts it in ``num_filtered``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, Union

from vlg.benchmarks import common

# Instrument (file stem) -> piece, as in the VALSE paper's table and README.
VALSE_PIECES: dict[str, str] = {
    'existence': 'existence',
    'plurals': 'plurality',
    'counting-hard': 'counting',
    'counting-small-quant': 'counting',
    'counting-adversarial': 'counting',
    'relations': 'relations',
    'action-replacement': 'actions',
    'actant-swap': 'actions',
    'coreference-standard': 'coreference',
    'coreference-hard': 'coreference',
    'foil-it': 'foil-it',
}

# The pieces in the paper's column order.
VALSE_PIECE_ORDER: tuple[str, ...] = (
    'existence', 'plurality', 'counting', 'relations', 'actions',
    'coreference', 'foil-it')

# The valid set of the paper: at least 2 of 3 annotators chose the caption.
VALID_MIN_CAPTION_VOTES = 2

# ``classes`` values as found: a word, a count, a list of counts, or false.
ClassValue = Union[str, int, float, bool, tuple[Any, ...], None]


@dataclasses.dataclass(frozen=True)
class ValseExample:
  """One (image, caption, foil) triple of a VALSE instrument.

  Attributes:
    key: the example id (unique within its instrument file only).
    instrument: the file stem, e.g. ``'counting-hard'``.
    piece: the VALSE piece of the instrument (see :data:`VALSE_PIECES`).
    dataset: the image source named in the file (``'visual7w'``, ``'SWiG'``).
    image_file: the image's file name in that source.
    caption: the correct caption.
    foil: the minimally changed wrong caption.
    mturk_caption: annotators (of 3) who chose the caption; None if absent.
    is_valid: ``mturk_caption >= 2``, the paper's valid set.
    classes: the caption's key word/number as written in the file.
    classes_foil: the foil's key word/number as written in the file.
    linguistic_phenomena: the file's phenomenon label ('' if absent).
  """
  key: str
  instrument: str
  piece: str
  dataset: str
  image_file: str
  caption: str
  foil: str
  mturk_caption: int | None
  is_valid: bool
  classes: ClassValue = None
  classes_foil: ClassValue = None
  linguistic_phenomena: str = ''

  def image_files(self) -> tuple[str, ...]:
    return (self.image_file,)


def valse_piece(instrument: str) -> str:
  """The piece an instrument belongs to; an unknown name is an error."""
  try:
    return VALSE_PIECES[instrument]
  except KeyError:
    raise ValueError(f'unknown VALSE instrument {instrument!r}; known: '
                     f'{sorted(VALSE_PIECES)}') from None


def _class_value(record: dict[str, Any], key: str) -> ClassValue:
  value = record.get(key)
  if isinstance(value, list):
    if not all(isinstance(v, (str, int, float)) for v in value):
      raise common.FieldError(f'field {key!r} must hold words or numbers')
    return tuple(value)
  if value is None or isinstance(value, (str, int, float, bool)):
    return value
  raise common.FieldError(f'field {key!r} must be a word, a number or a '
                          f'list, got {type(value).__name__}')


def _mturk_caption(record: dict[str, Any]) -> int | None:
  mturk = record.get('mturk')
  if mturk is None:
    return None
  if not isinstance(mturk, dict):
    raise common.FieldError(f'field \'mturk\' must be an object, got '
                            f'{type(mturk).__name__} {mturk!r}')
  try:
    votes = common.get_int(mturk, 'caption')
  except common.FieldError as e:
    raise common.FieldError(f'mturk: {e}') from None
  if votes < 0:
    raise common.FieldError(f'mturk.caption must be >= 0, got {votes}')
  return votes


def _parse(key: str, record: Any, instrument: str) -> ValseExample:
  record = common.require_dict(record)
  votes = _mturk_caption(record)
  return ValseExample(
      key=key, instrument=instrument, piece=valse_piece(instrument),
      dataset=common.get_str(record, 'dataset'),
      image_file=common.get_str(record, 'image_file'),
      caption=common.get_str(record, 'caption'),
      foil=common.get_str(record, 'foil'),
      mturk_caption=votes,
      is_valid=votes is not None and votes >= VALID_MIN_CAPTION_VOTES,
      classes=_class_value(record, 'classes'),
      classes_foil=_class_value(record, 'classes_foil'),
      linguistic_phenomena=common.get_str(
          record, 'linguistic_phenomena', required=False, default=''))


def _resolve_files(root_or_files: str | os.PathLike | Sequence[str],
                   instruments: Sequence[str] | None) -> list[str]:
  """Turns a folder, a file or a list of files into instrument files."""
  if isinstance(root_or_files, (str, os.PathLike)):
    root = os.fspath(root_or_files)
    if os.path.isdir(root):
      return _folder_files(root, instruments)
    files = [root]
  else:
    files = [os.fspath(f) for f in root_or_files]
  if instruments is not None:
    absent = sorted(set(instruments) - {_stem(f) for f in files})
    if absent:
      raise ValueError(f'VALSE instruments {absent} are not among {files}')
    files = [f for f in files if _stem(f) in set(instruments)]
  return files


def _folder_files(root: str, instruments: Sequence[str] | None) -> list[str]:
  """The instrument files of a folder (or of its ``data/`` subfolder)."""
  folder = root
  if not any(n.endswith('.json') for n in os.listdir(root)) and (
      os.path.isdir(os.path.join(root, 'data'))):
    folder = os.path.join(root, 'data')  # The Heidelberg-NLP/VALSE repo.
  if instruments is not None:
    files = [os.path.join(folder, f'{name}.json') for name in instruments]
    absent = [f for f in files if not os.path.isfile(f)]
    if absent:
      raise FileNotFoundError(f'VALSE instrument file(s) not found: {absent}')
    return files
  files = sorted(os.path.join(folder, n) for n in os.listdir(folder)
                 if n.endswith('.json'))
  if not files:
    raise FileNotFoundError(f'{folder}: no VALSE instrument files (*.json)')
  unknown = [f for f in files if _stem(f) not in VALSE_PIECES]
  if unknown:
    raise ValueError(f'{folder}: JSON files that are not VALSE instruments: '
                     f'{unknown}; known instruments: {sorted(VALSE_PIECES)}')
  return files


def _stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def load_valse(root_or_files: str | os.PathLike | Sequence[str],
               instruments: Sequence[str] | None = None,
               valid_only: bool = True, skip_bad: bool = False
               ) -> common.Loaded[ValseExample]:
  """Reads VALSE instrument files.

  Args:
    root_or_files: a folder of instrument files (or the VALSE repository root
      with them under ``data/``), one file, or a list of files. Each file's
      stem names its instrument and must be a key of :data:`VALSE_PIECES`.
    instruments: only these instruments (file stems); None reads all.
    valid_only: keep only the valid set (``mturk.caption >= 2``), as the paper
      and docs/benchmarks.md §2 score; the dropped count is ``num_filtered``.
    skip_bad: skip (and count) bad records instead of raising.

  Returns:
    The examples, instrument by instrument in file order, records in file
    order.

  Raises:
    BenchmarkFormatError: a file is not a JSON object of records, or (unless
      ``skip_bad``) a record lacks a field or has one of the wrong type; the
      message names the file and the example key.
  """
  files = _resolve_files(root_or_files, instruments)
  examples, collectors, num_filtered = [], [], 0
  for path in files:
    instrument = _stem(path)
    valse_piece(instrument)
    collector = common.Collector(path, skip_bad)
    collectors.append(collector)
    data = common.read_json(path)
    if not isinstance(data, dict):
      collector.fail('', 'expected a JSON object keyed by example id, got '
                     f'{type(data).__name__}')
    for key, record in data.items():
      collector.num_records += 1
      try:
        example = _parse(key, record, instrument)
      except common.FieldError as e:
        collector.bad(f'key {key!r}', str(e))
        continue
      if valid_only and not example.is_valid:
        num_filtered += 1
        continue
      examples.append(example)
  return common.make_loaded(examples, collectors, num_filtered)
