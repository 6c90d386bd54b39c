"""Scale-out switches: re-meshed resume, SIGTERM, FSDP bytes, bf16, remat,
gradient accumulation (issue 8's checks, on 8 fake CPU devices)."""

import os
import shutil
import signal

import jax
import numpy as np
import optax
import pytest

from vlg import sharding
from vlg import train
from vlg import train_state
from vlg.data import batch_spec
from vlg.data import pipeline

from test_train import _losses
from test_train import tiny_test_config

LOSS_KEYS = ('train/loss', 'train/itc_loss', 'train/itm_loss',
             'train/mlm_loss')
# Dense-layer reductions run in another order on another mesh: the same
# numbers up to float32 rounding, amplified a little by Adam over 3 steps.
RESHARD_RTOL = 1e-4


# The reference run's users share a worker under `--dist loadgroup`.
REFERENCE_GROUP = pytest.mark.xdist_group('scale_out_reference')


@pytest.fixture
def reference_run(tmp_path_factory):
  """Six steps on mesh (8, 1, 1), checkpoints kept at steps 3 and 6.

  Trained once per worker (kept under the worker's base temp with a marker
  file), however its users are interleaved with other modules' tests."""
  base = tmp_path_factory.getbasetemp() / 'scale_out_reference'
  workdir = str(base / 'run')
  if not (base / 'done').exists():
    shutil.rmtree(base, ignore_errors=True)
    jax.config.update('jax_disable_most_optimizations', True)
    try:
      train.train_and_evaluate(tiny_test_config(mesh=(8, 1, 1)), workdir)
    finally:
      jax.config.update('jax_disable_most_optimizations', False)
    (base / 'done').write_text('ok')
  return workdir, _losses(workdir)


def _resume_from_step_3(reference_workdir, workdir):
  """A copy of the reference run as it was after its step-3 checkpoint."""
  shutil.copytree(reference_workdir, workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '6'))


@REFERENCE_GROUP
@pytest.mark.parametrize('mesh_sizes', [(2, 4, 1), (1, 1, 1)])
def test_checkpoint_from_mesh_8_resumes_on_another_mesh(
    mesh_sizes, reference_run, tmp_path, fast_compile):
  ref_dir, ref = reference_run
  workdir = str(tmp_path / 'resumed')
  _resume_from_step_3(ref_dir, workdir)
  devices = jax.devices()[:int(np.prod(mesh_sizes))]
  train.train_and_evaluate(tiny_test_config(mesh=mesh_sizes), workdir,
                           devices=devices)
  got = _losses(workdir)
  records_at_4 = [r for r in _read(workdir) if r['step'] == 4
                  and 'train/loss' in r]
  assert len(records_at_4) == 2  # The reference's and the resumed run's.
  for step in (4, 5, 6):
    for key in LOSS_KEYS:
      np.testing.assert_allclose(got[step][key], ref[step][key],
                                 rtol=RESHARD_RTOL, err_msg=(step, key))


def _read(workdir):
  from vlg import writers  # pylint: disable=g-import-not-at-top
  return list(writers.read_metrics(workdir))


