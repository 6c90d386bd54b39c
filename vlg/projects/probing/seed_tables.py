"""Probing results over seeds and layers: mean ± std, layer curves, Tables 1-3.

The probe runner writes one row per (model, tap, regime, head, task, seed);
:func:`results_table` turns a split's rows into the paper's Tables 1-3 in
markdown (baselines first: chance and the mean-box Acc@0.5 of
``analysis.mean_box_correct``), :func:`layer_curves` into per-layer curves
for ``plots.plot_layer_curves``. Values are fractions; tables print
percentages (docs/probing.md §5).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from vlg.analysis import curves as curves_lib
from vlg.projects.probing.analysis import CHANCE
from vlg.projects.probing.analysis import TASK_COLUMNS
from vlg.projects.probing.analysis import mean_or_nan
from vlg.projects.probing.analysis import percent


@dataclasses.dataclass(frozen=True)
class MeanStd:
  """Mean and sample standard deviation (NaN for one seed) over ``n``."""
  mean: float
  std: float
  n: int

  def __str__(self) -> str:
    if self.n > 1:
      return f'{100 * self.mean:.2f} ± {100 * self.std:.2f}'
    return percent(self.mean)


def mean_std(values: Sequence[float]) -> MeanStd:
  """:class:`MeanStd` of seed results."""
  v = np.asarray(values, np.float64)
  return MeanStd(mean_or_nan(v), float(np.std(v, ddof=1)) if len(v) > 1
                 else math.nan, len(v))


_LAYER = re.compile(r':(-?\d+)$')


def _value(row: Mapping[str, Any]) -> float:
  value = row.get('value')
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      0 <= value <= 1):
    raise ValueError(f'row {dict(row)}: value must be a fraction in [0, 1] '
                     '(tables print percentages)')
  return float(value)


def _seeded(rows: Iterable[Mapping[str, Any]], key: Callable[[Any], tuple]
            ) -> dict[tuple, MeanStd]:
  values: dict[tuple, dict[Any, float]] = collections.defaultdict(dict)
  for row in rows:
    k, seed = key(row), row.get('seed', 0)
    if seed in values[k]:
      raise ValueError(f'row {dict(row)}: seed {seed} appears twice for '
                       f'{k}; pass one split and one result per seed')
    values[k][seed] = _value(row)
  return {k: mean_std(list(v.values())) for k, v in values.items()}


def _layer_of(row: Mapping[str, Any]) -> int:
  if row.get('layer') is not None:
    return int(row['layer'])
  match = _LAYER.search(str(row.get('tap', '')))
  if match is None:
    raise ValueError(f'row {dict(row)} has no layer and its tap has no :k')
  return int(match.group(1))


def layer_curves(rows: Iterable[Mapping[str, Any]]
                 ) -> dict[str, dict[int, MeanStd]]:
  """Per series, layer -> mean ± std over seeds.

  Args:
    rows: one per (series, layer, seed): ``task``, ``value`` (a fraction),
      ``seed``, and ``layer`` or a tap like ``resampler_layer:6``; the
      series is ``task model regime head tap-family`` (missing keys left
      out).
  """
  def key(row):
    family = _LAYER.sub('', str(row.get('tap', '')))
    label = ' '.join(str(row[k]) for k in ('task', 'model', 'regime', 'head')
                     if row.get(k) is not None)
    return (f'{label} {family}'.strip(), _layer_of(row))
  out: dict[str, dict[int, MeanStd]] = collections.defaultdict(dict)
  for (series, layer), stat in sorted(_seeded(rows, key).items()):
    out[series][layer] = stat
  return dict(out)


def results_table(rows: Iterable[Mapping[str, Any]],
                  mean_box_accuracy: float | None = None) -> str:
  """Tables 1-3 of the paper as markdown, mean ± std over seeds (%).

  Args:
    rows: one per (model, tap, regime, head, task, seed) of one split:
      ``model``, ``tap``, ``regime`` ('frozen'/'unfrozen'), ``head``,
      ``task`` (``refcocog``, ``vsr`` or ``rcm``), ``value`` (a fraction)
      and ``seed``.
    mean_box_accuracy: the mean-box Acc@0.5 on the same RefCOCOg split.

  Returns:
    Baseline rows (chance; mean box) then one row per (model, tap, regime,
    head) in first-seen order; a ``seeds`` column gives n per task.
  """
  rows = list(rows)
  tasks = [t for t, _ in TASK_COLUMNS]
  for row in rows:
    if row.get('task') not in tasks:
      raise ValueError(f'row {dict(row)}: task must be one of {tasks}')
  setting = ('model', 'tap', 'regime', 'head')
  stats = _seeded(rows, lambda r: tuple(str(r.get(k, '')) for k in setting)
                  + (r['task'],))
  header = [*setting, *(name for _, name in TASK_COLUMNS), 'seeds']
  table = [['chance', '–', '–', '–'] + [
      percent(CHANCE[t]) if t in CHANCE else '–' for t in tasks] + ['–']]
  if mean_box_accuracy is not None:
    table.append(['mean box (train)', '–', '–', '–',
                  percent(mean_box_accuracy), '–', '–', '–'])
  for s in dict.fromkeys(k[:-1] for k in stats):
    found = [stats.get((*s, t)) for t in tasks]
    table.append([*s, *(str(f) if f is not None else '–' for f in found),
                  '/'.join(str(f.n if f is not None else 0) for f in found)])
  return curves_lib.markdown_table(header, table)
