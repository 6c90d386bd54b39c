"""How sure is a benchmark score, and is a difference between two real?

A skill's score at one checkpoint is the mean of per-example outcomes over
a finite benchmark set (``vlg.evaluators.common.Results``), so it is an
estimate. This module turns stored outcomes into:

- :func:`bootstrap_interval`: a percentile bootstrap confidence interval
  of the mean, resampling examples with replacement (seeded, so a report
  is reproducible);
- :func:`paired_bootstrap`: the difference of two means over the *same*
  examples (two checkpoints, two models) with its interval and a
  two-sided p-value, resampling examples jointly so the pairing is kept;
- :func:`mcnemar`: the exact McNemar test for two right-or-wrong outcome
  vectors on the same examples (a binomial test on the discordant pairs,
  ``scipy.stats.binomtest``);
- :func:`paired_test`: McNemar where both vectors are 0/1, else the
  paired bootstrap.

Resampling is over examples only: it says how much a score would move on
another draw of the benchmark, not how much another training seed would
move it (the study reports the seed spread beside it).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

NUM_RESAMPLES = 1000
LEVEL = 0.95


def _vector(values, name: str = 'values') -> np.ndarray:
  arr = np.asarray(values, np.float64).ravel()
  if not arr.size:
    raise ValueError(f'{name} is empty: no examples to resample')
  if not np.all(np.isfinite(arr)):
    raise ValueError(f'{name} holds non-finite outcomes')
  return arr


def _resample_indices(n: int, num_resamples: int, seed: int) -> np.ndarray:
  """[num_resamples, n] example indices drawn with replacement."""
  if num_resamples < 1:
    raise ValueError(f'num_resamples={num_resamples}: need at least 1')
  return np.random.default_rng(seed).integers(0, n, (num_resamples, n))


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
  if not 0.0 < level < 1.0:
    raise ValueError(f'level={level}: need 0 < level < 1')
  lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
  return float(lo), float(hi)


@dataclasses.dataclass(frozen=True)
class Interval:
  """A mean and its bootstrap confidence interval."""
  mean: float
  low: float
  high: float
  n: int


def bootstrap_interval(values, *, num_resamples: int = NUM_RESAMPLES,
                       level: float = LEVEL, seed: int = 0) -> Interval:
  """The percentile bootstrap interval of ``mean(values)``.

  Args:
    values: [n] per-example outcomes.
    num_resamples: bootstrap resamples of the n examples.
    level: the interval's coverage (0.95: the 2.5th and 97.5th
      percentiles of the resampled means).
    seed: the resampling seed.

  Raises:
    ValueError: no examples, a non-finite outcome or a bad setting.
  """
  x = _vector(values)
  means = x[_resample_indices(x.size, num_resamples, seed)].mean(axis=1)
  low, high = _percentiles(means, level)
  return Interval(float(x.mean()), low, high, int(x.size))


@dataclasses.dataclass(frozen=True)
class Comparison:
  """``b − a`` over the same examples, with a test of no difference."""
  a: float
  b: float
  difference: float
  low: float
  high: float
  p_value: float
  n: int
  test: str  # 'mcnemar' or 'paired_bootstrap'.

  @property
  def significant(self) -> bool:
    """p < 0.05."""
    return self.p_value < 0.05


def _paired(a, b) -> tuple[np.ndarray, np.ndarray]:
  a, b = _vector(a, 'a'), _vector(b, 'b')
  if a.shape != b.shape:
    raise ValueError(f'paired outcomes need the same examples: {a.size} '
                     f'against {b.size}; were they scored on the same '
                     'benchmark file?')
  return a, b


def paired_bootstrap(a, b, *, num_resamples: int = NUM_RESAMPLES,
                     level: float = LEVEL, seed: int = 0) -> Comparison:
  """``mean(b) − mean(a)`` with a paired bootstrap interval and p-value.

  Examples are resampled jointly (the same indices for both), so what two
  checkpoints share cancels. The two-sided p-value is twice the smaller
  share of resampled differences on either side of zero (with the
  observed difference counted once, so it is never 0), capped at 1; a
  difference that is zero on every example has p = 1.
  """
  a, b = _paired(a, b)
  d = b - a
  idx = _resample_indices(d.size, num_resamples, seed)
  diffs = d[idx].mean(axis=1)
  low, high = _percentiles(diffs, level)
  if not np.any(d):
    p = 1.0
  else:
    below = (np.sum(diffs <= 0) + 1) / (num_resamples + 1)
    above = (np.sum(diffs >= 0) + 1) / (num_resamples + 1)
    p = min(1.0, 2 * min(below, above))
  return Comparison(float(a.mean()), float(b.mean()), float(d.mean()),
                    low, high, float(p), int(d.size), 'paired_bootstrap')


def mcnemar(a, b) -> Comparison:
  """The exact McNemar test of two 0/1 outcome vectors on the same examples.

  With ``n01`` examples wrong in ``a`` and right in ``b`` and ``n10`` the
  reverse, the p-value is the two-sided binomial test of ``n01`` out of
  ``n01 + n10`` at 1/2 (1 when there are no discordant pairs). The interval
  is Wald's for a difference of paired proportions, clipped to [−1, 1].

  Raises:
    ValueError: an outcome is not 0 or 1, or the vectors differ in length.
  """
  a, b = _paired(a, b)
  if not (is_binary(a) and is_binary(b)):
    raise ValueError('McNemar needs right-or-wrong (0/1) outcomes; use '
                     'paired_bootstrap for other values')
  n = a.size
  n01 = int(np.sum((a == 0) & (b == 1)))
  n10 = int(np.sum((a == 1) & (b == 0)))
  diff = (n01 - n10) / n
  if n01 + n10 == 0:
    p = 1.0
  else:
    p = float(stats.binomtest(n01, n01 + n10, 0.5).pvalue)
  z = stats.norm.ppf(0.5 + LEVEL / 2)
  se = math.sqrt(max((n01 + n10) / n - diff ** 2, 0.0) / n)
  return Comparison(float(a.mean()), float(b.mean()), float(diff),
                    max(-1.0, diff - z * se), min(1.0, diff + z * se), p, n,
                    'mcnemar')


def is_binary(values) -> bool:
  """Whether every outcome is 0 or 1."""
  return bool(np.isin(np.asarray(values, np.float64), (0.0, 1.0)).all())


def paired_test(a, b, *, num_resamples: int = NUM_RESAMPLES,
                seed: int = 0) -> Comparison:
  """McNemar for two 0/1 vectors, the paired bootstrap otherwise."""
  if is_binary(a) and is_binary(b):
    return mcnemar(a, b)
  return paired_bootstrap(a, b, num_resamples=num_resamples, seed=seed)


def curve_intervals(outcomes_by_step, *, num_resamples: int = NUM_RESAMPLES,
                    level: float = LEVEL, seed: int = 0
                    ) -> dict[int, Interval]:
  """``{step: Interval}`` of one metric's stored outcomes (steps with no
  examples are left out). Every step is resampled with the same seed."""
  out = {}
  for step, values in sorted(outcomes_by_step.items()):
    if np.asarray(values).size:
      out[int(step)] = bootstrap_interval(values, num_resamples=num_resamples,
                                          level=level, seed=seed)
  return out
