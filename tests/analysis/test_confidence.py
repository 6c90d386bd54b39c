"""vlg.analysis.confidence on cases worked out by hand."""

import numpy as np
import pytest

from vlg.analysis import confidence
from vlg.evaluators import common


def test_mcnemar_exact_p_value_of_a_hand_table():
  # 20 examples: 6 right in both, 4 wrong in both, 9 wrong in a and right in
  # b, 1 the reverse. Exact McNemar: 2 · P(X <= 1), X ~ Bin(10, 1/2)
  # = 2 · (1 + 10) / 1024.
  a = np.array([1] * 6 + [0] * 4 + [0] * 9 + [1])
  b = np.array([1] * 6 + [0] * 4 + [1] * 9 + [0])
  c = confidence.mcnemar(a, b)
  assert c.p_value == pytest.approx(22 / 1024, rel=1e-12)
  assert c.difference == pytest.approx(8 / 20)
  assert (c.a, c.b, c.n, c.test) == (0.35, 0.75, 20, 'mcnemar')
  assert c.significant
  # Wald interval of a paired difference: var = ((n01+n10)/n − d²) / n.
  se = np.sqrt((10 / 20 - 0.16) / 20)
  assert c.low == pytest.approx(0.4 - 1.959963984540054 * se)
  assert c.high == pytest.approx(0.4 + 1.959963984540054 * se)
  # Swapping the sides flips the sign, not the p-value.
  r = confidence.mcnemar(b, a)
  assert r.difference == pytest.approx(-0.4)
  assert r.p_value == c.p_value
  # No discordant example: nothing to tell the two apart.
  same = confidence.mcnemar(a, a)
  assert same.p_value == 1.0 and same.difference == 0.0
  assert not same.significant


def test_mcnemar_and_pairing_reject_bad_input():
  with pytest.raises(ValueError, match='0/1'):
    confidence.mcnemar([0.5, 1.0], [1.0, 0.0])
  with pytest.raises(ValueError, match='same examples'):
    confidence.paired_bootstrap([1, 0, 1], [1, 0])
  with pytest.raises(ValueError, match='empty'):
    confidence.bootstrap_interval([])
  with pytest.raises(ValueError, match='non-finite'):
    confidence.bootstrap_interval([1.0, float('nan')])
  with pytest.raises(ValueError, match='level'):
    confidence.bootstrap_interval([1.0, 0.0], level=1.0)


def test_bootstrap_interval_hand_cases():
  # A constant has no spread.
  i = confidence.bootstrap_interval([0.7] * 30)
  assert (i.mean, i.low, i.high, i.n) == (pytest.approx(0.7),
                                          pytest.approx(0.7),
                                          pytest.approx(0.7), 30)
  # Two examples, 0 and 1: a resample's mean is 0, 0.5 or 1 with chances
  # 1/4, 1/2, 1/4, so the 2.5th and 97.5th percentiles are 0 and 1.
  i = confidence.bootstrap_interval([0, 1])
  assert (i.low, i.high) == (0.0, 1.0)
  # 400 coin flips at 1/2: about ±1.96 · sqrt(0.25 / 400) = ±0.049.
  x = np.array([0, 1] * 200)
  i = confidence.bootstrap_interval(x, num_resamples=4000)
  assert i.high - i.low == pytest.approx(2 * 0.049, rel=0.15)
  assert i.low < 0.5 < i.high
  # Seeded: the same call gives the same interval; another seed moves it.
  assert confidence.bootstrap_interval(x, seed=3) == (
      confidence.bootstrap_interval(x, seed=3))


def test_paired_bootstrap_keeps_the_pairing():
  rng = np.random.default_rng(0)
  a = rng.uniform(size=200)
  # b is a plus 0.01 on every example: unpaired, the spread of a (≈0.02 per
  # mean) would hide it; paired, every resample's difference is 0.01.
  c = confidence.paired_bootstrap(a, a + 0.01, num_resamples=500)
  assert c.difference == pytest.approx(0.01)
  assert (c.low, c.high) == (pytest.approx(0.01), pytest.approx(0.01))
  assert c.p_value == pytest.approx(2 / 501)  # The smallest it can be.
  assert c.test == 'paired_bootstrap'
  same = confidence.paired_bootstrap(a, a)
  assert same.p_value == 1.0 and same.difference == 0.0
  # Noise around no difference: not significant.
  noise = rng.normal(0, 0.1, size=200)
  c = confidence.paired_bootstrap(a, a + noise - noise.mean())
  assert c.p_value > 0.5 and c.low < 0 < c.high


def test_paired_test_picks_the_test_by_outcome_type():
  assert confidence.paired_test([1, 0, 1], [1, 1, 1]).test == 'mcnemar'
  assert confidence.paired_test([0.2, 0.4], [0.3, 0.5]).test == (
      'paired_bootstrap')


def test_curve_intervals_per_step():
  by_step = {300: np.array([1.0, 1.0]), 100: np.array([0.0, 1.0]),
             200: np.zeros(0)}
  got = confidence.curve_intervals(by_step)
  assert sorted(got) == [100, 300]
  assert (got[100].low, got[100].high) == (0.0, 1.0)
  assert got[300].mean == 1.0


def test_results_carry_outcomes_that_average_to_the_metric():
  r = common.Results({'acc': 0.5, 'num_evaluated': 4.0},
                     {'acc': [True, False, True, False]})
  assert r == {'acc': 0.5, 'num_evaluated': 4.0}
  np.testing.assert_array_equal(r.outcomes['acc'], [1.0, 0.0, 1.0, 0.0])
  with pytest.raises(ValueError, match='average 0.75, the metric is 0.5'):
    common.Results({'acc': 0.5}, {'acc': [1, 1, 1, 0]})
  with pytest.raises(ValueError, match='not a metric'):
    common.Results({'acc': 0.5}, {'other': [1, 0]})
