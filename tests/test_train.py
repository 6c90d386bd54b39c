"""The train loop: learning, exact resume, sharding equivalence, NaN stop."""

import json
import os

import jax
import numpy as np
import pytest

from vlg import sharding
from vlg import train
from vlg import train_state
from vlg import writers
from vlg.data import pipeline

import configs.albef as albef_config


def shrink_for_tests(c):
  """Shrinks a tiny config's model and data so a step compiles in seconds."""
  c.model.update(image_size=48, patch_size=8, vision_width=32, vision_depth=1,
                 vision_heads=2, vision_mlp=64, text_width=32, text_layers=1,
                 fusion_layers=1, text_heads=2, text_mlp=64, embed_dim=16)
  c.input.resolution = 48
  c.input.data.synthetic.world = dict(resolution=48)
  c.input.data.synthetic.num_examples = 2000
  c.input.tokenizer.num_texts = 300
  c.input.max_text_len = 16
  # The linear patch map and no vision stage: the tests of the stage and of
  # the convolutional stem ask for them.
  c.model.vision_stem = 'patch'
  c.vision_pretrain.steps = 0
  # One device: a program partitioned over 8 fake CPU devices compiles and
  # runs several times slower; tests of sharding ask for the mesh they need.
  c.num_devices = 1
  return c


def shrunk_model_setup():
  """The shrunk tiny ALBEF config, a one-device mesh, its logical rules (set
  as the current rules) and the abstract model's graphdef and specs."""
  c = shrink_for_tests(albef_config.get_config('tiny,evals=False'))
  mesh = sharding.make_mesh(c.mesh, devices=jax.devices()[:1])
  rules = [tuple(r) for r in c.sharding_rules]
  with jax.set_mesh(mesh):
    sharding.set_rules(rules)
    graphdef, _, specs = train_state.abstract_model(c.model, rules)
  return c, mesh, rules, graphdef, specs


def tiny_test_config(**overrides):
  """The tiny ALBEF config shrunk further so a step compiles in seconds."""
  c = shrink_for_tests(albef_config.get_config('tiny,evals=False'))
  c.batch_size = 8
  c.queue_size = 16
  c.total_steps = 6
  c.ckpt_steps = 3
  c.keep_every_steps = 3
  c.log_training_steps = 1
  c.optim.warmup_steps = 2
  for key, value in overrides.items():
    target = c
    *path, last = key.split('.')
    for p in path:
      target = target[p]
    target[last] = value
  if 'mesh' in overrides and 'num_devices' not in overrides:
    c.num_devices = 0  # An explicit mesh spans the devices it names.
  return c


def _losses(workdir):
  by_step = {}
  for rec in writers.read_metrics(workdir):
    if 'train/loss' in rec:
      by_step[rec['step']] = rec  # A resumed run's later record wins.
  return by_step


