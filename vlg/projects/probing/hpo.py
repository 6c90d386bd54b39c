"""Probe hyperparameter search: optuna TPE, then 3 seeds (docs/probing.md §2.6).

  search = hpo.run_search(lambda hp: train.train_probe(..., hp, ...),
                          train.HParams(head='linear'), task, 'frozen',
                          cell='albef/fused_cls/vsr/frozen/linear',
                          metrics_path=workdir + '/metrics.jsonl')
  search.summary['test/accuracy']  # MeanStd over the 3 seeds

The objective is the validation headline metric (maximised). The ranges
are the paper's Table 4 (§5):

| task | lr (log-uniform) | epochs | loss weights |
| --- | --- | --- | --- |
| refcocog_box | [1e-5, 5e-4] | {20, 30, 40} | GIoU, L1: {1, 2, 4, ..., 20} |
| vsr | [1e-5, 5e-4] | {3, 5, 10, 15, 20} | – |
| rcm | [1e-5, 5e-4] | {50, 100, 150} | – |

plus, in the unfrozen regime, the resampler's learning-rate multiplier,
log-uniform in [0.01, 1] (vlg's addition; the paper tuned one lr). Synthetic
runs may pass shorter ``epochs`` choices. TPE (``optuna.samplers.
TPESampler``, seeded) starts with ``startup_trials`` random trials (5 of the
default 10, so the second half is model-based; optuna's own default of 10
would make a 10-trial search purely random). Each trial is one line of
``metrics.jsonl`` (``step`` = trial number; ``hpo/<cell>/value`` and
``hpo/<cell>/<param>``). The best trial's settings are then trained with
each of ``seeds`` (the trial's own run is reused for its seed) and every
metric is summarised as mean ± sample std over the seeds.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vlg import writers
from vlg.projects.probing import tasks as tasks_lib
from vlg.projects.probing import train

LR_RANGE = (1e-5, 5e-4)
LR_MULT_RANGE = (0.01, 1.0)
EPOCHS: dict[str, tuple[int, ...]] = {
    'refcocog_box': (20, 30, 40), 'vsr': (3, 5, 10, 15, 20),
    'rcm': (50, 100, 150)}
LOSS_WEIGHTS = (1,) + tuple(2 * x for x in range(1, 11))
DEFAULT_TRIALS = 10
DEFAULT_SEEDS = (0, 1, 2)


def import_optuna():
  """Imports optuna, or fails with what to do."""
  try:
    import optuna  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('vlg.projects.probing.hpo needs optuna (pinned in '
                      'requirements.txt): pip install -r requirements.txt'
                      ) from e
  return optuna


def suggest(trial: Any, task: str, regime: str,
            epochs: Sequence[int] | None = None) -> dict[str, Any]:
  """Draws one trial's settings from the Table 4 ranges (module docstring)."""
  if task not in EPOCHS:
    raise ValueError(f'no search space for task {task!r}; valid: '
                     f'{list(EPOCHS)}')
  out = {'lr': trial.suggest_float('lr', *LR_RANGE, log=True),
         'epochs': trial.suggest_categorical(
             'epochs', list(epochs or EPOCHS[task]))}
  if task == 'refcocog_box':
    out['giou_weight'] = float(trial.suggest_categorical(
        'giou_weight', list(LOSS_WEIGHTS)))
    out['l1_weight'] = float(trial.suggest_categorical(
        'l1_weight', list(LOSS_WEIGHTS)))
  if regime == 'unfrozen':
    out['lr_mult'] = trial.suggest_float('lr_mult', *LR_MULT_RANGE, log=True)
  return out


@dataclasses.dataclass
class SearchResult:
  """The trials, the best settings and the seed re-runs of one cell."""
  best_params: dict[str, Any]
  best_value: float
  trials: list[dict[str, Any]]
  seed_results: dict[int, train.ProbeResult]
  summary: dict[str, tuple[float, float]]  # metric → (mean, sample std).


