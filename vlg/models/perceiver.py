"""Flamingo's Perceiver Resampler (docs/probing.md §1.5, §6.2).

R learned latents read the image (or frame) tokens F through L blocks::

  X ← X + Attn(q = LN(X), k = v = [LN(F) ; LN(X)])
  X ← X + W2 act(W1 LN(X))

then a final LayerNorm. The latents attend to the concatenation of the
features and themselves (their only latent–latent interaction); Q/K/V/out
and FFN projections have no bias. Options cover the three reference
implementations: the FFN activation (:data:`ACTIVATIONS`), IDEFICS's q/k
LayerNorm, and learned time embeddings with lucidrains' ``per_media`` or
Flamingo's ``flatten_time`` resampling (:data:`TIME_MODES`).

The config comes from ``vlg.models.resamplers.resampler_config('perceiver',
size)``; the module returns the taps of docs/probing.md §6.1
(``resampler_queries``, ``query_mask``, ``resampler_layers``). It has no
text path: for stage-1 training it is paired with
``vlg.models.text_decoder.TextDecoder``.
Parameters carry logical axis names; the latent axis is ``queries``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vlg import sharding
from vlg.models import layers

ACTIVATIONS = {
    'relu': jax.nn.relu,  # IDEFICS.
    'sqrelu': lambda x: jnp.square(jax.nn.relu(x)),  # Flamingo.
    'gelu': layers.gelu,  # lucidrains.
}
TIME_MODES = ('per_media', 'flatten_time')


class PerceiverAttention(nnx.Module):
  """Latents attend to ``[LN(media) ; LN(latents)]``; no biases (§1.5)."""

  def __init__(self, dim: int, num_heads: int, head_dim: int, *, eps: float,
               qk_norm: bool, dtype: jnp.dtype, rngs: nnx.Rngs):
    self.head_dim = head_dim
    self.norm_media = layers.LayerNorm(dim, eps=eps, dtype=dtype, rngs=rngs)
    self.norm_latents = layers.LayerNorm(dim, eps=eps, dtype=dtype, rngs=rngs)
    kw = dict(use_bias=False, dtype=dtype, rngs=rngs)
    qkv = ('embed', 'heads', 'kv')
    self.query = layers.Dense(dim, (num_heads, head_dim), qkv, **kw)
    self.key = layers.Dense(dim, (num_heads, head_dim), qkv, **kw)
    self.value = layers.Dense(dim, (num_heads, head_dim), qkv, **kw)
    self.out = layers.Dense((num_heads, head_dim), dim,
                            ('heads', 'kv', 'embed'), **kw)
    if qk_norm:  # IDEFICS: LayerNorm over each head's query and key.
      self.q_norm = layers.LayerNorm(head_dim, eps=eps, dtype=dtype,
                                     name='kv', rngs=rngs)
      self.k_norm = layers.LayerNorm(head_dim, eps=eps, dtype=dtype,
                                     name='kv', rngs=rngs)
    else:
      self.q_norm = nnx.data(None)
      self.k_norm = nnx.data(None)

  def __call__(self, media: jax.Array, latents: jax.Array) -> jax.Array:
    """media [B, N, D], latents [B, R, D] → [B, R, D] attention output."""
    lat = self.norm_latents(latents)
    context = jnp.concatenate([self.norm_media(media), lat], axis=1)
    q, k, v = self.query(lat), self.key(context), self.value(context)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    q = q * jnp.asarray(self.head_dim ** -0.5, q.dtype)
    logits = jnp.einsum('brhd,bkhd->bhrk', q, k,
                        preferred_element_type=jnp.float32)
    # jax.nn.softmax subtracts the row max: the stable softmax of §1.5.
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return self.out(jnp.einsum('bhrk,bkhd->brhd', probs, v))


class PerceiverBlock(nnx.Module):
  """X += Attn(X, [LN(F) ; LN(X)]); X += W2 act(W1 LN(X)) (no biases)."""

  def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_dim: int,
               *, eps: float, qk_norm: bool, activation: str,
               dtype: jnp.dtype, rngs: nnx.Rngs):
    self.activation = activation
    self.attn = PerceiverAttention(dim, num_heads, head_dim, eps=eps,
                                   qk_norm=qk_norm, dtype=dtype, rngs=rngs)
    self.mlp_norm = layers.LayerNorm(dim, eps=eps, dtype=dtype, rngs=rngs)
    self.fc1 = layers.Dense(dim, mlp_dim, ('embed', 'mlp'), use_bias=False,
                            dtype=dtype, rngs=rngs)
    self.fc2 = layers.Dense(mlp_dim, dim, ('mlp', 'embed'), use_bias=False,
                            dtype=dtype, rngs=rngs)

  def __call__(self, media: jax.Array, latents: jax.Array) -> jax.Array:
    latents = latents + self.attn(media, latents)
    h = ACTIVATIONS[self.activation](self.fc1(self.mlp_norm(latents)))
    h = sharding.constrain(h, ('batch', 'length', 'mlp'))
    latents = latents + self.fc2(h)
    return sharding.constrain(latents, ('batch', 'length', 'embed'))


class PerceiverResampler(nnx.Module):
  """Flamingo's Perceiver Resampler; config from
  ``resamplers.resampler_config('perceiver', ...)``.

  Input ``image_embeds`` is [B, N, D] (one image) or [B, T, N, D] (T media
  or frames). With ``num_time_embeds > 0`` a learned embedding per media
  index is added to its features. ``time_mode`` then decides:

  * 'per_media' (lucidrains): each media item is resampled by its own copy
    of the latents; the output has T · R rows, media-major;
  * 'flatten_time' (Flamingo): the T · N features form one sequence that
    one set of R latents reads.

  Parameter tree: ``latents`` [R, D], ``time_embeds`` [T_max, D] (or None),
  ``blocks`` (``attn``: ``norm_media``, ``norm_latents``, ``query``,
  ``key``, ``value``, ``out``, optional ``q_norm``/``k_norm``;
  ``mlp_norm``, ``fc1``, ``fc2``) and the final ``norm``.
  """

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.dtype = dtype = jnp.dtype(config.dtype)
    dim, eps = int(config.width), float(config.ln_eps)
    self.time_mode = str(config.time_mode)
    self.normalize_layers = bool(config.normalize_layers)
    init = layers.normal_init()
    self.latents = layers.make_param(
        rngs, init, (int(config.num_queries), dim), ('queries', 'embed'))
    num_time = int(config.num_time_embeds)
    if num_time > 0:
      self.time_embeds = layers.make_param(rngs, init, (num_time, dim),
                                           (None, 'embed'))
    else:
      self.time_embeds = nnx.data(None)
    self.blocks = nnx.List([
        PerceiverBlock(dim, int(config.heads), int(config.head_dim),
                       int(config.mlp), eps=eps, qk_norm=bool(config.qk_norm),
                       activation=str(config.activation), dtype=dtype,
                       rngs=rngs)
        for _ in range(int(config.layers))])
    self.norm = layers.LayerNorm(dim, eps=eps, dtype=dtype, rngs=rngs)

  def __call__(self, image_embeds: jax.Array, *, return_layers: bool = False,
               deterministic: bool = True, rngs: nnx.Rngs | None = None
               ) -> dict[str, jax.Array]:
    """Resamples ``image_embeds`` [B, N, D] or [B, T, N, D].

    Args:
      image_embeds: image (or frame) features of width ``config.width``.
      return_layers: also return the latents before the first block and
        after every block (through the final LayerNorm when
        ``config.normalize_layers``).
      deterministic, rngs: unused (no dropout); a uniform resampler call.

    Returns:
      ``resampler_queries`` [B, M · R, D] (M = T for 'per_media', else 1),
      ``query_mask`` [B, M · R] and, with ``return_layers``,
      ``resampler_layers`` [layers + 1, B, M · R, D].
    """
    del deterministic, rngs
    x = image_embeds.astype(self.dtype)
    if x.ndim == 3:
      x = x[:, None]
    if x.ndim != 4:
      raise ValueError(f'image_embeds must be [B, N, D] or [B, T, N, D], got '
                       f'{image_embeds.shape}')
    b, t, n, d = x.shape
    if self.time_embeds is not None:
      if t > self.time_embeds.shape[0]:
        raise ValueError(f'{t} media exceed num_time_embeds '
                         f'{self.time_embeds.shape[0]}')
      x = x + self.time_embeds[:t].astype(self.dtype)[None, :, None]
    if self.time_mode == 'flatten_time':
      x = x.reshape(b, 1, t * n, d)
    m = x.shape[1]
    media = x.reshape(b * m, x.shape[2], d)
    r = self.latents.shape[0]
    latents = jnp.broadcast_to(self.latents[...].astype(self.dtype)[None],
                               (b * m, r, d))

    def tap(lat):
      lat = self.norm(lat) if self.normalize_layers else lat
      return lat.reshape(b, m * r, d)

    taps = [tap(latents)]
    for block in self.blocks:
      latents = block(media, latents)
      taps.append(tap(latents))
    out = {'resampler_queries': self.norm(latents).reshape(b, m * r, d),
           'query_mask': jnp.ones((b, m * r), jnp.int32)}
    if return_layers:
      out['resampler_layers'] = jnp.stack(taps)
    return out
