"""The ``prepared`` source: the records a ``vlg.tools.prepare`` run wrote.

``PreparedSource(dir)`` is a grain RandomAccessDataSource over the folder's
ArrayRecord shards (layout in ``vlg/data/records.py``). It returns records
of the contract of ``vlg/data/sources.py``, with the image decoded to uint8
[H, W, 3] from the stored bytes or read from the stored path. A record whose
image cannot be read or decoded raises :class:`vlg.data.ops.BadExampleError`
naming the shard, the record and its annotation entry, so
:class:`vlg.data.sources.CheckedSource` applies the bad-input policy.
Config entry::

  {'source': 'prepared', 'dir': '/data/vlg/coco', 'weight': 1.0,
   'image_dirs': [...]}   # optional: where path-stored images are now

No jax here (grain workers import it).
"""

from __future__ import annotations

import bisect
import operator
import os
from collections.abc import Sequence
from typing import Any

import grain

from vlg.data import ops
from vlg.data import records


class PreparedSource:
  """Random access to the records of one prepared folder."""

  def __init__(self, directory: str,
               image_dirs: Sequence[str] | None = None):
    """Opens ``directory``.

    Args:
      directory: a folder written by ``python -m vlg.tools.prepare``.
      image_dirs: for images stored by path, the folders to use instead of
        the ones recorded at preparation (same order as ``--images``).

    Raises:
      FileNotFoundError, ValueError: if the folder is not a finished
        preparation or has no records.
    """
    self.directory = directory
    manifest = records.Manifest.load(directory)
    self.options = manifest.payload['options']
    self.image_dirs = tuple(image_dirs or manifest.payload['image_dirs'])
    shards = [(path, n) for path, n in manifest.shards() if n > 0]
    if not shards:
      raise ValueError(f'{directory} has no records (see the bad/skipped '
                       f'counts in {manifest.path})')
    for path, _ in shards:
      if not os.path.exists(path):
        raise FileNotFoundError(f'{path} listed in {manifest.path} is '
                                'missing; re-run prepare to rewrite it')
    self._paths = [path for path, _ in shards]
    self._starts, total = [], 0
    for _, n in shards:
      self._starts.append(total)
      total += n
    self._len = total
    self._source = grain.sources.ArrayRecordDataSource(self._paths)
    if len(self._source) != self._len:
      raise ValueError(f'{directory}: shards hold {len(self._source)} '
                       f'records but the manifest lists {self._len}')
    self.relation_vocab = (
        os.path.join(directory, manifest.payload['relation_vocab'])
        if manifest.payload.get('relation_vocab') else None)

  def __len__(self) -> int:
    return self._len

  def _where(self, index: int) -> str:
    shard = bisect.bisect_right(self._starts, index) - 1
    return f'{self._paths[shard]} record {index - self._starts[shard]}'

  def __getitem__(self, index) -> dict[str, Any]:
    index = operator.index(index)
    if not 0 <= index < self._len:
      raise IndexError(f'index {index} out of range for {self!r}')
    try:
      record = records.deserialise(self._source[index])
    except records.RecordError as e:
      raise ops.BadExampleError(f'{self._where(index)}: {e}') from e
    where = f'{self._where(index)} ({record.get("origin", "?")})'
    data = record.pop('image_bytes', None)
    if data is None:
      data = self._read_image(record, where)
    record['image'] = ops.decode_image(data, where)
    record.setdefault('paragraph', '')
    return record

  def _read_image(self, record: dict[str, Any], where: str) -> bytes:
    if 'image_path' not in record:
      raise ops.BadExampleError(f'{where}: the record has no image')
    k = int(record.get('image_dir', 0))
    if not 0 <= k < len(self.image_dirs):
      raise ops.BadExampleError(f'{where}: image folder #{k} is not in '
                                f'image_dirs {list(self.image_dirs)}')
    path = os.path.join(self.image_dirs[k], record['image_path'])
    try:
      with open(path, 'rb') as f:
        return f.read()
    except OSError as e:
      raise ops.BadExampleError(f'{where}: cannot read image {path} '
                                f'({e.strerror})') from e

  def __repr__(self) -> str:
    return (f'PreparedSource({self.directory!r}, {self._len} records, '
            f'format={self.options.get("format")!r})')
