"""vlg.tools.compare: paired tests between two runs' stored outcomes."""

import os
import subprocess
import sys

import numpy as np
import pytest

from vlg import writers
from vlg.evaluators import common
from vlg.tools import compare

REPO = os.path.join(os.path.dirname(__file__), '..', '..')


def _store(workdir, step, name, outcomes):
  results = common.Results({k: float(np.mean(v)) for k, v in outcomes.items()},
                           outcomes)
  writers.write_outcomes(str(workdir), step, name, results, 0)


def test_compare_two_runs_hand_case(tmp_path):
  a, b = tmp_path / 'a', tmp_path / 'b'
  # VSR: b right on 9 examples a got wrong, a right on 1 that b got wrong.
  vsr_a = np.array([1] * 6 + [0] * 4 + [0] * 9 + [1])
  vsr_b = np.array([1] * 6 + [0] * 4 + [1] * 9 + [0])
  _store(a, 100, 'vsr', {'accuracy': vsr_a, 'relation/above': vsr_a[:5]})
  _store(a, 200, 'vsr', {'accuracy': vsr_b, 'relation/above': vsr_b[:5]})
  _store(b, 300, 'vsr', {'accuracy': vsr_b, 'relation/above': vsr_b[:5]})
  _store(a, 100, 'refcocog', {'mean_iou': np.full(10, 0.3)})
  _store(b, 300, 'refcocog', {'mean_iou': np.full(10, 0.4)})
  _store(b, 300, 'valse', {'acc_r': np.ones(3)})  # Only b has it.

  text = compare.report(f'{a}@100', str(b), num_resamples=200)
  assert text.splitlines()[0] == f'a = {a} at step 100; b = {b} at step 300'
  assert (f'| vsr/accuracy | 20 | 0.3500 | 0.7500 | +0.4000 ' in text)
  assert f'| mcnemar | {22 / 1024:.4g} | yes |' in text
  assert '| refcocog/mean_iou | 10 | 0.3000 | 0.4000 | +0.1000 ' in text
  assert 'paired_bootstrap' in text
  assert 'relation/above' not in text and 'valse' not in text
  assert 'relation/above' in compare.report(f'{a}@100', str(b), every=True)
  only = compare.report(str(a), f'{b}@300', metrics='refcocog')
  assert 'vsr' not in only.split('\n', 1)[1]
  assert f'a = {a} at step 200' in only  # The last step with outcomes.

  # Different benchmark files: said, not paired.
  _store(b, 400, 'vsr', {'accuracy': np.ones(7)})
  assert 'not paired (different benchmark files?): vsr/accuracy (20 ' \
      'against 7' in compare.report(f'{a}@100', f'{b}@400')


def test_compare_errors_are_clear(tmp_path):
  with pytest.raises(ValueError, match='no per-example outcomes'):
    compare.report(str(tmp_path), str(tmp_path))
  _store(tmp_path, 100, 'vsr', {'accuracy': np.ones(4)})
  with pytest.raises(ValueError, match=r'steps with outcomes: \[100\]'):
    compare.report(f'{tmp_path}@5', str(tmp_path))
  with pytest.raises(ValueError, match='step number'):
    compare.parse_side(f'{tmp_path}@last')


def test_command_line(tmp_path):
  _store(tmp_path, 100, 'vsr', {'accuracy': np.array([1, 0, 1, 1])})
  env = dict(os.environ, PYTHONPATH=os.path.abspath(REPO))
  proc = subprocess.run(
      [sys.executable, '-m', 'vlg.tools.compare', f'--a={tmp_path}',
       f'--b={tmp_path}@100'], capture_output=True, text=True, env=env,
      check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '| vsr/accuracy | 4 | 0.7500 | 0.7500 | +0.0000' in proc.stdout
  assert '| mcnemar | 1 | no |' in proc.stdout
  proc = subprocess.run([sys.executable, '-m', 'vlg.tools.compare', '--help'],
                        capture_output=True, text=True, env=env, check=False)
  assert proc.returncode in (0, 1), proc.stderr  # absl's --help exits 1.
  assert '--metrics' in proc.stdout and 'McNemar' in proc.stdout
