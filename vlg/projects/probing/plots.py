"""Plots of the probing analyses (:mod:`vlg.projects.probing.analysis`).

matplotlib ``Figure`` objects without pyplot state, so they work in tools,
tests and colabs alike: ``fig.savefig('x.png')`` renders them with Agg.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from vlg.projects.probing.analysis import GroupStat
from vlg.projects.probing.analysis import RcmConfusion
from vlg.projects.probing.seed_tables import MeanStd



def plot_rcm_confusion(confusion: RcmConfusion,
                       cell_names: Sequence[str] | None = None) -> Figure:
  """Accuracy by claimed and by true cell (3 x 3 image grid) and the 9 x 9
  match-rate map (rows true, columns claimed)."""
  names = list(cell_names) if cell_names else [str(i) for i in range(9)]
  fig = Figure(figsize=(14, 4.6), layout='constrained')
  axes = fig.subplots(1, 3, width_ratios=(1, 1, 1.6))
  panels = [(confusion.grid('claimed'), 'accuracy by claimed cell'),
            (confusion.grid('true'), 'accuracy by true cell'),
            (confusion.match_rate(), 'P(says match): true x claimed')]
  for ax, (values, title) in zip(axes, panels):
    image = ax.imshow(values, vmin=0, vmax=1, cmap='viridis')
    for (r, c), v in np.ndenumerate(values):
      ax.text(c, r, '' if math.isnan(v) else f'{v:.2f}', ha='center',
              va='center', color='w', fontsize='x-small')
    ax.set_title(title + ' (chance 0.5)' * (ax is not axes[2]),
                 fontsize='medium')
    ax.set_xticks([])
    ax.set_yticks([])
  axes[2].set_xticks(range(9), names, rotation=60, fontsize='x-small')
  axes[2].set_yticks(range(9), names, fontsize='x-small')
  fig.colorbar(image, ax=axes.tolist(), shrink=0.8)
  return fig


def plot_group_accuracy(runs: Mapping[str, Mapping[str, GroupStat]],
                        title: str = '') -> Figure:
  """Bars per group, one colour per run; the baseline as a dashed tick."""
  groups = list(dict.fromkeys(g for s in runs.values() for g in s))
  first = {g: next(s[g] for s in runs.values() if g in s) for g in groups}
  fig = Figure(figsize=(max(6, 0.8 * len(groups) * len(runs)), 4),
               layout='constrained')
  ax = fig.subplots()
  width, x = 0.8 / len(runs), np.arange(len(groups))
  for j, (label, stats) in enumerate(runs.items()):
    ax.bar(x + j * width, [stats[g].accuracy if g in stats else np.nan
                           for g in groups], width, label=label)
  ax.hlines([first[g].baseline for g in groups], x - width / 2,
            x + width * (len(runs) - 0.5), color='k', linestyle='--',
            label='baseline')
  ax.set_xticks(x + width * (len(runs) - 1) / 2, [
      f'{g}\n(n={first[g].count})' for g in groups], rotation=45, ha='right')
  ax.set(ylim=(0, 1), ylabel='accuracy', title=title)
  ax.legend(fontsize='small')
  return fig


def plot_layer_curves(curves: Mapping[str, Mapping[int, MeanStd]],
                      baselines: Mapping[str, float] | None = None) -> Figure:
  """One line per series with a ±std band; dashed lines for baselines."""
  fig = Figure(figsize=(7, 4), layout='constrained')
  ax = fig.subplots()
  for label, curve in curves.items():
    layers = sorted(curve)
    mean = np.array([curve[k].mean for k in layers])
    std = np.nan_to_num(np.array([curve[k].std for k in layers]))
    ax.plot(layers, mean, marker='o', markersize=3, label=label)
    ax.fill_between(layers, mean - std, mean + std, alpha=0.2)
  for name, value in (baselines or {}).items():
    ax.axhline(value, color='gray', linestyle='--', linewidth=1,
               label=f'{name} {value:g}')
  ax.set(xlabel='layer', ylabel='metric')
  ax.grid(alpha=0.3)
  ax.legend(fontsize='x-small')
  return fig
