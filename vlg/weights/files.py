"""Reads a weights file of any supported format into a flat
``{name: numpy array}`` dict, never executing code from the file.

======================  ==============================================
``.npz``                ``numpy.load(allow_pickle=False)`` (big_vision
                        / vision_transformer AugReg checkpoints)
``.safetensors``        the safetensors layout (an 8-byte header size,
                        a JSON header, raw little-endian data), parsed
                        here with numpy: the format is a few lines and
                        vlg needs no extra dependency for it
``.msgpack``            ``flax.serialization.msgpack_restore`` (nested
                        dicts, joined with '/')
``.pth``/``.bin``/``.pt`` the restricted torch reader
                        (``vlg/weights/torch_reader.py``); its state dict
======================  ==============================================
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import ml_dtypes
import numpy as np

from vlg.weights import common
from vlg.weights import torch_reader

_SAFETENSORS_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16,
    'BF16': ml_dtypes.bfloat16, 'I64': np.int64, 'I32': np.int32,
    'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_,
}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """A ``.safetensors`` file → ``{name: array}`` (copies, native order)."""
  with open(path, 'rb') as f:
    raw = f.read()
  if len(raw) < 8:
    raise common.WeightsError(f'{path}: too short for safetensors')
  (n,) = struct.unpack('<Q', raw[:8])
  if 8 + n > len(raw):
    raise common.WeightsError(f'{path}: header size {n} exceeds the file')
  header = json.loads(raw[8:8 + n])
  data = memoryview(raw)[8 + n:]
  out = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    dtype = _SAFETENSORS_DTYPES.get(info['dtype'])
    if dtype is None:
      raise common.WeightsError(f'{path}: {name} has unsupported dtype '
                                f'{info["dtype"]}')
    start, end = info['data_offsets']
    dt = np.dtype(dtype).newbyteorder('<')
    arr = np.frombuffer(data[start:end], dt).astype(np.dtype(dtype))
    out[name] = arr.reshape(info['shape'])
  return out


def _flatten_nested(tree: Any, prefix: str = '') -> dict[str, np.ndarray]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten_nested(v, f'{prefix}{k}/'))
    else:
      out[f'{prefix}{k}'] = np.asarray(v)
  return out


def read(path: str) -> dict[str, np.ndarray]:
  """The flat ``{name: array}`` of a weights file (format by extension)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(path)
  ext = os.path.splitext(path)[1].lower()
  if ext == '.npz':
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  if ext == '.safetensors':
    return read_safetensors(path)
  if ext == '.msgpack':
    from flax import serialization  # pylint: disable=g-import-not-at-top
    with open(path, 'rb') as f:
      return _flatten_nested(serialization.msgpack_restore(f.read()))
  if ext in ('.pth', '.pt', '.bin', '.ckpt'):
    return torch_reader.state_dict(torch_reader.load(path), path)
  raise common.WeightsError(
      f'{path}: unknown weights format {ext!r}; expected .npz, '
      '.safetensors, .msgpack or a PyTorch .pth/.bin')