def test_train_writes_metrics_checkpoints_and_resumes_exactly(
    tmp_path, monkeypatch, fast_compile):
  cfg = tiny_test_config()
  full = str(tmp_path / 'full')
  # The run sets its sharding rules for its own duration only.
  with sharding.rules_context([('outer', None)]):
    train.train_and_evaluate(cfg, full)
    assert sharding.current_rules() == [('outer', None)]
  ref = _losses(full)
  assert sorted(ref) == [1, 2, 3, 4, 5, 6]
  for key in ('train/loss', 'train/itc_loss', 'train/itm_loss',
              'train/mlm_loss', 'train/itm_acc', 'train/lr', 'train/temp'):
    assert key in ref[6], key
  assert np.isfinite(ref[6]['train/loss'])
  # The synthetic world's false-negative shares of the drawn ITM negatives.
  for key in ('train/fn_itm_neg_share', 'train/fn_pair_rate'):
    assert all(0 <= ref[s][key] <= 1 for s in ref), key
  assert sorted(int(d) for d in os.listdir(os.path.join(full, 'checkpoints'))
                if d.isdigit()) == [3, 6]

  # Crash after step 4 (checkpoint at 3), then run the same command again.
  broken = str(tmp_path / 'broken')
  real_to_global = pipeline.to_global
  calls = []

  def crashing_to_global(*args, **kwargs):
    calls.append(1)
    if len(calls) == 5:
      raise KeyboardInterrupt('simulated crash')
    return real_to_global(*args, **kwargs)

  monkeypatch.setattr(pipeline, 'to_global', crashing_to_global)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(cfg, broken)
  monkeypatch.setattr(pipeline, 'to_global', real_to_global)
  train.train_and_evaluate(cfg, broken)
  got = _losses(broken)
  for step in range(1, 7):
    for key in ('train/loss', 'train/itc_loss', 'train/itm_loss',
                'train/mlm_loss', 'train/fn_itm_neg_share'):
      assert abs(got[step][key] - ref[step][key]) <= 1e-4, (step, key)
  meta = json.load(open(os.path.join(broken, 'config.json')))
  assert meta['total_steps'] == 6


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(
    tmp_path, monkeypatch, fast_compile):
  # The resume test's config, so its compiled step is reused (no compile);
  # at step 5 the texts turn into ids past the vocabulary, whose embedding
  # lookup fills with NaN: a real non-finite loss inside the real step.
  cfg = tiny_test_config()
  workdir = str(tmp_path / 'nan')
  real_to_global = pipeline.to_global
  calls = []

  def poisoning_to_global(batch, *args, **kwargs):
    calls.append(1)
    if len(calls) == 5:
      batch = dict(batch, text_ids=np.full_like(batch['text_ids'], 10**6))
    return real_to_global(batch, *args, **kwargs)

  monkeypatch.setattr(pipeline, 'to_global', poisoning_to_global)
  with pytest.raises(train.NonFiniteLossError,
                     match=r'step 5.*Last good checkpoint: step 3'):
    train.train_and_evaluate(cfg, workdir)
  steps = [int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))
           if d.isdigit()]
  assert max(steps) == 3
  assert max(_losses(workdir)) == 4  # Nothing logged from the bad step on.


def _one_step(cfg, mesh_sizes, devices):
  mesh = sharding.make_mesh(mesh_sizes, devices=devices)
  cfg.mesh = tuple(mesh_sizes)
  rules = [tuple(r) for r in cfg.sharding_rules]
  sharding.set_rules(rules)
  with jax.set_mesh(mesh):
    tok = pipeline.get_tokenizer(cfg.input, _one_step.tok_dir)
    it = iter(pipeline.make_dataset(cfg.input, tok, global_batch=cfg.batch_size,
                                    seed=0))
    batches = [next(it) for _ in range(2)]
    built = train.build_step(cfg, mesh, rules)
    state = built['init_fn']()
    for b in batches:
      state, metrics = built['train_step'](state,
                                           pipeline.to_global(b, mesh, rules))
    assert built['train_step']._cache_size() == 1  # No retracing.
    return (jax.device_get(metrics),
            jax.device_get(state['params']), jax.device_get(state['queues']))


@pytest.mark.parametrize('mesh_sizes', [(8, 1, 1), (2, 2, 2)])
def test_sharded_step_matches_single_device(mesh_sizes, tmp_path_factory,
                                            fast_compile):
  _one_step.tok_dir = str(tmp_path_factory.mktemp('tok'))
  cfg = tiny_test_config()
  # Adam turns float-rounding-sized gradients into lr-sized updates of either
  # sign; a large eps keeps updates proportional to the gradients, so the
  # comparison checks what sharding can change (the gradients), not noise.
  cfg.optim.eps = 1e-3
  cfg.optim.lr = 3e-4
  cfg.sharding_rules = (('batch', ('data', 'fsdp')), ('embed', 'fsdp'),
                        ('mlp', 'tensor'), ('heads', 'tensor'),
                        ('vocab', 'tensor'))
  ref_metrics, ref_params, ref_q = _one_step(cfg, (1, 1, 1),
                                             jax.devices()[:1])
  metrics, params, queues = _one_step(cfg, mesh_sizes, jax.devices())
  for k in ('loss', 'itc_loss', 'itm_loss', 'mlm_loss'):
    np.testing.assert_allclose(metrics[k], ref_metrics[k], rtol=1e-4,
                               atol=1e-5, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3,
                                                       atol=1e-5),
               params, ref_params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               queues, ref_q)


