"""Faults never cost a run: kill -9 (mid-save too), a full disk, and a
failing process of a two-process job.

The faults are injected into real runs by ``tests/fault_child.py``
(``VLG_FAULT``), which runs ``vlg.main`` on the train tests' tiny config
(``tests/tiny_config.py``: 6 steps, checkpoints at 3 and 6); the resumed
runs finish in this process, on the same program from the shared
compilation cache. The first run of each test trains all 6 steps before
its fault stops it (in a save), so a workdir's first record of every step
is the uninterrupted run's; the runs resumed after it log the steps after
their checkpoint again, and every record of a step must equal the first
(``metrics.jsonl``, record by record).
"""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fault_child
import test_multiprocess as multiprocess
from test_train import tiny_test_config
from vlg import checkpointing
from vlg import train
from vlg import writers
from vlg.data import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = os.path.join(ROOT, 'tests', 'fault_child.py')
LOSSES = ('train/loss', 'train/itc_loss', 'train/itm_loss', 'train/mlm_loss')
# The same program on the same data, resumed or not, in this process or
# another: equal to float32 rounding (measured: identical); a wrong batch,
# step or RNG stream after a resume moves the losses by > 1e-3.
RTOL = 1e-6


def _assert_resumed_losses_equal_the_first(workdir, counts, when=''):
  """Every training record of a step equals the step's first record;
  ``counts`` is how many records each step has (the runs that trained
  it); ``when`` goes into the failure messages."""
  by_step = {}
  for rec in writers.read_metrics(workdir):
    if 'train/loss' in rec:
      by_step.setdefault(rec['step'], []).append(rec)
  assert {s: len(r) for s, r in by_step.items()} == counts, when
  for step, (first, *again) in by_step.items():
    for rec in again:
      for key in LOSSES:
        np.testing.assert_allclose(rec[key], first[key], rtol=RTOL,
                                   err_msg=f'step {step} {key} {when}')


def _complete_and_unfinished(workdir):
  """(complete checkpoint steps, other entries: unfinished saves)."""
  names = os.listdir(os.path.join(workdir, 'checkpoints'))
  return (sorted(int(n) for n in names if n.isdigit()),
          sorted(n for n in names if not n.isdigit()))


