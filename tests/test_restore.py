"""vlg.restore: a run restored onto other meshes scores as in training.

:func:`trained_run` trains one tiny run per test session (on a 2x2x2 mesh,
parameters sharded over fsdp and tensor, checkpoints kept at steps 3 and 6,
the VALSE and VSR evals on synthetic sets logged at step 6); the eval-tool
and colab tests reuse it.
"""

import os

import jax
import numpy as np
import pytest

from vlg import benchmarks
from vlg import restore
from vlg import sharding
from vlg import train
from vlg import writers
from vlg.evaluators import common
from vlg.synthetic import benchmarks as synthetic_benchmarks

from test_train import tiny_test_config

# The session's tiny run is trained once for all its users: with
# `pytest -n 2 --dist loadgroup` they share a worker.
pytestmark = pytest.mark.xdist_group('tiny_run')


def trained_run(tmp_path_factory) -> tuple[str, str]:
  """(workdir, synthetic benchmark dir) of the session's tiny run."""
  base = tmp_path_factory.getbasetemp() / 'restore_tiny_run'
  workdir, bench = str(base / 'run'), str(base / 'bench')
  if not (base / 'done').exists():
    synthetic_benchmarks.write_all(bench, resolution=48, seed=0, num=8,
                                   sets='valse,vsr')
    config = tiny_test_config()
    config.mesh = (2, 2, 2)
    config.num_devices = 8
    config.evals = dict(
        valse=dict(type='valse', root=f'{bench}/valse',
                   image_root=f'{bench}/valse/images'),
        vsr_random_dev=dict(
            type='vsr', file=f'{bench}/vsr/random/dev.jsonl',
            image_root=f'{bench}/vsr/images',
            categories=f'{bench}/vsr/rel_meta_category_dict.txt'))
    jax.config.update('jax_disable_most_optimizations', True)
    try:
      train.train_and_evaluate(config, workdir)
    finally:
      jax.config.update('jax_disable_most_optimizations', False)
    (base / 'done').write_text('ok')
  return workdir, bench


def load_on_one_device(workdir: str, step: int | None = None) -> restore.Run:
  """``workdir`` restored onto one device (a fit's hundreds of steps are
  slow on eight fake devices)."""
  return restore.load_run(workdir, step, mesh=sharding.make_mesh(
      (1, 1, 1), devices=jax.devices()[:1]))


@pytest.fixture(scope='module')
def run_dirs(tmp_path_factory):
  return trained_run(tmp_path_factory)


def _pair_scores(run, bench, n=6):
  """ITM scores of the first n VALSE captions and foils, on run's mesh."""
  ex = list(benchmarks.load_valse(f'{bench}/valse', valid_only=True))[:n]
  paths = [f'{bench}/valse/images/{e.image_file}' for e in ex]
  with jax.set_mesh(run.mesh):
    scorer = common.PairScorer(run.predict_fns['image_text_scores'],
                               run.tokenizer, mesh=run.mesh, rules=run.rules,
                               **restore.eval_defaults(run))
    return scorer.score(run.params, paths + paths,
                        [e.caption for e in ex] + [e.foil for e in ex])['itm']


def test_restore_matches_training_evals_on_any_mesh(run_dirs, fast_compile):
  workdir, bench = run_dirs
  logged = writers.metric_curves(workdir)
  run = restore.load_run(workdir)
  assert run.step == 6 and run.kept_steps == [3, 6]
  assert dict(run.mesh.shape) == {'data': 2, 'fsdp': 2, 'tensor': 2}
  assert run.meta['tokenizer_fingerprint'] == run.tokenizer.fingerprint
  with jax.set_mesh(run.mesh):
    evaluators = restore.build_evaluators(run, run.config.evals)
    got = evaluators['valse'][0].run(run.params)
  for key in ('acc_r', 'auroc', 'precision_caption', 'existence/acc_r'):
    assert got[key] == pytest.approx(logged[f'valse/{key}'][6], abs=1e-6)
  ref = _pair_scores(run, bench)
  run.close()

  one = restore.load_run(workdir, mesh=sharding.make_mesh(
      (1, 1, 1), devices=jax.devices()[:1]))
  leaf = jax.tree.leaves(one.params)[0]
  assert leaf.sharding.mesh.size == 1
  np.testing.assert_allclose(_pair_scores(one, bench), ref, atol=1e-5)
  one.close()
  # Three devices do not fit the run's 2x2x2 mesh: all go on the data axis,
  # and the eval batch (8) is rounded up to a multiple of 3.
  three = sharding.make_mesh((3, 1, 1), devices=jax.devices()[:3])
  other = restore.load_run(workdir, mesh=three)
  assert restore.eval_defaults(other)['batch_size'] == 9
  np.testing.assert_allclose(_pair_scores(other, bench), ref, atol=1e-5)
  other.close()


def test_other_steps_and_clear_errors(run_dirs, tmp_path):
  workdir, _ = run_dirs
  run = restore.load_run(workdir, step=3)
  last = run.at_step(6)
  assert (run.step, last.step) == (3, 6)
  diff = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) -
                                                np.asarray(b)).max()),
                      run.params, last.params)
  assert max(jax.tree.leaves(diff)) > 0  # Training moved the weights.
  with pytest.raises(FileNotFoundError, match=r'kept steps: \[3, 6\]'):
    run.at_step(4)
  run.close()
  with pytest.raises(FileNotFoundError, match=r'Step 5 .*kept steps: \[3, 6\]'):
    restore.load_run(workdir, step=5)
  with pytest.raises(FileNotFoundError, match='no checkpoints/ folder'):
    restore.load_run(str(tmp_path))
  os.makedirs(tmp_path / 'checkpoints')
  with pytest.raises(FileNotFoundError, match='No finished checkpoint'):
    restore.load_run(str(tmp_path))
