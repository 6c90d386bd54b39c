"""Binomial distance from chance, on hand-computed cases."""

import json
import math

import pytest

from vlg.analysis import significance
from vlg.tools import skills


def test_binomial_z_hand_computed():
  # 50 pairs at chance 1/2: SD = sqrt(.25 / 50) = 0.0707; 0.62 is 1.70 SD.
  assert significance.binomial_z(0.62, 0.5, 50) == pytest.approx(
      0.12 / math.sqrt(0.005))
  assert significance.binomial_z(0.5, 0.5, 10) == 0.0
  with pytest.raises(ValueError, match='n=0'):
    significance.binomial_z(0.5, 0.5, 0)
  with pytest.raises(ValueError, match='chance'):
    significance.binomial_z(0.5, 1.0, 10)


METRICS = {
    'vsr/accuracy': 0.75, 'vsr/chance/accuracy': 0.5, 'vsr/num_evaluated': 100,
    'retrieval/tr_r1': 0.2, 'retrieval/ir_r1': 0.1,
    'retrieval/chance/tr_r1': 0.02, 'retrieval/chance/ir_r1': 0.02,
    'retrieval/chance/r_mean': 0.1, 'retrieval/r_mean': 0.5,
    'retrieval/num_evaluated': 50, 'retrieval/num_texts': 250,
    'valse/auroc': 0.9, 'valse/chance/auroc': 0.5, 'valse/num_evaluated': 10,
}


def test_above_chance_counts_queries_and_skips_non_binomial():
  rows = {r.name: r for r in significance.above_chance(METRICS)}
  assert set(rows) == {'vsr/accuracy', 'retrieval/tr_r1', 'retrieval/ir_r1'}
  assert rows['vsr/accuracy'].z == pytest.approx(0.25 / 0.05)
  # Text retrieval: one query per image (50); image retrieval: per text.
  assert rows['retrieval/tr_r1'].n == 50
  assert rows['retrieval/ir_r1'].n == 250
  assert rows['retrieval/ir_r1'].z == pytest.approx(
      0.08 / math.sqrt(0.02 * 0.98 / 250))
  best = significance.best_per_benchmark(list(rows.values()))
  assert best['retrieval'].name == 'retrieval/tr_r1'  # z 9.09 vs 9.04.


def test_skills_report_reads_the_last_evaluated_step(tmp_path):
  with open(tmp_path / 'metrics.jsonl', 'w') as f:
    f.write(json.dumps({'step': 10, 'train/loss': 1.0}) + '\n')
    f.write(json.dumps({'step': 20, **METRICS}) + '\n')
    f.write(json.dumps({'step': 30, 'train/loss': 0.5}) + '\n')
  text = skills.report(str(tmp_path))
  assert 'at step 20' in text
  assert text.splitlines()[-1].endswith('retrieval, vsr')
  with pytest.raises(ValueError, match='steps with evaluations: \\[20\\]'):
    skills.report(str(tmp_path), step=30)
