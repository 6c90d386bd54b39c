"""Tests of the probe hyperparameter search (optuna TPE, then seeds)."""

import json

import numpy as np
import pytest

import probe_stub as stub  # tests/projects/probing/probe_stub.py, on sys.path
from vlg.projects.probing import hpo
from vlg.projects.probing import taps
from vlg.projects.probing import tasks
from vlg.projects.probing import train

optuna = pytest.importorskip(
    'optuna', reason='optuna is not installed (pinned in requirements.txt)')


def _fake_result(value, seed):
  return train.ProbeResult(
      metrics={'val/acc@0.5': value, 'test/acc@0.5': value / 2 + seed * 0.01,
               'epochs_run': 3.0},
      predictions={}, history=[], probe_params={}, encoder_params=None,
      cache_hits={})


def test_search_ranges_best_trial_log_and_seeds(tmp_path):
  calls = []

  def train_fn(hp):
    calls.append(hp)
    # Peaks at lr = 1e-4: the best trial is the one closest to it in log.
    return _fake_result(1 - abs(np.log10(hp.lr) + 4), hp.seed)

  path = str(tmp_path / 'metrics.jsonl')
  search = hpo.run_search(train_fn, train.HParams(head='linear'),
                          tasks.get_task('refcocog_box'), 'unfrozen',
                          cell='m/t', n_trials=4, seeds=(0, 1, 2),
                          metrics_path=path)
  trial_hps = calls[:4]
  for hp in trial_hps:
    assert 1e-5 <= hp.lr <= 5e-4 and hp.epochs in (20, 30, 40)
    assert hp.giou_weight in hpo.LOSS_WEIGHTS
    assert hp.l1_weight in hpo.LOSS_WEIGHTS
    assert 0.01 <= hp.lr_mult <= 1.0 and hp.head == 'linear'
  values = [1 - abs(np.log10(hp.lr) + 4) for hp in trial_hps]
  assert search.best_value == pytest.approx(max(values))
  assert search.best_params['lr'] == trial_hps[int(np.argmax(values))].lr
  # Seed 0 reuses the best trial; seeds 1 and 2 are two more runs.
  assert len(calls) == 6 and [hp.seed for hp in calls[4:]] == [1, 2]
  assert all(hp.lr == search.best_params['lr'] for hp in calls[4:])
  mean, std = search.summary['test/acc@0.5']
  seeds = [max(values) / 2 + s * 0.01 for s in (0, 1, 2)]
  assert mean == pytest.approx(np.mean(seeds))
  assert std == pytest.approx(np.std(seeds, ddof=1))
  with open(path) as f:
    lines = [json.loads(l) for l in f]
  assert [l['step'] for l in lines] == [0, 1, 2, 3]
  assert [l['hpo/m/t/value'] for l in lines] == pytest.approx(values)
  assert lines[0]['hpo/m/t/lr'] == trial_hps[0].lr


def test_vsr_space_has_no_loss_weights():
  trial = optuna.trial.FixedTrial({'lr': 1e-4, 'epochs': 5})
  assert hpo.suggest(trial, 'vsr', 'frozen') == {'lr': 1e-4, 'epochs': 5}
  with pytest.raises(ValueError, match='rcm'):
    hpo.suggest(trial, 'gqa', 'frozen')


def test_three_trial_smoke_run_on_a_frozen_probe(tmp_path, fast_compile):
  data = stub.splits(str(tmp_path / 'images'))['binary']
  encoder = stub.encoder()
  spec = taps.parse_spec('tap=resampler_queries,reduce=mean')
  task = tasks.get_task('vsr')
  cache = str(tmp_path / 'features')
  hits = []

  def train_fn(hp):
    result = train.train_probe(encoder, spec, task, data, stub.inputs(), hp,
                               cache_dir=cache)
    hits.append(all(result.cache_hits.values()))
    return result

  search = hpo.run_search(
      train_fn, train.HParams(batch_size=8, eval_batch_size=16),
      task, 'frozen', cell='stub', n_trials=3, epochs=(2,), seeds=(0, 1))
  assert len(search.trials) == 3 and len(search.seed_results) == 2
  assert hits == [False, True, True, True]  # Features extracted once.
  assert 0 <= search.summary['test/accuracy'][0] <= 1
  assert search.seed_results[1].metrics['epochs_run'] == 2
