"""BERT-style text encoder split into text-only and fusion layers (ALBEF).

ALBEF runs one 12-layer BERT in two modes: layers 0-5 encode the text alone
(for ITC), layers 6-11 add cross-attention to the image tokens (for ITM and
MLM). :class:`TextEncoder` keeps both stacks and the MLM head so the model
can call them separately: :meth:`TextEncoder.encode` then
:meth:`TextEncoder.fuse` (text-mode output is fused without re-encoding),
and :meth:`TextEncoder.mlm_logits` on the fused states.

Differences from the PyTorch BERT, kept for simplicity: no token-type
embeddings (ALBEF always uses type 0; a checkpoint converter adds row 0 of
``token_type_embeddings`` to the position embeddings) and no pooler (ALBEF
builds BERT with ``add_pooling_layer=False``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vlg import sharding
from vlg.models import blocks
from vlg.models import layers


class TextEmbeddings(nnx.Module):
  """Word + learned position embeddings, LayerNorm, dropout."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    dim = int(config.text_width)
    self.dtype = jnp.dtype(config.dtype)
    self.dropout_rate = float(config.dropout)
    init = layers.normal_init()
    self.word = layers.make_param(rngs, init, (int(config.vocab_size), dim),
                                  ('vocab', 'embed'))
    self.position = layers.make_param(
        rngs, init, (int(config.max_positions), dim), (None, 'embed'))
    self.norm = layers.LayerNorm(dim, eps=float(config.text_ln_eps),
                                 dtype=self.dtype, rngs=rngs)

  def __call__(self, ids: jax.Array, *, rngs: nnx.Rngs | None = None
               ) -> jax.Array:
    length = ids.shape[1]
    if length > self.position.shape[0]:
      raise ValueError(f'text length {length} exceeds max_positions '
                       f'{self.position.shape[0]}')
    # Gather from a table whose embed dim is whole (FSDP gathers it anyway);
    # a gather from a table sharded on embed would need a full reshard to
    # the batch-sharded output.
    table = sharding.constrain(self.word[...], ('vocab', None))
    x = jnp.take(table, ids, axis=0) + self.position[:length]
    x = self.norm(x)
    x = sharding.constrain(x, ('batch', 'length', 'embed'))
    return layers.dropout(x, self.dropout_rate, rngs)


class MlmHead(nnx.Module):
  """BERT's LM head: Dense + GELU + LayerNorm, then the tied decoder.

  The decoder matrix is the word-embedding matrix, passed in at call time
  (never a shared submodule, so the model stays a tree); only the output
  bias is the head's own.
  """

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    dim = int(config.text_width)
    dtype = jnp.dtype(config.dtype)
    self.dtype = dtype
    self.dense = layers.Dense(dim, dim, ('embed', 'mlp'), dtype=dtype,
                              rngs=rngs)
    self.norm = layers.LayerNorm(dim, eps=float(config.text_ln_eps),
                                 dtype=dtype, rngs=rngs)
    self.bias = layers.make_param(rngs, nnx.initializers.zeros,
                                  (int(config.vocab_size),), ('vocab',))

  def __call__(self, x: jax.Array, word_embeddings: jax.Array) -> jax.Array:
    """[B, L, D] hidden states → [B, L, V] float32 logits."""
    h = self.norm(layers.gelu(self.dense(x)))
    logits = jnp.einsum('bld,vd->blv', h, word_embeddings.astype(h.dtype),
                        preferred_element_type=jnp.float32)
    logits = logits + self.bias[...]
    return sharding.constrain(logits, ('batch', 'length', 'vocab'))