def summarise(results: Sequence[train.ProbeResult]
              ) -> dict[str, tuple[float, float]]:
  """Mean and sample standard deviation (NaN for one run) of each metric."""
  keys = sorted(set.intersection(*(set(r.metrics) for r in results)))
  out = {}
  for k in keys:
    v = np.asarray([r.metrics[k] for r in results], np.float64)
    out[k] = (float(v.mean()),
              float(v.std(ddof=1)) if len(v) > 1 else float('nan'))
  return out


def run_search(train_fn: Callable[[train.HParams], train.ProbeResult],
               base: train.HParams, task: tasks_lib.Task, regime: str, *,
               cell: str, n_trials: int = DEFAULT_TRIALS,
               startup_trials: int = 5, sampler_seed: int = 0,
               epochs: Sequence[int] | None = None,
               seeds: Sequence[int] = DEFAULT_SEEDS,
               metrics_path: str | None = None,
               log: Callable[[str], None] | None = None) -> SearchResult:
  """TPE search over the Table 4 ranges, then the best settings per seed.

  Args:
    train_fn: trains one probe with the given settings.
    base: settings not searched (head, batch size, patience, ...); its
      ``seed`` is the trials' seed.
    task: the task (its headline validation metric is maximised).
    regime: ``frozen`` or ``unfrozen`` (adds ``lr_mult``).
    cell: the name of the (model, tap, task, regime, head) cell, used in
      the ``metrics.jsonl`` keys.
    n_trials: trials (the paper ran at least 10).
    startup_trials: random trials before TPE models the results.
    sampler_seed: TPE's seed.
    epochs: epoch choices replacing Table 4's (short synthetic runs).
    seeds: seeds of the final runs of the best settings.
    metrics_path: ``metrics.jsonl`` to append the trials to; None: none.
    log: called with one line per trial.

  Returns:
    The :class:`SearchResult`.
  """
  optuna = import_optuna()
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  if n_trials < 1:
    raise ValueError(f'n_trials={n_trials}; need at least 1')
  sampler = optuna.samplers.TPESampler(
      seed=sampler_seed, n_startup_trials=min(startup_trials, n_trials))
  study = optuna.create_study(direction='maximize', sampler=sampler)
  key = f'val/{task.headline}'
  best: dict[str, Any] = {'value': -np.inf, 'result': None}
  writer = writers.JsonlWriter(metrics_path) if metrics_path else None
  trials = []

  def objective(trial):
    params = suggest(trial, task.name, regime, epochs)
    result = train_fn(dataclasses.replace(base, **params))
    value = float(result.metrics[key])
    if np.isnan(value):
      value = -np.inf  # A diverged trial ranks last instead of failing.
    if value > best['value']:
      best.update(value=value, result=result)
    record = {'number': trial.number, 'value': value, 'params': params,
              'epochs_run': result.metrics.get('epochs_run')}
    trials.append(record)
    if writer is not None:
      writer.write_scalars(trial.number, {
          f'hpo/{cell}/value': value,
          f'hpo/{cell}/epochs_run': record['epochs_run'],
          **{f'hpo/{cell}/{k}': v for k, v in params.items()}})
      writer.flush()
    if log is not None:
      log(f'{cell} trial {trial.number}: {key} {value:.4f} {params}')
    return value

  try:
    study.optimize(objective, n_trials=n_trials)
  finally:
    if writer is not None:
      writer.close()
  best_params = dict(study.best_trial.params)
  best_params = suggest(optuna.trial.FixedTrial(best_params), task.name,
                        regime, epochs)
  seed_results = {}
  for seed in seeds:
    if seed == base.seed and best['result'] is not None:
      seed_results[seed] = best['result']
    else:
      seed_results[seed] = train_fn(dataclasses.replace(
          base, **best_params, seed=seed))
  logging.info('%s: best %s = %.4f with %s', cell, key, study.best_value,
               best_params)
  return SearchResult(best_params=best_params,
                      best_value=float(study.best_value), trials=trials,
                      seed_results=seed_results,
                      summary=summarise(list(seed_results.values())))
