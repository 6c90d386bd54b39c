"""A real two-process CPU job trains like one process on the same batches.

Two ``python -m vlg.main`` subprocesses (one CPU device each, explicit
coordinator on localhost, gloo collectives) train a tiny ALBEF for a few
steps; their ``metrics.jsonl`` must match a one-process run on 2 devices of
this test process. (One device per process keeps the test cheap: a program
over 8 fake devices compiles and runs several times slower on 2 cores, and
the cross-process path — the coordinator, gloo all-reduces, per-process
data slices and checkpoints — is the same.)

What the pipeline does, and so what "the same global batch" means: each
process reads ``source[process_index::process_count]``, shuffles that slice
with the run's seed and batches ``batch_size / process_count`` of it;
``pipeline.to_global`` puts process 0's rows first. A one-process run with
the same seed reads the whole source in another order, so its batches hold
other examples (checked below). The reference therefore feeds the
one-process step exactly the two processes' streams, concatenated — the same
examples, the same initialisation, the same 2-device mesh — and only the
process split differs.

Tolerance: both runs compile with ``jax_disable_most_optimizations`` and
run the same program on the same 2-way mesh; only the cross-device
reductions differ (gloo across processes vs in-process), i.e. the order of
float32 sums. Measured here: at most 1.4e-7 relative over the 3 steps (one
or two float32 ulps). Adam can amplify rounding-sized gradient differences
into lr-sized updates, so 1e-5 leaves room for that growth while staying far
below any real bug (a wrong shard, a duplicated or dropped process's rows,
unsynchronised parameters change the losses by > 1e-3).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from vlg import sharding
from vlg import train
from vlg import writers
from vlg.data import pipeline

import configs.albef as albef_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The two-process jobs (here and in test_faults.py) compile one program;
# on one worker, whichever runs second finds it in the persistent cache.
TWO_PROCESSES = pytest.mark.xdist_group('two_processes')
STEPS = 3
# Shared by the subprocesses (as --config.k=v) and the in-process reference.
OVERRIDES = {
    'model.image_size': 48, 'model.patch_size': 16, 'model.vision_width': 32,
    'model.vision_depth': 1, 'model.vision_heads': 2, 'model.vision_mlp': 64,
    'model.text_width': 32, 'model.text_layers': 1, 'model.fusion_layers': 1,
    'model.text_heads': 2, 'model.text_mlp': 64, 'model.embed_dim': 16,
    'model.vision_stem': 'patch', 'vision_pretrain.steps': 0,
    'input.resolution': 48, 'input.data.synthetic.world.resolution': 48,
    'input.data.synthetic.num_examples': 256, 'input.max_text_len': 16,
    'input.tokenizer.num_texts': 300, 'batch_size': 8, 'queue_size': 16,
    'total_steps': STEPS, 'ckpt_steps': STEPS, 'log_training_steps': 1,
    'optim.warmup_steps': 2,
}
LOSSES = ('train/loss', 'train/itc_loss', 'train/itm_loss', 'train/mlm_loss')


def _config(**extra):
  c = albef_config.get_config('tiny,evals=False')
  for key, value in {**OVERRIDES, **extra}.items():
    *path, last = key.split('.')
    target = c
    for p in path:
      target = target[p]
    target[last] = value
  return c


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start_processes(workdir, tokenizer_path, num_processes=2,
                     devices_per_process=1,
                     entry=(sys.executable, '-m', 'vlg.main'), env=None):
  """Starts the job's processes, each logging to ``process_<i>.log`` beside
  ``workdir``; ``entry`` is the command before the flags (the fault tests
  run ``tests/fault_child.py``), ``env`` extra environment variables."""
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count='
             f'{devices_per_process}',
             JAX_DISABLE_MOST_OPTIMIZATIONS='1', TF_CPP_MIN_LOG_LEVEL='3',
             **(env or {}))
  flags = [f'--config.{k}={v}' for k, v in OVERRIDES.items()]
  flags.append(f'--config.input.tokenizer.path={tokenizer_path}')
  procs = []
  for i in range(num_processes):
    log = open(os.path.join(os.path.dirname(workdir), f'process_{i}.log'),
               'w')
    cmd = [*entry, '--config=configs/albef.py:tiny,evals=False',
           f'--workdir={workdir}', f'--coordinator_address=127.0.0.1:{port}',
           f'--num_processes={num_processes}', f'--process_id={i}', *flags]
    procs.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT), log))
  return procs


def _reference_metrics(cfg, tokenizer, num_processes=2):
  """A one-process run on as many devices as the job's (one per process),
  fed the processes' streams, concatenated."""
  mesh = sharding.make_mesh(cfg.mesh, devices=jax.devices()[:num_processes])
  rules = [tuple(r) for r in cfg.sharding_rules]
  sharding.set_rules(rules)
  with jax.set_mesh(mesh):
    iters = [iter(pipeline.make_dataset(
        cfg.input, tokenizer, global_batch=cfg.batch_size, seed=cfg.seed,
        process_index=p, process_count=num_processes))
             for p in range(num_processes)]
    built = train.build_step(cfg, mesh, rules)
    state = built['init_fn']()
    out, first_batch = {}, None
    for step in range(1, STEPS + 1):
      parts = [next(it) for it in iters]
      batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
      if step == 1:
        first_batch = batch
      state, metrics = built['train_step'](
          state, pipeline.to_global(batch, mesh, rules))
      out[step] = {f'train/{k}': float(v)
                   for k, v in jax.device_get(metrics).items()
                   if not np.ndim(v)}
  return out, first_batch


