"""Resamplers that turn image tokens into a fixed set of query vectors.

Both return dicts of taps (docs/probing.md §6.1), so one probe reads either:

* :class:`QFormer`, BLIP-2's querying transformer (§1.2–§1.3): queries and
  text share the self-attention of post-LN BERT layers; only query rows
  cross-attend to the ``ln_vision``-normalised image tokens, on layers
  ``l % cross_attention_freq == 0``; queries and text have separate FFNs.
  A call's ``mode`` picks the sequence and the mask of a stage-1 objective
  (:func:`attention_mask`).
* ``PerceiverResampler`` (Flamingo / IDEFICS / lucidrains, §1.5): defined
  in :mod:`vlg.models.perceiver` and re-exported here; latents attend to
  ``[LN(F) ; LN(latents)]``; no biases; final LayerNorm; optional q/k
  LayerNorm and learned time embeddings.

:func:`resampler_config` gives sizes: ``tiny`` for the synthetic world on
CPU; ``base`` = BLIP-2's Q-Former exactly (LAVIS weights convert) or a
Flamingo-like Perceiver. Parameters carry logical axis names; the
query/latent axis is ``queries``, which no rule names (replicated). Use the
modules functionally (``nnx.split`` once, ``nnx.merge`` inside ``jax.jit``);
dropout runs only with ``deterministic=False`` and ``rngs``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vlg import sharding
from vlg.models import attention
from vlg.models import layers
from vlg.models import perceiver
from vlg.models import text

MODES = ('image', 'text', 'multimodal', 'decoder')
# Re-exported: the Perceiver lives in vlg.models.perceiver.
ACTIVATIONS = perceiver.ACTIVATIONS
TIME_MODES = perceiver.TIME_MODES
PerceiverResampler = perceiver.PerceiverResampler

_QFORMER_SIZES: dict[str, dict[str, Any]] = {
    'tiny': dict(layers=4, width=128, heads=4, mlp=512, num_queries=8,
                 cross_attention_freq=2, vision_width=128, vocab_size=1024,
                 max_positions=64, max_text_len=32, embed_dim=64,
                 dropout=0.0),
    # BLIP-2 stage 1 (LAVIS blip2_pretrain): BERT-base plus queries. The
    # word table has BERT's 30522 rows plus the added [DEC] (bos) token.
    'base': dict(layers=12, width=768, heads=12, mlp=3072, num_queries=32,
                 cross_attention_freq=2, vision_width=1408,
                 vocab_size=30522 + 1, max_positions=512, max_text_len=32,
                 embed_dim=256, dropout=0.1),
}
_QFORMER_COMMON = dict(kind='qformer', ln_eps=1e-12, vision_ln_eps=1e-5,
                       temp_init=0.07, dtype='float32')

# The Perceiver's width is the vision width (its latents live in the feature
# space they attend to); its attention may be wider (heads × head_dim).
_PERCEIVER_SIZES: dict[str, dict[str, Any]] = {
    'tiny': dict(layers=4, heads=4, head_dim=32, mlp_ratio=4, num_queries=8,
                 vision_width=128),
    # Flamingo (docs/probing.md §1.5): 6 blocks, 64 latents, 16 × 96 heads,
    # squared-ReLU FFN ×4, over 1536-wide features.
    'base': dict(layers=6, heads=16, head_dim=96, mlp_ratio=4,
                 num_queries=64, vision_width=1536),
}
_PERCEIVER_COMMON = dict(
    kind='perceiver', activation='sqrelu', qk_norm=False, ln_eps=1e-5,
    num_time_embeds=0,  # > 0: learned embeddings for up to this many media.
    time_mode='per_media',  # 'per_media' (lucidrains) | 'flatten_time'.
    normalize_layers=True,  # Final LN on the per-layer taps too (§1.6).
    dtype='float32')


def resampler_config(kind: str, size: str, vision_width: int | None = None,
                     **overrides: Any) -> ml_collections.ConfigDict:
  """The config of a ``kind`` ('qformer' | 'perceiver') resampler of ``size``.

  Args:
    kind: 'qformer' or 'perceiver'.
    size: 'tiny' or 'base'.
    vision_width: width of the image tokens the resampler reads; None keeps
      the size's default (1408 = EVA ViT-g for the base Q-Former). A
      Perceiver's width equals it.
    **overrides: values for existing fields (a misspelt field is an error).

  Returns:
    An unlocked ConfigDict; a Perceiver's has ``width`` and ``mlp`` filled.
  """
  tables = {'qformer': (_QFORMER_SIZES, _QFORMER_COMMON),
            'perceiver': (_PERCEIVER_SIZES, _PERCEIVER_COMMON)}
  if kind not in tables:
    raise ValueError(f'Unknown resampler kind {kind!r}; valid: '
                     f'{sorted(tables)}')
  table, common = tables[kind]
  if size not in table:
    raise ValueError(f'Unknown {kind} size {size!r}; valid: {sorted(table)}')
  fields = dict(common, **table[size])
  if vision_width is not None:
    fields['vision_width'] = int(vision_width)
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise KeyError(f'Unknown {kind} config fields {unknown}')
  fields.update(overrides)
  if kind == 'perceiver':
    fields['width'] = fields['vision_width']
    fields['mlp'] = fields['mlp_ratio'] * fields['width']
    if fields['activation'] not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, "
                       f"got {fields['activation']!r}")
    if fields['time_mode'] not in TIME_MODES:
      raise ValueError(f'time_mode must be one of {TIME_MODES}, got '
                       f"{fields['time_mode']!r}")
  return ml_collections.ConfigDict(fields)


def attention_mask(mode: str, num_queries: int,
                   text_mask: jax.Array | np.ndarray | None) -> jax.Array:
  """The self-attention mask of a Q-Former pass (docs/probing.md §1.3).

  The sequence is ``[queries ; text]`` with ``num_queries`` query positions
  (0 in 'text' mode) and ``L`` text positions. Entry ``[b, i, j]`` is True
  where position i may attend to position j:

  * 'image': queries only, all see all;
  * 'text': text only, every row sees the real (unpadded) text tokens;
  * 'multimodal' (ITM): every row sees all queries and the real text;
  * 'decoder' (ITG): query rows see only the queries; text row a sees all
    queries and the real text tokens b <= a.

  Args:
    mode: one of :data:`MODES`.
    num_queries: query positions in the sequence (0 for 'text').
    text_mask: [B, L], nonzero on real tokens; None (or L = 0) for 'image',
      where a None mask gives batch dimension 1.

  Returns:
    bool [B, Q + L, Q + L].
  """
  if mode not in MODES:
    raise ValueError(f'Unknown Q-Former mode {mode!r}; valid: {MODES}')
  valid = (jnp.zeros((1, 0), bool) if text_mask is None
           else jnp.asarray(text_mask).astype(bool))
  b, length = valid.shape
  q = int(num_queries)
  if mode == 'text' and q:
    raise ValueError(f"'text' mode has no queries, got num_queries={q}")
  if mode == 'image' and length:
    raise ValueError(f"'image' mode has no text, got a text mask of length "
                     f'{length}')
  if mode != 'text' and q <= 0:
    raise ValueError(f'{mode!r} mode needs num_queries > 0, got {q}')
  if mode in ('text', 'multimodal', 'decoder') and not length:
    raise ValueError(f'{mode!r} mode needs text (a [B, L > 0] text mask)')
  keys = jnp.concatenate([jnp.ones((b, q), bool), valid], axis=1)
  mask = jnp.broadcast_to(keys[:, None, :], (b, q + length, q + length))
  if mode == 'decoder':  # Queries see queries; text, queries + earlier text.
    row, col = jnp.arange(q + length)[:, None], jnp.arange(q + length)[None]
    mask = mask & ((col < q) | ((row >= q) & (col <= row)))[None]
  return mask


class QFormerLayer(nnx.Module):
  """One post-LN Q-Former layer (docs/probing.md §1.2).

  h = LN(x + SelfAttn_M(x)) over [queries ; text]; for query rows,
  h_Q = LN(h_Q + CrossAttn(h_Q, image)) if the layer has cross-attention,
  then out_Q = LN(h_Q + FFN_Q(h_Q)) and out_T = LN(h_T + FFN_T(h_T)).
  """

  def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, eps: float,
               vision_width: int | None, dropout_rate: float,
               dtype: jnp.dtype, rngs: nnx.Rngs):
    self.dropout_rate = dropout_rate
    kw = dict(dropout_rate=dropout_rate, dtype=dtype, rngs=rngs)
    norm = lambda: layers.LayerNorm(dim, eps=eps, dtype=dtype, rngs=rngs)
    self.attn = attention.Attention(dim, num_heads, **kw)
    self.attn_norm = norm()
    if vision_width is not None:
      self.cross = attention.Attention(dim, num_heads, kv_dim=vision_width,
                                       **kw)
      self.cross_norm = norm()
    else:
      self.cross = nnx.data(None)
      self.cross_norm = nnx.data(None)
    self.mlp = layers.Mlp(dim, mlp_dim, dtype=dtype, rngs=rngs)
    self.mlp_norm = norm()
    self.query_mlp = layers.Mlp(dim, mlp_dim, dtype=dtype, rngs=rngs)
    self.query_mlp_norm = norm()

  def __call__(self, x: jax.Array, mask: jax.Array, num_queries: int,
               image: jax.Array | None = None, *,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """x [B, Q + L, D], mask [B, Q + L, Q + L], image [B, N, Dv] → x."""
    r = self.dropout_rate
    h = self.attn_norm(x + layers.dropout(self.attn(x, mask=mask, rngs=rngs),
                                          r, rngs))
    q, t = h[:, :num_queries], h[:, num_queries:]
    parts = []
    if num_queries:
      if self.cross is not None:
        if image is None:
          raise ValueError('A cross-attention layer needs image tokens.')
        c = self.cross(q, image, rngs=rngs)
        q = self.cross_norm(q + layers.dropout(c, r, rngs))
      parts.append(self.query_mlp_norm(
          q + layers.dropout(self.query_mlp(q), r, rngs)))
    if t.shape[1]:
      parts.append(self.mlp_norm(t + layers.dropout(self.mlp(t), r, rngs)))
    x = jnp.concatenate(parts, axis=1)
    return sharding.constrain(x, ('batch', 'length', 'embed'))


class QFormer(nnx.Module):
  """BLIP-2's Q-Former with its stage-1 heads; see the module docstring.

  Parameter tree: ``ln_vision``, ``query_tokens`` [Q, D], ``word`` [V, D],
  ``position`` [P, D], ``embed_norm``, ``layers`` (each ``attn``,
  ``attn_norm``, ``cross``/``cross_norm`` or None, ``mlp``/``mlp_norm``
  (text FFN), ``query_mlp``/``query_mlp_norm``), ``vision_proj``,
  ``text_proj``, ``itm_head``, ``lm_head`` (decoder tied to ``word``) and
  the scalar ``temp``. Config: :func:`resampler_config` ('qformer').
  """

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.dtype = dtype = jnp.dtype(config.dtype)
    dim, vision_width = int(config.width), int(config.vision_width)
    eps, self.dropout_rate = float(config.ln_eps), float(config.dropout)
    freq = int(config.cross_attention_freq)
    init = layers.normal_init()
    self.ln_vision = layers.LayerNorm(
        vision_width, eps=float(config.vision_ln_eps), dtype=dtype, rngs=rngs)
    self.query_tokens = layers.make_param(
        rngs, init, (int(config.num_queries), dim), ('queries', 'embed'))
    self.word = layers.make_param(rngs, init, (int(config.vocab_size), dim),
                                  ('vocab', 'embed'))
    self.position = layers.make_param(
        rngs, init, (int(config.max_positions), dim), (None, 'embed'))
    self.embed_norm = layers.LayerNorm(dim, eps=eps, dtype=dtype, rngs=rngs)
    self.layers = nnx.List([
        QFormerLayer(dim, int(config.heads), int(config.mlp), eps=eps,
                     vision_width=vision_width if l % freq == 0 else None,
                     dropout_rate=self.dropout_rate, dtype=dtype, rngs=rngs)
        for l in range(int(config.layers))])
    embed_dim = int(config.embed_dim)
    self.vision_proj = layers.Dense(dim, embed_dim, ('embed', None),
                                    dtype=dtype, rngs=rngs)
    self.text_proj = layers.Dense(dim, embed_dim, ('embed', None),
                                  dtype=dtype, rngs=rngs)
    self.itm_head = layers.Dense(dim, 2, ('embed', None), dtype=dtype,
                                 rngs=rngs)
    self.lm_head = text.MlmHead(ml_collections.ConfigDict(dict(
        text_width=dim, dtype=config.dtype, text_ln_eps=eps,
        vocab_size=int(config.vocab_size))), rngs=rngs)
    temp = float(config.temp_init)
    self.temp = layers.make_param(
        rngs, lambda key, shape, dtype: jnp.full(shape, temp, dtype), (), ())

  def _embed(self, b: int, with_queries: bool, text_ids: jax.Array | None,
             rngs: nnx.Rngs | None) -> jax.Array:
    """[queries ; word + position embeddings] → LayerNorm → dropout."""
    parts = []
    if with_queries:
      queries = self.query_tokens[...].astype(self.dtype)
      parts.append(jnp.broadcast_to(queries[None], (b,) + queries.shape))
    if text_ids is not None:
      length = text_ids.shape[1]
      if length > self.position.shape[0]:
        raise ValueError(f'text length {length} exceeds max_positions '
                         f'{self.position.shape[0]}')
      table = sharding.constrain(self.word[...], ('vocab', None))
      words = jnp.take(table, text_ids, axis=0) + self.position[:length]
      parts.append(words.astype(self.dtype))
    x = self.embed_norm(jnp.concatenate(parts, axis=1))
    x = sharding.constrain(x, ('batch', 'length', 'embed'))
    return layers.dropout(x, self.dropout_rate, rngs)

  def __call__(self, image_embeds: jax.Array | None,
               text_ids: jax.Array | None = None,
               text_mask: jax.Array | None = None, *, mode: str,
               return_layers: bool = False, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """One Q-Former pass in ``mode`` (see :func:`attention_mask`).

    Args:
      image_embeds: [B, N, Dv] image tokens *before* ``ln_vision`` (the
        frozen encoder's output); None in 'text' mode.
      text_ids: [B, L] int ids, [CLS] (or [DEC] for 'decoder') first; None
        in 'image' mode.
      text_mask: [B, L], nonzero on real tokens; None: all real.
      mode: 'image' (queries only, ITC), 'text' (text only, ITC),
        'multimodal' (ITM, bidirectional) or 'decoder' (ITG, queries never
        see text, text causal).
      return_layers: also return the query rows after the embedding and
        after every layer (only in modes with queries).
      deterministic: no dropout when True.
      rngs: dropout randomness, needed when ``deterministic`` is False.

    Returns:
      ``resampler_queries`` [B, Q, D] and ``query_mask`` [B, Q] (modes with
      queries); ``resampler_text`` [B, L, D] and ``text_mask`` [B, L]
      (modes with text); ``resampler_layers`` [layers + 1, B, Q, D] with
      ``return_layers``. States are in the compute dtype.
    """
    if mode not in MODES:
      raise ValueError(f'Unknown Q-Former mode {mode!r}; valid: {MODES}')
    if not deterministic and rngs is None:
      raise ValueError('deterministic=False needs rngs (dropout randomness).')
    rngs = None if deterministic else rngs
    with_queries, with_text = mode != 'text', mode != 'image'
    if with_queries and image_embeds is None:
      raise ValueError(f'{mode!r} mode needs image_embeds')
    if with_text and text_ids is None:
      raise ValueError(f'{mode!r} mode needs text_ids')
    if not with_text and (text_ids is not None or text_mask is not None):
      raise ValueError("'image' mode takes no text; use 'multimodal' or "
                       "'decoder' to condition the queries on text")
    if not with_queries and image_embeds is not None:
      raise ValueError("'text' mode takes no image (image_embeds=None)")
    b = (text_ids if with_text else image_embeds).shape[0]
    if with_text and text_mask is None:
      text_mask = jnp.ones(text_ids.shape, jnp.int32)
    q = self.query_tokens.shape[0] if with_queries else 0
    mask = attention_mask(mode, q, text_mask if with_text
                          else jnp.zeros((b, 0), bool))
    image = self.ln_vision(image_embeds) if with_queries else None

    x = self._embed(b, with_queries, text_ids, rngs)
    taps = [x[:, :q]]
    for layer in self.layers:
      x = layer(x, mask, q, image, rngs=rngs)
      taps.append(x[:, :q])
    out = {}
    if with_queries:
      out['resampler_queries'] = x[:, :q]
      out['query_mask'] = jnp.ones((b, q), jnp.int32)
      if return_layers:
        out['resampler_layers'] = jnp.stack(taps)
    if with_text:
      out['resampler_text'] = x[:, q:]
      out['text_mask'] = jnp.asarray(text_mask)
    return out

  def image_feat(self, queries: jax.Array) -> jax.Array:
    """[B, Q, D] query rows → [B, Q, E] L2-normalised ITC features."""
    return layers.l2_normalize(self.vision_proj(queries,
                                                out_dtype=jnp.float32))

  def text_feat(self, text_states: jax.Array) -> jax.Array:
    """[B, L, D] text-mode rows → [B, E] L2-normalised [CLS] feature."""
    return layers.l2_normalize(self.text_proj(text_states[:, 0],
                                              out_dtype=jnp.float32))

  def itm_logits(self, queries: jax.Array) -> jax.Array:
    """[B, Q, D] multimodal query rows → [B, Q, 2] float32 per-query logits."""
    return self.itm_head(queries, out_dtype=jnp.float32)

  def lm_logits(self, text_states: jax.Array) -> jax.Array:
    """[B, L, D] decoder-mode text rows → [B, L, V] float32 logits."""
    return self.lm_head(text_states, self.word[...])
