"""Tests of vlg.models.layers: numerics against plain-numpy references.

Modules get numpy-drawn parameters (``build``) and run under ``jax.jit``:
on CPU every eager op shape, initialisers included, costs its own XLA
compilation, which made these tests slow. Initialisers are tested with the
whole model in ``test_albef.py``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlg.models import layers

D, HEADS, MLP, CTX = 8, 2, 16, 6


@pytest.fixture(autouse=True)
def _no_eager_sharding():
  with nnx.use_eager_sharding(False):
    yield


def build(make, seed=0):
  """``make(rngs)``'s module with N(0, 0.3) weights, LN scales near 1."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(0))))
  rng = np.random.RandomState(seed)

  def draw(path, x):
    scale = path[-1].key == 'scale'
    v = rng.randn(*x.shape) * (0.1 if scale else 0.3) + scale
    return jnp.asarray(v, x.dtype)

  pure = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state))
  return nnx.merge(graphdef, pure)


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, args, kwargs):
  return nnx.merge(graphdef, state)(*args, **kwargs)


def apply(module, *args, **kwargs):
  """``module(*args, **kwargs)`` under ``jax.jit``."""
  graphdef, state = nnx.split(module)
  return _apply(graphdef, state, args, kwargs)


def _np(x):
  return np.asarray(x, np.float64)


def _randn(*shape, seed=0, scale=1.0, shift=0.0):
  x = np.random.RandomState(seed).randn(*shape) * scale + shift
  return x.astype(np.float32)


def _ref_layer_norm(x, ln, eps):
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * _np(ln.scale[...]) + _np(
      ln.bias[...])


