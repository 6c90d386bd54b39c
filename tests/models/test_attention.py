"""Tests of vlg.models.attention: the module against a float64 numpy
attention of its own parameters, plain and folded."""

import jax
import numpy as np
import pytest
from flax import nnx
from module_params import apply, as_f64, build, randn  # tests/module_params.py

from vlg.models import attention

D, HEADS, CTX = 8, 2, 6


@pytest.fixture(autouse=True)
def _no_eager_sharding():
  with nnx.use_eager_sharding(False):
    yield


def _ref_attention(attn, x, ctx, mask):
  """Multi-head attention in float64 numpy from the module's parameters."""
  def proj(dense, inp):
    return (np.einsum('bld,dhk->blhk', as_f64(inp), as_f64(dense.kernel[...]))
            + as_f64(dense.bias[...]))
  q, k, v = proj(attn.query, x), proj(attn.key, ctx), proj(attn.value, ctx)
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
  logits = np.where(mask[:, None, None, :], logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  y = np.einsum('bhqk,bkhd->bqhd', probs, v)
  return (np.einsum('bqhd,hde->bqe', y, as_f64(attn.out.kernel[...]))
          + as_f64(attn.out.bias[...]))


def test_attention_matches_reference_with_mask():
  attn = build(lambda r: attention.Attention(D, HEADS, kv_dim=CTX, rngs=r))
  x, ctx = randn(2, 5, D), randn(2, 7, CTX, seed=1)
  mask = np.ones((2, 7), bool)
  mask[0, 3:] = False
  y = apply(attn, x, ctx, mask)
  assert y.shape == (2, 5, D)
  np.testing.assert_allclose(y, _ref_attention(attn, x, ctx, mask),
                             rtol=1e-4, atol=1e-5)
  # Masked keys cannot influence the output; visible ones do.
  ctx2 = ctx.copy()
  ctx2[0, 3:] += 100.0
  np.testing.assert_array_equal(apply(attn, x, ctx2, mask)[0], y[0])
  ctx2[0, 0] += 1.0
  assert not np.allclose(apply(attn, x, ctx2, mask)[0], y[0])


def _folded(module, *args, **kwargs):
  """``module(*args, fold=True, **kwargs)`` under ``jax.jit``."""
  graphdef, state = nnx.split(module)
  return jax.jit(lambda st, a, k: nnx.merge(graphdef, st)(
      *a, fold=True, **k))(state, args, kwargs)


@pytest.mark.parametrize('per_query', [False, True])
def test_folded_attention_matches_reference(per_query):
  """``fold=True`` never forms keys and values; its output must be the
  float64 attention of the module's parameters, with a key mask (one per
  row, or one per query) and with rows reading context rows by index."""
  attn = build(lambda r: attention.Attention(D, HEADS, kv_dim=CTX, rngs=r))
  x, ctx = randn(3, 2, D), randn(3, 7, CTX, seed=1)
  mask = np.ones((3, 7), bool)
  mask[0, 3:] = False
  if per_query:
    mask = np.repeat(mask[:, None], 2, axis=1)
    mask[1, 0, :5] = False  # The two queries of row 1 see different keys.
    ref = np.stack([_ref_attention(attn, x[:, q:q + 1], ctx, mask[:, q])[:, 0]
                    for q in range(2)], axis=1)
  else:
    ref = _ref_attention(attn, x, ctx, mask)
  y = _folded(attn, x, ctx, mask)
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(y, apply(attn, x, ctx, mask), rtol=1e-5,
                             atol=1e-5)
  if not per_query:  # Rows 0, 2, 0 read context rows 2, 0, 2.
    index = np.array([2, 0, 2])
    np.testing.assert_allclose(
        _folded(attn, x, ctx, mask, context_index=index),
        _ref_attention(attn, x, ctx[index], mask[index]),
        rtol=1e-4, atol=1e-5)


def test_attention_fully_masked_query_rows_stay_finite():
  attn = build(lambda r: attention.Attention(D, HEADS, rngs=r))
  mask = np.array([[0, 0, 0, 0], [1, 1, 0, 0]])
  y = apply(attn, randn(2, 4, D), mask=mask)
  assert np.isfinite(np.asarray(y)).all()
