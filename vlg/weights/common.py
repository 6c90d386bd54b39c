"""Shared machinery of the weight importers: key bookkeeping, layout
conversion, merging into a vlg parameter tree, and the load summary.

Every importer (``albef.py``, ``vit_timm.py``, ``augreg.py``, ``bert.py``)
reads a flat ``{name: array}`` dict of the source format through a
:class:`Source`, which records which names were used, and emits a flat
``{vlg path: array}`` dict (paths like ``'text/layers/0/attn/query/kernel'``,
the keys of ``nnx.to_pure_dict`` joined by '/'). :func:`merge` then puts
those arrays into a target parameter tree and fails, naming every culprit,
when a converted array has no place in the model (unexpected), does not fit
it (mismatched), or when a target parameter that should have come from the
checkpoint did not (missing). Source names no rule consumed are errors too,
unless the format lists them as known to be unused (e.g. BERT's pooler).

Layouts (docs/weights.md): a PyTorch ``Linear`` weight is [out, in]; vlg's
``Dense`` kernel is ``in_shape + out_shape`` (attention: (D, H, Dh) and
(H, Dh, D)), so importers transpose and :func:`merge` splits merged dims
into the target's (``(D, H*Dh) → (D, H, Dh)``), only ever splitting a
dimension into consecutive factors, never reordering.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

Flat = dict[str, np.ndarray]


class WeightsError(ValueError):
  """A checkpoint does not fit the model; the message names every culprit."""


def _keystr(key: Any) -> str:
  return str(getattr(key, 'key', getattr(key, 'idx', key)))


def flatten(tree: Mapping[Any, Any], prefix: str = '') -> dict[str, Any]:
  """``{'a': {0: {'b': x}}}`` → ``{'a/0/b': x}`` (leaves are anything that
  is not a Mapping)."""
  out = {}
  for k, v in tree.items():
    path = f'{prefix}{_keystr(k)}'
    if isinstance(v, Mapping):
      out.update(flatten(v, path + '/'))
    else:
      out[path] = v
  return out


def unflatten_like(flat: Mapping[str, Any], like: Mapping[Any, Any],
                   prefix: str = '') -> dict[Any, Any]:
  """Rebuilds a tree with ``like``'s keys (ints stay ints) from ``flat``."""
  out = {}
  for k, v in like.items():
    path = f'{prefix}{_keystr(k)}'
    if isinstance(v, Mapping):
      out[k] = unflatten_like(flat, v, path + '/')
    else:
      out[k] = flat[path]
  return out


class Source:
  """A flat ``{name: array}`` checkpoint that remembers what was read."""

  def __init__(self, arrays: Mapping[str, np.ndarray], what: str):
    self.arrays = dict(arrays)
    self.what = what
    self.used: set[str] = set()

  def __contains__(self, name: str) -> bool:
    return name in self.arrays

  def get(self, name: str, *aliases: str) -> np.ndarray:
    """The array ``name`` (or the first alias present), marked as used."""
    for n in (name,) + aliases:
      if n in self.arrays:
        self.used.add(n)
        return np.asarray(self.arrays[n])
    raise WeightsError(f'{self.what}: missing key {name!r}'
                       + (f' (or {list(aliases)})' if aliases else ''))

  def skip(self, names: Iterable[str]):
    """Marks ``names`` (those present) as read on purpose and unused."""
    self.used.update(n for n in names if n in self.arrays)

  def names_under(self, prefix: str) -> list[str]:
    return sorted(n for n in self.arrays if n.startswith(prefix))

  def unused(self) -> list[str]:
    return sorted(set(self.arrays) - self.used)

  def check_all_used(self, skipped: Iterable[str] = ()):
    """Fails naming every source key no rule consumed (or skipped)."""
    self.skip(skipped)
    left = self.unused()
    if left:
      raise WeightsError(
          f'{self.what}: {len(left)} unexpected key(s) that vlg does not '
          f'know how to place: {_clip(left)}')


def count_indexed(src: 'Source', prefix: str, kind: str) -> int:
  """Number of numbered entries ``prefix<i>.…`` (layers, blocks) in
  ``src``; their indices must be 0..n-1 (a gap names the checkpoint)."""
  start = len(prefix)
  idx = {int(n[start:].split('.')[0]) for n in src.names_under(prefix)}
  if idx != set(range(len(idx))):
    raise WeightsError(f'{src.what}: {kind} indices {sorted(idx)} are not '
                       '0..n-1')
  return len(idx)


def _clip(names: list[str], n: int = 20) -> str:
  more = f' … and {len(names) - n} more' if len(names) > n else ''
  return ', '.join(names[:n]) + more


# ---------------------------------------------------------------- layouts.

def linear(w: np.ndarray) -> np.ndarray:
  """A PyTorch Linear weight [out, in] → a Dense kernel [in, out]."""
  if w.ndim != 2:
    raise WeightsError(f'a Linear weight must be 2-D, got {w.shape}')
  return np.ascontiguousarray(w.T)


