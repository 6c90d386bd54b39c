r"""Train-step throughput and FLOP/s of a config on this machine.

  python -m vlg.tools.bench --config=configs/albef.py:tiny [--steps=20]
  python -m vlg.tools.bench --config=configs/albef.py:base \
      --config.batch_size=4 --steps=5 --mfu

Builds the config's sharded train step, AOT-compiles it (printing XLA's
per-device memory analysis), then times ``--steps`` steps on one fixed batch
from the real input pipeline (so input speed is excluded; see
``vlg.tools.bench_data`` for that). Prints examples/s, the median step time,
the compiled step's FLOPs from XLA's cost analysis, the achieved FLOP/s, this
machine's measured dense float32 matmul FLOP/s, and their ratio.

``--mfu`` adds the model FLOPs per step counted analytically
(``vlg.tools.flops``, matmuls only) beside XLA's count (every op, as
compiled), the achieved model FLOP/s, and the model FLOPs utilisation
(MFU): achieved model FLOP/s over the dense bf16 peak of the devices,
looked up from ``jax.devices()[0].device_kind``. Devices without a known
peak (CPUs) get no MFU; the achieved FLOP/s is compared with the measured
matmul ceiling instead. ``--config.mesh=1,1,1`` benchmarks one device.
``vlg.tools.bench_reference`` times this step in rounds alternating with
ALBEF's own PyTorch step at the same shapes
(benchmarks/reference/README.md).
"""

from __future__ import annotations

import statistics
import tempfile
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from vlg import config_lib
from vlg import huge_pages
from vlg.tools import flops as flops_lib

_CONFIG = None
_STEPS = None
_WARMUP = None
_MATMUL = None
_MFU = None


def define_flags() -> None:
  """Defines the flags; called only when run as a program, so that
  tests can import several tools into one process."""
  global _CONFIG, _STEPS, _WARMUP, _MATMUL, _MFU
  _CONFIG = config_flags.DEFINE_config_file(
      'config', None, 'Config file, e.g. configs/albef.py:tiny.',
      lock_config=True)
  _STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps (after compiling).')
  _WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.')
  _MATMUL = flags.DEFINE_integer('matmul_size', 2048,
                                 'Side of the square matmul used as ceiling.')
  _MFU = flags.DEFINE_bool('mfu', False, 'Also print analytic model FLOPs, '
                           'achieved model FLOP/s and MFU against the peak.')
  flags.mark_flags_as_required(['config'])


