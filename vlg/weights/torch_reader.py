"""Reads PyTorch checkpoints (``.pth``/``.bin``) into numpy, without torch
and without running code from the file.

A ``torch.save`` file is a pickle, and a pickle can name any Python callable
(``os.system``) and have it called while loading. This reader never calls
``pickle.load`` with the default class lookup: its unpickler resolves only a
short allow-list of globals (plain containers, torch's tensor-rebuild
functions and storage types, which it replaces by numpy stand-ins) and
fails with :class:`UnsafeCheckpointError`, naming the global, on anything
else — the same policy as ``torch.load(weights_only=True)``
(docs/weights.md, "Safety").

Formats: the zip archive written by ``torch.save`` since PyTorch 1.6
(``<name>/data.pkl`` + ``<name>/data/<key>`` raw storages) and the legacy
pickle stream of older versions (magic number, protocol, system info,
object, storage keys, raw storages). Tensors come back as numpy arrays
(bfloat16 through ``ml_dtypes``), in whatever container the file holds
(usually a dict, e.g. ``{'model': state_dict, 'config': ...}``).

Typical use::

  obj = torch_reader.load('ALBEF_4M.pth')
  state_dict = obj['model']            # {'visual_encoder.cls_token': array}
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np


class UnsafeCheckpointError(pickle.UnpicklingError):
  """The file's pickle names something other than tensors and containers."""


# torch storage class name → numpy dtype.
_STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32,
    'HalfStorage': np.float16, 'BFloat16Storage': ml_dtypes.bfloat16,
    'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8,
    'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
    'UntypedStorage': np.uint8,
}
# torch dtype name (as pickled by newer torch, e.g. ``torch.float32``).
_TORCH_DTYPES = {
    'float64': np.float64, 'float32': np.float32, 'float16': np.float16,
    'bfloat16': ml_dtypes.bfloat16, 'int64': np.int64, 'int32': np.int32,
    'int16': np.int16, 'int8': np.int8, 'uint8': np.uint8, 'bool': np.bool_,
}


class _StorageType:
  """Stand-in for ``torch.FloatStorage`` and friends: just the dtype."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
  """A storage's bytes viewed as one flat numpy array."""

  def __init__(self, data: np.ndarray):
    self.data = data


def _rebuild_tensor(storage: _Storage, offset: int, size, stride,
                    *unused) -> np.ndarray:
  """torch._utils._rebuild_tensor_v2: a strided view of a storage, copied."""
  flat = storage.data
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if not size:
    return np.array(flat[offset])
  if any(s == 0 for s in size):
    return np.zeros(size, flat.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if offset < 0 or last >= flat.size:
    raise pickle.UnpicklingError(
        f'tensor view (offset {offset}, size {size}, stride {stride}) lies '
        f'outside its storage of {flat.size} elements')
  item = flat.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
      flat[offset:], shape=size, strides=tuple(s * item for s in stride),
      writeable=False)
  return np.array(view)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad,
                       hooks, dtype, *unused) -> np.ndarray:
  """torch._utils._rebuild_tensor_v3: as v2, the dtype passed separately."""
  if not isinstance(dtype, _TorchDtype):
    raise UnsafeCheckpointError(f'unsupported tensor dtype {dtype!r}')
  return _rebuild_tensor(_Storage(storage.data.view(dtype.dtype)), offset,
                         size, stride)


def _rebuild_parameter(data, *unused) -> np.ndarray:
  return data


class _TorchDtype:
  """Stand-in for a ``torch.dtype`` such as ``torch.float32``."""

  def __init__(self, name: str):
    self.dtype = np.dtype(_TORCH_DTYPES[name])


# The allow-list: (module, name) → what the unpickler returns for it.
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v3'): _rebuild_tensor_v3,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
    ('builtins', 'slice'): slice,
    ('builtins', 'complex'): complex,
    ('__builtin__', 'set'): set,
    ('torch', 'Size'): tuple,
}
_SAFE_GLOBALS.update({('torch', name): _StorageType(name)
                      for name in _STORAGE_DTYPES})
_SAFE_GLOBALS.update({('torch', name): _TorchDtype(name)
                      for name in _TORCH_DTYPES})


def _storage_dtype(storage_type: Any) -> np.dtype:
  if isinstance(storage_type, (_StorageType, _TorchDtype)):
    return storage_type.dtype
  raise UnsafeCheckpointError(
      f'storage of unsupported type {storage_type!r} in the checkpoint')