def conv_patch(w: np.ndarray) -> np.ndarray:
  """A PyTorch conv weight [D, 3, p, p] → vlg's patch kernel (p, p, 3, D)."""
  return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def _splits(src: tuple[int, ...], dst: tuple[int, ...]) -> bool:
  """Whether ``dst`` is ``src`` with some dims split into consecutive
  factors (so a C-order reshape keeps the meaning of every index)."""
  i = 0
  for s in src:
    prod = 1
    while prod < s and i < len(dst):
      prod *= dst[i]
      i += 1
    if prod != s:
      return False
  return i == len(dst)


@dataclasses.dataclass
class Summary:
  """What a load did: loaded (vlg paths), skipped (source keys read and
  deliberately unused), fresh (vlg paths left at their initial values)."""
  loaded: list[str]
  skipped: list[str]
  fresh: list[str]

  def __str__(self) -> str:
    return (f'loaded {len(self.loaded)} arrays, skipped {len(self.skipped)} '
            f'source keys ({_clip(self.skipped, 8)}), kept '
            f'{len(self.fresh)} freshly initialised ({_clip(self.fresh, 8)})')


def merge(target: Mapping[Any, Any], converted: Flat, *,
          fresh_ok: Iterable[str] = (), under: str = '',
          what: str = 'checkpoint', skipped: Iterable[str] = ()
          ) -> tuple[dict[Any, Any], Summary]:
  """Puts ``converted`` arrays into a copy of the ``target`` parameter tree.

  Args:
    target: a pure-dict parameter tree (arrays or ShapeDtypeStructs; only
      shapes and dtypes are read from the leaves that get replaced).
    converted: ``{vlg path: array}``; each must exist in ``target`` and
      have its shape (up to splitting merged dims, see :func:`_splits`).
    fresh_ok: path prefixes that may stay at their target values (e.g. the
      fusion layers' cross-attention when starting from BERT).
    under: only target paths starting with this prefix are expected from
      the checkpoint ('' = all); the rest stay as they are.
    what: the checkpoint's name, for messages.
    skipped: source keys read and deliberately not used (for the summary).

  Returns:
    (the new tree, a :class:`Summary`).

  Raises:
    WeightsError: listing every unexpected, mismatched and missing path.
  """
  flat = flatten(target)
  fresh_ok = tuple(fresh_ok)
  unexpected = sorted(set(converted) - set(flat))
  mismatched, out = [], dict(flat)
  for path, arr in converted.items():
    if path not in flat:
      continue
    want = tuple(flat[path].shape)
    arr = np.asarray(arr)
    if arr.shape != want:
      if _splits(arr.shape, want):
        arr = arr.reshape(want)
      else:
        mismatched.append(f'{path}: checkpoint {arr.shape} vs model {want}')
        continue
    out[path] = arr.astype(np.dtype(flat[path].dtype))
  expected = [p for p in flat if p.startswith(under)]
  missing = sorted(p for p in expected if p not in converted
                   and not p.startswith(fresh_ok))
  problems = []
  if unexpected:
    problems.append(f'unexpected (no such parameter in the model): '
                    f'{_clip(unexpected)}')
  if mismatched:
    problems.append(f'mismatched shapes: {_clip(mismatched)}')
  if missing:
    problems.append(f'missing (the model has them, the checkpoint does '
                    f'not): {_clip(missing)}')
  if problems:
    raise WeightsError(f'{what} does not fit the model:\n  ' +
                       '\n  '.join(problems))
  fresh = sorted(p for p in expected if p not in converted)
  summary = Summary(loaded=sorted(converted), skipped=sorted(skipped),
                    fresh=fresh)
  return unflatten_like(out, target), summary


# ------------------------------------------------------ position embeddings.

def _cubic(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """Keys' cubic convolution kernel at distance ``t`` (torch: a = -0.75)."""
  t = np.abs(t)
  return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                  np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a,
                           0.0))


def _bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of torch's bicubic, align_corners=False."""
  scale = n_in / n_out
  m = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    src = (i + 0.5) * scale - 0.5
    base = int(np.floor(src))
    t = src - base
    for k in range(-1, 3):
      m[i, min(max(base + k, 0), n_in - 1)] += _cubic(np.asarray(k - t))
  return m


def resize_pos_embed(pos: np.ndarray, new_grid: int, extra: int = 1
                     ) -> np.ndarray:
  """ViT position embeddings [extra + g², D] → [extra + new_grid², D].

  As ALBEF's ``interpolate_pos_embed`` (and timm's): the ``extra`` rows
  ([CLS]) are kept, the square grid of patch rows is resized by
  ``torch.nn.functional.interpolate(mode='bicubic', align_corners=False)``,
  computed here in float64 numpy (Keys' cubic with a = -0.75, clamped
  borders) so that vlg reproduces the reference's resized table.
  """
  pos = np.asarray(pos)
  n, dim = pos.shape[0] - extra, pos.shape[1]
  old = int(round(n ** 0.5))
  if old * old != n:
    raise WeightsError(f'{n} position rows are not a square grid')
  if old == new_grid:
    return pos
  grid = pos[extra:].reshape(old, old, dim).astype(np.float64)
  m = _bicubic_matrix(old, new_grid)
  out = np.einsum('ia,abd,jb->ijd', m, grid, m)
  out = out.reshape(new_grid * new_grid, dim).astype(pos.dtype)
  return np.concatenate([pos[:extra], out])