@REFERENCE_GROUP
def test_sigterm_saves_and_the_run_resumes_exactly(
    reference_run, tmp_path, monkeypatch, fast_compile):
  _, ref = reference_run
  workdir = str(tmp_path / 'preempted')
  real_to_global = pipeline.to_global
  calls = []

  def preempting_to_global(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:  # While step 2 is being prepared.
      os.kill(os.getpid(), signal.SIGTERM)
    return real_to_global(*args, **kwargs)

  monkeypatch.setattr(pipeline, 'to_global', preempting_to_global)
  train.train_and_evaluate(tiny_test_config(mesh=(8, 1, 1)), workdir)
  monkeypatch.setattr(pipeline, 'to_global', real_to_global)
  saved = sorted(int(d) for d in os.listdir(os.path.join(workdir,
                                                         'checkpoints'))
                 if d.isdigit())
  assert saved == [2]  # Stopped after step 2 with a checkpoint of it.
  assert max(_losses(workdir)) == 2
  train.train_and_evaluate(tiny_test_config(mesh=(8, 1, 1)), workdir)
  got = _losses(workdir)
  for step in range(1, 7):
    for key in LOSS_KEYS:
      assert abs(got[step][key] - ref[step][key]) <= 1e-5, (step, key)


def _compiled_step(cfg, mesh_sizes):
  """The AOT-compiled train step of ``cfg`` on ``mesh_sizes`` (no data)."""
  mesh = sharding.make_mesh(mesh_sizes)
  rules = [tuple(r) for r in cfg.sharding_rules]
  sharding.set_rules(rules)
  with jax.set_mesh(mesh):
    built = train.build_step(cfg, mesh, rules)
    state = train_state.with_shardings(built['abstract_state'],
                                       built['shardings'])
    batch = batch_spec.batch_spec(cfg, mesh, rules)
    return built, built['train_step'].lower(state, batch).compile()


def _param_and_opt_bytes_per_device(built):
  """Bytes of one device's shard of params + EMA + optimizer state."""
  total = 0
  for key in ('params', 'ema', 'opt'):
    for a, s in zip(jax.tree.leaves(built['abstract_state'][key]),
                    jax.tree.leaves(built['shardings'][key])):
      total += int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize
  return total


def test_fsdp_divides_parameter_and_optimizer_bytes_by_about_8(
    fast_compile, capsys):
  data_parallel = tiny_test_config()
  data_parallel.sharding_rules = (('batch', ('data', 'fsdp')),)
  fsdp = tiny_test_config()
  fsdp.sharding_rules = (('batch', ('data', 'fsdp')), ('embed', 'fsdp'),
                         ('vocab', 'fsdp'))
  dp_built, dp_step = _compiled_step(data_parallel, (8, 1, 1))
  fsdp_built, fsdp_step = _compiled_step(fsdp, (1, 8, 1))
  dp_args = dp_step.memory_analysis().argument_size_in_bytes
  fsdp_args = fsdp_step.memory_analysis().argument_size_in_bytes
  state_ratio = (_param_and_opt_bytes_per_device(dp_built) /
                 _param_and_opt_bytes_per_device(fsdp_built))
  with capsys.disabled():
    print(f'\nper-device compiled argument bytes: data-parallel {dp_args}, '
          f'FSDP(8) {fsdp_args}, ratio {dp_args / fsdp_args:.2f}; '
          f'params+EMA+optimizer shards alone: ratio {state_ratio:.2f}')
  # Vectors too short to split and the replicated queues stay whole.
  assert 6.0 < dp_args / fsdp_args <= 8.0
  assert 7.0 < state_ratio <= 8.0


def _run_steps(cfg, batches, mesh_sizes=(1, 1, 1)):
  """Fresh state, then one step per batch; returns (per-step metrics, state)."""
  devices = jax.devices()[:int(np.prod(mesh_sizes))]
  mesh = sharding.make_mesh(mesh_sizes, devices=devices)
  rules = [tuple(r) for r in cfg.sharding_rules]
  sharding.set_rules(rules)
  with jax.set_mesh(mesh):
    built = train.build_step(cfg, mesh, rules)
    state = built['init_fn']()
    history = []
    for b in batches:
      state, metrics = built['train_step'](state,
                                           pipeline.to_global(b, mesh, rules))
      history.append(jax.device_get(metrics))
    return history, jax.device_get(state)


def _batches(cfg, n, tmp_dir):
  tok = pipeline.get_tokenizer(cfg.input, str(tmp_dir))
  it = iter(pipeline.make_dataset(cfg.input, tok, global_batch=cfg.batch_size,
                                  seed=0))
  return [next(it) for _ in range(n)]


def test_bf16_compute_tracks_float32(tmp_path, fast_compile, capsys):
  cfg = tiny_test_config()
  batches = _batches(cfg, cfg.total_steps, tmp_path)
  f32, _ = _run_steps(cfg, batches)
  bf16, state = _run_steps(tiny_test_config(**{'model.dtype': 'bfloat16'}),
                           batches)
  # Parameters and optimizer state stay float32 under bf16 compute.
  for key in ('params', 'ema', 'opt'):
    dtypes = {x.dtype for x in jax.tree.leaves(state[key])
              if np.issubdtype(x.dtype, np.floating)}
    assert dtypes == {np.dtype(np.float32)}, (key, dtypes)
  diffs = [abs(float(b['loss']) - float(f['loss'])) / float(f['loss'])
           for f, b in zip(f32, bf16)]
  assert all(np.isfinite(float(b['loss'])) for b in bf16)
  with capsys.disabled():
    print(f'\nbf16 vs float32 loss over {len(diffs)} steps: max relative '
          f'difference {max(diffs):.2e}')
  # Stated tolerance: bf16 keeps 8 mantissa bits (relative rounding 2^-8).
  assert max(diffs) < 0.02, diffs
  assert max(diffs) > 0  # bf16 really ran: the losses are not bit-equal.


def test_remat_changes_neither_losses_nor_updates(tmp_path, fast_compile):
  cfg = tiny_test_config()
  batches = _batches(cfg, 2, tmp_path)
  plain, plain_state = _run_steps(cfg, batches)
  for policy in ('full',):  # 'dots' differs only in the policy passed.
    remat, remat_state = _run_steps(
        tiny_test_config(**{'model.remat': policy}), batches)
    for a, b in zip(plain, remat):
      np.testing.assert_allclose(b['loss'], a['loss'], rtol=1e-6)
    jax.tree_util.tree_map_with_path(_assert_same_update,
                                     plain_state['params'],
                                     remat_state['params'])


def _assert_same_update(path, a, b):
  # An attention key bias has exactly zero gradient (softmax over the keys
  # ignores the shift q·b shared by all of them), so what Adam does with it
  # is float rounding noise normalised to about ±lr, which any change of
  # operation order flips; every other parameter must match.
  if jax.tree_util.keystr(path).endswith("['key']['bias']"):
    assert np.abs(np.asarray(b)).max() < 1e-3
    return
  np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7,
                             err_msg=jax.tree_util.keystr(path))


