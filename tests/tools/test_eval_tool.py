"""vlg.tools.eval: every kept checkpoint evaluated once, resumable, as trained.

Uses the session's tiny run of ``tests/test_restore.py`` (kept steps 3 and
6; training logged the VALSE and VSR evals at step 6), copied so that this
module's appends do not reach the other tests.
"""

import os
import shutil
import subprocess
import sys

import ml_collections
import pytest

from vlg import writers
from vlg.tools import eval as eval_tool

from test_restore import trained_run

# The session's tiny run is trained once for all its users: with
# `pytest -n 2 --dist loadgroup` they share a worker.
pytestmark = pytest.mark.xdist_group('tiny_run')

REPO = os.path.join(os.path.dirname(__file__), '..', '..')


@pytest.fixture
def workdir(tmp_path_factory):
  # A fresh copy per test: under `--dist loadgroup` this module's tests may
  # interleave with other modules', so a module-scoped copy could be torn
  # down and re-made between them, and no test may rely on another's appends.
  source, _ = trained_run(tmp_path_factory)
  copy = str(tmp_path_factory.mktemp('eval_tool') / 'run')
  shutil.copytree(source, copy)
  return copy


def _lines(path):
  with open(os.path.join(path, 'metrics.jsonl')) as f:
    return f.read().splitlines()


