"""The frozen regime's feature cache: a tap extracted once, read by every probe.

  arrays, hit = feature_cache.cached_features(encoder, spec, examples, inputs,
                                              cache_dir='workdir/features')
  x = feature_cache.as_float32(arrays['x'][rows])  # What the head reads.

Frozen probing (docs/probing.md §6.3 item 4) runs the encoder once per split,
without dropout, and trains only the probe on the stored features, so every
HPO trial and seed after the first reads them from disk. An entry is keyed by
(encoder weights = ``Encoder.cache_id``, e.g. checkpoint path and step; tap
spec; dataset fingerprint; :data:`FORMAT`) and is a folder
``<tap>-<hash>/`` holding one ``.npy`` per array and ``meta.json``. It is
written beside its final name and renamed into place, so a crash never leaves
a half-written entry under a name a later run would trust.

**bfloat16 on disk.** Floating features are stored as bfloat16, which halves
the cache (RefCOCOg train through BLIP-2's 32×768 queries: ≈4 GB instead of 8;
docs/probing.md §6.4). ``.npy`` has no bfloat16 type code (``np.save`` writes
it as opaque ``V2``), so the files hold the bfloat16 bit patterns as ``uint16``
and ``meta.json`` says ``bfloat16``. bfloat16 keeps float32's exponent range
and 8 significant bits: each feature moves by at most 2⁻⁸ ≈ 0.4% of its value
(BLIP-2 itself runs its frozen ViT in fp16). Measured on the probing tests'
stand-in encoder (400 train, 200 test examples, 3 seeds, VSR-style and box
tasks): the same test metric per seed from float32 and from bfloat16 features.
The head computes in float32: :func:`as_float32` converts each batch. Uncached
extraction is rounded the same way, so a probe is identical whether its
features came from the cache or not. On a hit the arrays are memory-mapped, so
a multi-GB cache is not held in RAM.

**Stale or corrupt entries raise, naming the file.** :data:`FORMAT` is part
of the key, so entries of an older layout (the float32 cache) have other
names and are never opened; they are simply rebuilt beside. An entry under
the current key that cannot be read (bad ``meta.json``, an unreadable or
truncated ``.npy``, a wrong dtype, shape or format, or metadata of another
encoder/tap/dataset) raises :class:`FeatureCacheError` naming the file and
the folder to delete. It is not silently rebuilt: entries are only ever
renamed into place whole, so a damaged one means outside interference (a
full disk, a manual edit) that the user should see; deleting the named
folder rebuilds it. A flipped bit inside an array is not detected.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from vlg.projects.probing import taps
from vlg.projects.probing import tasks as tasks_lib

if TYPE_CHECKING:
  from vlg.projects.probing import train

# Part of every key: bump it when the stored layout or dtype changes, so old
# entries are never misread. 'float32' was the unversioned first layout.
FORMAT = 'bf16-v2'
BFLOAT16 = 'bfloat16'


class FeatureCacheError(RuntimeError):
  """A cache entry under the current key is unreadable or inconsistent."""


def fingerprint(examples: Sequence[tasks_lib.ProbeExample],
                settings: dict[str, Any]) -> str:
  """A hash of the examples (image file, size, mtime; text; target) and the
  input settings: it changes whenever the model inputs could."""
  h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
  for e in examples:
    try:
      st = os.stat(e.image)
      stamp = f'{st.st_size}:{st.st_mtime_ns}'
    except OSError:
      stamp = 'missing'
    h.update(json.dumps([e.image, stamp, e.text, list(e.target)]).encode())
  return h.hexdigest()


def cache_key(cache_id: str, spec: taps.TapSpec, data_fingerprint: str) -> str:
  """The entry name of (encoder weights, tap, dataset, storage format)."""
  digest = hashlib.sha256(json.dumps(
      [cache_id, spec.key, data_fingerprint, FORMAT]).encode()).hexdigest()[:24]
  tap = spec.key.replace('tap=', '').replace(',reduce=', '-').replace(':', '')
  return f'{tap}-{digest}'


def to_bfloat16(x: np.ndarray) -> np.ndarray:
  """``x`` rounded to bfloat16 (round to nearest even)."""
  return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16)


def as_float32(x: np.ndarray) -> np.ndarray:
  """A batch of stored features as the float32 the head computes in."""
  return np.asarray(x).astype(np.float32)


def extract_features(encoder: train.Encoder, spec: taps.TapSpec,
                     examples: Sequence[tasks_lib.ProbeExample],
                     inputs: train.Inputs, batch_size: int
                     ) -> dict[str, np.ndarray]:
  """Runs the encoder (no dropout) over ``examples``: ``x`` is [n, F] after
  a fixed reducer, or [n, N, D] tokens plus ``mask`` [n, N] for attn_pool;
  float32, not yet rounded."""

  @jax.jit
  def fn(params, batch):
    model = nnx.merge(encoder.graphdef, params)
    x, mask = encoder.tap_fn(model, batch, (spec.tap,), None)[spec.tap]
    if spec.reduce == 'attn_pool':
      return {'x': x.astype(jnp.float32), 'mask': mask.astype(jnp.int32)}
    return {'x': taps.reduce_fixed(spec.reduce, x, mask)}

  out: dict[str, list[np.ndarray]] = {}
  n = len(examples)
  for start in range(0, n, batch_size):
    rows = [min(r, n - 1) for r in range(start, start + batch_size)]
    res = jax.device_get(fn(encoder.params, inputs(examples, rows)))
    for k, v in res.items():
      out.setdefault(k, []).append(np.asarray(v)[:n - start])
  return {k: np.concatenate(v) for k, v in out.items()}


def _stored(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Floating arrays rounded to bfloat16; integer ones (masks) unchanged."""
  return {k: to_bfloat16(v) if np.issubdtype(v.dtype, np.floating) else v
          for k, v in arrays.items()}


