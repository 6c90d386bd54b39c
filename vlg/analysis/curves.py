"""Learning-curve analysis: best steps, drops, checkpoint selection, plots.

Pure functions over metric curves ``{name: {step: value}}`` as
``vlg.writers.metric_curves`` reads them from ``metrics.jsonl``:

- :func:`skill_names`: the evaluation metrics (``<eval>/<metric>``), without
  training metrics, counts (``num_*``), timings (``seconds``), skip flags
  (``skipped``) and chance levels (``<eval>/chance/<metric>``);
- :func:`summarize`: per skill the best step and value (higher is better;
  the earliest step wins a tie), the final value and the drop from best;
- :func:`selection_table`: the checkpoint selection of Bugliarello et
  al. (docs/benchmarks.md §11): for each Dev metric (a selector), the gain
  of every task at the selector's best checkpoint over the last
  checkpoint;
- :func:`plot_curves`: a panel per benchmark or piece (the name without its
  last component), every run a line with a legend entry, an optional
  shaded band (a confidence interval) around it, and the chance level as
  a dashed line where the metrics carry one.

Values logged as strings (``'nan'``, as the JSONL writer keeps non-finite
numbers) or non-numbers are left out of the curves.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

Curves = Mapping[str, Mapping[int, Any]]
# {metric: {step: (low, high)}}: an interval around each point of a curve.
Bands = Mapping[str, Mapping[int, tuple[float, float]]]

DEV_TOKENS = ('dev', 'val', 'validation')
_TOKEN_SPLIT = re.compile(r'[/_\-. ]+')


def numeric(curve: Mapping[int, Any]) -> dict[int, float]:
  """``{step: float}`` keeping only finite numbers, steps ascending."""
  out = {}
  for step, value in sorted(curve.items(), key=lambda kv: int(kv[0])):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    if math.isfinite(value):
      out[int(step)] = float(value)
  return out


def is_skill(name: str) -> bool:
  """Whether ``name`` is an evaluation metric (not a count, time, skip flag
  or chance level)."""
  parts = name.split('/')
  if len(parts) < 2 or parts[0] == 'train':
    return False
  if 'chance' in parts[1:]:
    return False
  leaf = parts[-1]
  return not (leaf in ('seconds', 'skipped') or leaf.startswith('num_'))


def skill_names(curves: Curves) -> list[str]:
  """Sorted evaluation-metric names with at least one numeric value."""
  return sorted(n for n, c in curves.items() if is_skill(n) and numeric(c))


def is_dev(name: str) -> bool:
  """A Dev metric: a token of the name is ``dev``/``val``/``validation``.

  Tokens are split at ``/ _ - .``, so ``vsr_random_dev/accuracy`` and
  ``coco_val/tr@1`` are Dev metrics and ``valse/acc_r`` is not.
  """
  return any(t.lower() in DEV_TOKENS for t in _TOKEN_SPLIT.split(name))


def is_headline(name: str) -> bool:
  """``<eval>/<metric>``: a benchmark's own number, not a breakdown."""
  return name.count('/') == 1


def chance_value(curves: Curves, name: str) -> float | None:
  """The chance level logged for ``name``, or None if there is none.

  Looks for ``<eval>/chance/<metric>`` (the metric path after the eval
  name), then ``<eval>/chance/<last component>`` and ``<eval>/chance``;
  the latest logged value is used.
  """
  head, _, rest = name.partition('/')
  leaf = name.rsplit('/', 1)[-1]
  for key in (f'{head}/chance/{rest}', f'{head}/chance/{leaf}',
              f'{head}/chance'):
    values = numeric(curves.get(key, {}))
    if values:
      return values[max(values)]
  return None


def best_step(curve: Mapping[int, Any]) -> tuple[int, float]:
  """(step, value) of the highest value; the earliest step wins a tie.

  Raises:
    ValueError: the curve has no numeric value.
  """
  values = numeric(curve)
  if not values:
    raise ValueError('curve has no numeric values')
  step = max(values, key=lambda s: (values[s], -s))
  return step, values[step]


@dataclasses.dataclass(frozen=True)
class SkillSummary:
  """Where a skill peaked and how far the final checkpoint is below it."""
  name: str
  best_step: int
  best_value: float
  final_step: int
  final_value: float

  @property
  def drop(self) -> float:
    """best - final (>= 0): how much choosing the last checkpoint costs."""
    return self.best_value - self.final_value


def summarize(curves: Curves,
              names: Sequence[str] | None = None) -> list[SkillSummary]:
  """A :class:`SkillSummary` per skill (``names`` or :func:`skill_names`)."""
  out = []
  for name in skill_names(curves) if names is None else names:
    values = numeric(curves.get(name, {}))
    if not values:
      continue
    step, value = best_step(values)
    final = max(values)
    out.append(SkillSummary(name, step, value, final, values[final]))
  return out


