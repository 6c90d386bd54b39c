"""Attention arithmetic that ``attention.Attention`` runs on its projections.

Pure functions of arrays (no modules, no parameters of their own):

* :func:`masked_softmax`: float32 attention probabilities over the keys a
  mask shows.
* :func:`folded_attention`: attention of a few queries that never forms
  the keys and values. With queries q (already projected and scaled),
  key kernel Wk and value kernel Wv, ``softmax(q (C Wk + bk)ᵀ) (C Wv + bv)``
  is computed as ``softmax((q Wkᵀ) Cᵀ + q bkᵀ) C Wv + (Σ p) bv``: each
  query is mapped into the context's width, scored against the context
  tokens C themselves, and the probability-weighted context goes through
  the value kernel once a query. The same products in another order; per
  row it costs about Lq heads Lk Dc multiply-adds against Lk Dc D for the
  key and value projections, so it pays when the queries are fewer than
  a head's width: a last layer read only at [CLS] (ITM, boxes, MRC), whose
  self-attention and cross-attention then skip those projections.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_softmax(logits: jax.Array, mask: jax.Array | None) -> jax.Array:
  """float32 softmax of [B, heads, Lq, Lk] ``logits`` over the keys that
  ``mask`` ([B, Lk], or [B, Lq, Lk] per query; nonzero = visible) shows.
  Masked keys get the most negative float32, so a query whose keys are all
  masked attends uniformly instead of producing NaNs."""
  logits = logits.astype(jnp.float32)
  if mask is not None:
    visible = (mask.astype(bool)[:, None] if mask.ndim == 3
               else mask.astype(bool)[:, None, None, :])
    logits = jnp.where(visible, logits, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits, axis=-1)


def folded_attention(q: jax.Array, context: jax.Array,
                     key_kernel: jax.Array, key_bias: jax.Array | None,
                     value_kernel: jax.Array, value_bias: jax.Array | None,
                     mask: jax.Array | None, dropout_fn=None) -> jax.Array:
  """Multi-head attention without key and value projections (module
  docstring).

  Args:
    q: [B, Lq, heads, Dh] queries, projected and scaled, in the compute
      dtype.
    context: [B, Lk, Dc] the tokens keys and values would be projected from.
    key_kernel, value_kernel: [Dc, heads, Dh]; ``key_bias``,
      ``value_bias``: [heads, Dh] or None.
    mask: [B, Lk] or [B, Lq, Lk] key mask, or None.
    dropout_fn: applied to the float32 probabilities (attention dropout),
      or None.

  Returns:
    [B, Lq, heads, Dh] in ``q``'s dtype: what the probabilities' weighted
    sum of projected values would be.
  """
  dtype = q.dtype
  b, lq, heads, dh = q.shape
  context = context.astype(dtype)
  # Every product is a batched matmul with its batch axis first (heads, or
  # examples), the layout XLA's CPU backend runs as plain matmuls.
  per_head = jnp.transpose(q, (2, 0, 1, 3)).reshape(heads, b * lq, dh)
  q_in = jnp.einsum('hnd,hde->hne', per_head,
                    jnp.transpose(key_kernel.astype(dtype), (1, 2, 0)),
                    preferred_element_type=jnp.float32).astype(dtype)
  q_in = jnp.transpose(q_in.reshape(heads, b, lq, -1), (1, 0, 2, 3))
  logits = jnp.einsum('bne,bke->bnk', q_in.reshape(b, heads * lq, -1),
                      context, preferred_element_type=jnp.float32)
  logits = logits.reshape(b, heads, lq, -1)
  if key_bias is not None:  # A constant per query (elementwise, no dot).
    logits = logits + jnp.sum(
        q.astype(jnp.float32) * key_bias.astype(jnp.float32),
        axis=-1).transpose(0, 2, 1)[..., None]
  probs = masked_softmax(logits, mask)
  if dropout_fn is not None:
    probs = dropout_fn(probs)
  mixed = jnp.einsum('bnk,bke->bne',
                     probs.astype(dtype).reshape(b, heads * lq, -1), context,
                     preferred_element_type=jnp.float32).astype(dtype)
  mixed = jnp.transpose(mixed.reshape(b, heads, lq, -1),
                        (1, 0, 2, 3)).reshape(heads, b * lq, -1)
  y = jnp.einsum('hne,hed->hnd', mixed,
                 jnp.transpose(value_kernel.astype(dtype), (1, 0, 2)),
                 preferred_element_type=jnp.float32)
  y = jnp.transpose(y.reshape(heads, b, lq, dh), (1, 2, 0, 3))
  if value_bias is not None:  # Weighted by the probabilities' sum.
    y = y + (jnp.transpose(probs.sum(-1), (0, 2, 1))[..., None] *
             value_bias.astype(jnp.float32))
  return y.astype(dtype)
