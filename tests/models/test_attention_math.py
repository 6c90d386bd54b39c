"""Tests of vlg.models.attention_math against float64 numpy attention."""

import jax.numpy as jnp
import numpy as np

from vlg.models import attention_math

B, LQ, LK, HEADS, DH, DC = 2, 3, 6, 2, 4, 5


def _draw(*shape, seed):
  return np.random.RandomState(seed).randn(*shape)


def _reference(q, ctx, wk, bk, wv, bv, mask, keep):
  """Keys and values projected, float64; ``keep`` [B, heads, Lq, Lk]
  multiplies the probabilities (a fixed attention dropout)."""
  k = np.einsum('bke,ehd->bkhd', ctx, wk) + bk
  v = np.einsum('bke,ehd->bkhd', ctx, wv) + bv
  logits = np.einsum('bqhd,bkhd->bhqk', q, k)
  logits = np.where(mask[:, None, None, :], logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p = p / p.sum(-1, keepdims=True) * keep
  return np.einsum('bhqk,bkhd->bqhd', p, v)


def test_folded_attention_equals_projected_keys_and_values():
  q, ctx = _draw(B, LQ, HEADS, DH, seed=0), _draw(B, LK, DC, seed=1)
  wk, wv = _draw(DC, HEADS, DH, seed=2), _draw(DC, HEADS, DH, seed=3)
  bk, bv = _draw(HEADS, DH, seed=4), _draw(HEADS, DH, seed=5)
  mask = np.ones((B, LK), bool)
  mask[1, 4:] = False
  # Dropped probabilities: the value bias then counts their sum, not 1.
  keep = (np.random.RandomState(6).rand(B, HEADS, LQ, LK) > 0.3) * 1.5
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  got = attention_math.folded_attention(
      f32(q), f32(ctx), f32(wk), f32(bk), f32(wv), f32(bv), mask,
      lambda p: p * f32(keep))
  want = _reference(q, ctx, wk, bk, wv, bv, mask, keep)
  assert got.shape == (B, LQ, HEADS, DH) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
  # Without biases or dropout.
  got = attention_math.folded_attention(f32(q), f32(ctx), f32(wk), None,
                                        f32(wv), None, None)
  want = _reference(q, ctx, wk, 0.0, wv, 0.0, np.ones((B, LK), bool), 1.0)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_masked_softmax_all_masked_row_is_uniform():
  logits = jnp.asarray(_draw(1, 1, 2, 4, seed=0), jnp.float32)
  mask = np.array([[[0, 0, 0, 0], [1, 1, 0, 0]]], bool)  # Per query.
  p = np.asarray(attention_math.masked_softmax(logits, mask))
  np.testing.assert_allclose(p[0, 0, 0], np.full(4, 0.25), rtol=1e-6)
  assert np.all(p[0, 0, 1, 2:] == 0) and np.isclose(p[0, 0, 1].sum(), 1)
