"""The transformer blocks of the encoders: timm's pre-LN ViT block and
BERT's post-LN layer with ALBEF's optional cross-attention (the fusion).

Both follow ``layers``' conventions (float32 parameters with logical axis
names, computation in the module's ``dtype``, dropout randomness passed at
call time).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlg import sharding
from vlg.models import attention
from vlg.models.layers import LayerNorm, Mlp, dropout, trunc_normal_init


class ViTBlock(nnx.Module):
  """Pre-LN block (timm ``Block``): x += attn(LN(x)); x += mlp(LN(x))."""

  def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, eps: float,
               dropout_rate: float = 0.0, dtype: jnp.dtype = jnp.float32,
               rngs: nnx.Rngs):
    init = trunc_normal_init()
    self.dropout_rate = dropout_rate
    self.norm1 = LayerNorm(dim, eps=eps, dtype=dtype, rngs=rngs)
    self.attn = attention.Attention(dim, num_heads, dtype=dtype,
                                    kernel_init=init, rngs=rngs)
    self.norm2 = LayerNorm(dim, eps=eps, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(dim, mlp_dim, dtype=dtype, kernel_init=init,
                   dropout_rate=dropout_rate, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """x [B, N, D]; ``mask`` [B, N] restricts every token's keys (None: all)."""
    r = self.dropout_rate
    x = x + dropout(self.attn(self.norm1(x), mask=mask, rngs=rngs), r, rngs)
    x = x + dropout(self.mlp(self.norm2(x), rngs=rngs), r, rngs)
    return sharding.constrain(x, ('batch', 'length', 'embed'))


class BertLayer(nnx.Module):
  """Post-LN BERT layer, optionally with cross-attention (ALBEF fusion).

  x = LN(x + SelfAttn(x)); [x = LN(x + CrossAttn(x, image))];
  x = LN(x + FFN(x)). Dropout (BERT's hidden and attention-probability
  dropout) uses the same rate everywhere. Cross-attention keys and values
  are computed from the context width ``context_dim`` (the vision width).
  """

  def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, eps: float,
               context_dim: int | None = None, dropout_rate: float = 0.0,
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.dropout_rate = dropout_rate
    kw = dict(dropout_rate=dropout_rate, dtype=dtype, rngs=rngs)
    self.attn = attention.Attention(dim, num_heads, **kw)
    self.attn_norm = LayerNorm(dim, eps=eps, dtype=dtype, rngs=rngs)
    if context_dim is not None:
      self.cross = attention.Attention(dim, num_heads, kv_dim=context_dim,
                                       **kw)
      self.cross_norm = LayerNorm(dim, eps=eps, dtype=dtype, rngs=rngs)
    else:
      self.cross = nnx.data(None)
      self.cross_norm = nnx.data(None)
    self.mlp = Mlp(dim, mlp_dim, dtype=dtype, rngs=rngs)
    self.mlp_norm = LayerNorm(dim, eps=eps, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None,
               context: jax.Array | None = None,
               context_mask: jax.Array | None = None,
               context_index: jax.Array | None = None, *,
               rngs: nnx.Rngs | None = None,
               query_rows: int | None = None,
               rows_per_context: int = 1,
               self_attended: bool = False) -> jax.Array:
    """Self-attention over ``x`` with key ``mask``; cross-attends ``context``.

    Args:
      x: [B, L, D] hidden states.
      mask: [B, L] text key mask (None: all visible).
      context: [B, N, Dc] image tokens; required iff the layer has
        cross-attention.
      context_mask: [B, N] image key mask (None: all visible).
      context_index: int [B], row b reads image ``context_index[b]`` of a
        ``context`` [C, N, Dc] (and ``context_mask`` [C, N]); its keys and
        values are computed once per image (``Attention``'s argument).
      rngs: dropout randomness (None: deterministic).
      query_rows: (static) compute only the first ``query_rows`` positions'
        outputs, their self-attention still reading every key of ``x``.
        Every position's output depends on the others only through the
        self-attention's keys and values, so these rows equal the full
        layer's first rows; a last layer read only at [CLS] (ITM, boxes,
        MRC) needs ``query_rows=1`` and skips the rest of its work; its
        attentions then never form keys and values (``Attention``'s
        ``fold``).
      rows_per_context: (static) R: rows ``g R .. g R + R - 1`` of ``x``
        [G R, L, D] all read context row g of ``context`` [G, N, Dc] (and
        ``context_mask`` [G, N]). Cross-attention treats every query
        position alone, so it runs on the R rows' positions as one
        sequence of R L queries over the shared keys and values, which are
        projected once per context row; the values equal attending to each
        row's context repeated R times. Re-scoring many texts against one
        image (retrieval) then skips all but one of the image's key and
        value projections, without a gather.
      self_attended: (static) ``x`` is already :meth:`self_attend`'s output
        for this layer, whose self-attention is then skipped. In a first
        fusion layer that block reads the text alone, so a text fused with
        many images (retrieval's re-ranking) can run it once.

    Returns:
      [B, L, D] hidden states in the module's dtype ([B, query_rows, D]
      with ``query_rows``).
    """
    r = self.dropout_rate
    if self_attended:
      x = x if query_rows is None else x[:, :query_rows]
    else:
      x = self.self_attend(x, mask, rngs=rngs, query_rows=query_rows)
    if self.cross is not None:
      if context is None:
        raise ValueError('A fusion layer needs image tokens as context.')
      c = self.cross(attention.group_rows(x, rows_per_context), context,
                     context_mask, rngs=rngs, context_index=context_index,
                     fold=self._fold(query_rows, rows_per_context))
      x = self.cross_norm(x + dropout(c.reshape(x.shape), r, rngs))
    x = self.mlp_norm(x + dropout(self.mlp(x, rngs=rngs), r, rngs))
    return sharding.constrain(x, ('batch', 'length', 'embed'))

  def self_attend(self, x: jax.Array, mask: jax.Array | None = None, *,
                  rngs: nnx.Rngs | None = None,
                  query_rows: int | None = None) -> jax.Array:
    """The layer's first block, LN(q + SelfAttn(q over the keys of x)), q
    the first ``query_rows`` rows of ``x`` (all of them when None)."""
    q = x
    if query_rows is not None:
      q = x[:, :query_rows]
      if mask is not None and mask.ndim == 3:
        mask = mask[:, :query_rows]
    return self.attn_norm(q + dropout(
        self.attn(q, context=x, mask=mask, rngs=rngs,
                  fold=self._fold(query_rows)), self.dropout_rate, rngs))

  def _fold(self, query_rows: int | None, rows_per_context: int = 1
            ) -> bool:
    """Whether attention from ``query_rows`` positions of
    ``rows_per_context`` rows at a time skips forming keys and values
    (``Attention``'s ``fold``): when those queries are fewer than a
    head's width, as for a last layer read only at [CLS]."""
    return (query_rows is not None and
            query_rows * rows_per_context < self.attn.head_dim)

  def cross_attention_probs(self, x: jax.Array, mask: jax.Array | None,
                            context: jax.Array,
                            context_mask: jax.Array | None = None
                            ) -> jax.Array:
    """float32 [B, heads, L, N]: where this fusion layer's text, given the
    layer's input ``x``, attends in ``context`` (no dropout)."""
    if self.cross is None:
      raise ValueError('This layer has no cross-attention.')
    return self.cross.probabilities(self.self_attend(x, mask),
                                    context, context_mask)
