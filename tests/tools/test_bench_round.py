"""vlg.tools.bench_round: a round batched and one pair at a time, on the
session's tiny run (``tests/test_restore.py``), and the figures it prints."""

import math
import os
import subprocess
import sys

import jax
import pytest

from vlg.tools import bench_round

from test_restore import load_on_one_device
from test_restore import trained_run

pytestmark = pytest.mark.xdist_group('tiny_run')

ROOT = os.path.join(os.path.dirname(__file__), '..', '..')


def test_metric_difference_ignores_seconds_and_flags_one_sided_nan():
  a = {'acc': 0.5, 'auroc': 0.75, 'seconds': 3.0, 'name': 'x', 'only_a': 1}
  b = {'acc': 0.5, 'auroc': 0.70, 'seconds': 9.0, 'name': 'y'}
  diff, key = bench_round.metric_difference(a, b)
  assert key == 'auroc' and diff == pytest.approx(0.05)
  assert bench_round.metric_difference({'seconds': 1}, {'seconds': 2}) == (
      0.0, '')
  nan = float('nan')
  assert bench_round.metric_difference({'m': nan}, {'m': nan}) == (0.0, '')
  assert bench_round.metric_difference({'m': nan}, {'m': 0.5}) == (
      math.inf, 'm')


def test_report_gives_median_round_sums_and_their_ratio():
  result = {
      'batched': {'valse': [1.0, 3.0, 2.0], 'retrieval': [1.0, 1.0, 1.0]},
      'loop': {'valse': [4.0, 9.0, 8.0], 'retrieval': [20.0, 30.0, 25.0]},
      'types': {'valse': 'valse', 'retrieval': 'retrieval'},
      'difference': {'valse': (0.0, ''), 'retrieval': (1e-3, 'tr_r1')},
      'skipped': ['refcocog_val'], 'compile': {}}
  lines = bench_round.report(result)
  rows = {line.split()[0]: line.split() for line in lines[1:]}
  assert rows['valse'][1:4] == ['2.00', '8.00', '4.00x']
  assert rows['retrieval'][1:4] == ['1.00', '25.00', '25.00x']
  assert rows['retrieval'][4:] == ['0.001', '(tr_r1)']
  fine = next(line for line in lines if line.startswith('fine-grained'))
  assert fine.split()[2:5] == ['2.00', '8.00', '4.00x']
  whole = next(line for line in lines if line.startswith('whole round'))
  # Round sums 2/3/3 against 24/39/33: medians 3 and 33.
  assert whole.split()[2:5] == ['3.00', '33.00', '11.00x']
  assert lines[-1] == 'skipped (no scorer): refcocog_val'


def test_compare_times_both_ways_with_equal_metrics(tmp_path_factory):
  workdir, _ = trained_run(tmp_path_factory)
  run = load_on_one_device(workdir)
  logged = []
  try:
    with jax.set_mesh(run.mesh):
      evals = run.config.evals
      result = bench_round.compare(run, evals, rounds=2, log=logged.append)
  finally:
    run.close()
  names = set(evals.keys())
  assert set(result['batched']) == set(result['loop']) == names
  for way in ('batched', 'loop'):
    assert all(len(v) == 2 and min(v) > 0 for v in result[way].values())
  assert result['types'] == {'valse': 'valse', 'vsr_random_dev': 'vsr'}
  for name in names:  # Float rounding of a batch against a single row.
    assert result['difference'][name][0] < 1e-6, result['difference']
  assert logged[0].startswith('batched: first round (compiling)')
  assert logged[2:] == [s for s in logged[2:] if s.startswith('round ')]
  assert [s.split()[2] for s in logged[2:]] == [
      'batched:', 'loop:', 'loop:', 'batched:']  # Alternating.


def test_command_prints_the_table(tmp_path_factory):
  workdir, _ = trained_run(tmp_path_factory)
  env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': ''}  # One device: the loop scores one pair a call.
  proc = subprocess.run(
      [sys.executable, '-m', 'vlg.tools.bench_round', f'--workdir={workdir}',
       '--evals=vsr_random_dev', '--rounds=1',
       '--config.eval_batch_size=4'],
      cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout.splitlines()
  assert 'step 6: 1 eval(s) on 1 cpu device(s)' in out[0]
  rows = {line.split()[0]: line.split() for line in out
          if line.startswith(('vsr_random_dev ', 'whole round'))}
  # Seconds are printed to 0.01 s, too coarse at these sizes to re-derive
  # the ratio (report's test checks the arithmetic).
  batched, looped, ratio = rows['vsr_random_dev'][1:4]
  assert float(batched) >= 0 and float(looped) > 0
  assert ratio.endswith('x') and float(ratio[:-1]) > 0
  assert rows['whole'][2:5] == rows['vsr_random_dev'][1:4]
  assert rows['vsr_random_dev'][4] == '0'  # Metrics agree.
  bad = subprocess.run(
      [sys.executable, '-m', 'vlg.tools.bench_round', f'--workdir={workdir}',
       '--config.no_such_field=1'], cwd=ROOT, capture_output=True,
      text=True, timeout=600, env=env)
  assert bad.returncode != 0 and 'no_such_field' in bad.stderr
