"""Representation taps and reducers: what a probe reads (docs/probing.md §6.1).

A *tap* is a named token set of an encoder, an array ``(B, N, D)`` with a
mask ``(B, N)`` (nonzero on real tokens). A *reducer* turns it into the
probe's input. A run names both in one string::

  spec = parse_spec('tap=fused_cls,reduce=cls')
  spec = parse_spec('tap=resampler_layer:6,reduce=flatten')

Taps of a vlg ``Model`` (ALBEF/X-VLM family, :func:`model_taps`):

* ``vision_tokens``: ``embed_image``'s tokens, [CLS] first (N = 1 + patches);
* ``text_tokens`` / ``text_cls``: ``embed_text``'s tokens / its [CLS] row;
* ``fused_tokens`` / ``fused_cls``: ``fuse`` on (image, text) / its [CLS]
  row (the ITM/VSR representation);
* ``vision_layer:k`` / ``fusion_layer:k``: row k of the per-layer stacks
  (``return_layers=True``): 0 is the embedded input, -1 the last block's
  output before the final LayerNorm, -2 BLIP-2's penultimate layer.

Taps of a resampler (:func:`resampler_taps`) come from the dict its call
returns: ``resampler_queries`` [B, Q, D] (mask ``query_mask`` when given),
``resampler_layer:k`` (row k of ``resampler_layers`` [L+1, B, Q, D]; 0 is
the input queries) and ``resampler_text`` (text rows, mask ``text_mask``).

Reducers: ``flatten`` (query-major vec, index = n·D + d; needs a tap of
fixed N, so it is refused on text-length taps), ``cls`` (row 0), ``mean``
(mask-aware: Σ m·x / max(Σ m, 1)) and ``attn_pool`` (:class:`AttnPool`, one
learned query; it is part of the probe and trained with the head). The fixed
reducers run at feature-extraction time (:func:`reduce_fixed`); for
``attn_pool`` the tokens and mask go to the probe unreduced.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vlg.models import layers

Tap = tuple[jax.Array, jax.Array]  # (tokens [B, N, D], mask [B, N])

REDUCERS = ('flatten', 'cls', 'mean', 'attn_pool')
MODEL_TAPS = ('vision_tokens', 'text_tokens', 'text_cls', 'fused_tokens',
              'fused_cls')
RESAMPLER_TAPS = ('resampler_queries', 'resampler_text')
# Taps whose N depends on the text length (padding varies per example).
VARIABLE_LENGTH_TAPS = ('text_tokens', 'fused_tokens', 'resampler_text')
# The output key of each resampler tap's mask (``vlg.models.resamplers``).
_RESAMPLER_MASKS = {'resampler_queries': 'query_mask',
                    'resampler_text': 'text_mask'}
_LAYER_TAP = re.compile(r'^(resampler_layer|vision_layer|fusion_layer):'
                        r'(-?\d+)$')


@dataclasses.dataclass(frozen=True)
class TapSpec:
  """A tap name and the reducer applied to it."""
  tap: str
  reduce: str

  @property
  def key(self) -> str:
    """The canonical string, e.g. ``'tap=fused_cls,reduce=cls'``."""
    return f'tap={self.tap},reduce={self.reduce}'

  @property
  def layer(self) -> int | None:
    """k of ``resampler_layer:k`` (or ``vision_layer:k``, ``fusion_layer:k``);
    None for other taps."""
    match = _LAYER_TAP.match(self.tap)
    return int(match.group(2)) if match else None


def parse_spec(text: str) -> TapSpec:
  """Parses ``'tap=NAME,reduce=REDUCER'`` (either order; reduce defaults to
  ``flatten`` for fixed-N taps).

  Raises:
    ValueError: an unknown key, tap or reducer, a per-layer tap the models
      do not return, or ``flatten`` on a variable-length tap; the message
      quotes ``text``.
  """
  fields: dict[str, str] = {}
  for item in (p.strip() for p in str(text).split(',') if p.strip()):
    key, sep, value = item.partition('=')
    if not sep or key not in ('tap', 'reduce') or not value:
      raise ValueError(f'tap spec {text!r}: expected "tap=NAME,reduce="'
                       f'{"|".join(REDUCERS)}", got item {item!r}')
    if key in fields:
      raise ValueError(f'tap spec {text!r}: {key!r} given twice')
    fields[key] = value
  if 'tap' not in fields:
    raise ValueError(f'tap spec {text!r}: missing "tap=NAME"')
  tap = fields['tap']
  if tap not in MODEL_TAPS + RESAMPLER_TAPS and not _LAYER_TAP.match(tap):
    raise ValueError(f'tap spec {text!r}: unknown tap {tap!r}; valid: '
                     f'{list(MODEL_TAPS + RESAMPLER_TAPS)} or '
                     'resampler_layer:k, vision_layer:k, fusion_layer:k')
  reduce = fields.get('reduce', 'flatten')
  if reduce not in REDUCERS:
    raise ValueError(f'tap spec {text!r}: unknown reducer {reduce!r}; '
                     f'valid: {list(REDUCERS)}')
  if reduce == 'flatten' and (tap in VARIABLE_LENGTH_TAPS or
                              tap.startswith('fusion_layer:')):
    raise ValueError(f'tap spec {text!r}: flatten needs a fixed number of '
                     f'tokens, but {tap!r} has one per text token; use '
                     'mean, cls or attn_pool')
  return TapSpec(tap=tap, reduce=reduce)


def _ones(x: jax.Array) -> jax.Array:
  return jnp.ones(x.shape[:2], jnp.int32)


def model_taps(model: Any, batch: dict[str, jax.Array],
               names: tuple[str, ...], *, rngs: nnx.Rngs | None = None
               ) -> dict[str, Tap]:
  """Named taps of a vlg ALBEF-family ``Model`` on an (image, text) batch.

  Runs only the encoders the names need (``vision_tokens`` needs no text;
  ``text_*`` no image).

  Args:
    model: a merged ``vlg.models.albef.Model``.
    batch: ``image`` [B, H, W, 3], ``text_ids`` and ``text_mask`` [B, L].
    names: taps of :data:`MODEL_TAPS`.
    rngs: dropout randomness (None: deterministic).

  Returns:
    ``{name: (tokens, mask)}``.
  """
  layered = {n: _LAYER_TAP.match(n) for n in names}
  unknown = sorted(n for n in names if n not in MODEL_TAPS and not (
      layered[n] and layered[n].group(1) != 'resampler_layer'))
  if unknown:
    raise ValueError(f'taps {unknown} are not taps of a vlg Model; valid: '
                     f'{list(MODEL_TAPS)}, vision_layer:k, fusion_layer:k')
  kinds = {m.group(1) for m in layered.values() if m}
  out: dict[str, Tap] = {}
  need_fusion = 'fusion_layer' in kinds or any(
      n.startswith('fused') for n in names)
  need_image = need_fusion or 'vision_layer' in kinds or (
      'vision_tokens' in names)
  need_text = need_fusion or any(n.startswith('text') for n in names)
  img = (model.embed_image(batch['image'], rngs=rngs,
                           return_layers='vision_layer' in kinds)
         if need_image else None)
  if img is not None:
    out['vision_tokens'] = (img['image_embeds'], _ones(img['image_embeds']))
  if need_text:
    text_mask = batch['text_mask']
    txt = model.embed_text(batch['text_ids'], text_mask, rngs=rngs)
    x = txt['text_embeds']
    out['text_tokens'] = (x, text_mask)
    out['text_cls'] = (x[:, :1], _ones(x[:, :1]))
    if need_fusion:
      fused = model.fuse(x, text_mask, img['image_embeds'], rngs=rngs,
                         return_layers='fusion_layer' in kinds)
      out['fused_tokens'] = (fused['fused_embeds'], text_mask)
      out['fused_cls'] = (fused['fused_embeds'][:, :1],
                          _ones(fused['fused_embeds'][:, :1]))
  for name, match in layered.items():
    if match:
      kind, k = match.group(1), int(match.group(2))
      stack = (img['vision_layers'] if kind == 'vision_layer'
               else fused['fusion_layers'])
      if not -stack.shape[0] <= k < stack.shape[0]:
        raise ValueError(f'tap {name!r}: the model returns {stack.shape[0]} '
                         f'{kind} states (0..{stack.shape[0] - 1})')
      mask = _ones(stack[k]) if kind == 'vision_layer' else batch['text_mask']
      out[name] = (stack[k], mask)
  return {n: out[n] for n in names}


def resampler_taps(outputs: dict[str, jax.Array], names: tuple[str, ...]
                   ) -> dict[str, Tap]:
  """Named taps from a resampler's output dict (module docstring).

  Raises:
    ValueError: a name the outputs cannot give (e.g. ``resampler_layer:k``
      when the resampler ran without ``return_layers``, or k out of range).
  """
  out: dict[str, Tap] = {}
  for name in names:
    match = _LAYER_TAP.match(name)
    if match and match.group(1) == 'resampler_layer':
      stack = outputs.get('resampler_layers')
      if stack is None:
        raise ValueError(f'tap {name!r} needs resampler_layers; call the '
                         'resampler with return_layers=True')
      k = int(match.group(2))
      if not -stack.shape[0] <= k < stack.shape[0]:
        raise ValueError(f'tap {name!r}: the resampler returns '
                         f'{stack.shape[0]} states (0..{stack.shape[0] - 1})')
      out[name] = (stack[k], _ones(stack[k]))
    elif name in RESAMPLER_TAPS and name in outputs:
      x = outputs[name]
      mask = outputs.get(_RESAMPLER_MASKS[name])
      out[name] = (x, _ones(x) if mask is None else mask)
    else:
      raise ValueError(f'tap {name!r} is not in the resampler outputs '
                       f'{sorted(outputs)}')
  return out


class VisionResampler(nnx.Module):
  """An image tower feeding a resampler: the encoder of docs/probing.md §6.3.

  ``vision`` maps images [B, H, W, 3] to tokens [B, N, Dv] (e.g. a vlg
  ``VisionTransformer``); ``resampler`` is a ``vlg.models.resamplers``
  module. A Q-Former runs in ``mode`` ('multimodal' by default: the task
  text enters the queries' self-attention, docs/probing.md §2.3); a
  Perceiver (``mode=None``) has no text path. Keep ``vision`` frozen
  with the encoder's ``vision_filter`` (``nnx.PathContains('vision')``).
  """

  def __init__(self, vision: nnx.Module, resampler: nnx.Module, *,
               mode: str | None = 'multimodal'):
    self.vision, self.resampler, self.mode = vision, resampler, mode

  def taps(self, batch: dict[str, jax.Array], names: tuple[str, ...],
           rngs: nnx.Rngs | None = None) -> dict[str, Tap]:
    """The resampler taps ``names`` of an (image, text) batch."""
    image_embeds = self.vision(batch['image'], rngs=rngs)
    kw = dict(return_layers=any(_LAYER_TAP.match(n) for n in names),
              deterministic=rngs is None, rngs=rngs)
    if self.mode is None:
      outputs = self.resampler(image_embeds, **kw)
    else:
      text = self.mode != 'image'
      outputs = self.resampler(
          image_embeds, batch['text_ids'] if text else None,
          batch['text_mask'] if text else None, mode=self.mode, **kw)
    return resampler_taps(outputs, names)


def reduce_fixed(reduce: str, tokens: jax.Array, mask: jax.Array
                 ) -> jax.Array:
  """Applies a parameter-free reducer: [B, N, D] → [B, F] float32.

  ``flatten`` gives F = N·D (query-major), ``cls`` and ``mean`` F = D.
  ``attn_pool`` is learned, see :class:`AttnPool`.
  """
  x = tokens.astype(jnp.float32)
  if reduce == 'flatten':
    return x.reshape(x.shape[0], -1)
  if reduce == 'cls':
    return x[:, 0]
  if reduce == 'mean':
    m = mask.astype(jnp.float32)[..., None]
    return jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
  raise ValueError(f'reduce_fixed: {reduce!r} is not a fixed reducer '
                   "(flatten, cls, mean); 'attn_pool' is learned")


class AttnPool(nnx.Module):
  """One learned query attending over the tokens (single head).

  y = Σ_n softmax_n(k_n·q / √D) v_n, with k = x W_k, v = x W_v, masked
  tokens excluded (a row with no real token attends uniformly, as
  ``attention.Attention`` does).
  """

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    self.query = layers.make_param(rngs, layers.normal_init(), (dim,),
                                   ('embed',))
    self.key = layers.Dense(dim, dim, ('embed', 'kv'), use_bias=False,
                            rngs=rngs)
    self.value = layers.Dense(dim, dim, ('embed', 'kv'), use_bias=False,
                              rngs=rngs)

  def __call__(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """[B, N, D] tokens and [B, N] mask → [B, D] float32."""
    x = tokens.astype(jnp.float32)
    k = self.key(x, out_dtype=jnp.float32)
    v = self.value(x, out_dtype=jnp.float32)
    logits = jnp.einsum('bnd,d->bn', k, self.query[...]) * (
        x.shape[-1] ** -0.5)
    logits = jnp.where(mask.astype(bool), logits, jnp.finfo(jnp.float32).min)
    return jnp.einsum('bn,bnd->bd', jax.nn.softmax(logits, axis=-1), v)


def feature_dim(spec: TapSpec, num_tokens: int, width: int) -> int:
  """The probe head's input width for a tap of [N, D] under ``spec``."""
  return num_tokens * width if spec.reduce == 'flatten' else width
