"""Tests of vlg.models.layers: numerics against plain-numpy references
(the helpers are tests/module_params.py's)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
# tests/module_params.py
from module_params import apply, as_f64, build, randn, ref_layer_norm

from vlg.models import layers

D, HEADS, MLP = 8, 2, 16


@pytest.fixture(autouse=True)
def _no_eager_sharding():
  with nnx.use_eager_sharding(False):
    yield


def test_dense_contracts_trailing_dims_and_keeps_names():
  d = build(lambda r: layers.Dense((HEADS, D // HEADS), D,
                                  ('heads', 'kv', 'embed'), rngs=r))
  x = randn(2, 7, HEADS, D // HEADS)
  want = np.einsum('blhk,hke->ble', as_f64(x), as_f64(d.kernel[...])) + as_f64(
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
  x = randn(3, D, scale=10, shift=3)
  mu, var = as_f64(x).mean(-1, keepdims=True), as_f64(x).var(-1, keepdims=True)
  want = (x - mu) / np.sqrt(var + 1e-12) * np.arange(1, D + 1) + 0.5
  np.testing.assert_allclose(apply(ln, x), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ref_layer_norm(as_f64(x), ln, 1e-12), want,
                             rtol=1e-12)


def test_dropout_deterministic_without_rngs():
  x = jnp.ones((1000,))
  np.testing.assert_array_equal(layers.dropout(x, 0.5, None), x)
  y = np.asarray(layers.dropout(x, 0.5, nnx.Rngs(dropout=0)))
  assert set(np.unique(y)) <= {0.0, 2.0}
  assert 0.4 < (y == 0).mean() < 0.6


def test_mlp_head_is_xvlm_build_mlp():
  head = build(lambda r: layers.MlpHead(D, 2, dtype=jnp.bfloat16, rngs=r))
  assert head.fc1.kernel.shape == (D, 2 * D)
  assert head.fc1.kernel.get_metadata()['out_sharding'] == ('embed', 'mlp')
  assert head.norm.scale.shape == (2 * D,) and head.norm.eps == 1e-5
  assert head.fc2.kernel.shape == (2 * D, 2)
  assert apply(head, randn(3, D)).dtype == jnp.float32
