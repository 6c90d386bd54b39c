"""vlg.projects.study.results on hand-made runs: known means, stds and peaks.

Two models x three seeds logged at steps 100 and 200. The expected means,
sample stds (ddof 1), best steps, margins and verdicts are worked out by hand
below (and the std cross-checked with ``statistics.stdev``).
"""

import json
import math
import os
import statistics

import numpy as np
import pytest
from PIL import Image

from vlg.projects.study import results as study

VSR = 'vsr_random_dev/accuracy'
REL = 'valse/relations/acc_r'
RETR = 'retrieval/tr_r1'


def _curves(vsr, rel, retr):
  """Curves of one run; each argument is (value at 100, value at 200)."""
  out = {}
  for key, (a, b) in ((VSR, vsr), (REL, rel), (RETR, retr)):
    out[key] = {100: a, 200: b}
  out['train/loss'] = {100: 2.0, 200: 1.0}
  out['valse/num_evaluated'] = {100: 7.0, 200: 7.0}
  out['valse/chance/acc_r'] = {100: 0.5, 200: 0.5}
  return out


# ALBEF: VSR final 0.50, 0.52, 0.54 (mean 0.52, std 0.02); the relation
# skill peaks at 100 (mean 0.60) and drops to 0.50 (std 0.01): different
# peaks (VSR and retrieval at 200, relations at 100).
ALBEF = {
    0: _curves(vsr=(0.40, 0.50), rel=(0.60, 0.49), retr=(0.1, 0.3)),
    1: _curves(vsr=(0.45, 0.52), rel=(0.62, 0.50), retr=(0.2, 0.3)),
    2: _curves(vsr=(0.50, 0.54), rel=(0.58, 0.51), retr=(0.3, 0.3)),
}
# ReX-VLM: VSR final 0.60, 0.62, 0.64 (mean 0.62, std 0.02): +0.10 over
# ALBEF, 2 x pooled std = 0.04, holds. Relations final 0.505, 0.50, 0.495
# (mean 0.50, std 0.005): 0.00 margin, within the spread.
REXVLM = {
    0: _curves(vsr=(0.50, 0.60), rel=(0.40, 0.505), retr=(0.1, 0.2)),
    1: _curves(vsr=(0.55, 0.62), rel=(0.45, 0.50), retr=(0.1, 0.2)),
    2: _curves(vsr=(0.60, 0.64), rel=(0.50, 0.495), retr=(0.1, 0.2)),
}
RUNS = {'rexvlm': REXVLM, 'albef': ALBEF}


def test_mean_std_final_and_best_steps():
  got = study.aggregate(RUNS)
  assert got['models'] == ['albef', 'rexvlm']  # The table's model order.
  assert got['seeds'] == {'albef': [0, 1, 2], 'rexvlm': [0, 1, 2]}
  albef = got['stats']['albef']
  assert set(albef) == {VSR, REL, RETR}  # Only logged columns.
  vsr = albef[VSR]
  assert vsr['final']['step'] == 200
  assert vsr['final']['mean'] == pytest.approx(0.52)
  assert vsr['final']['std'] == pytest.approx(0.02)
  assert vsr['final']['std'] == pytest.approx(
      statistics.stdev([0.50, 0.52, 0.54]))
  rel = albef[REL]
  assert rel['best']['step'] == 100
  assert rel['best']['mean'] == pytest.approx(0.60)
  assert rel['best']['std'] == pytest.approx(0.02)
  assert rel['final']['mean'] == pytest.approx(0.50)
  assert rel['final']['std'] == pytest.approx(0.01)
  assert rel['seed_best_steps'] == {0: 100, 1: 100, 2: 100}
  # Retrieval: seed 2 is flat (tie, earliest wins) but the mean peaks late.
  assert albef[RETR]['seed_best_steps'] == {0: 200, 1: 200, 2: 100}
  assert albef[RETR]['best']['step'] == 200
  assert albef[RETR]['mean_curve'] == pytest.approx({100: 0.2, 200: 0.3})


