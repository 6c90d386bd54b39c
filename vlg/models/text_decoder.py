"""A small text transformer that gives the Perceiver a stage-1 text path.

The Perceiver Resampler (``vlg.models.perceiver``) reads only the image, so
its stage-1 training (docs/probing.md §6.3 item 3) needs a text model beside
it. :class:`TextDecoder` is one BERT-style stack of post-LN layers (vlg's
text layers' style, ``blocks.BertLayer``) run in two modes that share every
weight, as the Q-Former's text stream does in BLIP-2:

* ``'text'`` (ITC): bidirectional self-attention over the real tokens, no
  cross-attention; the text feature is the projected, L2-normalised row of
  the first token ([CLS]). Why [CLS] of a bidirectional pass: it is exactly
  the Q-Former's ITC text feature (its 'text' mode), so the Perceiver's and
  the Q-Former's stage 1 differ only in the resampler (and ITM); a causal
  pass's first token would see only itself, and a causal mean would weight
  early tokens more than late ones. Sharing the stack (BLIP-style) rather
  than adding a separate encoder keeps the extra parameters small.
* ``'decoder'`` (ITG, Flamingo-style LM loss): causal self-attention over
  the real tokens and, on layers ``l % cross_attention_freq == 0``,
  cross-attention from every text row to the Perceiver's latents, then the
  LM head (BERT's MLM head, decoder tied to the word embeddings). The
  first token is [DEC] (``vocab_size - 1`` by vlg's convention: the
  tokenizer's vocabulary plus one row). Flamingo gates its cross-attention
  with tanh(0) because its LM is pretrained and frozen; this decoder is
  trained from scratch with the latents, so the layers are plain residuals.

Per layer: ``x = LN(x + SelfAttn_M(x))``; ``x = LN(x + CrossAttn(x,
latents))`` (decoder mode, cross layers only); ``x = LN(x + FFN(x))``.

The module also holds the stage-1 ITC heads (``vision_proj`` from the
latent width, ``text_proj``, the temperature ``temp``), so a Perceiver
stage-1 model is the pair ``{perceiver, decoder}`` (parameter names as the
Q-Former's heads). Every parameter carries logical axis names; the config
comes from :func:`decoder_config`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vlg import sharding
from vlg.models import attention
from vlg.models import layers
from vlg.models import text

MODES = ('text', 'decoder')

_SIZES: dict[str, dict[str, Any]] = {
    'tiny': dict(layers=2, width=128, heads=4, mlp=512, embed_dim=64,
                 max_positions=64, dropout=0.0),
    # Half of the Q-Former's BERT-base text stream: the decoder only has to
    # carry a caption's LM, its capacity is not what the probes measure.
    'base': dict(layers=6, width=768, heads=12, mlp=3072, embed_dim=256,
                 max_positions=512, dropout=0.1),
}
_COMMON = dict(cross_attention_freq=1, latent_width=128, vocab_size=1024,
               ln_eps=1e-12, temp_init=0.07, dtype='float32')


def decoder_config(size: str, latent_width: int | None = None,
                   vocab_size: int | None = None,
                   **overrides: Any) -> ml_collections.ConfigDict:
  """The config of a :class:`TextDecoder` of ``size`` ('tiny' | 'base').

  Args:
    size: 'tiny' (synthetic world on CPU) or 'base'.
    latent_width: width of the latents it cross-attends to (the Perceiver's
      width); None keeps the default.
    vocab_size: rows of the word table (the tokenizer's plus [DEC]); None
      keeps the default.
    **overrides: values for existing fields (a misspelt field is an error).

  Returns:
    An unlocked ConfigDict.
  """
  if size not in _SIZES:
    raise ValueError(f'Unknown text decoder size {size!r}; valid: '
                     f'{sorted(_SIZES)}')
  fields = dict(_COMMON, **_SIZES[size])
  if latent_width is not None:
    fields['latent_width'] = int(latent_width)
  if vocab_size is not None:
    fields['vocab_size'] = int(vocab_size)
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise KeyError(f'Unknown text decoder config fields {unknown}')
  fields.update(overrides)
  if int(fields['cross_attention_freq']) < 1:
    raise ValueError('cross_attention_freq must be >= 1, got '
                     f"{fields['cross_attention_freq']}")
  return ml_collections.ConfigDict(fields)


def self_attention_mask(mode: str, text_mask: jax.Array) -> jax.Array:
  """bool [B, L, L]: row i may attend to column j (a real token; in
  'decoder' mode also j <= i)."""
  if mode not in MODES:
    raise ValueError(f'Unknown text decoder mode {mode!r}; valid: {MODES}')
  valid = jnp.asarray(text_mask).astype(bool)
  b, length = valid.shape
  mask = jnp.broadcast_to(valid[:, None, :], (b, length, length))
  if mode == 'decoder':
    mask = mask & jnp.tril(jnp.ones((length, length), bool))[None]
  return mask


class DecoderLayer(nnx.Module):
  """A post-LN BERT layer whose cross-attention a call may skip."""

  def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, eps: float,
               latent_width: int | None, dropout_rate: float,
               dtype: jnp.dtype, rngs: nnx.Rngs):
    self.dropout_rate = dropout_rate
    kw = dict(dropout_rate=dropout_rate, dtype=dtype, rngs=rngs)
    norm = lambda: layers.LayerNorm(dim, eps=eps, dtype=dtype, rngs=rngs)
    self.attn = attention.Attention(dim, num_heads, **kw)
    self.attn_norm = norm()
    if latent_width is not None:
      self.cross = attention.Attention(dim, num_heads, kv_dim=latent_width,
                                       **kw)
      self.cross_norm = norm()
    else:
      self.cross = nnx.data(None)
      self.cross_norm = nnx.data(None)
    self.mlp = layers.Mlp(dim, mlp_dim, dropout_rate=dropout_rate,
                          dtype=dtype, rngs=rngs)
    self.mlp_norm = norm()

  def __call__(self, x: jax.Array, mask: jax.Array,
               latents: jax.Array | None = None,
               latent_mask: jax.Array | None = None, *,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """x [B, L, D], mask [B, L, L]; cross-attends ``latents`` [B, R, Dl]
    when given and the layer has cross-attention."""
    r = self.dropout_rate
    x = self.attn_norm(x + layers.dropout(
        self.attn(x, mask=mask, rngs=rngs), r, rngs))
    if latents is not None and self.cross is not None:
      c = self.cross(x, latents, latent_mask, rngs=rngs)
      x = self.cross_norm(x + layers.dropout(c, r, rngs))
    x = self.mlp_norm(x + layers.dropout(self.mlp(x, rngs=rngs), r, rngs))
    return sharding.constrain(x, ('batch', 'length', 'embed'))


class TextDecoder(nnx.Module):
  """The Perceiver's stage-1 text model; see the module docstring.

  Parameter tree: ``embeddings`` (``word`` [V, D], ``position`` [P, D],
  ``norm``), ``layers`` (each ``attn``, ``attn_norm``, ``cross``/
  ``cross_norm`` or None, ``mlp``, ``mlp_norm``), ``lm_head`` (decoder tied
  to ``embeddings.word``), ``vision_proj`` [Dl, E], ``text_proj`` [D, E]
  and the scalar ``temp``.
  """

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.dtype = dtype = jnp.dtype(config.dtype)
    dim, latent_width = int(config.width), int(config.latent_width)
    eps, self.dropout_rate = float(config.ln_eps), float(config.dropout)
    freq = int(config.cross_attention_freq)
    text_cfg = ml_collections.ConfigDict(dict(
        text_width=dim, dtype=config.dtype, dropout=self.dropout_rate,
        vocab_size=int(config.vocab_size),
        max_positions=int(config.max_positions), text_ln_eps=eps))
    self.embeddings = text.TextEmbeddings(text_cfg, rngs=rngs)
    self.layers = nnx.List([
        DecoderLayer(dim, int(config.heads), int(config.mlp), eps=eps,
                     latent_width=latent_width if l % freq == 0 else None,
                     dropout_rate=self.dropout_rate, dtype=dtype, rngs=rngs)
        for l in range(int(config.layers))])
    self.lm_head = text.MlmHead(text_cfg, rngs=rngs)
    embed_dim = int(config.embed_dim)
    self.vision_proj = layers.Dense(latent_width, embed_dim, ('embed', None),
                                    dtype=dtype, rngs=rngs)
    self.text_proj = layers.Dense(dim, embed_dim, ('embed', None),
                                  dtype=dtype, rngs=rngs)
    temp = float(config.temp_init)
    self.temp = layers.make_param(
        rngs, lambda key, shape, dtype: jnp.full(shape, temp, dtype), (), ())

  def __call__(self, text_ids: jax.Array, text_mask: jax.Array | None = None,
               latents: jax.Array | None = None,
               latent_mask: jax.Array | None = None, *, mode: str,
               deterministic: bool = True, rngs: nnx.Rngs | None = None
               ) -> dict[str, jax.Array]:
    """One pass over the text in ``mode``.

    Args:
      text_ids: [B, L] int ids, [CLS] first ('text') or [DEC] ('decoder').
      text_mask: [B, L], nonzero on real tokens; None: all real.
      latents: [B, R, Dl] the resampler's latents; required in 'decoder'
        mode, refused in 'text' mode.
      latent_mask: [B, R] key mask of the latents (None: all visible).
      mode: 'text' (bidirectional, text only: ITC) or 'decoder' (causal,
        cross-attends the latents: ITG).
      deterministic: no dropout when True.
      rngs: dropout randomness, needed when ``deterministic`` is False.

    Returns:
      ``text_embeds`` [B, L, D] (compute dtype) and ``text_mask`` [B, L].
    """
    if mode not in MODES:
      raise ValueError(f'Unknown text decoder mode {mode!r}; valid: {MODES}')
    if mode == 'decoder' and latents is None:
      raise ValueError("'decoder' mode cross-attends latents; got None")
    if mode == 'text' and latents is not None:
      raise ValueError("'text' mode is text only; pass latents=None")
    if not deterministic and rngs is None:
      raise ValueError('deterministic=False needs rngs (dropout randomness).')
    rngs = None if deterministic else rngs
    if text_mask is None:
      text_mask = jnp.ones(text_ids.shape, jnp.int32)
    mask = self_attention_mask(mode, text_mask)
    if latents is not None:
      latents = latents.astype(self.dtype)
    x = self.embeddings(text_ids, rngs=rngs)
    for layer in self.layers:
      x = layer(x, mask, latents, latent_mask, rngs=rngs)
    return {'text_embeds': x, 'text_mask': jnp.asarray(text_mask)}

  def image_feat(self, latents: jax.Array) -> jax.Array:
    """[B, R, Dl] latents → [B, R, E] L2-normalised ITC features."""
    return layers.l2_normalize(self.vision_proj(latents,
                                                out_dtype=jnp.float32))

  def text_feat(self, text_states: jax.Array) -> jax.Array:
    """[B, L, D] 'text'-mode states → [B, E] L2-normalised [CLS] feature."""
    return layers.l2_normalize(self.text_proj(text_states[:, 0],
                                              out_dtype=jnp.float32))

  def lm_logits(self, text_states: jax.Array) -> jax.Array:
    """[B, L, D] 'decoder'-mode states → [B, L, V] float32 logits."""
    return self.lm_head(text_states, self.embeddings.word[...])