def _ref_attention(attn, x, ctx, mask):
  """Multi-head attention in float64 numpy from the module's parameters."""
  def proj(dense, inp):
    return (np.einsum('bld,dhk->blhk', _np(inp), _np(dense.kernel[...]))
            + _np(dense.bias[...]))
  q, k, v = proj(attn.query, x), proj(attn.key, ctx), proj(attn.value, ctx)
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
  logits = np.where(mask[:, None, None, :], logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  y = np.einsum('bhqk,bkhd->bqhd', probs, v)
  return (np.einsum('bqhd,hde->bqe', y, _np(attn.out.kernel[...]))
          + _np(attn.out.bias[...]))


def test_dense_contracts_trailing_dims_and_keeps_names():
  d = build(lambda r: layers.Dense((HEADS, D // HEADS), D,
                                  ('heads', 'kv', 'embed'), rngs=r))
  x = _randn(2, 7, HEADS, D // HEADS)
  want = np.einsum('blhk,hke->ble', _np(x), _np(d.kernel[...])) + _np(
      d.bias[...])
  np.testing.assert_allclose(apply(d, x), want, atol=1e-5)
  assert d.kernel.get_metadata()['out_sharding'] == ('heads', 'kv', 'embed')
  assert d.bias.get_metadata()['out_sharding'] == ('embed',)
  with pytest.raises(ValueError, match='axis names'):
    layers.Dense(D, MLP, ('embed',), rngs=nnx.Rngs(0))


def test_bfloat16_compute_keeps_float32_params():
  d = build(lambda r: layers.Dense(D, MLP, ('embed', 'mlp'),
                                  dtype=jnp.bfloat16, rngs=r))
  ln = build(lambda r: layers.LayerNorm(MLP, eps=1e-6, dtype=jnp.bfloat16,
                                        rngs=r))
  x = np.ones((2, D), np.float32)
  assert d.kernel[...].dtype == jnp.float32
  assert ln.scale[...].dtype == jnp.float32
  assert jax.eval_shape(d, x).dtype == jnp.bfloat16
  assert jax.eval_shape(
      lambda x: d(x, out_dtype=jnp.float32), x).dtype == jnp.float32
  assert jax.eval_shape(lambda x: ln(d(x)), x).dtype == jnp.bfloat16


def test_gelu_is_the_exact_erf_gelu_in_value_and_gradient():
  """Against a float64 re-derivation: x Phi(x), derivative Phi(x) + x phi(x)."""
  from scipy import special
  x = np.concatenate([np.linspace(-9, 9, 301), [0.0, -1e-3, 1e-3]])
  phi = np.exp(-0.5 * x**2) / np.sqrt(2 * np.pi)
  cdf = 0.5 * (1 + special.erf(x / np.sqrt(2)))
  xf = jnp.asarray(x, jnp.float32)
  value = jax.jit(layers.gelu)(xf)
  grad = jax.jit(jax.vmap(jax.grad(layers.gelu)))(xf)
  np.testing.assert_allclose(value, x * cdf, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(grad, cdf + x * phi, rtol=1e-5, atol=1e-6)
  # jax.nn.gelu's erfc form: the same function to float32 rounding.
  np.testing.assert_allclose(value, jax.nn.gelu(xf, approximate=False),
                             atol=1e-6)
  assert layers.gelu(xf.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_layer_norm_matches_numpy():
  ln = build(lambda r: layers.LayerNorm(D, eps=1e-12, rngs=r))
  ln.scale[...] = np.arange(1.0, D + 1, dtype=np.float32)
  ln.bias[...] = np.full((D,), 0.5, np.float32)
  x = _randn(3, D, scale=10, shift=3)
  mu, var = _np(x).mean(-1, keepdims=True), _np(x).var(-1, keepdims=True)
  want = (x - mu) / np.sqrt(var + 1e-12) * np.arange(1, D + 1) + 0.5
  np.testing.assert_allclose(apply(ln, x), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(_ref_layer_norm(_np(x), ln, 1e-12), want,
                             rtol=1e-12)


def test_attention_matches_reference_with_mask():
  attn = build(lambda r: layers.Attention(D, HEADS, kv_dim=CTX, rngs=r))
  x, ctx = _randn(2, 5, D), _randn(2, 7, CTX, seed=1)
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
  attn = build(lambda r: layers.Attention(D, HEADS, kv_dim=CTX, rngs=r))
  x, ctx = _randn(3, 2, D), _randn(3, 7, CTX, seed=1)
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
  attn = build(lambda r: layers.Attention(D, HEADS, rngs=r))
  mask = np.array([[0, 0, 0, 0], [1, 1, 0, 0]])
  y = apply(attn, _randn(2, 4, D), mask=mask)
  assert np.isfinite(np.asarray(y)).all()


def test_dropout_deterministic_without_rngs():
  x = jnp.ones((1000,))
  np.testing.assert_array_equal(layers.dropout(x, 0.5, None), x)
  y = np.asarray(layers.dropout(x, 0.5, nnx.Rngs(dropout=0)))
  assert set(np.unique(y)) <= {0.0, 2.0}
  assert 0.4 < (y == 0).mean() < 0.6


def _zero(*denses):
  for dense in denses:
    dense.kernel[...] = np.zeros(dense.kernel.shape, np.float32)
    dense.bias[...] = np.zeros(dense.bias.shape, np.float32)


def test_vit_block_is_pre_ln_residual():
  block = build(lambda r: layers.ViTBlock(D, HEADS, MLP, eps=1e-6, rngs=r))
  x = _randn(2, 3, D, scale=5)
  assert not np.allclose(apply(block, x), x)
  # With both branches' output projections zeroed a pre-LN block is the
  # identity (the residual stream is never normalised).
  _zero(block.attn.out, block.mlp.fc2)
  np.testing.assert_allclose(apply(block, x), x, atol=1e-6)


def test_bert_layer_is_post_ln_and_cross_attends():
  layer = build(lambda r: layers.BertLayer(D, HEADS, MLP, eps=1e-12,
                                           context_dim=CTX, rngs=r))
  x, ctx = _randn(2, 3, D, scale=5, shift=2), _randn(2, 4, CTX, seed=1)
  mask = np.ones((2, 3), np.int32)
  y = apply(layer, x, mask, ctx)
  assert y.shape == (2, 3, D)
  assert not np.allclose(apply(layer, x, mask, ctx + 1.0), y)
  with pytest.raises(ValueError, match='context'):
    jax.eval_shape(layer, x, mask)
  # With the branches' outputs zeroed, a post-LN layer is its three
  # LayerNorms applied in turn to the residual stream.
  _zero(layer.attn.out, layer.cross.out, layer.mlp.fc2)
  want = _np(x)
  for ln in (layer.attn_norm, layer.cross_norm, layer.mlp_norm):
    want = _ref_layer_norm(want, ln, 1e-12)
  np.testing.assert_allclose(apply(layer, x, mask, ctx), want, atol=1e-5)


def test_mlp_head_is_xvlm_build_mlp():
  head = build(lambda r: layers.MlpHead(D, 2, dtype=jnp.bfloat16, rngs=r))
  assert head.fc1.kernel.shape == (D, 2 * D)
  assert head.fc1.kernel.get_metadata()['out_sharding'] == ('embed', 'mlp')
  assert head.norm.scale.shape == (2 * D,) and head.norm.eps == 1e-5
  assert head.fc2.kernel.shape == (2 * D, 2)
  assert apply(head, _randn(3, D)).dtype == jnp.float32
