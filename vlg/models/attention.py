"""Multi-head attention: the projections, their sharding and row layouts.

``Attention`` projects queries, keys and values with ``layers.Dense`` and
runs the arithmetic of ``attention_math`` on them. Besides plain self- and
cross-attention it serves the fusion's ways of sharing work between rows:
``context_index`` (rows reading one of fewer context rows, whose keys and
values are projected once), ``fold`` (queries fewer than a head's width
never form keys and values) and :func:`group_rows` (several rows' queries as
one sequence over one context row). docs/architecture.md says where the
models use each.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlg import sharding
from vlg.models import attention_math
from vlg.models.layers import Dense, Initializer, dropout


_QKV_NAMES = ('batch', 'length', 'heads', 'kv')


class Attention(nnx.Module):
  """Multi-head attention with a boolean key mask.

  Query, key and value kernels are ``(embed, heads, kv)``; the output kernel
  is ``(heads, kv, embed)``. Keys and values may come from a context of a
  different width (``kv_dim``), as in cross-attention from text to image
  tokens. Masked keys get the most negative float32 before a float32
  softmax, so a query whose keys are all masked attends uniformly instead of
  producing NaNs.
  """

  def __init__(self, dim: int, num_heads: int, *, kv_dim: int | None = None,
               use_bias: bool = True, dropout_rate: float = 0.0,
               dtype: jnp.dtype = jnp.float32,
               kernel_init: Initializer | None = None, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f'width {dim} is not divisible by {num_heads} heads')
    head_dim = dim // num_heads
    kv_dim = kv_dim or dim
    self.dropout_rate = dropout_rate
    self.head_dim = head_dim
    qkv = ('embed', 'heads', 'kv')
    kw = dict(use_bias=use_bias, dtype=dtype, kernel_init=kernel_init,
              rngs=rngs)
    self.query = Dense(dim, (num_heads, head_dim), qkv, **kw)
    self.key = Dense(kv_dim, (num_heads, head_dim), qkv, **kw)
    self.value = Dense(kv_dim, (num_heads, head_dim), qkv, **kw)
    self.out = Dense((num_heads, head_dim), dim, ('heads', 'kv', 'embed'),
                     **kw)

  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               mask: jax.Array | None = None, *,
               rngs: nnx.Rngs | None = None,
               context_index: jax.Array | None = None,
               fold: bool = False) -> jax.Array:
    """Attends from ``x`` [B, Lq, D] to ``context`` [B, Lk, Dkv] (or ``x``).

    Args:
      x: queries' input.
      context: keys' and values' input; None for self-attention.
      mask: [B, Lk] key mask, True (or nonzero) where a key is visible, or
        [B, Lq, Lk] per query row (e.g. causal); None for all visible.
      rngs: dropout randomness for the attention probabilities.
      context_index: int [B]: query row b attends to context row
        ``context_index[b]`` of a ``context`` [C, Lk, Dkv] with C distinct
        rows (and a 2-D ``mask`` [C, Lk] follows the context). Keys and
        values are projected once per distinct row and then gathered: the
        values equal attending to ``context[context_index]``, for fewer
        FLOPs when rows repeat (ITM's 3B rows hold B distinct images).
      fold: (static) never project the keys and values
        (``attention_math.folded_attention``: the same values, cheaper when
        the queries are fewer than ``head_dim``).

    Returns:
      [B, Lq, D] in the module's dtype.
    """
    if fold:
      return self._folded(x, x if context is None else context, mask, rngs,
                          context_index)
    context = x if context is None else context
    v = _gather_rows(sharding.constrain(self.value(context), _QKV_NAMES),
                     context_index)
    probs = self.probabilities(x, context, mask, context_index)
    probs = dropout(probs, self.dropout_rate, rngs).astype(v.dtype)
    y = jnp.einsum('bhqk,bhkd->bhqd', probs, _heads_first(v))
    return self.out(jnp.transpose(y, (0, 2, 1, 3)))

  def _folded(self, x: jax.Array, context: jax.Array,
              mask: jax.Array | None, rngs: nnx.Rngs | None,
              context_index: jax.Array | None) -> jax.Array:
    """:meth:`__call__` with ``fold`` (``attention_math.folded_attention``)."""
    q = sharding.constrain(self.query(x), _QKV_NAMES)
    q = q * jnp.asarray(self.head_dim ** -0.5, q.dtype)
    y = attention_math.folded_attention(
        q, _gather_rows(context, context_index), self.key.kernel[...],
        _bias(self.key), self.value.kernel[...], _bias(self.value),
        _context_mask(mask, context_index),
        lambda p: dropout(p, self.dropout_rate, rngs))
    return self.out(y)

  def probabilities(self, x: jax.Array, context: jax.Array | None = None,
                    mask: jax.Array | None = None,
                    context_index: jax.Array | None = None) -> jax.Array:
    """float32 [B, heads, Lq, Lk]: the attention probabilities of the
    queries of ``x`` over the keys of ``context`` (or ``x``), before
    dropout; ``mask`` and ``context_index`` as in :meth:`__call__`. Probes
    read them (where a fusion layer's text looks in the image)."""
    context = x if context is None else context
    q = sharding.constrain(self.query(x), _QKV_NAMES)
    k = _gather_rows(sharding.constrain(self.key(context), _QKV_NAMES),
                     context_index)
    q = q * jnp.asarray(self.head_dim ** -0.5, q.dtype)
    logits = jnp.einsum('bhqd,bhkd->bhqk', _heads_first(q), _heads_first(k),
                        preferred_element_type=jnp.float32)
    return attention_math.masked_softmax(
        logits, _context_mask(mask, context_index))


def _bias(dense: Dense) -> jax.Array | None:
  """A dense map's bias values, or None when it has none."""
  return None if dense.bias is None else dense.bias[...]


def _context_mask(mask: jax.Array | None, context_index: jax.Array | None
                  ) -> jax.Array | None:
  """The key mask of each query row: ``mask[context_index]`` when rows read
  context rows by index (the mask must then be [C, Lk])."""
  if mask is None or context_index is None:
    return mask
  if mask.ndim != 2:
    raise ValueError('With context_index the key mask must be [C, Lk], '
                     f'one row per context row; got {mask.shape}')
  return mask[context_index]


def _heads_first(x: jax.Array) -> jax.Array:
  """[B, L, heads, kv] → [B, heads, L, kv]: both attention products then
  contract with (batch, head) leading, which XLA's CPU backend runs as
  plain batched matmuls (the head-interleaved einsums were 1.3–1.9x slower
  forward at the tiny model's 65 tokens and 4 heads)."""
  return jnp.transpose(x, (0, 2, 1, 3))


def group_rows(x: jax.Array, rows: int) -> jax.Array:
  """[G R, L, D] → [G, R L, D]: each group of ``rows`` consecutive rows as
  one sequence (``x`` itself for one row)."""
  if rows == 1:
    return x
  if rows < 1 or x.shape[0] % rows:
    raise ValueError(f'rows_per_context={rows} does not divide the '
                     f'{x.shape[0]} rows')
  return x.reshape((x.shape[0] // rows, rows * x.shape[1]) + x.shape[2:])


def _gather_rows(x: jax.Array, index: jax.Array | None) -> jax.Array:
  """``x[index]`` along the batch axis (``x`` itself when index is None)."""
  return x if index is None else x[index]
