"""``vlg.tools.bench_eval`` at tiny sizes: figures present and consistent,
``--help`` works."""

import os
import subprocess
import sys

import pytest

from vlg.recipes import family_config
from vlg.tools import bench_eval

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def test_run_tiny_sizes(fast_compile):
  # The shapes of test_synthetic_evals' end-to-end test: the session's
  # compilation cache serves both.
  r = bench_eval.run(family_config('xvlm', 'tiny,runlocal'), pairs=24,
                     images=6, captions_per_image=2, k_test=3, batch_size=8,
                     max_text_len=24, loop_pairs=3)
  assert r['devices'] == 8 and r['pairs'] == 24
  assert r['loop_pairs'] == 3
  assert r['batched_over_loop'] == pytest.approx(
      r['pairs_per_s'] / r['loop_pairs_per_s'])
  assert r['pairs_per_s'] == pytest.approx(24 / r['pairs_s'])
  assert r['valse_examples_per_s'] == pytest.approx(r['pairs_per_s'] / 2)
  assert r['retrieval/num_evaluated'] == 6
  assert r['retrieval/num_texts'] == 12
  assert r['retrieval/chance/ir_r1'] == pytest.approx(1 / 6)
  assert 0 < r['retrieval_features_s'] + r['retrieval_rank_s'] <= r[
      'retrieval_s']
  for k in ('tr_r1', 'tr_r5', 'ir_r1', 'ir_r10', 'r_mean'):
    assert 0.0 <= r[f'retrieval/{k}'] <= 1.0


def test_help():
  proc = subprocess.run([sys.executable, '-m', 'vlg.tools.bench_eval',
                         '--help'], cwd=ROOT, capture_output=True, text=True,
                        timeout=120, env={**os.environ, 'PYTHONPATH': ROOT})
  assert proc.returncode in (0, 1), proc.stderr  # absl's --help exits 1.
  assert '--k_test' in proc.stdout and '--captions_per_image' in proc.stdout
  assert '--loop_pairs' in proc.stdout