class TextEncoder(nnx.Module):
  """Embeddings, ``text_layers`` text-only layers, ``fusion_layers`` fusion
  layers (with cross-attention to ``vision_width`` tokens) and the MLM head.

  Config fields: ``text_width``, ``text_layers``, ``fusion_layers``,
  ``text_heads``, ``text_mlp``, ``vocab_size``, ``max_positions``,
  ``text_ln_eps``, ``vision_width``, ``dropout``, ``dtype``, ``remat``.
  """

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    dim = int(config.text_width)
    kw = dict(eps=float(config.text_ln_eps),
              dropout_rate=float(config.dropout),
              dtype=jnp.dtype(config.dtype), rngs=rngs)
    heads, mlp = int(config.text_heads), int(config.text_mlp)
    self.remat = layers.check_remat(str(config.get('remat', 'none')))
    self.embeddings = TextEmbeddings(config, rngs=rngs)
    self.layers = nnx.List([blocks.BertLayer(dim, heads, mlp, **kw)
                            for _ in range(int(config.text_layers))])
    self.fusion = nnx.List([
        blocks.BertLayer(dim, heads, mlp, context_dim=int(config.vision_width),
                         **kw)
        for _ in range(int(config.fusion_layers))])
    self.mlm_head = MlmHead(config, rngs=rngs)

  def encode(self, ids: jax.Array, mask: jax.Array, *,
             rngs: nnx.Rngs | None = None) -> jax.Array:
    """Text-only mode: ids [B, L], mask [B, L] → hidden states [B, L, D]."""
    x = self.embeddings(ids, rngs=rngs)
    for layer in self.layers:
      x = layers.call_block(layer, x, mask, remat=self.remat, rngs=rngs)
    return x

  def fuse(self, x: jax.Array, mask: jax.Array, image: jax.Array,
           image_mask: jax.Array | None = None, *,
           rngs: nnx.Rngs | None = None, return_layers: bool = False,
           cls_only: bool = False, image_index: jax.Array | None = None,
           rows_per_image: int = 1, self_attended: bool = False
           ) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Fusion mode on text-mode states ``x`` with image tokens ``image``.

    With ``image_index`` (int [B]) text row b reads image
    ``image_index[b]`` of ``image`` [C, N, Dv]: every cross-attention
    projects each image's keys and values once (``BertLayer``). With
    ``rows_per_image`` R (static) rows ``g R .. g R + R - 1`` of ``x``
    [G R, L, D] read image g of ``image`` [G, N, Dv], whose keys and values
    each cross-attention also projects once (``BertLayer``'s
    ``rows_per_context``).

    With ``return_layers`` (static) also returns the stack
    [fusion_layers + 1, B, L, D] of the input and every fusion layer's output.
    With ``cls_only`` (static) the last layer computes the [CLS] row alone
    (``BertLayer``'s ``query_rows=1``) and the result is [B, 1, D].
    With ``self_attended`` (static) ``x`` is :meth:`fusion_text`'s output
    and the first layer starts at its cross-attention.
    """
    if cls_only and return_layers:
      raise ValueError('fuse: cls_only and return_layers exclude each other')
    states = [x]
    last = len(self.fusion) - 1
    for i, layer in enumerate(self.fusion):
      rows = 1 if cls_only and i == last else None
      x = layers.call_block(layer, x, mask, image, image_mask, image_index,
                            remat=self.remat, rngs=rngs, query_rows=rows,
                            rows_per_context=rows_per_image,
                            self_attended=self_attended and i == 0)
      states.append(x)
    if cls_only and last < 0:
      x = x[:, :1]
    return (x, jnp.stack(states)) if return_layers else x

  def fusion_text(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """The part of the fusion that reads the text alone: the first fusion
    layer's self-attention block on text-mode states ``x`` [B, L, D] (``x``
    itself when there are no fusion layers). :meth:`fuse` with
    ``self_attended`` continues from it."""
    if not len(self.fusion):
      return x
    return self.fusion[0].self_attend(x, mask)

  def mlm_logits(self, x: jax.Array) -> jax.Array:
    """[B, L, D] fused states → [B, L, V] logits (decoder tied to words)."""
    return self.mlm_head(x, self.embeddings.word[...])
