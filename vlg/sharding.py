"""Device mesh, logical-axis rules and shardings.

Parameters carry *logical* axis names (``embed``, ``mlp``, ``heads``, ``kv``,
``vocab``, ``patches``, ...) in their ``out_sharding`` metadata (set with
``nnx.with_partitioning``). The config maps logical names to mesh axes with a
list of ``(logical_name, mesh_axes)`` rules, T5X/MaxText style, e.g.::

  config.sharding_rules = [('batch', ('data', 'fsdp')), ('embed', 'fsdp'),
                           ('mlp', 'tensor'), ('heads', 'tensor'),
                           ('vocab', 'tensor'), ('kv', None)]

A logical name without a rule is replicated. Activations are constrained with
:func:`constrain`, which maps names through the same rules (set once per run
with :func:`set_rules`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')
Rules = Sequence[tuple[str, Any]]

_RULES: list[tuple[str, Any]] = []


def mesh_devices(num_devices: int) -> list[jax.Device]:
  """The first ``num_devices`` devices (0: all), for ``config.num_devices``.

  Raises:
    ValueError: more devices than there are, or a subset asked of a
      multi-process run (whose mesh must span every process's devices).
  """
  devices = jax.devices()
  if num_devices == 0 or num_devices == len(devices):
    return devices
  if not 0 < num_devices <= len(devices):
    raise ValueError(f'config.num_devices={num_devices}: there are '
                     f'{len(devices)} devices (0 means all)')
  if jax.process_count() > 1:
    raise ValueError(f'config.num_devices={num_devices}: a run of '
                     f'{jax.process_count()} processes must use all '
                     f'{len(devices)} devices; set it to 0')
  return devices[:num_devices]


def make_mesh(sizes: Sequence[int], devices=None) -> jax.sharding.Mesh:
  """A mesh over ('data', 'fsdp', 'tensor'); one size may be -1 (fill)."""
  sizes = list(sizes)
  if len(sizes) != len(MESH_AXES):
    raise ValueError(f'config.mesh must give {len(MESH_AXES)} sizes for '
                     f'{MESH_AXES}, got {sizes}')
  devices = jax.devices() if devices is None else list(devices)
  n = len(devices)
  if sizes.count(-1) > 1:
    raise ValueError(f'At most one mesh size may be -1, got {sizes}')
  if -1 in sizes:
    known = 1
    for s in sizes:
      if s != -1:
        known *= s
    if n % known:
      raise ValueError(f'{n} devices do not divide into mesh {sizes}')
    sizes[sizes.index(-1)] = n // known
  total = 1
  for s in sizes:
    total *= s
  if total != n:
    raise ValueError(f'Mesh {sizes} needs {total} devices but {n} are '
                     'available; use -1 for one axis to fill the rest.')
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  num_slices = len({getattr(d, 'slice_index', None) for d in devices})
  if num_slices > 1:
    return jax.sharding.Mesh(_multi_slice_devices(sizes, devices, num_slices),
                             MESH_AXES, axis_types=axis_types)
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=axis_types,
                       devices=devices)


def _multi_slice_devices(sizes: list[int], devices, num_slices: int):
  """The device array of a mesh over several TPU slices (multislice).

  Slices talk over the data-centre network, much slower than the links
  inside a slice, so they go on the ``data`` axis, the one that
  communicates least (one gradient all-reduce per step): each slice holds
  ``data / num_slices`` rows of the mesh, whole ``fsdp`` and ``tensor``.
  """
  if sizes[0] % num_slices:
    raise ValueError(
        f'Mesh {sizes} spans {num_slices} slices, which go on the data '
        f'axis: its size {sizes[0]} must be a multiple of {num_slices} '
        f'(e.g. ({num_slices}, -1, 1) for FSDP within each slice)')
  per_slice = (sizes[0] // num_slices, sizes[1], sizes[2])
  return mesh_utils.create_hybrid_device_mesh(
      per_slice, (num_slices, 1, 1), devices, allow_split_physical_axes=True)


def set_rules(rules: Rules) -> None:
  """Sets the logical→mesh rules used by :func:`constrain`."""
  _RULES[:] = [(str(k), _as_axes(v)) for k, v in rules]


def current_rules() -> list[tuple[str, Any]]:
  """The logical→mesh rules in force (a copy)."""
  return list(_RULES)


@contextlib.contextmanager
def rules_context(rules: Rules):
  """Sets ``rules`` for the duration of a ``with`` block, then restores
  the rules in force before it (a training run leaves none behind)."""
  old = list(_RULES)
  set_rules(rules)
  try:
    yield
  finally:
    _RULES[:] = old


def _as_axes(v):
  if v is None or isinstance(v, str):
    return v
  v = tuple(v)
  return v if v else None


def logical_to_spec(names: Sequence[str | None] | None,
                    rules: Rules | None = None) -> P:
  """Maps a tuple of logical names to a PartitionSpec through ``rules``."""
  if names is None:
    return P()
  table = dict((k, _as_axes(v)) for k, v in (_RULES if rules is None else rules))
  out, used = [], set()
  for name in names:
    axes = table.get(name) if name is not None else None
    flat = (axes,) if isinstance(axes, str) else (axes or ())
    # A mesh axis may shard only one dimension of an array.
    if any(a in used for a in flat):
      axes, flat = None, ()
    used.update(flat)
    out.append(axes)
  return P(*out)


def _is_var(x):
  return isinstance(x, nnx.Variable)


def param_specs(abstract_state: nnx.State, rules: Rules) -> Any:
  """PartitionSpecs (pure-dict tree) for an ``nnx.split`` state's variables."""
  specs = jax.tree.map(
      lambda v: logical_to_spec(v.get_metadata().get('out_sharding'), rules),
      abstract_state, is_leaf=_is_var)
  return nnx.to_pure_dict(specs)


def named(mesh: jax.sharding.Mesh, specs: Any) -> Any:
  """Turns a tree of PartitionSpecs into NamedShardings on ``mesh``."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int = 1,
                   rules: Rules | None = None) -> NamedSharding:
  """Shards the leading (batch) dimension by the ``batch`` rule."""
  spec = logical_to_spec(('batch',) + (None,) * (ndim - 1), rules)
  return NamedSharding(mesh, spec)


def data_shards(mesh: jax.sharding.Mesh) -> int:
  """Into how many shards a global batch splits on ``mesh``: its ``data``
  and ``fsdp`` axes, over which vlg's rules shard ``batch`` (a batch size
  must divide by it)."""
  return mesh.shape['data'] * mesh.shape['fsdp']


def batch_shards() -> int:
  """Into how many shards the ``batch`` rule splits a batch on the current
  (abstract) mesh: 1 off-mesh, without rules, or on a mesh whose batch
  axes have one device."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or not _RULES:
    return 1
  axes = logical_to_spec(('batch',))[0]
  if axes is None:
    return 1
  n = 1
  for axis in (axes,) if isinstance(axes, str) else axes:
    n *= mesh.shape[axis]
  return n


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Constrains an activation's sharding by logical names (no-op off-mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or not _RULES:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names))