def write_entry(cache_dir: str, name: str, arrays: dict[str, np.ndarray],
                meta: dict[str, Any]) -> str:
  """Writes ``arrays`` (as from :func:`_stored`) as entry ``name``; returns
  its folder. Another process putting the same entry in place first wins."""
  final = os.path.join(cache_dir, name)
  os.makedirs(cache_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=cache_dir, prefix='.partial-')
  try:
    dtypes = {}
    for k, v in arrays.items():
      if v.dtype == ml_dtypes.bfloat16:
        np.save(os.path.join(tmp, f'{k}.npy'), v.view(np.uint16))
        dtypes[k] = BFLOAT16
      else:
        np.save(os.path.join(tmp, f'{k}.npy'), v)
        dtypes[k] = v.dtype.name
    with open(os.path.join(tmp, 'meta.json'), 'w') as f:
      json.dump({**meta, 'format': FORMAT, 'arrays': sorted(arrays),
                 'dtypes': dtypes}, f)
    try:
      os.rename(tmp, final)
    except OSError:
      if not os.path.isfile(os.path.join(final, 'meta.json')):
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return final


def read_entry(folder: str, expected: dict[str, Any]
               ) -> dict[str, np.ndarray]:
  """The arrays of the entry in ``folder`` (bfloat16 ones memory-mapped).

  Args:
    folder: the entry's folder.
    expected: meta fields the entry must have (``encoder``, ``tap``,
      ``data``, ``num``).

  Raises:
    FeatureCacheError: naming the file that is unreadable or inconsistent.
  """
  hint = f'; delete {folder} to rebuild it'
  meta_path = os.path.join(folder, 'meta.json')
  try:
    with open(meta_path) as f:
      meta = json.load(f)
    names, dtypes = list(meta['arrays']), dict(meta['dtypes'])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise FeatureCacheError(f'feature cache {meta_path}: unreadable '
                            f'({type(e).__name__}: {e}){hint}') from e
  if meta.get('format') != FORMAT:
    raise FeatureCacheError(f'feature cache {meta_path}: format '
                            f'{meta.get("format")!r}, expected {FORMAT!r}'
                            f'{hint}')
  wrong = {k: (meta.get(k), v) for k, v in expected.items()
           if meta.get(k) != v}
  if wrong:
    raise FeatureCacheError(f'feature cache {meta_path}: (found, expected) '
                            f'{wrong}{hint}')
  arrays = {}
  for k in names:
    path = os.path.join(folder, f'{k}.npy')
    dtype = dtypes.get(k)
    try:
      a = np.load(path, mmap_mode='r', allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
      raise FeatureCacheError(f'feature cache {path}: unreadable '
                              f'({type(e).__name__}: {e}){hint}') from e
    stored = 'uint16' if dtype == BFLOAT16 else dtype
    if a.dtype.name != stored or a.ndim < 1 or len(a) != expected['num']:
      raise FeatureCacheError(
          f'feature cache {path}: {a.dtype.name} {a.shape}, expected '
          f'{stored} with {expected["num"]} rows (meta: {dtype}){hint}')
    arrays[k] = a.view(ml_dtypes.bfloat16) if dtype == BFLOAT16 else a
  return arrays


def cached_features(encoder: train.Encoder, spec: taps.TapSpec,
                    examples: Sequence[tasks_lib.ProbeExample],
                    inputs: train.Inputs, *, cache_dir: str | None,
                    batch_size: int = 256
                    ) -> tuple[dict[str, np.ndarray], bool]:
  """``(arrays, hit)``: the frozen features of ``examples`` as stored
  (floating ones bfloat16; :func:`as_float32` per batch), read from
  ``cache_dir`` when there (``hit``), else extracted and written there.
  ``cache_dir=None``: extracted, rounded the same way, not written."""
  if cache_dir is None:
    return _stored(extract_features(encoder, spec, examples, inputs,
                                    batch_size)), False
  data = fingerprint(examples, inputs.settings())
  name = cache_key(encoder.cache_id, spec, data)
  expected = {'encoder': encoder.cache_id, 'tap': spec.key, 'data': data,
              'num': len(examples)}
  folder = os.path.join(cache_dir, name)
  if os.path.exists(folder):
    return read_entry(folder, expected), True
  arrays = _stored(extract_features(encoder, spec, examples, inputs,
                                    batch_size))
  write_entry(cache_dir, name, arrays, expected)
  return arrays, False
