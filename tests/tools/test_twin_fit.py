"""vlg.tools.twin_fit: ITM trained directly on contrast pairs."""

import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
from flax import nnx

from vlg import restore
from vlg.tools import twin_fit

from test_restore import load_on_one_device
from test_restore import trained_run

REPO = os.path.join(os.path.dirname(__file__), '..', '..')


def test_itm_rows_by_hand():
  ta, tb = np.full((2, 3, 4), 1.0), np.full((2, 3, 4), 2.0)
  ia, ib = np.array([[10], [11]]), np.array([[20], [21]])
  ma, mb = np.ones((2, 1)), np.zeros((2, 1))
  tokens, ids, mask, labels = twin_fit.itm_rows(ta, tb, ia, ma, ib, mb)
  np.testing.assert_array_equal(labels, [1, 1, 0, 0, 1, 1, 0, 0])
  np.testing.assert_array_equal(ids[:, 0], [10, 11, 20, 21, 20, 21, 10, 11])
  np.testing.assert_array_equal(tokens[:, 0, 0], [1, 1, 1, 1, 2, 2, 2, 2])
  np.testing.assert_array_equal(mask[:, 0], [1, 1, 0, 0, 0, 0, 1, 1])


def test_pair_loss_by_hand():
  """The loss is ITM's cross-entropy and the accuracy compares each
  image's own caption with its twin's."""

  class Fixed:  # Scores each row by its first text id.

    def embed_text(self, ids, mask):
      return {'text_embeds': ids}

    def fuse_cls(self, text, mask, tokens):
      return text

    def itm_logits(self, cls):
      return jax.numpy.stack([0 * cls[:, 0], cls[:, 0]], -1).astype(float)

  # Pair 0: own captions score 2 and 3, the twins' 1 and 1; pair 1:
  # own 0 and 0 against 1 and 0 (a tie is wrong).
  ids = np.array([[2], [0], [1], [1], [3], [0], [1], [0]])
  rows = (None, ids, None, np.array([1, 1, 0, 0, 1, 1, 0, 0]))
  loss, acc = twin_fit.pair_loss(Fixed(), rows)
  s = ids[:, 0].astype(float)
  want = np.where(rows[3] == 1, np.log1p(np.exp(-s)), np.log1p(np.exp(s)))
  assert float(loss) == pytest.approx(want.mean(), rel=1e-6)
  assert float(acc) == pytest.approx(2 / 4)


@pytest.mark.xdist_group('tiny_run')
def test_fresh_text_keeps_the_tower_and_fit_learns_training_pairs(
    tmp_path_factory, monkeypatch):
  # One device and no fast_compile: the 700 steps would be slow on eight
  # fake devices or in unoptimised code.
  workdir, _ = trained_run(tmp_path_factory)
  run = load_on_one_device(workdir)
  try:
    fresh = twin_fit.fresh_text_params(run, seed=3)
    jax.tree.map(np.testing.assert_array_equal,
                 jax.device_get(run.params['vision']),
                 jax.device_get(fresh['vision']))
    assert not np.allclose(jax.device_get(fresh['itm_head']['kernel']),
                           jax.device_get(run.params['itm_head']['kernel']))
    # ITM sits at ln 2 for some hundred steps before the fusion finds the
    # pairs apart (measured: ~300 steps at this size and lr).
    history = twin_fit.fit(run, pairs=8, steps=700, batch_size=8, lr=1e-3,
                           eval_every=350, twins=8, log=lambda _: None)
  finally:
    run.close()
  assert [h['step'] for h in history] == [0, 350, 700]
  assert history[0]['fit_pair_acc'] <= 0.6
  # The eight pairs learned: most images prefer their own caption.
  assert history[-1]['fit_pair_acc'] >= 0.8
  assert history[-1]['loss'] < 0.6
  for key in ('twin_itm_text', 'twin_itm_pair_acc', 'twin_num'):
    assert key in history[-1]
  run = load_on_one_device(workdir)
  try:
    # A NaN rate spoils the parameters at step 1, so step 2's loss is NaN.
    with pytest.raises(FloatingPointError, match='ITM loss nan at step 2'):
      twin_fit.fit(run, pairs=2, steps=3, batch_size=2, lr=float('nan'),
                   eval_every=3, twins=2, log=lambda _: None)
    # --fusion_posemb reaches the model the fit trains; the run's own
    # setting is left alone.
    seen = []
    real_init = twin_fit.TwinFit.__init__

    def spy(self, model, **kw):
      seen.append(model.fusion_posemb)
      real_init(self, model, **kw)
    monkeypatch.setattr(twin_fit.TwinFit, '__init__', spy)
    own = run.config.model.get('fusion_posemb', 'none')
    other = 'none' if own == 'sincos2d' else 'sincos2d'
    for value in (None, other):
      twin_fit.fit(run, pairs=2, steps=1, batch_size=2, eval_every=1,
                   twins=2, fusion_posemb=value, log=lambda _: None)
    assert seen == [own, other]
    assert nnx.merge(run.graphdef, run.params).fusion_posemb == own
    with pytest.raises(ValueError, match="fusion_posemb='sin'"):
      twin_fit.fit(run, pairs=2, steps=1, fusion_posemb='sin')
  finally:
    run.close()


