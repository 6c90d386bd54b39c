"""MLM distilled loss vs the reference (docs/objectives.md §2.3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref  # tests/objectives/reference.py, on sys.path via pytest
from vlg.objectives import mlm

# Jitted once: eager op-by-op dispatch would compile every primitive.
_mlm_loss = jax.jit(mlm.mlm_loss)
_mlm_grad = jax.jit(jax.grad(mlm.mlm_loss, argnums=(0, 1), has_aux=True))
_mlm_grad_no_teacher = jax.jit(jax.grad(mlm.mlm_loss, has_aux=True))


def _logits(seed, b, length, v, masked_frac=0.3):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=(b, length, v)) * 2).astype(np.float32)
  logits_m = (rng.normal(size=(b, length, v)) * 2).astype(np.float32)
  labels = rng.integers(0, v, size=(b, length))
  labels[rng.random((b, length)) > masked_frac] = -100
  return logits, logits_m, labels.astype(np.int32)


@pytest.mark.parametrize('alpha', [0.0, 0.4, 1.0])
@pytest.mark.parametrize('teacher', [True, False])
def test_mlm_loss_and_grad_match_reference(alpha, teacher):
  logits, logits_m, labels = _logits(int(alpha * 10) + teacher, 3, 7, 11)
  logits_m = logits_m if teacher else None
  loss, metrics = _mlm_loss(logits, logits_m, labels, alpha)
  want, acc, n = ref.mlm_loss(logits, logits_m, labels, alpha)
  assert n > 0
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert metrics['mlm_loss'] == loss
  np.testing.assert_allclose(metrics['mlm_acc'], acc, rtol=1e-6)
  assert float(metrics['mlm_num_masked']) == n
  grad_fn = _mlm_grad if teacher else _mlm_grad_no_teacher
  grads, _ = grad_fn(logits, logits_m, labels, alpha)
  g = grads[0] if teacher else grads
  np.testing.assert_allclose(
      g, ref.mlm_grad(logits, logits_m, labels, alpha), rtol=1e-4, atol=1e-7)
  if teacher:  # the teacher is stop-gradiented
    np.testing.assert_array_equal(grads[1], 0.0)


def test_mlm_alpha_changes_the_loss():
  logits, logits_m, labels = _logits(9, 3, 7, 11)
  l0 = _mlm_loss(logits, logits_m, labels, 0.0)[0]
  l4 = _mlm_loss(logits, logits_m, labels, 0.4)[0]
  ce = ref.mlm_loss(logits, None, labels, 0.0)[0]
  np.testing.assert_allclose(l0, ce, rtol=1e-5)
  assert abs(float(l4) - float(l0)) > 1e-3


def test_mlm_zero_masked_batch_is_zero_not_nan():
  logits, logits_m, _ = _logits(10, 3, 7, 11)
  labels = np.full((3, 7), -100, np.int32)
  loss, metrics = _mlm_loss(logits, logits_m, labels, 0.4)
  (g, _), _ = _mlm_grad(logits, logits_m, labels, 0.4)
  assert float(loss) == 0.0
  assert float(metrics['mlm_acc']) == 0.0
  assert float(metrics['mlm_num_masked']) == 0.0
  assert np.all(np.isfinite(np.asarray(g))) and not np.any(np.asarray(g))


def test_mlm_bf16_inputs_computed_in_float32():
  logits, logits_m, labels = _logits(11, 2, 6, 9)
  loss, _ = _mlm_loss(jnp.asarray(logits, jnp.bfloat16),
                      jnp.asarray(logits_m, jnp.bfloat16), labels, 0.4)
  assert loss.dtype == jnp.float32
  rounded = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32),
                       np.float64)
  rounded_m = np.asarray(
      jnp.asarray(logits_m, jnp.bfloat16).astype(jnp.float32), np.float64)
  want = ref.mlm_loss(rounded, rounded_m, labels, 0.4)[0]
  np.testing.assert_allclose(loss, want, rtol=1e-5)
