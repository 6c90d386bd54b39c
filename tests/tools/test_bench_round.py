"""vlg.tools.bench_round: a round batched and one pair at a time, on the
session's tiny run (``tests/test_restore.py``), and the figures it prints."""

import math

import jax
import pytest

from vlg.tools import bench_round

from test_restore import load_on_one_device
from test_restore import trained_run

pytestmark = pytest.mark.xdist_group('tiny_run')


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