def test_help_lists_flags():
  helped = subprocess.run(
      [sys.executable, '-m', 'vlg.tools.twin_fit', '--help'], cwd=REPO,
      capture_output=True, text=True, timeout=120)
  assert helped.returncode in (0, 1), helped.stderr  # absl's --help exits 1.
  assert 'fusion learn when asked directly' in helped.stdout
  for flag in ('--workdir', '--pairs', '--edits', '--reinit', '--eval_every',
               '--out'):
    assert flag in helped.stdout, flag


def test_run_fit_passes_flags_and_writes_json_lines(tmp_path, monkeypatch):
  """run_fit (shared with box_fit) hands the named flags to the fit,
  closes the run even when the fit fails, and writes one JSON line per
  evaluation with the run, its step and the label flags."""
  closed = []
  run = types.SimpleNamespace(workdir='/w', step=7,
                              close=lambda: closed.append(True))
  monkeypatch.setattr(restore, 'load_run', lambda workdir, step: run)
  value = lambda v: types.SimpleNamespace(value=v)  # noqa: E731
  out = tmp_path / 'fit.jsonl'
  store = {'workdir': value('/w'), 'step': value(None), 'out': value(str(out)),
           'steps': value(3), 'caption': value('longest')}
  seen = {}

  def fake_fit(r, **kw):
    seen.update(kw, run=r)
    return [{'step': 0, 'acc': 0.5}, {'step': 3, 'acc': 0.75}]

  twin_fit.run_fit(store, fake_fit, ('steps',), labels=('caption',))
  assert seen == {'steps': 3, 'run': run} and closed == [True]
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert rows == [
      {'workdir': '/w', 'ckpt_step': 7, 'caption': 'longest', 'step': 0,
       'acc': 0.5},
      {'workdir': '/w', 'ckpt_step': 7, 'caption': 'longest', 'step': 3,
       'acc': 0.75}]

  def failing_fit(r, **kw):
    raise RuntimeError('boom')

  with pytest.raises(RuntimeError, match='boom'):
    twin_fit.run_fit(store, failing_fit, ())
  assert closed == [True, True]


@pytest.mark.xdist_group('tiny_run')
def test_benchmark_scores_match_the_evaluators_and_fit_reports_them(
    tmp_path_factory):
  workdir, _ = trained_run(tmp_path_factory)
  run = load_on_one_device(workdir)
  try:
    with jax.set_mesh(run.mesh):
      # The unchanged model scores what the run's own evaluators score.
      scores = twin_fit.benchmark_scores(
          run, nnx.merge(run.graphdef, run.params))
      expected = {}
      for name, (evaluator, _) in restore.build_evaluators(
          run, run.config.evals).items():
        expected.update({f'{name}/{k}': v
                         for k, v in evaluator.run(run.params).items()})
    assert set(scores) == set(expected)
    for key, value in expected.items():
      assert scores[key] == pytest.approx(value), key
    assert scores['vsr_random_dev/chance/accuracy'] == 0.5
    with pytest.raises(ValueError, match='none of'):
      twin_fit.benchmark_scores(run, nnx.merge(run.graphdef, run.params),
                                names=('winoground',))
    lines = []
    history = twin_fit.fit(run, pairs=4, steps=2, batch_size=4, lr=1e-3,
                           eval_every=1, twins=4, benchmarks=True,
                           log=lines.append)
  finally:
    run.close()
  # Before and after the fit only, each with the sets' scores.
  assert ['vsr_random_dev/accuracy' in h for h in history] == [
      True, False, True]
  assert history[0]['vsr_random_dev/num_evaluated'] > 0
  # Compute spent: the tower over the pairs first, then equal steps.
  spent = [h['fit_tflop'] for h in history]
  assert spent[0] > 0 and spent[1] > spent[0]
  assert spent[2] - spent[1] == pytest.approx(spent[1] - spent[0])
  assert sum('benchmarks:' in line for line in lines) == 2
