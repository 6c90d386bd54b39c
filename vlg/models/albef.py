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
  mlm = model.mlm_logits(fused['fused_embeds'])
  # Heads that read [CLS] only: fuse_cls gives fused['fused_cls'] cheaper.
  itm = model.itm_logits(model.fuse_cls(txt['text_embeds'],
                                        batch['text_mask'],
                                        img['image_embeds']))

Parameter tree: ``vision`` (ViT), ``text`` (``embeddings``, ``layers``,
``fusion``, ``mlm_head``), ``vision_proj``, ``text_proj``, ``itm_head`` and
the scalar ``temp``; with ``config.box_head`` (the X-VLM family) a
``box_head`` and with ``config.mrc_classes > 0`` (the relation models) an
``mrc_head``. The same class serves ALBEF, X-VLM, ReALBEF and ReX-VLM: they
differ in heads and objectives, not in the encoders.

Visual concepts of a box (X-VLM, docs/objectives.md §3.1) come from one
image-encoder pass per image: :meth:`embed_concept` gathers each pair's
image tokens, replaces [CLS] by the mean of the in-box patch tokens and
returns the patch mask, which is then the cross-attention mask of
:meth:`fuse` — patches outside the box are invisible to the concept.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vlg.models import layers
from vlg.models import text
from vlg.models import vit


FUSION_POSEMBS = ('none', 'sincos2d')


def checked_fusion_posemb(value: str) -> str:
  """``value`` if it is one of :data:`FUSION_POSEMBS`, else ValueError."""
  if value not in FUSION_POSEMBS:
    raise ValueError(f'fusion_posemb={value!r}; valid: {FUSION_POSEMBS}')
  return value


