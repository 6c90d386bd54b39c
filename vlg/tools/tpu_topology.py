"""TPU slices for ahead-of-time compiles: names, chip grids, compile-only
devices and what each chip generation holds.

  topology = tpu_topology.parse_topology('v5e-256')     # or 'v5e:16x16'
  devices = tpu_topology.compile_only_devices(topology, num_slices=1)

libtpu (``requirements-tpu-aot.txt``) describes a slice's chips as
compile-only devices on any machine, no TPU attached: XLA compiles for them
exactly what the slice would run, and nothing can run on them.
``vlg.tools.aot`` plans launches with them.

A topology is libtpu's ``KIND:AxB`` (v5e, v6e: a 2-D torus of chips) or
``KIND:AxBxC`` (v4, v5p: 3-D), or a slice name ``KIND-N`` as Cloud TPU
sells it (N chips for v5e and v6e, N TensorCores = 2 per chip for v4 and
v5p). v4 and v5p chips compile as megacore (one device per chip).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
from typing import Any

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """What the tool needs to know of a TPU generation."""
  hbm_bytes: int  # Nominal HBM per chip.
  dims: int  # 2: a 2-D torus (AxB); 3: 3-D (AxBxC).
  megacore: bool  # Two TensorCores compiled as one device per chip.


# Cloud TPU docs, "TPU versions": HBM per chip. Dense bf16 peaks are
# vlg.tools.flops.PEAK_BF16_FLOPS.
CHIPS: dict[str, Chip] = {
    'v4': Chip(hbm_bytes=32 * GiB, dims=3, megacore=True),
    'v5e': Chip(hbm_bytes=16 * GiB, dims=2, megacore=False),
    'v5p': Chip(hbm_bytes=95 * GiB, dims=3, megacore=True),
    'v6e': Chip(hbm_bytes=32 * GiB, dims=2, megacore=False),
}
# vlg.tools.flops.peak_key of each kind's compile-only devices.
PEAK_KEYS = {'v4': 'TPU v4', 'v5e': 'TPU v5e', 'v5p': 'TPU v5p',
             'v6e': 'TPU v6e'}
TOPOLOGY_FORMS = ('KIND:AxB for v5e, v6e or KIND:AxBxC for v4, v5p (e.g. '
                  'v5e:16x16, v5p:2x4x4), or a slice name KIND-N (e.g. '
                  'v5e-256, v4-128, v5p-64)')


@dataclasses.dataclass(frozen=True)
class Topology:
  """One TPU slice: chip generation and chip grid."""
  kind: str
  shape: tuple[int, ...]

  @property
  def chips(self) -> int:
    return math.prod(self.shape)

  @property
  def name(self) -> str:
    """libtpu's name of the topology, e.g. ``v5e:16x16``."""
    return f'{self.kind}:' + 'x'.join(map(str, self.shape))


def _grid(chips: int, dims: int) -> tuple[int, ...]:
  """Cloud TPU's chip grid of a slice of ``chips`` (a power of two): one
  host's 2x2 (x1) first, then the last of the smallest sides doubled until
  there are enough (v5e-8 → 2x4, v5e-256 → 16x16, v4-128 → 4x4x4)."""
  shape = [1] * dims
  while math.prod(shape) < chips:
    if min(shape[:2]) < 2:
      shape[shape.index(1)] *= 2
    else:
      smallest = min(shape)
      shape[max(i for i, s in enumerate(shape) if s == smallest)] *= 2
  return tuple(shape)


def parse_topology(text: str) -> Topology:
  """``v5e:16x16`` / ``v5p:2x4x4`` / ``v5e-256`` → :class:`Topology`.

  Raises:
    ValueError: an unknown kind or a malformed grid, naming the forms
      expected.
  """
  bad = ValueError(f'--topology={text!r}: expected {TOPOLOGY_FORMS}; '
                   f'kinds: {sorted(CHIPS)}')
  match = re.fullmatch(r'(v\d[a-z]?)(?::(\d+(?:x\d+)*)|-(\d+))', text.strip())
  if not match or match.group(1) not in CHIPS:
    raise bad
  kind, grid, count = match.groups()
  chip = CHIPS[kind]
  if grid is not None:
    shape = tuple(int(s) for s in grid.split('x'))
    if len(shape) != chip.dims or min(shape) < 1:
      raise bad
    return Topology(kind, shape)
  per_chip = 2 if chip.megacore else 1
  chips, rest = divmod(int(count), per_chip)
  if rest or chips < 1 or chips & (chips - 1):
    raise ValueError(f'--topology={text!r}: {kind}-N needs N = '
                     f'{per_chip} x a power of two; or give the grid: '
                     f'{TOPOLOGY_FORMS}')
  return Topology(kind, _grid(chips, chip.dims))


def require_libtpu() -> None:
  """Raises a clear error when libtpu (the TPU compiler) is missing."""
  if importlib.util.find_spec('libtpu') is None:
    raise RuntimeError(
        'Compiling for TPU needs the libtpu package (no TPU is needed): '
        'pip install -r requirements-tpu-aot.txt')


def compile_only_devices(topology: Topology, num_slices: int = 1) -> list:
  """libtpu's compile-only devices of ``num_slices`` x ``topology``."""
  require_libtpu()
  # libtpu lets one process at a time load it (a lock file guarding the
  # chips); compile-only devices touch no chip, so planners may run side by
  # side, and beside a process that holds the lock.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  if num_slices < 1:
    raise ValueError(f'--num_slices must be >= 1, got {num_slices}')
  shape3 = tuple(topology.shape) + (1,) * (3 - len(topology.shape))
  kwargs: dict[str, Any] = dict(
      # A slice smaller than a host (2x2x1 chips) is one host of its size.
      chips_per_host_bounds=tuple(min(s, h) for s, h in zip(shape3,
                                                            (2, 2, 1))),
      num_slices=num_slices)
  if CHIPS[topology.kind].megacore:
    kwargs['chip_config_name'] = 'megacore'
  return list(topologies.get_topology_desc(
      topology.name, platform='tpu', **kwargs).devices)


def hbm_bytes(device, kind: str) -> int:
  """HBM of one device: its own ``memory_stats`` where it reports them (a
  real TPU), else the :data:`CHIPS` table (compile-only devices have none)."""
  try:
    limit = (device.memory_stats() or {}).get('bytes_limit')
  except Exception:  # pylint: disable=broad-except
    limit = None  # "MemoryStats is only supported for addressable devices".
  return int(limit) if limit else CHIPS[kind].hbm_bytes
