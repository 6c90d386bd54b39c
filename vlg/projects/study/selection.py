"""Which checkpoint a retrieval-based selector keeps, what each skill loses
there, and when each model reaches its best.

Pretraining codebases keep the checkpoint that retrieves best on COCO; the
seed paper found such a checkpoint good for coarse tasks while the
fine-grained skills peak elsewhere, and the relation models peak later.
Both are read here from a study's curves, run by run:

- :func:`select`: in each run (model, seed) the selector keeps the evaluated
  step with the highest mean of the synthetic COCO-style retrieval TR@1 and
  IR@1 (:data:`SELECTOR`; the earliest on a tie); each fine-grained skill's
  loss there is its best value over that run's evaluated steps minus its
  value at the kept step (0 where the kept step is its best). Whether some
  single step is best for every fine-grained skill is read per run.
- :func:`peak_timing`: each run's best step per skill as a fraction of the
  run's last step (families train for different steps at equal compute,
  so steps alone do not compare), summarised per run by the median over
  skills; the seeds give its spread.

Statistics over seeds are ``{mean, std, n, values}`` (sample std, ddof 1),
as ``vlg.projects.study.results`` uses for every other number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vlg.analysis import curves as curves_lib

SELECTOR = ('retrieval/tr_r1', 'retrieval/ir_r1')

Curves = Mapping[str, Mapping[int, Any]]


def seed_stats(values: Sequence[float]) -> dict[str, Any]:
  """``{mean, std, n, values}``; std (ddof 1) is NaN below two values."""
  v = np.asarray(list(values), np.float64)
  mean = float(v.mean()) if v.size else math.nan
  std = float(v.std(ddof=1)) if v.size > 1 else math.nan
  return dict(mean=mean, std=std, n=int(v.size), values=[float(x) for x in v])


def run_selection(curves: Curves, skills: Sequence[str],
                  selector: Sequence[str] = SELECTOR) -> dict[str, Any] | None:
  """The selector's step in one run and each skill's loss there.

  Returns:
    None if no step logged every selector metric; else ``{step, skills:
    {key: {selected, best, best_step, loss}}, one_step_best}``, where
    ``one_step_best`` says whether some evaluated step is best (within
    1e-9) for every skill scored at all of the run's evaluated steps.
  """
  sel_curves = [curves_lib.numeric(curves.get(k, {})) for k in selector]
  steps = sorted(set.intersection(*(set(c) for c in sel_curves)))
  if not steps:
    return None
  score = {s: float(np.mean([c[s] for c in sel_curves])) for s in steps}
  step, _ = curves_lib.best_step(score)
  out, bests = {}, {}
  for key in skills:
    curve = curves_lib.numeric(curves.get(key, {}))
    if step not in curve:
      continue
    best_step, best = curves_lib.best_step(curve)
    out[key] = dict(selected=curve[step], best=best, best_step=best_step,
                    loss=best - curve[step])
    bests[key] = curve
  common = (set.intersection(*(set(c) for c in bests.values()))
            if bests else set())
  one_step_best = any(
      all(c[s] >= out[k]['best'] - 1e-9 for k, c in bests.items())
      for s in common)
  return dict(step=step, skills=out, one_step_best=bool(one_step_best))


def select(runs: Mapping[str, Mapping[int, Curves]],
           skills: Sequence[str]) -> dict[str, Any]:
  """Per model: each seed's :func:`run_selection`, each skill's loss over
  seeds (:func:`seed_stats`), and how many seeds have one step best for
  every skill. Models without the selector's metrics are left out."""
  out = {}
  for model, seeds in runs.items():
    per_seed = {seed: run_selection(c, skills) for seed, c in seeds.items()}
    per_seed = {s: r for s, r in sorted(per_seed.items()) if r is not None}
    if not per_seed:
      continue
    keys = [k for k in skills
            if all(k in r['skills'] for r in per_seed.values())]
    out[model] = dict(
        steps={s: r['step'] for s, r in per_seed.items()},
        loss={k: seed_stats([r['skills'][k]['loss']
                             for r in per_seed.values()]) for k in keys},
        num_one_step_best=sum(r['one_step_best'] for r in per_seed.values()),
        num_seeds=len(per_seed))
  return out


def peak_timing(runs: Mapping[str, Mapping[int, Curves]],
                skills: Sequence[str]) -> dict[str, Any]:
  """Per model: each seed's median over skills of (best step / last
  evaluated step), and those medians' :func:`seed_stats`."""
  out = {}
  for model, seeds in runs.items():
    medians = {}
    for seed, curves in sorted(seeds.items()):
      fractions = []
      for key in skills:
        curve = curves_lib.numeric(curves.get(key, {}))
        if len(curve) >= 2:
          fractions.append(curves_lib.best_step(curve)[0] / max(curve))
      if fractions:
        medians[seed] = float(np.median(fractions))
    if medians:
      out[model] = dict(per_seed=medians, **seed_stats(medians.values()))
  return out


def markdown(selection: Mapping[str, Any], labels: Mapping[str, str],
             names: Mapping[str, str]) -> list[str]:
  """The selector's table: kept steps per seed and each skill's mean loss
  in points (± seed std)."""
  if not selection:
    return []
  keys = [k for k in next(iter(selection.values()))['loss']]
  keys = [k for k in keys if all(k in s['loss'] for s in selection.values())]
  head = ['model', 'kept step per seed', 'one step best for all'] + [
      labels.get(k, k) for k in keys]
  lines = ['| ' + ' | '.join(head) + ' |',
           '| ' + ' | '.join('---' for _ in head) + ' |']
  for model, s in selection.items():
    cells = [names.get(model, model),
             ', '.join(str(st) for st in s['steps'].values()),
             f'{s["num_one_step_best"]} of {s["num_seeds"]} seeds']
    for k in keys:
      st = s['loss'][k]
      spread = '' if math.isnan(st['std']) else f' ± {100 * st["std"]:.1f}'
      cells.append(f'{100 * st["mean"]:.1f}{spread}')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return lines