class _BenchmarkEvaluator:
  """An evaluator whose benchmark image may be corrupt: run() reads it
  through the evaluators' image cache, as every benchmark evaluator does."""

  def __init__(self, image):
    self.image, self.steps = image, 0

  def run(self, params):
    del params
    self.steps += 1
    from vlg.evaluators import common  # pylint: disable=g-import-not-at-top
    common.ImageCache(48)(self.image)
    return {'accuracy': 0.5}


def _train_with_evaluators(tmp_path, monkeypatch, name, **overrides):
  """Trains the 6-step test config with evaluators 'vsr_random' (its
  image corrupt) and 'good', both every 3 steps; returns the workdir, the
  error (or None) and the checkpoint steps."""
  from vlg.evaluators import common  # pylint: disable=g-import-not-at-top
  corrupt = tmp_path / 'corrupt.jpg'
  corrupt.write_bytes(b'\xff\xd8 not a jpeg')
  good_image = tmp_path / 'good.png'
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good_image)
  evaluators = {'vsr_random': (_BenchmarkEvaluator(str(corrupt)), 3),
                'good': (_BenchmarkEvaluator(str(good_image)), 3)}
  monkeypatch.setattr(common, 'from_config', lambda *a, **k: evaluators)
  cfg = tiny_test_config(**overrides)
  workdir = str(tmp_path / name)
  error = None
  try:
    train.train_and_evaluate(cfg, workdir)
  except Exception as e:  # pylint: disable=broad-except
    error = e
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir,
                                                         'checkpoints'))
                 if d.isdigit())
  return workdir, error, steps


def test_failing_evaluation_stops_after_the_checkpoint_of_its_step(
    tmp_path, monkeypatch, fast_compile):
  _, error, steps = _train_with_evaluators(tmp_path, monkeypatch, 'stop')
  # The step's checkpoint is saved before evaluating.
  assert steps == [3]
  assert isinstance(error, train.EvaluationError), repr(error)
  message = str(error)
  assert 'evals.vsr_random failed at step 3' in message, message
  assert 'Cannot read image' in message and 'corrupt.jpg' in message
  assert 'eval_failure' in message


def test_failing_evaluation_is_skipped_with_eval_failure_skip(
    tmp_path, monkeypatch, fast_compile, caplog):
  with caplog.at_level('WARNING'):
    workdir, error, steps = _train_with_evaluators(
        tmp_path, monkeypatch, 'skip', eval_failure='skip')
  assert error is None and steps == [3, 6]
  warnings = [r.getMessage() for r in caplog.records
              if r.levelname == 'WARNING' and 'vsr_random' in r.getMessage()]
  assert len(warnings) == 2, warnings  # Steps 3 and 6.
  assert 'Cannot read image' in warnings[0] and 'corrupt.jpg' in warnings[0]
  written = {k for rec in writers.read_metrics(workdir) for k in rec}
  assert 'good/accuracy' in written
  assert not any(k.startswith('vsr_random/') for k in written)


def test_eval_failure_must_be_stop_or_skip(tmp_path):
  with pytest.raises(ValueError, match=r"eval_failure='ignore'.*'skip'"):
    train.train_and_evaluate(tiny_test_config(eval_failure='ignore'),
                             str(tmp_path))