def test_split_host_cpu_adds_the_device_count_once():
  env = {}
  assert eval_tool.split_host_cpu(env, 2)
  assert env['XLA_FLAGS'] == '--xla_force_host_platform_device_count=2'
  env = {'XLA_FLAGS': '--xla_cpu_use_onednn=false'}
  assert eval_tool.split_host_cpu(env, 4)
  assert env['XLA_FLAGS'] == ('--xla_cpu_use_onednn=false '
                              '--xla_force_host_platform_device_count=4')
  mine = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  assert not eval_tool.split_host_cpu(mine, 2)
  assert mine == {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  one = {}
  assert not eval_tool.split_host_cpu(one, 1) and one == {}


def test_each_host_device_gets_the_runs_eval_batch(workdir):
  config = eval_tool.restore.load_config(workdir)
  batch = int(config.get('eval_batch_size', config.batch_size))
  scaled = eval_tool.override_config(config, ['seed=3'])
  eval_tool.scale_eval_batch(scaled, ['seed=3'], 2)
  assert scaled.eval_batch_size == 2 * batch and scaled.seed == 3
  mine = eval_tool.override_config(config, ['eval_batch_size=8'])
  eval_tool.scale_eval_batch(mine, ['eval_batch_size=8'], 2)
  assert mine.eval_batch_size == 8


def test_evaluates_missing_pairs_then_nothing(workdir, fast_compile):
  trained = writers.metric_curves(workdir)
  assert sorted(trained['valse/acc_r']) == [6]
  logs = []
  got = eval_tool.evaluate_workdir(workdir, log=logs.append)
  # Step 6 was evaluated during training: only step 3 is new.
  assert sorted(got) == [(3, 'valse'), (3, 'vsr_random_dev')]
  assert any('checkpoint 1/1 (step 3) valse: acc_r' in line for line in logs)
  curves = writers.metric_curves(workdir)
  assert sorted(curves['valse/acc_r']) == [3, 6]
  assert sorted(curves['vsr_random_dev/accuracy']) == [3, 6]
  assert curves['valse/acc_r'][3] == got[(3, 'valse')]['acc_r']
  assert curves['valse/seconds'][3] > 0
  assert curves['valse/num_evaluated'][3] == 56  # 7 instruments x 8.
  # Training (step 6) and this tool (step 3) stored the per-example
  # outcomes behind each accuracy.
  stored = writers.read_outcomes(workdir)
  assert sorted(stored['valse/acc_r']) == [3, 6]
  assert stored['valse/acc_r'][3].shape == (56,)
  assert stored['valse/acc_r'][3].mean() == pytest.approx(
      curves['valse/acc_r'][3])
  assert stored['vsr_random_dev/accuracy'][6].mean() == pytest.approx(
      curves['vsr_random_dev/accuracy'][6])

  lines = _lines(workdir)
  assert eval_tool.evaluate_workdir(workdir, log=logs.append) == {}
  assert _lines(workdir) == lines
  assert '0 (step, eval) pair(s) to run, 4 already' in logs[-1]

  # Re-evaluating step 6 offline reproduces what training logged.
  again = eval_tool.evaluate_workdir(workdir, names=['valse'], steps=[6],
                                     force=True, log=logs.append)
  for key in ('acc_r', 'auroc', 'acc_r_pieces', 'plurals/acc_r'):
    assert again[(6, 'valse')][key] == pytest.approx(
        trained[f'valse/{key}'][6], abs=1e-6)


def test_bad_steps_names_and_overrides_fail_clearly(workdir):
  with pytest.raises(ValueError, match=r'\[4\] are not kept.*\[3, 6\]'):
    eval_tool.evaluate_workdir(workdir, steps=[4])
  with pytest.raises(ValueError, match=r"unknown eval\(s\) \['svo'\]"):
    eval_tool.evaluate_workdir(workdir, names=['svo'])
  with pytest.raises(ValueError, match='No evals to run'):
    eval_tool.evaluate_workdir(workdir, evals=ml_collections.ConfigDict())


def test_override_config_types_and_unknown_fields():
  config = ml_collections.ConfigDict(dict(
      batch_size=8, mesh=[2, 2, 2], evals=dict(valse=dict(type='valse',
                                                          root='/a'))))
  got = eval_tool.override_config(config, [
      'batch_size=16', 'mesh=(1, 1, -1)', 'evals.valse.root=/b',
      'evals.valse.batch_size=4', 'eval_max_text_len=40'])
  assert got.batch_size == 16 and tuple(got.mesh) == (1, 1, -1)
  assert got.evals.valse.root == '/b' and got.evals.valse.batch_size == 4
  assert got.eval_max_text_len == 40
  assert config.batch_size == 8  # The input is not changed.
  with pytest.raises(ValueError, match=r"no field 'batch_sise'.*batch_size"):
    eval_tool.override_config(config, ['batch_sise=3'])
  with pytest.raises(ValueError, match=r"no section 'evals.vsr'.*valse"):
    eval_tool.override_config(config, ['evals.vsr.root=/c'])
  with pytest.raises(ValueError, match='expected a value like 8'):
    eval_tool.override_config(config, ['batch_size=big'])


def test_command_line_help_and_resumed_run(workdir, fast_compile):
  # The session's 8 fake devices taken out of XLA_FLAGS: the command splits
  # the CPU into --cpu_devices itself.
  xla_flags = ' '.join(f for f in os.environ.get('XLA_FLAGS', '').split()
                       if not f.startswith(eval_tool.HOST_DEVICES_FLAG))
  env = dict(os.environ, PYTHONPATH=os.path.abspath(REPO),
             XLA_FLAGS=xla_flags)
  out = subprocess.run(
      [sys.executable, '-m', 'vlg.tools.eval', f'--workdir={workdir}',
       '--evals=valse', '--config.evals.valse.batch_size=16',
       '--cpu_devices=2'],
      capture_output=True, text=True, env=env, cwd=REPO, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'CPU split into 2 host devices' in out.stdout, out.stdout
  assert "onto mesh {'data': 2," in out.stderr, out.stderr[-2000:]
  # Training evaluated step 6; the command adds step 3 and nothing else.
  assert ("evals ['valse']; 1 (step, eval) pair(s) to run, 1 already"
          in out.stdout), out.stdout
  curves = writers.metric_curves(workdir)
  assert sorted(curves['valse/acc_r']) == [3, 6]
  # The same scores on the test process's 8-device mesh at another batch.
  here = eval_tool.evaluate_workdir(workdir, names=['valse'], steps=[3],
                                    force=True, log=lambda line: None)
  for key, value in here[(3, 'valse')].items():
    if key != 'seconds':
      assert curves[f'valse/{key}'][3] == pytest.approx(value, abs=1e-6), key
  helped = subprocess.run([sys.executable, '-m', 'vlg.tools.eval', '--help'],
                          capture_output=True, text=True, env=env, cwd=REPO,
                          check=False)
  assert helped.returncode in (0, 1), helped.stderr  # absl's --help exits 1.
  assert '--workdir' in helped.stdout and '--evals_config' in helped.stdout
  assert 'Evaluates every kept checkpoint' in helped.stdout
