"""ALBEF (Li et al., 2021): a ViT, a BERT split into text and fusion layers,
ITC projections, an ITM head, a tied MLM head and a learnable temperature.

The model knows nothing about losses: each method returns a dict of named
arrays that the objectives in ``vlg/objectives`` consume. Typical use,
functionally inside ``jax.jit``::

  model = nnx.merge(graphdef, params)
  img = model.embed_image(batch['image'])
  txt = model.embed_text(batch['text_ids'], batch['text_mask'])
  fused = model.fuse(txt['text_embeds'], batch['text_mask'],
                     img['image_embeds'])
  itm = model.itm_logits(fused['fused_cls'])
  mlm = model.mlm_logits(fused['fused_embeds'])

Parameter tree: ``vision`` (ViT), ``text`` (``embeddings``, ``layers``,
``fusion``, ``mlm_head``), ``vision_proj``, ``text_proj``, ``itm_head`` and
the scalar ``temp``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vlg.models import layers
from vlg.models import text
from vlg.models import vit


class Model(nnx.Module):
  """ALBEF; see the module docstring and ``vlg/models/sizes.py`` for config."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.dtype = dtype = jnp.dtype(config.dtype)
    vision_width, text_width = int(config.vision_width), int(config.text_width)
    embed_dim = int(config.embed_dim)
    self.vision = vit.VisionTransformer(config, rngs=rngs)
    self.text = text.TextEncoder(config, rngs=rngs)
    self.vision_proj = layers.Dense(vision_width, embed_dim, ('embed', None),
                                    dtype=dtype, rngs=rngs)
    self.text_proj = layers.Dense(text_width, embed_dim, ('embed', None),
                                  dtype=dtype, rngs=rngs)
    if config.itm_head == 'linear':
      self.itm_head = layers.Dense(text_width, 2, ('embed', None), dtype=dtype,
                                   rngs=rngs)
    elif config.itm_head == 'mlp':
      self.itm_head = layers.MlpHead(text_width, 2, dtype=dtype, rngs=rngs)
    else:
      raise ValueError(f'Unknown itm_head {config.itm_head!r}')
    temp = float(config.temp_init)
    self.temp = layers.make_param(
        rngs, lambda key, shape, dtype: jnp.full(shape, temp, dtype), (), ())

  def embed_image(self, image: jax.Array, *, rngs: nnx.Rngs | None = None
                  ) -> dict[str, jax.Array]:
    """Encodes images.

    Args:
      image: [B, H, W, 3] pixels in 0..255 (uint8 or float). H, W may differ
        from ``config.image_size`` (position embeddings are interpolated).
      rngs: dropout randomness (None: deterministic).

    Returns:
      ``image_embeds`` [B, 1 + N, Dv] (compute dtype, [CLS] first) and
      ``image_feat`` [B, E], the L2-normalised ``vision_proj`` of [CLS]
      (float32).
    """
    x = self.vision(image, rngs=rngs)
    feat = layers.l2_normalize(self.vision_proj(x[:, 0],
                                                out_dtype=jnp.float32))
    return {'image_embeds': x, 'image_feat': feat}

  def embed_text(self, text_ids: jax.Array, text_mask: jax.Array, *,
                 rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """Encodes texts with the text-only layers.

    Args:
      text_ids: [B, L] int token ids, [CLS] first.
      text_mask: [B, L], nonzero on real tokens; padded positions are never
        attended to, so their ids do not affect any real token.
      rngs: dropout randomness (None: deterministic).

    Returns:
      ``text_embeds`` [B, L, Dt] (compute dtype) and ``text_feat`` [B, E],
      the L2-normalised ``text_proj`` of [CLS] (float32).
    """
    x = self.text.encode(text_ids, text_mask, rngs=rngs)
    feat = layers.l2_normalize(self.text_proj(x[:, 0], out_dtype=jnp.float32))
    return {'text_embeds': x, 'text_feat': feat}

  def fuse(self, text_embeds: jax.Array, text_mask: jax.Array,
           image_embeds: jax.Array, image_mask: jax.Array | None = None, *,
           rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """Runs the fusion layers: text self-attention + cross-attention.

    Args:
      text_embeds: [B, L, Dt] from :meth:`embed_text`.
      text_mask: [B, L] text key mask.
      image_embeds: [B, N, Dv] image tokens (e.g. all of
        :meth:`embed_image`'s, [CLS] included).
      image_mask: [B, N], nonzero on visible image tokens; None: all.
      rngs: dropout randomness (None: deterministic).

    Returns:
      ``fused_embeds`` [B, L, Dt] and ``fused_cls`` [B, Dt] (its [CLS] row).
    """
    x = self.text.fuse(text_embeds, text_mask, image_embeds, image_mask,
                       rngs=rngs)
    return {'fused_embeds': x, 'fused_cls': x[:, 0]}

  def itm_logits(self, fused_cls: jax.Array) -> jax.Array:
    """[B, Dt] fused [CLS] → [B, 2] float32 logits; index 1 is "match"."""
    return self.itm_head(fused_cls, out_dtype=jnp.float32)

  def mlm_logits(self, fused_embeds: jax.Array) -> jax.Array:
    """[B, L, Dt] fused states → [B, L, V] float32 MLM logits."""
    return self.text.mlm_logits(fused_embeds)
