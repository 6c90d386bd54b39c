"""The retrieval-based selector and the peak timing, on hand-computed runs."""

import math

import pytest

from vlg.projects.study import results as study
from vlg.projects.study import selection

A, B = 'vsr_random_dev/accuracy', 'valse/acc_r'


def _run(a, b, tr=(0.2, 0.5, 0.4), ir=(0.2, 0.3, 0.5)):
  steps = (100, 200, 300)
  return {'retrieval/tr_r1': dict(zip(steps, tr)),
          'retrieval/ir_r1': dict(zip(steps, ir)),
          A: dict(zip(steps, a)), B: dict(zip(steps, b))}


def test_the_selector_keeps_the_best_retrieval_step_and_prices_each_skill():
  # Retrieval means 0.2, 0.4, 0.45: step 300 is kept. A peaks at 200
  # (0.70, kept 0.65: loses 0.05); B peaks at 300 (loses nothing); no step
  # is best for both.
  got = selection.run_selection(_run((0.6, 0.7, 0.65), (0.5, 0.5, 0.55)),
                                (A, B))
  assert got['step'] == 300
  assert got['skills'][A]['best_step'] == 200
  assert got['skills'][A]['loss'] == pytest.approx(0.05)
  assert got['skills'][B]['loss'] == 0
  assert not got['one_step_best']
  # Both peak at 300: one step is best for every skill.
  both = selection.run_selection(_run((0.6, 0.7, 0.75), (0.5, 0.5, 0.55)),
                                 (A, B))
  assert both['one_step_best'] and both['skills'][A]['loss'] == 0


def test_a_retrieval_tie_keeps_the_earliest_step():
  got = selection.run_selection(
      _run((0.6, 0.7, 0.65), (0.5, 0.5, 0.55), tr=(0.4, 0.4, 0.4),
           ir=(0.4, 0.4, 0.4)), (A,))
  assert got['step'] == 100
  assert got['skills'][A]['loss'] == pytest.approx(0.1)


def test_losses_over_seeds_and_runs_without_retrieval():
  runs = {'albef': {0: _run((0.6, 0.7, 0.65), (0.5, 0.5, 0.55)),
                    1: _run((0.6, 0.7, 0.75), (0.5, 0.5, 0.55))},
          'xvlm': {0: {A: {100: 0.5}}}}  # No retrieval: left out.
  got = selection.select(runs, (A, B))
  assert set(got) == {'albef'}
  loss = got['albef']['loss'][A]
  assert loss['values'] == pytest.approx([0.05, 0.0])
  assert loss['mean'] == pytest.approx(0.025)
  assert loss['std'] == pytest.approx(math.sqrt(2 * 0.025 ** 2))
  assert got['albef']['num_one_step_best'] == 1
  assert got['albef']['steps'] == {0: 300, 1: 300}


def test_peak_timing_is_the_median_best_step_as_a_fraction_of_the_run():
  runs = {'albef': {0: _run((0.6, 0.7, 0.65), (0.5, 0.5, 0.55))}}
  got = selection.peak_timing(runs, (A, B))
  # A at 200/300, B at 300/300: median 5/6.
  assert got['albef']['per_seed'][0] == pytest.approx(5 / 6)
  assert math.isnan(got['albef']['std'])


def test_the_study_judges_later_peaks_and_reports_the_selector():
  early = _run((0.7, 0.6, 0.6), (0.6, 0.5, 0.5))  # Both peak at 100.
  late = _run((0.6, 0.6, 0.7), (0.5, 0.5, 0.6))  # Both peak at 300.
  mid = _run((0.6, 0.7, 0.6), (0.5, 0.6, 0.5))  # Both peak at 200.
  runs = {'albef': {0: early, 1: mid}, 'realbef': {0: late, 1: late}}
  got = study.aggregate(runs)
  (row,) = got['later']
  assert (row['model'], row['baseline']) == ('realbef', 'albef')
  # Fractions: ALBEF 1/3 and 2/3 (mean 1/2, std sqrt(1/18)); ReALBEF 1, 1.
  assert row['margin'] == pytest.approx(0.5)
  assert row['two_std'] == pytest.approx(2 * math.sqrt(1 / 36))
  assert row['verdict'] == 'holds'
  text = study.results_markdown({**got, 'summary': study.summary_lines(got)})
  assert 'ReALBEF reaches its best later than ALBEF**: holds' in text
  assert '## The retrieval-selected checkpoint' in text
  assert '| ReALBEF | 300, 300 | 2 of 2 seeds |' in text