@TWO_PROCESSES
def test_two_processes_match_one_process_on_the_same_global_batches(
    tmp_path, fast_compile):
  cfg = _config()
  tokenizer = pipeline.get_tokenizer(cfg.input, str(tmp_path / 'tok'))
  tokenizer_path = str(tmp_path / 'tok' / 'tokenizer' / 'tokenizer.model')
  assert os.path.exists(tokenizer_path)
  workdir = str(tmp_path / 'run')
  procs = _start_processes(workdir, tokenizer_path)
  try:
    # The reference runs while the two processes compile and train.
    ref, first_batch = _reference_metrics(cfg, tokenizer)
    for proc, _ in procs:
      proc.wait(timeout=400)
  finally:
    for proc, log in procs:
      if proc.poll() is None:
        proc.kill()
      log.close()
  for i, (proc, _) in enumerate(procs):
    if proc.returncode:
      with open(tmp_path / f'process_{i}.log') as f:
        pytest.fail(f'process {i} exited {proc.returncode}:\n'
                    f'{f.read()[-3000:]}')

  # Only process 0 writes metrics: one record per step, not two.
  records = [r for r in writers.read_metrics(workdir) if 'train/loss' in r]
  assert [r['step'] for r in records] == list(range(1, STEPS + 1))
  for rec in records:
    for key in LOSSES:
      np.testing.assert_allclose(rec[key], ref[rec['step']][key], rtol=1e-5,
                                 err_msg=f'step {rec["step"]} {key}')
  # The job really was two processes of 1 device, and both saved their
  # data-iterator position in the final checkpoint.
  with open(tmp_path / 'process_1.log') as f:
    assert 'process 1/2, 1 local / 2 global devices' in f.read()
  ckpt = os.path.join(workdir, 'checkpoints', str(STEPS), 'data_iter')
  assert len(os.listdir(ckpt)) >= 2, os.listdir(ckpt)

  # Why the reference is fed the processes' streams: one process with the
  # same seed reads other examples in its first global batch.
  alone = iter(pipeline.make_dataset(cfg.input, tokenizer,
                                     global_batch=cfg.batch_size,
                                     seed=cfg.seed))
  assert not np.array_equal(next(alone)['image_id'], first_batch['image_id'])