class Model(nnx.Module):
  """ALBEF; see the module docstring and ``vlg/models/sizes.py`` for config."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    # Configs saved before init_std existed were initialised at 0.02.
    with layers.default_init_std(float(config.get('init_std',
                                                  layers.INIT_STD))):
      self._build(config, rngs)

  def _build(self, config: ml_collections.ConfigDict, rngs: nnx.Rngs):
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
    if config.get('box_head', False):
      self.box_head = layers.MlpHead(text_width, 4, dtype=dtype, rngs=rngs)
    num_relations = int(config.get('mrc_classes', 0))
    if num_relations > 0:
      hidden = int(config.get('mrc_hidden', 0)) or 4 * text_width
      self.mrc_head = MrcHead(text_width, hidden, num_relations, dtype=dtype,
                              rngs=rngs)
    self.fusion_posemb = checked_fusion_posemb(
        str(config.get('fusion_posemb', 'none')))
    temp = float(config.temp_init)
    self.temp = layers.make_param(
        rngs, lambda key, shape, dtype: jnp.full(shape, temp, dtype), (), ())

  def embed_image(self, image: jax.Array, token_mask: jax.Array | None = None,
                  *, rngs: nnx.Rngs | None = None,
                  return_layers: bool = False) -> dict[str, jax.Array]:
    """Encodes images.

    Args:
      image: [B, H, W, 3] pixels in 0..255 (uint8 or float). H, W may differ
        from ``config.image_size`` (position embeddings are interpolated).
      token_mask: [B, 1 + N] optional self-attention mask of the ViT (see
        ``VisionTransformer``); None: every token sees every token.
      rngs: dropout randomness (None: deterministic).

    Returns:
      ``image_embeds`` [B, 1 + N, Dv] (compute dtype, [CLS] first) and
      ``image_feat`` [B, E], the L2-normalised ``vision_proj`` of [CLS]
      (float32); with ``return_layers`` (static) also ``vision_layers``
      [depth + 1, B, 1 + N, Dv] (the probing taps ``vision_layer:k``).
    """
    out = {}
    if return_layers:
      x, out['vision_layers'] = self.vision(image, token_mask, rngs=rngs,
                                            return_layers=True)
    else:
      x = self.vision(image, token_mask, rngs=rngs)
    feat = layers.l2_normalize(self.vision_proj(x[:, 0],
                                                out_dtype=jnp.float32))
    return {'image_embeds': x, 'image_feat': feat, **out}

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
           rngs: nnx.Rngs | None = None,
           return_layers: bool = False) -> dict[str, jax.Array]:
    """Runs the fusion layers: text self-attention + cross-attention.

    Args:
      text_embeds: [B, L, Dt] from :meth:`embed_text`.
      text_mask: [B, L] text key mask.
      image_embeds: [B, N, Dv] image tokens (e.g. all of
        :meth:`embed_image`'s, [CLS] included).
      image_mask: [B, N], nonzero on visible image tokens; None: all.
      rngs: dropout randomness (None: deterministic).

    Returns:
      ``fused_embeds`` [B, L, Dt] and ``fused_cls`` [B, Dt] (its [CLS] row);
      with ``return_layers`` (static) also ``fusion_layers``
      [fusion_layers + 1, B, L, Dt] (the probing taps ``fusion_layer:k``).
    """
    image_embeds = self.fusion_tokens(image_embeds)
    if return_layers:
      x, stack = self.text.fuse(text_embeds, text_mask, image_embeds,
                                image_mask, rngs=rngs, return_layers=True)
      return {'fused_embeds': x, 'fused_cls': x[:, 0], 'fusion_layers': stack}
    x = self.text.fuse(text_embeds, text_mask, image_embeds, image_mask,
                       rngs=rngs)
    return {'fused_embeds': x, 'fused_cls': x[:, 0]}

  def fuse_cls(self, text_embeds: jax.Array, text_mask: jax.Array,
               image_embeds: jax.Array, image_mask: jax.Array | None = None,
               *, rngs: nnx.Rngs | None = None,
               image_index: jax.Array | None = None,
               rows_per_image: int = 1,
               self_attended: bool = False) -> jax.Array:
    """[B, Dt]: the fused [CLS] alone, equal to ``fuse(...)['fused_cls']``.

    The heads that read only [CLS] (ITM, boxes, MRC) take this: its last
    fusion layer computes the [CLS] row only (its self-attention still
    reads every text position), which skips that layer's projections,
    cross-attention queries and MLP for the other L − 1 positions: about
    a third of a two-layer fusion's FLOPs, exactly the same values.
    Arguments as :meth:`fuse`, and ``image_index`` (int [B]): text row b
    reads image ``image_index[b]`` of ``image_embeds`` [C, N, Dv] (and of
    ``image_mask`` [C, N]). Every cross-attention then projects each of
    the C images' keys and values once instead of once per row; the
    result equals passing ``image_embeds[image_index]``. ITM's 3B rows
    hold B distinct images, so this skips two thirds of those
    projections. ``rows_per_image`` R (static): text rows ``g R .. g R +
    R - 1`` of [G R, L, Dt] all read image g of ``image_embeds`` [G, N,
    Dv]; its keys and values are projected once, with no gather, and the
    result equals passing each image repeated R times (retrieval's
    re-ranking scores many texts against each image). With
    ``self_attended`` (static) ``text_embeds`` is :meth:`fusion_text`'s
    output, computed once for a text fused with many images.
    """
    if (image_index is None and
        image_embeds.shape[0] * rows_per_image != text_embeds.shape[0]):
      raise ValueError(
          f'fuse_cls: {text_embeds.shape[0]} text rows are not '
          f'rows_per_image={rows_per_image} for each of '
          f'{image_embeds.shape[0]} images')
    x = self.text.fuse(text_embeds, text_mask,
                       self.fusion_tokens(image_embeds), image_mask,
                       rngs=rngs, cls_only=True, image_index=image_index,
                       rows_per_image=rows_per_image,
                       self_attended=self_attended)
    return x[:, 0]

  def fusion_text(self, text_embeds: jax.Array, text_mask: jax.Array
                  ) -> jax.Array:
    """[B, L, Dt]: the fusion's first block, the self-attention of the
    first fusion layer, which reads the text alone (no image, no dropout).
    ``fuse_cls(fusion_text(t, m), m, image, self_attended=True)`` equals
    ``fuse_cls(t, m, image)``; retrieval's re-ranking fuses each text with
    up to ``k_test`` images and so runs this block once a text, not once a
    pair."""
    return self.text.fusion_text(text_embeds, text_mask)

  def fusion_tokens(self, image_embeds: jax.Array) -> jax.Array:
    """The image tokens [B, 1 + N, Dv] as the fusion reads them: with
    ``fusion_posemb='sincos2d'``, plus :func:`vit.sincos2d_posemb` of their
    square patch grid ([CLS] row zero; not a parameter), so cross-attention
    keys and values both carry each patch's position; unchanged with
    'none'.

    Why: a tower trained on captions keeps little of its input position
    embeddings in its output tokens, and a fusion reading those tokens did
    not learn to tell 'left of' from 'right of' even when trained on
    nothing else; with the table added, it did (docs/results.md, "Where
    the fusion reads position").

    Raises:
      ValueError: 'sincos2d' and the tokens are not [CLS] plus a square
        grid.
    """
    if self.fusion_posemb == 'none':
      return image_embeds
    n, dim = image_embeds.shape[-2] - 1, image_embeds.shape[-1]
    grid = math.isqrt(max(n, 0))
    if n < 1 or grid * grid != n:
      raise ValueError(
          f"fusion_posemb='sincos2d' needs [CLS] plus a square grid of "
          f'patch tokens; got {image_embeds.shape[-2]} tokens')
    table = vit.sincos2d_posemb(grid, dim).astype(image_embeds.dtype)
    return image_embeds + table

  def embed_concept(self, image_embeds: jax.Array, image_index: jax.Array,
                    patch_mask: jax.Array) -> dict[str, jax.Array]:
    """Visual concepts of boxes from per-image tokens (docs/objectives.md §3.1).

    Args:
      image_embeds: [Bi, 1 + N, Dv] from :meth:`embed_image` (one pass per
        distinct image).
      image_index: [P] int, the image of each (box, text) pair.
      patch_mask: [P, 1 + N], 1 on [CLS] and the patches the box covers
        (all ones for a whole-image pair).

    Returns:
      ``concept_embeds`` [P, 1 + N, Dv] (the image's tokens with [CLS]
      replaced by the mean of the in-box patch tokens), ``concept_mask``
      [P, 1 + N] (the cross-attention mask for :meth:`fuse`) and
      ``concept_feat`` [P, E] (L2-normalised ``vision_proj`` of that [CLS]).
      The mean accumulates in float32 and is cast back to the tokens'
      dtype; a row with no patch set (only padding can be) gets a zero
      [CLS] rather than NaN.
    """
    tokens = image_embeds[image_index]
    if patch_mask.shape != tokens.shape[:-1]:
      raise ValueError(f'embed_concept: patch_mask {patch_mask.shape} does '
                       f'not match the tokens {tokens.shape}')
    m = patch_mask.astype(jnp.float32)[:, 1:, None]
    pooled = (jnp.sum(tokens[:, 1:].astype(jnp.float32) * m, axis=1) /
              jnp.maximum(jnp.sum(m, axis=1), 1.0)).astype(tokens.dtype)
    tokens = tokens.at[:, 0].set(pooled)
    feat = layers.l2_normalize(self.vision_proj(pooled,
                                                out_dtype=jnp.float32))
    return {'concept_embeds': tokens, 'concept_mask': patch_mask,
            'concept_feat': feat}

  def predict_box(self, fused_cls: jax.Array) -> jax.Array:
    """[B, Dt] fused [CLS] of (full image, box text) → [B, 4] float32
    normalised (cx, cy, w, h) in (0, 1) (X-VLM's box head;
    docs/objectives.md §3.2)."""
    return jax.nn.sigmoid(self.box_head(fused_cls, out_dtype=jnp.float32))

  def mrc_logits(self, subject_cls: jax.Array, object_cls: jax.Array
                 ) -> jax.Array:
    """Fused [CLS] of subject and object concepts ([B, Dt] each) → [B, V]
    float32 relation logits (docs/objectives.md §5)."""
    return self.mrc_head(jnp.concatenate([subject_cls, object_cls], -1))

  def itm_logits(self, fused_cls: jax.Array) -> jax.Array:
    """[B, Dt] fused [CLS] → [B, 2] float32 logits; index 1 is "match"."""
    return self.itm_head(fused_cls, out_dtype=jnp.float32)

  def mlm_logits(self, fused_embeds: jax.Array) -> jax.Array:
    """[B, L, Dt] fused states → [B, L, V] float32 MLM logits."""
    return self.text.mlm_logits(fused_embeds)


class MrcHead(nnx.Module):
  """Masked relation classification head: [h_s; h_o] (2D) → hidden → ReLU →
  V logits, two layers (docs/objectives.md §5; hidden 4·D by default,
  which at D = 768 and V = 310 is the paper's 5.7M parameters)."""

  def __init__(self, dim: int, hidden: int, num_relations: int, *,
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.fc1 = layers.Dense(2 * dim, hidden, ('embed', 'mlp'), dtype=dtype,
                            rngs=rngs)
    self.fc2 = layers.Dense(hidden, num_relations, ('mlp', None),
                            dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.relu(self.fc1(x)), out_dtype=jnp.float32)