def selection_table(curves: Curves, selectors: Sequence[str] | None = None,
                    tasks: Sequence[str] | None = None
                    ) -> dict[str, dict[str, float]]:
  """``{selector: {task: gain}}``, gain = task(best of selector) - task(last).

  Args:
    curves: one run's curves.
    selectors: Dev metrics to select checkpoints with; default: the
      headline skills that :func:`is_dev`.
    tasks: metrics to compare; default: the headline skills that are not
      selectors.

  Returns:
    For each selector with a numeric curve, for each task: the task's value
    at the selector's best step minus its value at its last evaluated step
    (NaN where the task was not evaluated at that step).
  """
  skills = [n for n in skill_names(curves) if is_headline(n)]
  if selectors is None:
    selectors = [n for n in skills if is_dev(n)]
  if tasks is None:
    tasks = [n for n in skills if n not in selectors]
  table = {}
  for selector in selectors:
    sel = numeric(curves.get(selector, {}))
    if not sel:
      continue
    chosen, _ = best_step(sel)
    row = {}
    for task in tasks:
      values = numeric(curves.get(task, {}))
      if chosen in values:
        row[task] = values[chosen] - values[max(values)]
      else:
        row[task] = float('nan')
    table[selector] = row
  return table


def markdown_table(header: Sequence[str],
                   rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub markdown table; floats with 4 decimals, NaN as a dash."""
  def cell(v):
    if isinstance(v, float):
      return '—' if math.isnan(v) else f'{v:.4f}'
    return str(v)
  lines = ['| ' + ' | '.join(header) + ' |',
           '| ' + ' | '.join('---' for _ in header) + ' |']
  lines += ['| ' + ' | '.join(cell(v) for v in r) + ' |' for r in rows]
  return '\n'.join(lines)


def summary_markdown(summaries: Mapping[str, Sequence[SkillSummary]]) -> str:
  """Per run and skill: best step and value, final value, drop from best."""
  rows = [(run, s.name, s.best_step, s.best_value, s.final_step,
           s.final_value, s.drop)
          for run, items in summaries.items() for s in items]
  return markdown_table(('run', 'skill', 'best step', 'best', 'final step',
                         'final', 'drop'), rows)


def selection_markdown(table: Mapping[str, Mapping[str, float]]) -> str:
  """The selection table: a row per selector, a column per task."""
  tasks = sorted({t for row in table.values() for t in row})
  return markdown_table(['selector'] + tasks,
                        [[s] + [row.get(t, float('nan')) for t in tasks]
                         for s, row in table.items()])


def panel_of(name: str) -> str:
  """The panel a metric is drawn in: its name without the last component."""
  return name.rsplit('/', 1)[0]


def plot_curves(runs: Mapping[str, Curves],
                names: Sequence[str] | None = None, *,
                columns: int = 3,
                bands: Mapping[str, Bands] | None = None) -> Figure:
  """Curves of several runs, a panel per benchmark or piece.

  Args:
    runs: ``{run label: curves}``.
    names: the metrics to draw; default: every skill of any run.
    columns: panels per row.
    bands: ``{run label: {metric: {step: (low, high)}}}``, e.g. bootstrap
      95% intervals over examples (``vlg.analysis.confidence``), shaded
      around the run's line in its colour.

  Returns:
    A matplotlib ``Figure`` (no pyplot state; ``fig.savefig(path)``
    renders it with Agg).
  """
  if names is None:
    names = sorted({n for c in runs.values() for n in skill_names(c)})
  panels: dict[str, list[str]] = {}
  for name in names:
    panels.setdefault(panel_of(name), []).append(name)
  n = max(len(panels), 1)
  cols = min(columns, n)
  rows = -(-n // cols)
  fig = Figure(figsize=(5 * cols, 3.4 * rows), layout='constrained')
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  colors = [f'C{i % 10}' for i in range(len(runs))]
  for ax, (panel, metrics) in zip(axes, sorted(panels.items())):
    chances = set()
    for color, (label, curves) in zip(colors, runs.items()):
      for j, name in enumerate(metrics):
        values = numeric(curves.get(name, {}))
        if not values:
          continue
        leaf = name.rsplit('/', 1)[-1]
        ax.plot(list(values), list(values.values()), color=color,
                linestyle=('-', '--', ':', '-.')[j % 4],
                marker='osD^vx'[j // 4 % 6], markersize=3,
                label=f'{label}: {leaf}' if len(runs) > 1 else leaf)
        band = (bands or {}).get(label, {}).get(name, {})
        steps = [s for s in values if s in band]
        if steps:
          ax.fill_between(steps, [band[s][0] for s in steps],
                          [band[s][1] for s in steps], color=color,
                          alpha=0.15, linewidth=0)
        chance = chance_value(curves, name)
        if chance is not None:
          chances.add(chance)
    for value in sorted(chances):
      ax.axhline(value, color='gray', linestyle='--', linewidth=1,
                 label=f'chance {value:g}')
    ax.set_title(panel, fontsize='medium')
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    ax.legend(fontsize='x-small')
  for ax in axes[len(panels):]:
    ax.set_visible(False)
  return fig
