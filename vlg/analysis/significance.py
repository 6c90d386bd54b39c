"""Is a benchmark score above chance by more than sampling noise?

A score on a finite benchmark set is an estimate. For a metric that is a
share of ``n`` examples each scored right or wrong (accuracy, a Winoground
score, R@k of ``n`` queries), a model at chance level ``p`` scores
``p ± sqrt(p (1 − p) / n)`` (one binomial standard deviation). This module
reads the ``<eval>/<metric>`` values the evaluators log beside their
``<eval>/chance/<metric>`` and ``<eval>/num_evaluated`` (retrieval's image
queries; ``num_texts`` for its text queries) and says, per metric, how many
of those standard deviations the score lies above chance.

AUROC and precision metrics are not shares of examples scored against a
chance level, so they are left out. The test is one-sided and per metric:
with many metrics, some will pass 2 SD by chance; 3 SD (p ≈ 0.0013 each)
is the bar ``vlg.tools.skills`` uses.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

# Metrics with a logged chance level that are not binomial shares (r_mean
# averages six recalls).
NOT_BINOMIAL = ('auroc', 'precision', 'r_mean')


@dataclasses.dataclass(frozen=True)
class AboveChance:
  """One metric's distance from chance in binomial standard deviations."""
  name: str
  value: float
  chance: float
  n: int
  z: float

  @property
  def sd(self) -> float:
    return math.sqrt(self.chance * (1 - self.chance) / self.n)


def binomial_z(value: float, chance: float, n: int) -> float:
  """``(value − chance) / sqrt(chance (1 − chance) / n)``.

  Raises:
    ValueError: ``n < 1`` or ``chance`` not in (0, 1).
  """
  if n < 1:
    raise ValueError(f'n={n}: need at least one example')
  if not 0.0 < chance < 1.0:
    raise ValueError(f'chance={chance}: need 0 < chance < 1')
  return (value - chance) / math.sqrt(chance * (1 - chance) / n)


def _count(metrics: Mapping[str, float], benchmark: str,
           metric: str) -> int | None:
  """Examples behind ``benchmark/metric``: text queries for a retrieval
  metric over texts (``ir_*``: image retrieval, one query per text),
  otherwise ``num_evaluated``."""
  if metric.startswith('ir_') and f'{benchmark}/num_texts' in metrics:
    return int(metrics[f'{benchmark}/num_texts'])
  n = metrics.get(f'{benchmark}/num_evaluated')
  return None if n is None else int(n)


def above_chance(metrics: Mapping[str, float]) -> list[AboveChance]:
  """Every binomial metric of ``metrics`` (one step's ``<eval>/<metric>``
  values) with its chance level and count, most significant first."""
  rows = []
  for key, chance in metrics.items():
    benchmark, sep, metric = key.partition('/chance/')
    if not sep or any(t in metric for t in NOT_BINOMIAL):
      continue
    name = f'{benchmark}/{metric}'
    n = _count(metrics, benchmark, metric)
    if name not in metrics or not n or not 0 < float(chance) < 1:
      continue
    value = float(metrics[name])
    rows.append(AboveChance(name, value, float(chance), n,
                            binomial_z(value, float(chance), n)))
  return sorted(rows, key=lambda r: -r.z)


def best_per_benchmark(rows: list[AboveChance]) -> dict[str, AboveChance]:
  """The metric furthest above chance of each benchmark (``<eval>``)."""
  best: dict[str, AboveChance] = {}
  for row in rows:
    bench = row.name.split('/')[0]
    if bench not in best or row.z > best[bench].z:
      best[bench] = row
  return best