def matmul_flops_per_sec(n: int, repeats: int = 10) -> float:
  """Measured float32 n×n matmul FLOP/s (median of ``repeats``)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n**3 / statistics.median(times)


def run(config, steps: int, warmup: int, matmul_size: int) -> dict:
  """Measures the train step; returns the figures :func:`report` prints.

  ``flops_per_step`` is XLA's count (all devices), ``analytic_flops`` the
  model FLOPs of ``vlg.tools.flops`` (None, with ``analytic_note``, for
  configs it does not cover), ``mfu`` None where the device has no known
  peak.
  """
  if steps < 1:
    raise ValueError(f'--steps must be >= 1, got {steps}')
  import jax  # pylint: disable=g-import-not-at-top
  from vlg import sharding  # pylint: disable=g-import-not-at-top
  from vlg import train  # pylint: disable=g-import-not-at-top
  from vlg.data import pipeline  # pylint: disable=g-import-not-at-top

  sizes = list(config.mesh)
  n = 1
  for size in sizes:
    n *= size
  # A mesh without a fill axis (-1) takes only the devices it names.
  mesh = sharding.make_mesh(
      sizes, devices=None if -1 in sizes else jax.devices()[:n])
  rules = [tuple(r) for r in config.sharding_rules]
  sharding.set_rules(rules)
  # A context, not a global: the mesh stays where bench.run set it only
  # while it runs (a caller's later models see no mesh of ours).
  with jax.set_mesh(mesh):
    tokenizer = pipeline.get_tokenizer(config.input,
                                       tempfile.mkdtemp(prefix='vlg_bench_'))
    it = iter(pipeline.make_dataset(config.input, tokenizer,
                                    global_batch=config.batch_size, seed=0))
    batch = pipeline.to_global(next(it), mesh, rules)
    built = train.build_step(config, mesh, rules)
    state = built['init_fn']()
    batch_shards = sharding.batch_shards()

    t = time.perf_counter()
    compiled = built['train_step'].lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get('flops', 0.0)) if cost else 0.0
    mem = compiled.memory_analysis()

    for _ in range(warmup):
      state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
      t = time.perf_counter()
      state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t)
  step_s = statistics.median(times)
  # cost_analysis counts one device's program; the step runs on all.
  total_flops = flops * mesh.size
  matmul = matmul_flops_per_sec(matmul_size)
  out = dict(
      params_m=built['num_params'] / 1e6, batch=config.batch_size,
      devices=mesh.size, compile_s=compile_s, step_s=step_s,
      examples_per_s=config.batch_size / step_s, flops_per_step=total_flops,
      achieved_flops=total_flops / step_s, matmul_flops=matmul,
      ratio=(total_flops / step_s) / matmul,
      loss=float(jax.device_get(metrics['loss'])))
  device_kind = jax.devices()[0].device_kind
  peak = flops_lib.peak_bf16_flops(device_kind)
  out.update(device_kind=device_kind, peak_flops=peak)
  try:
    analytic = flops_lib.train_step_flops(config, batch_shards)['total']
  except ValueError as e:
    out.update(analytic_flops=None, analytic_note=str(e))
  else:
    achieved = analytic / step_s
    out.update(analytic_flops=analytic, model_flops=achieved,
               model_ratio=achieved / matmul,
               mfu=achieved / (peak * mesh.size) if peak else None)
  if mem is not None:
    out.update(arg_bytes=mem.argument_size_in_bytes,
               out_bytes=mem.output_size_in_bytes,
               temp_bytes=mem.temp_size_in_bytes)
  close = getattr(it, 'close', None)
  if close:
    close()
  return out


def report(config, r: dict, steps: int, matmul_size: int,
           mfu: bool) -> list[str]:
  """The lines :func:`main` prints for the figures ``r`` of :func:`run`."""
  lines = [
      f'model {config.model.name} ({r["params_m"]:.1f}M params), batch '
      f'{r["batch"]}, {r["devices"]} device(s) ({r["device_kind"]}), '
      f'compile {r["compile_s"]:.1f}s']
  if 'temp_bytes' in r:
    lines.append(
        f'memory per device: arguments {r["arg_bytes"] / 2**20:.1f} MiB, '
        f'outputs {r["out_bytes"] / 2**20:.1f} MiB, temporaries '
        f'{r["temp_bytes"] / 2**20:.1f} MiB')
  lines += [
      f'step time (median of {steps}): {r["step_s"] * 1e3:.1f} ms '
      f'(host huge pages {huge_pages.describe()})',
      f'train examples/s: {r["examples_per_s"]:.1f}',
      f'FLOPs per step (XLA cost analysis): {r["flops_per_step"] / 1e9:.2f} '
      'GFLOP',
      f'achieved: {r["achieved_flops"] / 1e9:.1f} GFLOP/s; dense f32 '
      f'{matmul_size}^2 matmul here: {r["matmul_flops"] / 1e9:.1f} GFLOP/s; '
      f'ratio {r["ratio"]:.2f}']
  if not mfu:
    return lines
  if r['analytic_flops'] is None:
    lines.append(f'model FLOPs per step (analytic): n/a — '
                 f'{r["analytic_note"]}')
    return lines
  lines += [
      f'model FLOPs per step (analytic, matmuls): '
      f'{r["analytic_flops"] / 1e9:.2f} GFLOP; XLA counts '
      f'{r["flops_per_step"] / r["analytic_flops"]:.2f}x that',
      f'achieved model FLOP/s: {r["model_flops"] / 1e9:.1f} GFLOP/s']
  if r['mfu'] is not None:
    lines.append(
        f'MFU: {100 * r["mfu"]:.1f}% of {r["devices"]} x '
        f'{r["peak_flops"] / 1e12:g} TFLOP/s dense bf16 peak '
        f'({r["device_kind"]})')
  else:
    lines.append(
        f'MFU: no peak known for {r["device_kind"]!r}; model FLOP/s are '
        f'{r["model_ratio"]:.2f}x the measured {matmul_size}^2 f32 matmul '
        'ceiling')
  return lines


def main(argv):
  del argv
  r = run(_CONFIG.value, _STEPS.value, _WARMUP.value, _MATMUL.value)
  for line in report(_CONFIG.value, r, _STEPS.value, _MATMUL.value,
                     _MFU.value):
    print(line)


if __name__ == '__main__':
  huge_pages.restart_with_huge_pages()
  define_flags()
  app.run(main, flags_parser=config_lib.parse_flags)
