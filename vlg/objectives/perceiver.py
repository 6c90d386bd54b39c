"""Perceiver stage 1: ITC max over latents + ITG (docs/probing.md §6.3 item 3).

The Perceiver Resampler has no text path, so a
``vlg.models.text_decoder.TextDecoder`` carries the text side. One batch
gives two losses, summed with the weights given (default 1 each):

* ITC: BLIP-2's contrastive loss with the similarity a max over the
  latents (``qformer.itc_max_over_queries``): every latent projected by
  ``decoder.vision_proj`` and L2-normalised, against the [CLS] feature of
  the decoder's text-only bidirectional pass; symmetric in-batch
  cross-entropy with label smoothing 0.1.
* ITG: the Flamingo-style LM loss. The caption, [CLS] replaced by [DEC],
  runs causally through the decoder with cross-attention to the latents;
  next-token cross-entropy with label smoothing 0.1, padding ignored
  (``qformer.itg_prefix_lm``).

There is no ITM: the Perceiver's latents never see the text, so a matching
head would have to live in the decoder, and the Perceiver is probed without
text anyway (docs/probing.md §7, item 1). The frozen image tokens are
under ``stop_gradient``; everything else (the Perceiver, the decoder, its
heads and the temperature) gets gradient.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vlg.objectives import itc
from vlg.objectives import qformer

Batch = dict[str, jax.Array]
LOSSES = ('itc', 'itg')


def stage1_loss(perceiver: nnx.Module, decoder: nnx.Module,
                image_embeds: jax.Array, batch: Batch, *, bos_id: int,
                weights: dict[str, float] | None = None,
                label_smoothing: float = 0.1,
                dropout_rngs: nnx.Rngs | None = None
                ) -> tuple[jax.Array, dict[str, Any]]:
  """ITC + ITG of a Perceiver Resampler and its text decoder on one batch.

  Args:
    perceiver: a ``vlg.models.perceiver.PerceiverResampler`` (merged from
      the parameters being trained).
    decoder: its ``vlg.models.text_decoder.TextDecoder``.
    image_embeds: [B, N, D] frozen image tokens of the Perceiver's width;
      stop-gradient is applied here.
    batch: ``text_ids`` [B, L] ([CLS] first) and ``text_mask`` [B, L].
    bos_id: the [DEC] token id that replaces [CLS] for ITG.
    weights: ``{'itc', 'itg'}``; None: both 1.
    label_smoothing: ε of ITC and ITG.
    dropout_rngs: the decoder's dropout randomness (None: deterministic;
      the Perceiver has no dropout).

  Returns:
    ``(total, metrics)``: ``itc_loss``, ``itc_acc``, ``temp``, ``itg_loss``,
    ``itg_acc``, ``itg_num_tokens`` and ``loss``, all float32.
  """
  weights = weights or {k: 1.0 for k in LOSSES}
  if set(weights) != set(LOSSES):
    raise KeyError(f'Perceiver stage-1 weights need exactly the keys '
                   f'{LOSSES} (no ITM: the latents never see the text), '
                   f'got {sorted(weights)}')
  kw = dict(deterministic=dropout_rngs is None, rngs=dropout_rngs)
  image = jax.lax.stop_gradient(image_embeds)
  ids, mask = batch['text_ids'], batch['text_mask']
  out = perceiver(image)
  latents, latent_mask = out['resampler_queries'], out['query_mask']

  texts = decoder(ids, mask, mode='text', **kw)['text_embeds']
  temp = itc.clamp_temp(decoder.temp[...])
  loss_itc, metrics, _ = qformer.itc_max_over_queries(
      decoder.image_feat(latents), decoder.text_feat(texts), temp,
      label_smoothing=label_smoothing)

  dec = decoder(qformer.decoder_input_ids(ids, bos_id), mask, latents,
                latent_mask, mode='decoder', **kw)['text_embeds']
  loss_itg, itg_metrics = qformer.itg_prefix_lm(
      decoder.lm_logits(dec), ids, mask, label_smoothing=label_smoothing)
  total = weights['itc'] * loss_itc + weights['itg'] * loss_itg
  metrics = {**metrics, **itg_metrics, 'loss': total}
  return total, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