def test_claims_against_twice_the_seed_std():
  got = study.aggregate(RUNS)
  (claim,) = got['claims']  # Only ReX-VLM vs ALBEF has both models.
  assert (claim['model'], claim['baseline']) == ('rexvlm', 'albef')
  rows = {r['skill']: r for r in claim['skills']}
  assert set(rows) == {VSR, REL}  # Logged skills of the claim only.
  assert rows[VSR]['margin'] == pytest.approx(0.10)
  assert rows[VSR]['two_std'] == pytest.approx(0.04)
  assert rows[VSR]['verdict'] == 'holds'
  assert rows[REL]['margin'] == pytest.approx(0.0, abs=1e-12)
  assert rows[REL]['two_std'] == pytest.approx(
      2 * math.sqrt((0.01 ** 2 + 0.005 ** 2) / 2))
  assert rows[REL]['verdict'] == 'within spread'
  assert claim['num_held'] == 1 and not claim['holds']
  assert study.compare(dict(mean=0.4, std=0.01), dict(mean=0.5, std=0.01))[
      'verdict'] == 'reversed'

  peaks = got['peaks']
  assert peaks['albef']['different_peaks']
  assert peaks['albef']['distinct_steps'] == [100, 200]
  # 0.60 ± 0.02 at best vs 0.50 ± 0.01 at the end: a drop beyond 2σ.
  assert peaks['albef']['dropped_after_peak'] == [REL]
  assert peaks['rexvlm']['best_steps'] == {VSR: 200, REL: 200, RETR: 200}
  assert not peaks['rexvlm']['different_peaks']


def test_summary_is_written_from_the_numbers():
  lines = study.summary_lines(study.aggregate(RUNS))
  text = '\n'.join(lines)
  assert 'holds on 1 of 2 skills only' in text
  assert 'VSR rand dev +10.0 (2σ 4.0, holds)' in text
  assert 'ALBEF: skills peak at different steps' in text
  assert 'ReX-VLM: every skill peaks at the same step' in text
  # Swap the models: the effect reverses and the summary says so.
  swapped = study.aggregate({'rexvlm': ALBEF, 'albef': REXVLM})
  text = '\n'.join(study.summary_lines(swapped))
  assert 'does not show on any of the 2' in text
  assert 'VSR rand dev -10.0 (2σ 4.0, reversed)' in text
  # One seed: no spread, nothing judged.
  one = study.aggregate({'rexvlm': {0: REXVLM[0]}, 'albef': {0: ALBEF[0]}})
  assert math.isnan(one['stats']['albef'][VSR]['final']['std'])
  assert 'cannot be judged' in '\n'.join(study.summary_lines(one))


def test_seeds_of_different_lengths_are_an_error():
  short = {0: ALBEF[0], 1: {VSR: {100: 0.5}}}
  with pytest.raises(ValueError, match=r'vsr_random_dev/accuracy.*different'):
    study.aggregate({'albef': short})
  # Models may end at different steps (equal compute): each is reported.
  mixed = study.aggregate({'albef': ALBEF, 'rexvlm': {0: {VSR: {300: 0.5}}}})
  assert mixed['final_steps'] == {'albef': 200, 'rexvlm': 300}
  assert 'Final steps: ' in study.results_markdown(mixed)


def _write_run(out, model, seed, curves, done=True):
  path = study.run_dir(out, model, seed)
  os.makedirs(path)
  records = {}
  for key, curve in curves.items():
    for step, value in curve.items():
      records.setdefault(step, {'step': step})[key] = value
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
    for step in sorted(records):
      f.write(json.dumps(records[step]) + '\n')
  if done:
    with open(os.path.join(path, study.DONE_FILE), 'w') as f:
      f.write('{}')


