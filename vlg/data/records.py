"""Prepared records on disk: their byte layout, the shards and the manifest.

A prepared data folder (written by ``python -m vlg.tools.prepare``, read by
:class:`vlg.data.prepared_source.PreparedSource`) holds::

  manifest.json              what was prepared and how (see below)
  shard-00000.array_record   ArrayRecord files, one serialised record each
  shard-00001.array_record   ...
  relations.json             relation vocabulary (scene-graph formats only)

**Record bytes** (no pickle: only JSON and raw image bytes are read back)::

  b'VLGR' | version (1 byte, = 1) | header length n (uint32, little endian)
  | header: n bytes of UTF-8 JSON | image: the remaining bytes

The header holds every record field of the contract of
``vlg/data/sources.py`` except the image: ``image_id``, ``captions``,
``objects`` / ``regions`` / ``relations`` with boxes as ``[cx, cy, w, h]``
lists, ``paragraph``, ``has_graph``, ``has_boxes``, plus ``image_size``
(original [width, height]), ``origin`` (the annotation file and entry) and,
for images stored by path, ``image_path`` and ``image_dir`` (an index into
the manifest's ``image_dirs``). The image bytes are the encoded file (JPEG,
PNG, ...) and are empty for images stored by path.

**Manifest** (``manifest.json``, rewritten atomically after every shard)::

  {"format": "vlg_prepared", "version": 1,
   "options": {format, src, images, store, reencode_size, reencode_side,
               jpeg_quality, shard_size, min_relation_count},
   "inputs": [{"path", "bytes"}],   # sizes of the --src files
   "image_dirs": [...],
   "shards": {"00003": {"file", "records", "items", "bytes", "bad": {reason:
              n}, "skipped": {reason: n}, "boxes_clipped",
              "bad_items": n,   # items with at least one bad problem
              "bad_examples": {reason: [first messages]}}, ...},
   "complete": bool, "num_shards": int, "num_records": int,
   "relation_vocab": "relations.json" | null}

Shard ``k`` holds the records of input items ``[k * shard_size, (k + 1) *
shard_size)`` (fewer records when items are skipped), so a re-run knows
which items a missing shard needs. A shard is written under ``.tmp`` and
renamed when complete; it counts as finished only when the manifest lists
it and its file has the listed size.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np
from array_record.python import array_record_module

MAGIC = b'VLGR'
VERSION = 1
MANIFEST = 'manifest.json'
MANIFEST_FORMAT = 'vlg_prepared'
VOCAB_FILE = 'relations.json'
_HEADER = struct.Struct('<4sBI')


class RecordError(ValueError):
  """Bytes that are not a serialised record."""


def serialise(record: dict[str, Any]) -> bytes:
  """Record (boxes as lists or arrays, optional ``image_bytes``) → bytes."""
  fields = {k: v for k, v in record.items() if k != 'image_bytes'}
  header = json.dumps(fields, ensure_ascii=False, separators=(',', ':'),
                      default=_json_default, allow_nan=False).encode('utf-8')
  return (_HEADER.pack(MAGIC, VERSION, len(header)) + header +
          bytes(record.get('image_bytes') or b''))


def _json_default(value: Any) -> Any:
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f'cannot serialise {type(value).__name__} in a record')


def deserialise(data: bytes) -> dict[str, Any]:
  """Bytes → record: boxes as float32 [4] arrays, ``image_bytes`` set when
  the image is stored inline (the image is not decoded here)."""
  if len(data) < _HEADER.size:
    raise RecordError(f'{len(data)} bytes is too short for a record')
  magic, version, n = _HEADER.unpack_from(data)
  if magic != MAGIC or version != VERSION:
    raise RecordError(f'not a vlg record (magic {magic!r}, version '
                      f'{version}); expected {MAGIC!r} version {VERSION}')
  end = _HEADER.size + n
  if end > len(data):
    raise RecordError(f'header of {n} bytes runs past the record end')
  try:
    record = json.loads(data[_HEADER.size:end].decode('utf-8'))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise RecordError(f'header is not JSON ({e})') from e
  if not isinstance(record, dict):
    raise RecordError('header is not a JSON object')
  for entry in record.get('objects', []) + record.get('regions', []):
    entry['box'] = np.asarray(entry['box'], np.float32)
  for rel in record.get('relations', []):
    rel['subject_box'] = np.asarray(rel['subject_box'], np.float32)
    rel['object_box'] = np.asarray(rel['object_box'], np.float32)
  if end < len(data):
    record['image_bytes'] = data[end:]
  return record


def shard_name(index: int) -> str:
  return f'shard-{index:05d}.array_record'


class ShardWriter:
  """Writes one shard under a temporary name; :meth:`commit` renames it."""

  def __init__(self, path: str):
    self.path, self.tmp = path, path + '.tmp'
    self._writer = array_record_module.ArrayRecordWriter(self.tmp,
                                                         'group_size:1')
    self.count = 0

  def write(self, data: bytes) -> None:
    self._writer.write(data)
    self.count += 1

  def commit(self) -> int:
    """Closes and renames the shard; returns its size in bytes."""
    self._writer.close()
    os.replace(self.tmp, self.path)
    return os.path.getsize(self.path)

  def abort(self) -> None:
    """Closes and deletes the unfinished shard."""
    self._writer.close()
    if os.path.exists(self.tmp):
      os.remove(self.tmp)


def _write_json(path: str, payload: Any) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(payload, f, indent=1, ensure_ascii=False, sort_keys=True)
  os.replace(tmp, path)


class Manifest:
  """The manifest of a prepared folder (see the module docstring)."""

  def __init__(self, directory: str, payload: dict[str, Any]):
    self.directory, self.payload = directory, payload

  @property
  def path(self) -> str:
    return os.path.join(self.directory, MANIFEST)

  @classmethod
  def open(cls, directory: str, options: dict[str, Any],
           inputs: list[dict[str, Any]], image_dirs: list[str]) -> Manifest:
    """Starts a manifest, or resumes one written with the same options.

    Raises:
      ValueError: if ``directory`` holds a manifest of other options or
        inputs (a re-run must not mix two preparations).
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, MANIFEST)
    if os.path.exists(path):
      manifest = cls.load(directory, require_complete=False)
      old = manifest.payload
      for key, new in (('options', options), ('inputs', inputs),
                       ('image_dirs', image_dirs)):
        was = old.get(key)
        if was != new:
          if isinstance(was, dict) and isinstance(new, dict):
            diff = sorted(k for k in set(was) | set(new)
                          if was.get(k) != new.get(k))
            was = {k: was.get(k) for k in diff}
            new = {k: new.get(k) for k in diff}
          raise ValueError(
              f'{path} was written with other {key}: {was} (now {new}); use '
              f'a new --out, or delete {directory} to start over')
      return manifest
    manifest = cls(directory, {
        'format': MANIFEST_FORMAT, 'version': VERSION, 'options': options,
        'inputs': inputs, 'image_dirs': image_dirs, 'shards': {},
        'complete': False, 'num_shards': None, 'num_records': None,
        'relation_vocab': None})
    manifest.save()
    return manifest

  @classmethod
  def load(cls, directory: str, require_complete: bool = True) -> Manifest:
    """Reads ``directory/manifest.json``; errors name the file."""
    path = os.path.join(directory, MANIFEST)
    try:
      with open(path, encoding='utf-8') as f:
        payload = json.load(f)
    except FileNotFoundError as e:
      raise FileNotFoundError(f'{path} not found: is {directory} a folder '
                              'written by python -m vlg.tools.prepare?') from e
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: not valid JSON ({e})') from e
    if not isinstance(payload, dict) or payload.get(
        'format') != MANIFEST_FORMAT or payload.get('version') != VERSION:
      raise ValueError(f'{path}: not a vlg prepared-data manifest (format '
                       f'{MANIFEST_FORMAT!r}, version {VERSION})')
    if require_complete and not payload.get('complete'):
      raise ValueError(f'{path}: preparation did not finish; re-run the '
                       'same prepare command to resume it')
    return cls(directory, payload)

  def save(self) -> None:
    _write_json(self.path, self.payload)

  def shard_path(self, index: int) -> str:
    return os.path.join(self.directory, shard_name(index))

  def finished(self, index: int) -> bool:
    """Whether shard ``index`` is listed and its file has the listed size."""
    info = self.payload['shards'].get(f'{index:05d}')
    path = self.shard_path(index)
    return (info is not None and os.path.exists(path) and
            os.path.getsize(path) == info['bytes'])

  def add_shard(self, index: int, info: dict[str, Any]) -> None:
    self.payload['shards'][f'{index:05d}'] = dict(
        info, file=shard_name(index))
    self.save()

  def finish(self, num_shards: int, complete: bool = True) -> None:
    """Drops entries of shards past the end, checks that every shard is
    finished, totals the records and marks the folder ``complete`` (False:
    written but refused, e.g. over ``--max_bad_fraction``)."""
    shards = self.payload['shards']
    for key in [k for k in shards if int(k) >= num_shards]:
      del shards[key]
    missing = [i for i in range(num_shards) if not self.finished(i)]
    if missing:
      raise RuntimeError(f'shards {missing} are not finished')
    self.payload.update(complete=complete, num_shards=num_shards,
                        num_records=sum(s['records'] for s in shards.values()))
    self.save()

  def shards(self) -> list[tuple[str, int]]:
    """``(path, number of records)`` of every shard, in order."""
    return [(os.path.join(self.directory, info['file']), info['records'])
            for _, info in sorted(self.payload['shards'].items())]
