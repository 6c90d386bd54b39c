r"""Plans a TPU pod launch on any machine: compiles the train step ahead of time.

  pip install -r requirements-tpu-aot.txt   # libtpu: the TPU compiler
  python -m vlg.tools.aot --config=configs/albef.py:base --topology=v5e-256
  python -m vlg.tools.aot --config=configs/rexvlm.py:base \
      --topology=v5p:2x4x4 [--num_slices=2] [--config.mesh=1,-1,1] \
      [--mfu=0.4] [--suggest]

No TPU is needed: libtpu describes the topology's chips as compile-only
devices, and XLA compiles for them exactly what a pod would run. The
program is the training loop's own (``vlg.train.build_step``: model,
optimizer, state shardings and the jitted, donated step), built abstractly
(``jax.eval_shape``; nothing runs on the target devices) and lowered on the
config's batch (``vlg.data.batch_spec``, the pipeline's shapes). Prints, per
device: arguments, outputs, temporaries, generated code and what the
program needs in all (arguments + outputs − outputs aliased to donated
arguments + temporaries + generated code: the bytes it holds in HBM while
it runs) against the chip's HBM; XLA's FLOPs per step (cost analysis, per
device and for all devices); and the step time those FLOPs take at
``--mfu`` of the chip's dense bf16 peak (compute only: communication
beyond that utilisation is not modelled).

A program too large for HBM fails to compile; the tool reports
``does not fit: needs X GiB of Y GiB`` with XLA's own figures (the HBM it
states as available, a little under the chip's nominal size) and exits
with status 1 (a bad ``--topology``, a missing libtpu, or a mesh or batch
that does not split over the slice's chips: one ``FATAL`` line, status 2).
``--suggest`` also compiles a few alternatives (all-data and
FSDP meshes, ``model.remat=full``, ``grad_accum_steps`` 2 and 4), prints
which fit, their memory and projected step time, and names the best: the
fastest that fits, the earlier of the list (as given, all-data first) when
within 2% of it. On 2 otherwise idle CPU cores ALBEF ``base`` takes about
4 minutes and 9-10 GB of host memory per compile, ReX-VLM ``base`` 12-15
minutes and 22 GB to more than 24 GiB (measured table for the four base
recipes: docs/results.md, "The four base recipes on three TPU slices").

``--topology`` takes libtpu's form ``KIND:AxB`` / ``KIND:AxBxC``
(``v5e:16x16``, ``v5p:2x4x4``) or a slice name ``KIND-N`` (``v5e-256``,
``v4-128``, ``v5p-64``); ``vlg.tools.tpu_topology`` reads them.
"""

from __future__ import annotations

import copy
import os
import re
import sys
import time
from typing import Any

from absl import app
from absl import flags
from ml_collections import config_flags

from vlg import config_lib
from vlg.tools import tpu_topology

_CONFIG = None
_TOPOLOGY = None
_NUM_SLICES = None
_MFU = None
_SUGGEST = None

GiB = tpu_topology.GiB


def define_flags() -> None:
  """Defines the flags; called only when run as a program, so that
  tests can import several tools into one process."""
  global _CONFIG, _TOPOLOGY, _NUM_SLICES, _MFU, _SUGGEST
  _CONFIG = config_flags.DEFINE_config_file(
      'config', None, 'Config file, e.g. configs/albef.py:base.',
      lock_config=True)
  _TOPOLOGY = flags.DEFINE_string('topology', None,
                                  f'TPU slice to compile for: '
                                  f'{tpu_topology.TOPOLOGY_FORMS}.')
  _NUM_SLICES = flags.DEFINE_integer(
      'num_slices', 1, 'Slices of --topology joined over the data-centre '
      'network (multislice); they go on the mesh\'s data axis.')
  _MFU = flags.DEFINE_float('mfu', 0.4, 'Model FLOPs utilisation assumed '
                            'for the projected step time (0 < mfu <= 1).')
  _SUGGEST = flags.DEFINE_bool(
      'suggest', False, 'Also compile alternatives (meshes, remat, gradient '
      'accumulation) and print which fit.')
  flags.mark_flags_as_required(['config', 'topology'])


# Compiling one config
# ---------------------------------------------------------------------------