def _run_child(workdir, fault, timeout=300):
  """Runs ``tests/fault_child.py`` on the tiny config with ``fault``;
  returns (exit status, its output)."""
  env = dict(os.environ, VLG_FAULT=fault, JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  proc = subprocess.run(
      [sys.executable, CHILD, '--config=tests/tiny_config.py',
       f'--workdir={workdir}'], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True, timeout=timeout)
  return proc.returncode, proc.stdout


def test_kill_9_at_random_moments_then_resume_gives_the_same_losses(
    tmp_path, fast_compile):
  workdir = str(tmp_path / 'run')

  # Trains steps 1-6 uninterrupted, then is killed from inside orbax's
  # write of the final checkpoint: the unfinished save is a temporary
  # directory beside the complete step 3.
  rc, out = _run_child(workdir, 'kill_in_save:6')
  assert rc == -signal.SIGKILL, out[-3000:]
  assert 'fault_child: kill_in_save at step 6' in out
  complete, unfinished = _complete_and_unfinished(workdir)
  assert complete == [3], (complete, unfinished)
  assert [n for n in unfinished if n.startswith('6.orbax-checkpoint-tmp')]

  # Resumed from step 3 and killed again before a random one of the steps
  # it trains (4, 5 or 6), with no checkpoint to add.
  moment = random.randint(1, 3)
  when = f'second run killed before step {3 + moment}'
  rc, out = _run_child(workdir, f'kill_at_step:{moment}')
  assert rc == -signal.SIGKILL, f'{when}:\n{out[-3000:]}'
  assert 'Resumed from step 3' in out, out[-3000:]

  # The same command again, here, to the end.
  train.train_and_evaluate(tiny_test_config(), workdir)
  assert _complete_and_unfinished(workdir) == ([3, 6], [])
  # Steps 1-6 by the first run, 4-6 by the last, 4 and 5 by the second if
  # it trained them before its kill.
  counts = {1: 1, 2: 1, 3: 1, 4: 2 + (moment > 1), 5: 2 + (moment > 2),
            6: 2}
  _assert_resumed_losses_equal_the_first(workdir, counts, when)


def test_a_save_that_fails_half_way_names_it_and_the_run_resumes(
    tmp_path, monkeypatch, fast_compile):
  # Checkpoints every 2 steps (the save policy is not in the compiled step);
  # the disk fills while step 4's is written in the background: one item's
  # file is written, then the write raises ENOSPC. orbax reports it when
  # the run next waits for its writes, at step 6's save, after 6
  # uninterrupted steps.
  # (No kept interval: a kept step is saved too, and step 3 would be.)
  config = tiny_test_config(ckpt_steps=2, keep_every_steps=None)
  fault_child.install('enospc_in_save', 4, patch=monkeypatch.setattr)
  workdir = str(tmp_path / 'run')
  directory = os.path.join(workdir, 'checkpoints')
  with pytest.raises(checkpointing.CheckpointSaveError) as error:
    train.train_and_evaluate(config, workdir)
  message = str(error.value)
  assert message.startswith(
      f'Saving the checkpoint of step 4 to {directory} failed: OSError: '
      '[Errno 28]'), message
  assert 'The disk is full' in message
  assert 'resumes from the last complete checkpoint, step 2' in message
  complete, unfinished = _complete_and_unfinished(workdir)
  assert complete == [2] and unfinished, (complete, unfinished)

  # The previous checkpoint is readable, and the same command resumes
  # from it once the disk has room.
  monkeypatch.undo()
  # Read-only: a second writing manager would also remove the unfinished
  # save in the background, racing the resumed run's own clean-up.
  reader = checkpointing.open_read_only(directory)
  assert checkpointing.restore_config_item(reader, 2)['meta']['step'] == 2
  train.train_and_evaluate(config, workdir)
  complete, unfinished = _complete_and_unfinished(workdir)
  assert complete[-1] == 6 and not unfinished, (complete, unfinished)
  _assert_resumed_losses_equal_the_first(
      workdir, {1: 1, 2: 1, 3: 2, 4: 2, 5: 2, 6: 2})


@multiprocess.TWO_PROCESSES
def test_a_failing_process_of_two_stops_both_with_its_error(tmp_path):
  # Process 1's input pipeline raises on its first example, while process
  # 0 goes on into the first train step's all-reduce, which waits for
  # process 1. Exiting normally, process 1 would wait in jax.distributed's
  # shutdown barrier for process 0, and both would hang.
  cfg = multiprocess._config()  # pylint: disable=protected-access
  pipeline.get_tokenizer(cfg.input, str(tmp_path / 'tok'))
  procs = multiprocess._start_processes(  # pylint: disable=protected-access
      str(tmp_path / 'run'),
      str(tmp_path / 'tok' / 'tokenizer' / 'tokenizer.model'),
      entry=(sys.executable, CHILD), env={'VLG_FAULT': 'raise_in_data:1@1'})
  # Far above the measured time (a minute, compiling on a loaded machine)
  # and far below a hang, which lasts until killed.
  deadline = time.monotonic() + 300
  hung = []
  try:
    for i, (proc, _) in enumerate(procs):
      try:
        proc.wait(timeout=max(deadline - time.monotonic(), 1))
      except subprocess.TimeoutExpired:
        hung.append(i)
  finally:
    for proc, log in procs:
      if proc.poll() is None:
        proc.kill()
      log.close()
  logs = []
  for i in range(2):
    with open(tmp_path / f'process_{i}.log') as f:
      logs.append(f.read())
  assert not hung, (f'processes {hung} hung after process 1 failed:\n'
                    + '\n'.join(f'--- process {i}:\n{logs[i][-1500:]}'
                                 for i in range(2)))
  for i, (proc, _) in enumerate(procs):
    assert proc.returncode == 1, (i, proc.returncode, logs[i][-3000:])
    assert f'Process {i} failed (traceback above)' in logs[i], logs[i][-3000:]
  # Process 1 shows its error; process 0 the collective that lost it.
  assert 'injected data pipeline failure (example 1' in logs[1]
  assert 'Traceback' in logs[0]
