r"""Train-step throughput and FLOP/s of a config on this machine.

  python -m vlg.tools.bench --config=configs/albef.py:tiny [--steps=20]
  python -m vlg.tools.bench --config=configs/albef.py:base \
      --config.batch_size=4 --steps=5

Builds the config's sharded train step, AOT-compiles it (printing XLA's
per-device memory analysis), then times ``--steps`` steps on one fixed batch
from the real input pipeline (so input speed is excluded; see
``vlg.tools.bench_data`` for that). Prints examples/s, the median step time,
the compiled step's FLOPs from XLA's cost analysis, the achieved FLOP/s, this
machine's measured dense float32 matmul FLOP/s, and their ratio.
"""

import statistics
import tempfile
import time

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/albef.py:tiny.',
    lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps (after compiling).')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.')
_MATMUL = flags.DEFINE_integer('matmul_size', 2048,
                               'Side of the square matmul used as ceiling.')
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
  """Measures the train step; returns the figures it prints."""
  import jax  # pylint: disable=g-import-not-at-top
  from vlg import sharding  # pylint: disable=g-import-not-at-top
  from vlg import train  # pylint: disable=g-import-not-at-top
  from vlg.data import pipeline  # pylint: disable=g-import-not-at-top

  mesh = sharding.make_mesh(config.mesh)
  rules = [tuple(r) for r in config.sharding_rules]
  sharding.set_rules(rules)
  jax.set_mesh(mesh)
  tokenizer = pipeline.get_tokenizer(config.input,
                                     tempfile.mkdtemp(prefix='vlg_bench_'))
  it = iter(pipeline.make_dataset(config.input, tokenizer,
                                  global_batch=config.batch_size, seed=0))
  batch = pipeline.to_global(next(it), mesh, rules)
  built = train.build_step(config, mesh, rules)
  state = built['init_fn']()

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
  if mem is not None:
    out.update(arg_bytes=mem.argument_size_in_bytes,
               out_bytes=mem.output_size_in_bytes,
               temp_bytes=mem.temp_size_in_bytes)
  close = getattr(it, 'close', None)
  if close:
    close()
  return out


def main(argv):
  del argv
  config = _CONFIG.value
  r = run(config, _STEPS.value, _WARMUP.value, _MATMUL.value)
  print(f'model {config.model.name} ({r["params_m"]:.1f}M params), batch '
        f'{r["batch"]}, {r["devices"]} device(s), compile {r["compile_s"]:.1f}s')
  if 'temp_bytes' in r:
    print(f'memory per device: arguments {r["arg_bytes"] / 2**20:.1f} MiB, '
          f'outputs {r["out_bytes"] / 2**20:.1f} MiB, temporaries '
          f'{r["temp_bytes"] / 2**20:.1f} MiB')
  print(f'step time (median of {_STEPS.value}): {r["step_s"] * 1e3:.1f} ms')
  print(f'train examples/s: {r["examples_per_s"]:.1f}')
  print(f'FLOPs per step (XLA cost analysis): {r["flops_per_step"] / 1e9:.2f} '
        'GFLOP')
  print(f'achieved: {r["achieved_flops"] / 1e9:.1f} GFLOP/s; dense f32 '
        f'{_MATMUL.value}^2 matmul here: {r["matmul_flops"] / 1e9:.1f} '
        f'GFLOP/s; ratio {r["ratio"]:.2f}')


if __name__ == '__main__':
  app.run(main)