def test_load_and_write_results(tmp_path):
  out = str(tmp_path)
  for model, seeds in RUNS.items():
    for seed, curves in seeds.items():
      _write_run(out, model, seed, curves)
  _write_run(out, 'albef', 3, ALBEF[0], done=False)  # Unfinished: left out.
  runs = study.load_runs(out)
  assert {m: sorted(s) for m, s in runs.items()} == {
      'albef': [0, 1, 2], 'rexvlm': [0, 1, 2]}
  assert runs['albef'][1][VSR] == {100: 0.45, 200: 0.52}

  study.write_results(runs, out)
  saved = json.load(open(tmp_path / 'results.json'))
  assert saved['stats']['albef'][VSR]['final']['mean'] == pytest.approx(0.52)
  assert saved['claims'][0]['skills'][0]['verdict'] in ('holds',
                                                        'within spread')
  assert saved['summary'] == study.summary_lines(study.aggregate(runs))
  md = (tmp_path / 'results.md').read_text()
  header = next(line for line in md.splitlines()
                if line.startswith('| model'))
  assert header == ('| model | seeds | VSR rand dev | VALSE relations | '
                    'Retr TR@1 |')
  assert '| ALBEF | 3 | 52.0 ± 2.0 | 50.0 ± 1.0 | 30.0 ± 0.0 |' in md
  assert '| ReX-VLM | 3 | 62.0 ± 2.0 | 50.0 ± 0.5 | 20.0 ± 0.0 |' in md
  # At the best step ALBEF's relations are 0.60 ± 0.02 (step 100).
  assert '| ALBEF | 3 | 52.0 ± 2.0 | 60.0 ± 2.0 | 30.0 ± 0.0 |' in md
  # ReX-VLM seed 2's relations peak early (0.50 > 0.495), its mean late.
  assert ('| VALSE relations | 100 (100, 100, 100) | 200 (200, 200, 100) |'
          in md)
  image = np.asarray(Image.open(tmp_path / 'curves.png'))
  assert image.ndim == 3 and image.shape[0] > 100


def test_claims_carry_a_paired_test_over_seed_mean_outcomes(tmp_path):
  # 50 VSR examples; ALBEF's three seeds get the first 26, 26 and 26 right
  # (0.52), ReX-VLM's the first 32 (0.64) — per-example means over seeds
  # 0/1 vectors, so the paired test is McNemar with 6 discordant examples
  # all one way: p = 2 / 2^6.
  def vec(k):
    return np.r_[np.ones(k), np.zeros(50 - k)]
  curves = {
      'albef': {s: {VSR: {100: 0.5, 200: 0.52}} for s in range(3)},
      'rexvlm': {s: {VSR: {100: 0.5, 200: 0.64}} for s in range(3)}}
  outcomes = {
      'albef': {s: {VSR: {200: vec(26)}} for s in range(3)},
      'rexvlm': {s: {VSR: {200: vec(32)}} for s in range(3)}}
  got = study.aggregate(curves, outcomes)
  row = got['claims'][0]['skills'][0]
  assert row['skill'] == VSR and row['test'] == 'mcnemar'
  assert row['p_value'] == pytest.approx(2 / 2**6)
  assert row['significant'] and row['num_examples'] == 50
  assert 'paired p 0.0312' in '\n'.join(study.summary_lines(got))
  # Seeds that disagree per example: averaged, then the paired bootstrap.
  outcomes['rexvlm'][1] = {VSR: {200: vec(32)[::-1]}}
  row = study.aggregate(curves, outcomes)['claims'][0]['skills'][0]
  assert row['test'] == 'paired_bootstrap'
  # Without outcomes (or a seed missing them) there is no paired test.
  assert 'p_value' not in study.aggregate(curves)['claims'][0]['skills'][0]
  del outcomes['albef'][2][VSR]
  assert 'p_value' not in study.aggregate(curves, outcomes)[
      'claims'][0]['skills'][0]
  # load_outcomes reads what training stored in each finished run.
  from vlg import writers
  from vlg.evaluators import common
  for model, value in (('albef', 26), ('rexvlm', 32)):
    for seed in range(3):
      _write_run(str(tmp_path), model, seed, curves[model][seed])
      writers.write_outcomes(
          study.run_dir(str(tmp_path), model, seed), 200, 'vsr_random_dev',
          common.Results({'accuracy': value / 50},
                         {'accuracy': vec(value)}), 0)
  loaded = study.load_outcomes(str(tmp_path))
  np.testing.assert_array_equal(loaded['rexvlm'][2][VSR][200], vec(32))
