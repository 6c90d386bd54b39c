"""Module tests' helpers: numpy-drawn parameters, a jitted apply and
float64 references shared by tests/models/test_layers.py, test_attention.py
and test_blocks.py.

Modules get numpy-drawn parameters (``build``) and run under ``jax.jit``: on
CPU every eager op shape, initialisers included, costs its own XLA
compilation, which made these tests slow. Initialisers are tested with the
whole model in ``tests/models/test_albef.py``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


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


def as_f64(x):
  """``x`` as a float64 numpy array."""
  return np.asarray(x, np.float64)


def randn(*shape, seed=0, scale=1.0, shift=0.0):
  """float32 normal draws of ``shape``, scaled and shifted."""
  x = np.random.RandomState(seed).randn(*shape) * scale + shift
  return x.astype(np.float32)


def ref_layer_norm(x, ln, eps):
  """LayerNorm in float64 numpy from the module's parameters."""
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * as_f64(ln.scale[...]) + as_f64(
      ln.bias[...])