def test_unknown_remat_policy_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="model.remat='every'"):
    _run_steps(tiny_test_config(**{'model.remat': 'every'}), [])


def test_grad_accumulation_averages_the_micro_batch_gradients(
    tmp_path, fast_compile):
  # ITM's hard negatives are drawn with a per-micro-batch key; with ITM
  # weighted 0 the rest of the loss is a deterministic function of the
  # micro-batch, so its gradients can be checked one micro-batch at a time.
  overrides = {'loss.itm': 0.0}
  cfg = tiny_test_config(grad_accum_steps=2, **overrides)
  (batch,) = _batches(cfg, 1, tmp_path)
  (accum_metrics,), accum_state = _run_steps(cfg, [batch])
  halves = [{k: v[i::2] for k, v in batch.items()} for i in range(2)]
  single = tiny_test_config(batch_size=cfg.batch_size // 2, **overrides)
  mus, losses = [], []
  for half in halves:
    (metrics,), state = _run_steps(single, [half])
    mus.append(optax.tree_utils.tree_get(state['opt'], 'mu'))
    losses.append(float(metrics['loss']))
  accum_mu = optax.tree_utils.tree_get(accum_state['opt'], 'mu')
  # Adam's first moment after one step is (1 - b1) * gradient.
  jax.tree.map(lambda got, a, b: np.testing.assert_allclose(
      got, (a + b) / 2, rtol=1e-4, atol=1e-9), accum_mu, mus[0], mus[1])
  np.testing.assert_allclose(accum_metrics['loss'], np.mean(losses),
                             rtol=1e-5)


def test_grad_accumulation_must_divide_the_batch(tmp_path):
  cfg = tiny_test_config(grad_accum_steps=3)
  with pytest.raises(ValueError, match='grad_accum_steps=3'):
    train.train_and_evaluate(cfg, str(tmp_path / 'run'))