class _Unpickler(pickle.Unpickler):
  """Resolves only :data:`_SAFE_GLOBALS`; storages through ``load_storage``."""

  def __init__(self, file, load_storage, what: str):
    super().__init__(file)
    self._load_storage = load_storage
    self._what = what

  def find_class(self, module: str, name: str) -> Any:
    found = _SAFE_GLOBALS.get((module, name))
    if found is None:
      raise UnsafeCheckpointError(
          f'{self._what}: the pickle references the global {module}.{name}, '
          'which is not a tensor, a storage or a plain container; refusing '
          'to load it (vlg never executes code from a checkpoint; convert '
          'the file to safetensors or a plain state dict with trusted '
          'tools first). See docs/weights.md, "Safety".')
    return found

  def persistent_load(self, pid: Any) -> Any:
    if not (isinstance(pid, tuple) and pid and pid[0] == 'storage'):
      raise UnsafeCheckpointError(
          f'{self._what}: unsupported persistent id {pid!r:.80}')
    _, storage_type, key, _location, numel = pid[:5]
    return self._load_storage(str(key), _storage_dtype(storage_type),
                              int(numel))


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkls = [n for n in names if n.endswith('/data.pkl') or n == 'data.pkl']
    if len(pkls) != 1:
      raise pickle.UnpicklingError(
          f'{path}: a torch zip checkpoint has one data.pkl, found {pkls}')
    prefix = pkls[0][:-len('data.pkl')]
    order = '<'
    if prefix + 'byteorder' in names:
      if zf.read(prefix + 'byteorder').decode().strip() == 'big':
        order = '>'
    cache: dict[str, _Storage] = {}

    def load_storage(key: str, dtype: np.dtype, numel: int) -> _Storage:
      if key not in cache:
        raw = zf.read(f'{prefix}data/{key}')
        dt = dtype.newbyteorder(order) if dtype.itemsize > 1 else dtype
        if len(raw) % dt.itemsize:
          raise pickle.UnpicklingError(
              f'{path}: storage {key} has {len(raw)} bytes, not a multiple '
              f'of {dt}')
        cache[key] = _Storage(np.frombuffer(raw, dt).astype(
            dtype.newbyteorder('=')))
      return cache[key]

    with zf.open(pkls[0]) as f:
      return _Unpickler(io.BytesIO(f.read()), load_storage, path).load()


_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


def _load_legacy(path: str) -> Any:
  """The pre-1.6 format: five pickles, then the raw storages in key order."""
  with open(path, 'rb') as f:
    def plain() -> Any:
      return _Unpickler(f, _no_storage, path).load()

    if plain() != _LEGACY_MAGIC:
      raise pickle.UnpicklingError(f'{path}: not a PyTorch checkpoint')
    plain()  # protocol version
    sys_info = plain()
    little = not isinstance(sys_info, dict) or sys_info.get(
        'little_endian', True)
    wanted: dict[str, tuple[np.dtype, int]] = {}
    storages: dict[str, _Storage] = {}

    def defer(key: str, dtype: np.dtype, numel: int) -> _Storage:
      wanted.setdefault(key, (dtype, numel))
      if key not in storages:
        storages[key] = _Storage(np.zeros(numel, dtype))
      return storages[key]

    # The storages follow the object, so the object is parsed twice: once
    # over zero-filled placeholders to learn the storage keys, once more
    # after the storages have been read.
    obj_bytes_start = f.tell()
    _Unpickler(f, defer, path).load()  # discover the storage keys
    keys = plain()
    for key in keys:
      dtype, numel = wanted[key]
      (n,) = struct.unpack('<q' if little else '>q', f.read(8))
      dt = dtype.newbyteorder('<' if little else '>')
      raw = f.read(n * dt.itemsize)
      storages[key].data = np.frombuffer(raw, dt).astype(
          dtype.newbyteorder('='))
    f.seek(obj_bytes_start)
    return _Unpickler(f, lambda k, d, n: storages[k], path).load()


def _no_storage(*args) -> Any:
  raise UnsafeCheckpointError('unexpected storage reference in a header')


def load(path: str) -> Any:
  """The object saved in a PyTorch checkpoint, tensors as numpy arrays.

  Raises:
    UnsafeCheckpointError: the file refers to a global outside the
      allow-list (its name is in the message); nothing from it is run.
    pickle.UnpicklingError: the file is not a PyTorch checkpoint.
  """
  path = os.fspath(path)
  if zipfile.is_zipfile(path):
    return _load_zip(path)
  return _load_legacy(path)


def state_dict(obj: Any, path: str = 'checkpoint') -> dict[str, np.ndarray]:
  """The flat ``{name: array}`` state dict inside a loaded checkpoint.

  Accepts a bare state dict or the usual wrappers (``{'model': ...}``,
  ``{'state_dict': ...}``, ``{'module': ...}``).
  """
  for key in ('model', 'state_dict', 'module'):
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
      break
  if not isinstance(obj, dict) or not all(
      isinstance(v, np.ndarray) for v in obj.values()):
    found = (list(obj)[:10] if isinstance(obj, dict)
             else type(obj).__name__)
    raise ValueError(f'{path}: no state dict (a dict of tensors) found; '
                     f'top level: {found}')
  return dict(obj)
