"""ITC, τ clamp, α ramp, queues vs the reference (docs/objectives.md §2.1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref  # tests/objectives/reference.py, on sys.path via pytest
from vlg.objectives import itc


def _loss_clamped(args, t, alpha):
  return itc.itc_loss(*args, itc.clamp_temp(t), alpha)[0]


# Jitted once at module level so parametrised tests reuse the compilation.
_itc = jax.jit(itc.itc_loss)
_itc_grad = jax.jit(jax.grad(_loss_clamped, argnums=(0, 1)))


def _unit(rng, *shape):
  x = rng.normal(size=shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _inputs(seed, b, q, e=16, dtype=np.float32):
  rng = np.random.default_rng(seed)
  feats = [_unit(rng, b, e) for _ in range(4)] + [_unit(rng, q, e),
                                                   _unit(rng, q, e)]
  # Momentum features close to the online ones, as after EMA.
  feats[2] = _unit(rng, b, e) * 0.3 + feats[0]
  feats[2] /= np.linalg.norm(feats[2], axis=-1, keepdims=True)
  return [f.astype(dtype) for f in feats]


@pytest.mark.parametrize('b,q', [(1, 0), (4, 0), (4, 8), (8, 24), (3, 6)])
@pytest.mark.parametrize('alpha', [0.0, 0.4])
@pytest.mark.parametrize('temp', [0.07, 0.0001, 2.0])
def test_itc_loss_matches_reference(b, q, alpha, temp):
  feats = _inputs(b * 100 + q, b, q)
  t = itc.clamp_temp(jnp.float32(temp))
  loss, metrics, aux = _itc(*feats, t, alpha)
  want, sim_i2t, sim_t2i, acc = ref.itc_loss(*feats, ref.clamp_temp(temp),
                                             alpha)
  # float32 inputs, logits up to 1/0.001 = 1000: relative error ~1e-6.
  np.testing.assert_allclose(loss, want, rtol=2e-5, atol=1e-5)
  np.testing.assert_allclose(aux['sim_i2t'], sim_i2t, rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(aux['sim_t2i'], sim_t2i, rtol=1e-5, atol=1e-3)
  assert aux['sim_i2t'].shape == (b, b + q)
  assert metrics['itc_acc'] == pytest.approx(acc)
  assert metrics['itc_loss'] == loss
  assert metrics['temp'] == pytest.approx(ref.clamp_temp(temp))
  assert metrics['alpha'] == pytest.approx(alpha)


def test_itc_loss_float64_tight():
  with jax.enable_x64(True):
    feats = _inputs(7, 5, 10, dtype=np.float64)
    loss, _, _ = _itc(*[jnp.asarray(f) for f in feats], jnp.float64(0.05),
                      0.4)
    assert loss.dtype == jnp.float64
    want = ref.itc_loss(*feats, 0.05, 0.4)[0]
    np.testing.assert_allclose(loss, want, rtol=1e-12)


@pytest.mark.parametrize('alpha', [0.0, 0.4])
def test_itc_grads_match_finite_differences(alpha):
  """Gradients in v, w and τ vs central differences of the reference, with
  the targets held at the evaluation τ (ALBEF computes them in no_grad)."""
  b, q, temp = 3, 6, 0.1
  feats = _inputs(11, b, q, e=6, dtype=np.float64)

  def f(v, w, t):
    return ref.itc_loss(v, w, *feats[2:], t, alpha, target_temp=temp)[0]

  want_v = ref.numerical_grad(lambda x: f(x, feats[1], temp), feats[0])
  want_w = ref.numerical_grad(lambda x: f(feats[0], x, temp), feats[1])
  want_t = ref.numerical_grad(lambda x: f(feats[0], feats[1], x[0]),
                              np.array([temp]))[0]

  # float32 JAX gradient vs the float64 finite differences.
  args32 = [jnp.asarray(x, jnp.float32) for x in feats]
  g, g_t = _itc_grad(args32, jnp.float32(temp), alpha)
  np.testing.assert_allclose(g[0], want_v, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(g[1], want_w, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(g_t, want_t, rtol=1e-4)
  # Momentum features and queues are constants.
  for k in range(2, 6):
    np.testing.assert_array_equal(g[k], 0.0)
  # float64 JAX gradient: agreement down to finite-difference error.
  with jax.enable_x64(True):
    args64 = [jnp.asarray(x) for x in feats]
    g, g_t = _itc_grad(args64, jnp.float64(temp), alpha)
    np.testing.assert_allclose(g[0], want_v, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(g[1], want_w, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(g_t, want_t, rtol=1e-7)


def test_itc_in_batch_matches_reference_and_special_case():
  rng = np.random.default_rng(3)
  v, w = _unit(rng, 6, 8), _unit(rng, 6, 8)
  loss, metrics, aux = jax.jit(itc.itc_loss_in_batch)(
      jnp.asarray(v, jnp.float32), jnp.asarray(w, jnp.float32), 0.07)
  np.testing.assert_allclose(loss, ref.itc_loss_in_batch(v, w, 0.07),
                             rtol=1e-5)
  assert aux['sim_i2t'].shape == (6, 6) and metrics['alpha'] == 0
  # Same value as the momentum loss with α = 0, no queue, *_m = online.
  empty = np.zeros((0, 8), np.float32)
  v32, w32 = v.astype(np.float32), w.astype(np.float32)
  loss_m = _itc(v32, w32, v32, w32, empty, empty, 0.07, 0.0)[0]
  np.testing.assert_allclose(loss, loss_m, rtol=1e-6)
  # Gradient flows into both sides (no momentum): check d/dw vs FD.
  with jax.enable_x64(True):
    g = jax.jit(jax.grad(lambda a, x: itc.itc_loss_in_batch(a, x, 0.07)[0],
                         argnums=1))(jnp.asarray(v), jnp.asarray(w))
    want = ref.numerical_grad(lambda x: ref.itc_loss_in_batch(v, x, 0.07), w)
    np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize('raw,clamped', [(0.07, 0.07), (1e-5, 0.001),
                                         (0.001, 0.001), (0.5, 0.5),
                                         (3.0, 0.5)])
def test_clamp_temp_value_and_straight_through_gradient(raw, clamped):
  assert float(itc.clamp_temp(jnp.float32(raw))) == pytest.approx(clamped)
  # ALBEF clamps in place under no_grad: the gradient reaches temp in full,
  # evaluated at the clamped value, even at and beyond the bounds.
  feats = _inputs(5, 4, 4, dtype=np.float64)

  args = [jnp.asarray(f, jnp.float32) for f in feats]
  _, g = _itc_grad(args, jnp.float32(raw), 0.4)
  want = ref.numerical_grad(
      lambda x: ref.itc_loss(*feats, x[0], 0.4, target_temp=clamped)[0],
      np.array([clamped]), eps=1e-8 if clamped < 0.01 else 1e-6)[0]
  assert want != 0
  np.testing.assert_allclose(g, want, rtol=1e-3)


def test_alpha_ramp():
  assert float(itc.alpha_at(0, 0.4, 100)) == 0.0
  for step in (0, 1, 37, 99, 100, 101, 10_000):
    np.testing.assert_allclose(itc.alpha_at(jnp.int32(step), 0.4, 100),
                               ref.alpha_at(step, 0.4, 100), rtol=1e-6)
  assert float(itc.alpha_at(jnp.int32(5), 0.4, 0)) == pytest.approx(0.4)
  jitted = jax.jit(lambda s: itc.alpha_at(s, 0.4, 10))
  assert float(jitted(jnp.int32(5))) == pytest.approx(0.2)
  with pytest.raises(ValueError):
    itc.alpha_at(0, 0.4, -1)


def test_init_queue_rows_are_unit_norm():
  q = itc.init_queue(jax.random.PRNGKey(0), 32, 8)
  assert q.shape == (32, 8) and q.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, rtol=1e-6)
  assert np.abs(np.asarray(q)).std() > 0.1  # not a constant


def test_update_queue_fifo_with_wraparound():
  qsize, b, e = 12, 4, 3
  queue = jnp.asarray(np.full((qsize, e), -1.0, np.float32))
  ptr = jnp.zeros((), jnp.int32)
  update = jax.jit(itc.update_queue)
  model = [None] * qsize  # expected row contents: the batch and row written
  model_ptr = 0
  for step in range(7):  # 28 rows through a 12-row queue: wraps twice
    feats = np.stack([np.full(e, step * 10 + r, np.float32)
                      for r in range(b)])
    queue, ptr = update(queue, jnp.asarray(feats), ptr)
    for r in range(b):
      model[model_ptr + r] = step * 10 + r
    model_ptr = (model_ptr + b) % qsize
    assert int(ptr) == model_ptr and ptr.dtype == jnp.int32
    got = np.asarray(queue)[:, 0]
    want = np.array([-1.0 if m is None else m for m in model])
    np.testing.assert_array_equal(got, want)
  # After 7 steps the queue holds exactly the last 3 batches (FIFO).
  assert sorted(np.asarray(queue)[:, 0] // 10) == [4] * 4 + [5] * 4 + [6] * 4


def test_update_queue_errors_and_empty_queue():
  with pytest.raises(ValueError, match='multiple'):
    itc.update_queue(jnp.zeros((10, 3)), jnp.zeros((4, 3)), jnp.int32(0))
  with pytest.raises(ValueError, match='multiple'):
    jax.jit(itc.update_queue)(jnp.zeros((4, 3)), jnp.zeros((8, 3)),
                              jnp.int32(0))
  with pytest.raises(ValueError):
    itc.update_queue(jnp.zeros((8, 3)), jnp.zeros((4, 2)), jnp.int32(0))
  q, p = itc.update_queue(jnp.zeros((0, 3)), jnp.ones((4, 3)), jnp.int32(0))
  assert q.shape == (0, 3) and int(p) == 0


@pytest.mark.parametrize('filled', [0, 3, 8, 12])
@pytest.mark.parametrize('alpha', [0.0, 0.4])
def test_unfilled_queue_rows_are_left_out(filled, alpha):
  """queue_filled=k gives exactly the loss (and accuracy) of the float64
  reference with the queue cut to its first k rows; k >= Q is every row."""
  b, q = 4, 8
  feats = [np.asarray(f, np.float64) for f in _inputs(7, b, q)]
  cut = feats[:4] + [feats[4][:filled], feats[5][:filled]]
  t = 0.07
  with jax.enable_x64(True):
    loss, metrics, aux = itc.itc_loss(*feats, jnp.float64(t), alpha,
                                      queue_filled=filled)
    want, _, _, acc = ref.itc_loss(*cut, t, alpha)
    np.testing.assert_allclose(float(loss), want, rtol=1e-10)
    assert float(metrics['itc_acc']) == pytest.approx(acc)
    k = min(filled, q)
    assert np.all(np.asarray(aux['sim_i2t'])[:, b + k:] < -1e8)
    grads = jax.grad(lambda v: itc.itc_loss(
        v, *feats[1:], jnp.float64(t), alpha, queue_filled=filled)[0])(
            feats[0])
    assert np.all(np.isfinite(np.asarray(grads)))


def test_queue_filled_counts_rows_written_before_a_step():
  assert [int(itc.queue_filled(s, 32, 256)) for s in (0, 1, 7, 8, 100)] == [
      0, 32, 224, 256, 256]
