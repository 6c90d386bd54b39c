"""MRC cross-entropy, metrics vs the reference (docs/objectives.md §5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref  # tests/objectives/reference.py, on sys.path via pytest
from vlg.objectives import mrc

_loss = jax.jit(mrc.mrc_loss)
_grad = jax.jit(jax.grad(lambda *a: mrc.mrc_loss(*a)[0]))


def test_matches_reference_with_padding():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(10, 7)).astype(np.float32) * 3
  labels = rng.integers(0, 7, size=10).astype(np.int32)
  weights = np.array([1, 1, 1, 0, 1, 1, 0, 1, 1, 1], np.float32)
  loss, metrics = _loss(logits, labels, weights)
  want_loss, want_acc, want_major = ref.weighted_ce(logits, labels, weights)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics['mrc_loss'], want_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics['mrc_acc'], want_acc, atol=1e-7)
  np.testing.assert_allclose(metrics['mrc_majority_rate'], want_major,
                             atol=1e-7)
  assert float(metrics['mrc_num']) == 8.0
  # Gradient: w·(softmax − onehot)/Σw per row, 0 on padding rows.
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  want_grad = (p - np.eye(7)[labels]) * weights[:, None] / weights.sum()
  np.testing.assert_allclose(_grad(logits, labels, weights), want_grad,
                             atol=1e-6)


def test_accuracy_and_majority_known_case():
  # Labels of the 5 real rows: 2, 2, 0, 2, 1 → majority 3/5; the padding
  # row's label 0 would tie the count if it were counted.
  labels = np.array([2, 2, 0, 2, 1, 0, 0], np.int32)
  weights = np.array([1, 1, 1, 1, 1, 0, 0], np.float32)
  # Argmax predictions 2, 0, 0, 2, 2 (padding rows predict 0): 3 correct.
  pred = np.array([2, 0, 0, 2, 2, 0, 0])
  logits = np.eye(3, dtype=np.float32)[pred] * 5
  _, metrics = _loss(logits, labels, weights)
  np.testing.assert_allclose(metrics['mrc_acc'], 3 / 5, atol=1e-7)
  np.testing.assert_allclose(metrics['mrc_majority_rate'], 3 / 5, atol=1e-7)
  # One more real row of class 0 makes class 2 still the majority: 3/6.
  weights[5] = 1
  _, metrics = _loss(logits, labels, weights)
  np.testing.assert_allclose(metrics['mrc_majority_rate'], 3 / 6, atol=1e-7)
  np.testing.assert_allclose(metrics['mrc_acc'], 4 / 6, atol=1e-7)


def test_uniform_logits_give_log_v():
  logits = np.zeros((4, 9), np.float32)
  loss, _ = _loss(logits, np.arange(4, dtype=np.int32), np.ones(4, np.float32))
  np.testing.assert_allclose(loss, np.log(9), rtol=1e-6)


def test_empty_batch_is_zero_with_zero_grads():
  logits = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
  labels = np.zeros(3, np.int32)
  weights = np.zeros(3, np.float32)
  loss, metrics = _loss(logits, labels, weights)
  assert float(loss) == 0.0 and float(metrics['mrc_num']) == 0.0
  assert float(metrics['mrc_acc']) == 0.0
  assert float(metrics['mrc_majority_rate']) == 0.0
  assert np.all(np.asarray(_grad(logits, labels, weights)) == 0)


def test_out_of_range_label_is_loud_only_on_real_rows():
  logits = np.zeros((3, 4), np.float32)
  # -1 (an unknown relation) on a padding row: ignored.
  loss, _ = _loss(logits, np.array([1, 2, -1], np.int32),
                  np.array([1, 1, 0], np.float32))
  np.testing.assert_allclose(loss, np.log(4), rtol=1e-6)
  # On a real row: NaN, never a silently wrong class.
  for bad in (-1, 4):
    loss, _ = _loss(logits, np.array([1, 2, bad], np.int32),
                    np.ones(3, np.float32))
    assert np.isnan(float(loss))


def test_float64_and_shape_errors():
  with jax.enable_x64(True):
    logits = np.random.default_rng(2).normal(size=(4, 3))
    labels = np.array([0, 1, 2, 1])
    loss, _ = jax.jit(mrc.mrc_loss)(jnp.asarray(logits), jnp.asarray(labels),
                                    jnp.ones(4, jnp.float64))
    assert loss.dtype == jnp.float64
    np.testing.assert_allclose(loss, ref.weighted_ce(logits, labels,
                                                     np.ones(4))[0],
                               rtol=1e-12)
  with pytest.raises(ValueError, match='expected'):
    mrc.mrc_loss(jnp.zeros((4, 3)), jnp.zeros((4,), jnp.int32),
                 jnp.zeros((3,)))