_UNITS = {'': 1, 'B': 1, 'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40}
_SIZE = r'([\d.]+)\s*([KMGT]?)i?B?'
# XLA:TPU's out-of-memory messages, e.g. "the total memory required for HLO
# temporaries (15.85G) exceeds available HBM (15.75G)" and "Used 20.5G of
# 15.48G hbm".
_OOM_PATTERNS = (
    re.compile(r'\(' + _SIZE + r'\) exceeds available HBM \(' + _SIZE + r'\)'),
    re.compile(r'Used ' + _SIZE + r' of ' + _SIZE + r' hbm'),
)


def parse_out_of_memory(message: str) -> tuple[int, int] | None:
  """(bytes needed, bytes available) from XLA's out-of-memory message, or
  None when it is not one that states them."""
  for pattern in _OOM_PATTERNS:
    m = pattern.search(message)
    if m:
      need, need_unit, have, have_unit = m.groups()
      return (int(float(need) * _UNITS[need_unit]),
              int(float(have) * _UNITS[have_unit]))
  return None


def _is_out_of_memory(message: str) -> bool:
  return 'RESOURCE_EXHAUSTED' in message or 'Ran out of memory' in message


def xla_flops(compiled) -> float:
  """FLOPs of one run of a compiled program on one device (XLA's cost
  analysis, which counts the body of a loop once, whatever its trips)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get('flops', 0.0))


def target_mesh(config, topology: tpu_topology.Topology,
                num_slices: int = 1):
  """``config.mesh`` over the topology's compile-only devices, every batch
  checked to split over its data shards (cheap: nothing compiles).

  Raises:
    ValueError: the mesh does not fit the devices, or a batch does not
      split (``vlg.data.batch_spec.check_divisible``, naming the mesh or
      batch size that would).
  """
  from vlg import sharding  # pylint: disable=g-import-not-at-top
  from vlg.data import batch_spec  # pylint: disable=g-import-not-at-top
  devices = tpu_topology.compile_only_devices(topology, num_slices)
  mesh = sharding.make_mesh(config.mesh, devices=devices)
  batch_spec.check_divisible(config, mesh)
  return mesh


def check_mfu(mfu: float) -> None:
  """Raises ValueError unless ``mfu`` is a utilisation in (0, 1]."""
  if not 0 < mfu <= 1:
    raise ValueError(f'--mfu must be in (0, 1], got {mfu}')


def plan(config, topology: tpu_topology.Topology, num_slices: int = 1,
         mfu: float = 0.4) -> dict[str, Any]:
  """Compiles ``config``'s train step for the topology; returns the report.

  Keys: ``fits``; ``mesh``, ``devices``, ``device_kind``, ``hbm_bytes``;
  per device ``argument_bytes``, ``output_bytes``, ``alias_bytes``,
  ``temp_bytes``, ``code_bytes``, ``needed_bytes`` (their sum less the
  aliased bytes), ``xla_peak_bytes`` (XLA's peak of live buffers);
  ``flops_per_device`` and ``flops`` (all devices; XLA's cost analysis,
  times ``grad_accum_steps``),
  ``analytic_flops`` (``vlg.tools.flops``, None where it does not apply),
  ``step_s`` (the per-device FLOPs at ``mfu`` of the bf16 peak),
  ``compile_s``. A program that does not fit has ``fits`` False,
  ``needed_bytes`` / ``available_bytes`` from XLA's message (None if it
  states none), ``error``, and no memory or FLOP figures.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from vlg import sharding  # pylint: disable=g-import-not-at-top
  from vlg import train  # pylint: disable=g-import-not-at-top
  from vlg import train_state  # pylint: disable=g-import-not-at-top
  from vlg.data import batch_spec  # pylint: disable=g-import-not-at-top
  from vlg.tools import flops as flops_lib  # pylint: disable=g-import-not-at-top

  check_mfu(mfu)
  mesh = target_mesh(config, topology, num_slices)
  devices = mesh.devices.flatten()
  rules = [tuple(r) for r in config.sharding_rules]
  kind = devices[0].device_kind
  out: dict[str, Any] = dict(
      mesh=dict(mesh.shape), devices=mesh.size, device_kind=kind,
      hbm_bytes=tpu_topology.hbm_bytes(devices[0], topology.kind),
      batch=config.batch_size)
  start = time.perf_counter()
  with jax.set_mesh(mesh), sharding.rules_context(rules):
    batch_shards = sharding.batch_shards()
    built = train.build_step(config, mesh, rules)
    state = train_state.with_shardings(built['abstract_state'],
                                       built['shardings'])
    lowered = built['train_step'].lower(
        state, batch_spec.batch_spec(config, mesh, rules))
    try:
      compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
      if not _is_out_of_memory(str(e)):
        raise
      needed = parse_out_of_memory(str(e))
      out.update(fits=False, error=str(e).strip(),
                 needed_bytes=needed and needed[0],
                 available_bytes=needed and needed[1],
                 compile_s=time.perf_counter() - start,
                 num_params=built['num_params'])
      return out
  out.update(fits=True, compile_s=time.perf_counter() - start,
             num_params=built['num_params'])
  mem = compiled.memory_analysis()
  out.update(argument_bytes=mem.argument_size_in_bytes,
             output_bytes=mem.output_size_in_bytes,
             alias_bytes=mem.alias_size_in_bytes,
             temp_bytes=mem.temp_size_in_bytes,
             code_bytes=mem.generated_code_size_in_bytes,
             xla_peak_bytes=getattr(mem, 'peak_memory_in_bytes', None))
  out['needed_bytes'] = (out['argument_bytes'] + out['output_bytes']
                         - out['alias_bytes'] + out['temp_bytes']
                         + out['code_bytes'])
  # XLA counts a loop's body once: with gradient accumulation nearly all
  # of the step is the body of a loop over the micro-batches (only the
  # optimizer update, under 1% of a step, is outside and so over-counted).
  accum = int(config.get('grad_accum_steps', 1))
  per_device = xla_flops(compiled) * accum
  peak = flops_lib.PEAK_BF16_FLOPS[tpu_topology.PEAK_KEYS[topology.kind]]
  out.update(flops_per_device=per_device, flops=per_device * mesh.size,
             grad_accum_steps=accum, peak_flops=peak, mfu=mfu,
             step_s=per_device / (peak * mfu))
  try:
    out['analytic_flops'] = flops_lib.train_step_flops(
        config, batch_shards)['total']
  except ValueError:  # A config vlg.tools.flops does not count.
    out['analytic_flops'] = None
  return out


# Alternatives (--suggest)
# ---------------------------------------------------------------------------


def alternatives(config, num_slices: int = 1) -> list[tuple[str, dict]]:
  """(label, field overrides) of the configs ``--suggest`` compiles beside
  the config as given, one change each: an all-data mesh, an FSDP mesh
  (data across slices only), ``model.remat=full``, ``grad_accum_steps``
  2 and 4. Changes the config already has are left out."""
  out = []
  for mesh in ((-1, 1, 1), (num_slices, -1, 1)):
    if tuple(config.mesh) != mesh:
      out.append((f'mesh={",".join(map(str, mesh))}', {'mesh': mesh}))
  if config.model.get('remat', 'none') != 'full':
    out.append(('model.remat=full', {'model.remat': 'full'}))
  for n in (2, 4):
    if int(config.get('grad_accum_steps', 1)) != n:
      out.append((f'grad_accum_steps={n}', {'grad_accum_steps': n}))
  return out


def with_overrides(config, overrides: dict[str, Any]):
  """A copy of ``config`` with dotted fields set (``model.remat``)."""
  config = copy.deepcopy(config)
  for path, value in overrides.items():
    *parents, name = path.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[name] = value
  return config


# Projected step times within this fraction of the fastest count as equal:
# they differ by elementwise work (an FSDP step updates 1/N of the
# parameters per device) while the communication they do not model
# differs more (FSDP gathers the parameters every step).
STEP_TIME_TIE = 0.02


def best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
  """The first row that fits with a projected step within
  :data:`STEP_TIME_TIE` of the fastest that fits (rows are in order of
  preference: as given, all-data, FSDP, remat, accumulation); None if none
  fits."""
  fitting = [r for r in rows if r['fits']]
  if not fitting:
    return None
  fastest = min(r['step_s'] for r in fitting)
  return next(r for r in fitting
              if r['step_s'] <= fastest * (1 + STEP_TIME_TIE))


def suggest(config, topology, num_slices=1, mfu=0.4, plan_fn=plan
            ) -> list[dict[str, Any]]:
  """:func:`plan` of every :func:`alternatives` config, each row with its
  ``label``; one that cannot be built (e.g. a batch that does not divide
  over the mesh) is a row that does not fit, with its ``error``."""
  import jax  # pylint: disable=g-import-not-at-top
  rows = []
  for label, overrides in alternatives(config, num_slices):
    try:
      row = plan_fn(with_overrides(config, overrides), topology, num_slices,
                    mfu)
    except ValueError as e:  # E.g. a batch that does not divide.
      row = dict(fits=False, error=str(e), needed_bytes=None)
    rows.append(dict(row, label=label))
    jax.clear_caches()  # One compiled base step holds GBs of host memory.
  return rows


# Report
# ---------------------------------------------------------------------------


def _gib(n) -> str:
  return '?' if n is None else f'{n / GiB:.2f}'


def _size(n: int) -> str:
  return f'{n / GiB:.2f} GiB' if n >= GiB else f'{n / 2**20:.1f} MiB'


def _flop(n: float) -> str:
  return f'{n / 1e12:.3g} TFLOP' if n >= 1e12 else f'{n / 1e9:.3g} GFLOP'


def does_not_fit(r: dict[str, Any]) -> str:
  """``does not fit: needs X GiB of Y GiB`` (XLA's figures where stated)."""
  have = r.get('available_bytes') or r['hbm_bytes']
  if r.get('needed_bytes') is None:
    return f'does not fit: needs more than the {_gib(have)} GiB of HBM'
  return f'does not fit: needs {_gib(r["needed_bytes"])} GiB of {_gib(have)} GiB'


def report_lines(r: dict[str, Any], topology: tpu_topology.Topology,
                 num_slices: int = 1) -> list[str]:
  """The lines :func:`main` prints for a :func:`plan` report."""
  slices = f' x {num_slices} slices' if num_slices > 1 else ''
  lines = [
      f'{topology.name}{slices}: {r["devices"]} x {r["device_kind"]} '
      f'({_gib(r["hbm_bytes"])} GiB HBM each), mesh {r["mesh"]}, batch '
      f'{r["batch"]}, {r["num_params"] / 1e6:.1f}M params, compiled in '
      f'{r["compile_s"]:.0f} s']
  if not r['fits']:
    # XLA's own words: what it counted (it rematerialises to fit first).
    return lines + [does_not_fit(r), 'XLA: ' + r['error'].splitlines()[0]]
  lines += [
      f'per device: arguments {_size(r["argument_bytes"])}, outputs '
      f'{_size(r["output_bytes"])} ({_size(r["alias_bytes"])} of them '
      f'aliased to the donated state), temporaries {_size(r["temp_bytes"])}, '
      f'generated code {_size(r["code_bytes"])}',
      f'fits: needs {_gib(r["needed_bytes"])} GiB of {_gib(r["hbm_bytes"])} '
      f'GiB ({100 * r["needed_bytes"] / r["hbm_bytes"]:.0f}%: arguments + '
      'outputs - aliased + temporaries + code)',
      f'FLOPs per step (XLA cost analysis'
      + (f', its accumulation loop x {r["grad_accum_steps"]}'
         if r['grad_accum_steps'] > 1 else '')
      + f'): {_flop(r["flops_per_device"])} per device, '
      f'{_flop(r["flops"])} in all']
  if r.get('analytic_flops'):
    lines.append(f'model FLOPs per step (vlg.tools.flops, matmuls only): '
                 f'{_flop(r["analytic_flops"])}')
  lines.append(
      f'projected step time at MFU {r["mfu"]:.2f} of '
      f'{r["peak_flops"] / 1e12:g} TFLOP/s bf16 per chip: '
      f'{r["step_s"] * 1e3:.3g} ms ({r["batch"] / r["step_s"]:.0f} '
      'examples/s; compute only)')
  return lines


def suggestion_lines(rows: list[dict[str, Any]]) -> list[str]:
  """The ``--suggest`` table and the best row."""
  lines = [f'{"alternative":<22} {"fits":<4} {"needs GiB":>9} '
           f'{"temps GiB":>9} {"GFLOP/dev":>10} {"step ms":>8}']
  for r in rows:
    lines.append(
        f'{r["label"]:<22} {"yes" if r["fits"] else "no":<4} '
        f'{_gib(r.get("needed_bytes")):>9} {_gib(r.get("temp_bytes")):>9} '
        + (f'{r["flops_per_device"] / 1e9:>10.1f} {r["step_s"] * 1e3:>8.3g}'
           if r['fits'] else f'{"-":>10} {"-":>8}'))
  chosen = best(rows)
  lines.append(f'best: {chosen["label"]}' if chosen else
               'best: none fits; try a larger slice or more slices')
  return lines


def main(argv):
  del argv
  config, mfu = _CONFIG.value, _MFU.value
  try:
    check_mfu(mfu)
    topology = tpu_topology.parse_topology(_TOPOLOGY.value)
    tpu_topology.require_libtpu()
    # A mesh or batch that cannot work is the config's error: say so in one
    # line before minutes of building and compiling.
    target_mesh(config, topology, _NUM_SLICES.value)
  except (ValueError, RuntimeError) as e:
    print(f'FATAL {e}', file=sys.stderr)
    raise SystemExit(2) from e
  given = plan(config, topology, _NUM_SLICES.value, mfu)
  for line in report_lines(given, topology, _NUM_SLICES.value):
    print(line, flush=True)
  if _SUGGEST.value:
    rows = [dict(given, label='as given')] + suggest(
        config, topology, _NUM_SLICES.value, mfu)
    print()
    for line in suggestion_lines(rows):
      print(line)
  if not given['fits']:
    raise SystemExit(1)


if __name__ == '__main__':
  # Only compile-only TPU devices are used; the default backend stays the
  # CPU, so a laptop with libtpu installed does not probe for a TPU.
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  define_flags()
  app.run(main, flags_parser=config_lib.parse_flags)
