"""BLIP-2 stage-1 objectives of the Q-Former: ITC, ITM and ITG.

Formulas: docs/objectives.md §7.1; attention masks and training:
docs/probing.md §1.3 and §6.3 item 2.

Pure functions of model outputs, plus :func:`stage1_loss`, which runs the
Q-Former passes of one batch and sums the three losses with the weights
given (BLIP-2: all 1):

* ITC (:func:`itc_max_over_queries`): image-text similarity is the max over
  the query features of their dot product with the text [CLS] feature,
  divided by τ; symmetric in-batch cross-entropy with label smoothing
  (0.1), no momentum encoder and no queue. Under ``jax.jit`` the batch is
  the global batch, which is LAVIS's all-gather.
* ITM (:func:`itm_mean_over_queries`): the ITM head on every query row of a
  'multimodal' pass, logits averaged over queries; B positives, B hard
  negative images, B hard negative texts drawn with
  ``vlg.objectives.itm``'s sampler from the ITC similarities.
* ITG (:func:`itg_prefix_lm`): next-token cross-entropy of the text rows of
  a 'decoder' pass (queries are a prefix the text reads, never the other
  way), [CLS] replaced by [DEC], label smoothing 0.1, padding ignored.

Label smoothing follows ``torch.nn.CrossEntropyLoss(label_smoothing=ε)``:
targets ``(1 − ε)·onehot + ε/C`` over all C classes. Losses are computed in
float32 (float64 stays float64, which the tests use).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vlg.objectives import itc
from vlg.objectives import itm

Batch = dict[str, jax.Array]


def _dtype(x: jax.Array) -> jnp.dtype:
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array,
                           label_smoothing: float) -> jax.Array:
  """Per-row CE against ``(1 − ε)·onehot(labels) + ε/C`` ([..., C] → [...])."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  uniform = -jnp.mean(logp, axis=-1)
  return (1.0 - label_smoothing) * nll + label_smoothing * uniform


def itc_max_over_queries(query_feat: jax.Array, text_feat: jax.Array,
                         temp: jax.Array, *, label_smoothing: float = 0.1
                         ) -> tuple[jax.Array, dict[str, jax.Array],
                                    dict[str, jax.Array]]:
  """BLIP-2's ITC: similarity = max over queries (docs/probing.md §1.3).

  ``s[i, j] = max_q query_feat[i, q] · text_feat[j] / τ``; the loss is
  ``½ (CE_ls(s, arange) + CE_ls(sᵀ, arange))``, each averaged over the
  batch. Gradient flows into both sides and into τ.

  Args:
    query_feat: [B, Q, E] L2-normalised per-query image features.
    text_feat: [B, E] L2-normalised text [CLS] features.
    temp: scalar temperature, already clamped (``itc.clamp_temp``).
    label_smoothing: ε of both cross-entropies (BLIP-2: 0.1; 0 disables).

  Returns:
    ``(loss, metrics, aux)``: metrics ``itc_loss``, ``itc_acc`` (images
    whose top text is their own) and ``temp``; aux ``sim_i2t`` [B, B] and
    ``sim_t2i`` = its transpose, for the ITM hard negatives.
  """
  b = query_feat.shape[0]
  if query_feat.ndim != 3 or text_feat.shape != (b, query_feat.shape[-1]):
    raise ValueError(f'itc_max_over_queries: expected [B, Q, E] and [B, E], '
                     f'got {query_feat.shape} and {text_feat.shape}.')
  dtype = _dtype(query_feat)
  temp = jnp.asarray(temp).astype(dtype)
  sim_q2t = jnp.einsum('iqe,je->ijq', query_feat.astype(dtype),
                       text_feat.astype(dtype),
                       precision=jax.lax.Precision.HIGHEST)
  sim_i2t = jnp.max(sim_q2t, axis=-1) / temp
  sim_t2i = sim_i2t.T
  labels = jnp.arange(b)
  loss = 0.5 * (
      jnp.mean(smoothed_cross_entropy(sim_i2t, labels, label_smoothing)) +
      jnp.mean(smoothed_cross_entropy(sim_t2i, labels, label_smoothing)))
  acc = jnp.mean((jnp.argmax(sim_i2t, axis=-1) == labels).astype(dtype))
  metrics = {'itc_loss': loss, 'itc_acc': acc, 'temp': temp}
  return loss, metrics, {'sim_i2t': sim_i2t, 'sim_t2i': sim_t2i}


def itm_hard_negative_pairs(rng: jax.Array, sim_i2t: jax.Array,
                            sim_t2i: jax.Array,
                            image_ids: jax.Array | None = None
                            ) -> tuple[jax.Array, jax.Array,
                                       dict[str, jax.Array]]:
  """Image and text indices of the 3B ITM rows, negatives drawn from ITC.

  ``itm.sample_hard_negatives`` (softmax of the ITC logits, positives and
  same-image pairs excluded) then ``itm.itm_pairs``: rows are
  ``[B positives] ++ [B (negative image, text b)] ++ [B (image b,
  negative text)]``, the order of ``itm.itm_labels``.

  Returns:
    ``(image_index [3B], text_index [3B], metrics)``.
  """
  neg_image, neg_text, metrics = itm.sample_hard_negatives(
      rng, sim_i2t, sim_t2i, image_ids)
  image_index, text_index = itm.itm_pairs(neg_image, neg_text)
  return image_index, text_index, metrics


def itm_mean_over_queries(query_logits: jax.Array,
                          labels: jax.Array | None = None
                          ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Two-class CE of the per-query ITM logits averaged over queries.

  Args:
    query_logits: [N, Q, 2] ITM head logits of each query row of a
      'multimodal' pass (class 1 = matched).
    labels: [N] int labels; None: ``itm.itm_labels(N // 3)`` (N = 3B rows
      in :func:`itm_hard_negative_pairs` order).

  Returns:
    ``(loss, {'itm_loss', 'itm_acc'})``.
  """
  if query_logits.ndim != 3 or query_logits.shape[-1] != 2:
    raise ValueError('itm_mean_over_queries: expected [N, Q, 2] logits, got '
                     f'{query_logits.shape}.')
  n = query_logits.shape[0]
  if labels is None:
    if n % 3:
      raise ValueError(f'itm_mean_over_queries: {n} rows are not 3B; pass '
                       'labels explicitly.')
    labels = itm.itm_labels(n // 3)
  logits = jnp.mean(query_logits.astype(_dtype(query_logits)), axis=1)
  return itm.itm_loss(logits, labels)


def decoder_input_ids(text_ids: jax.Array, bos_id: int) -> jax.Array:
  """The ITG input: ``text_ids`` with the first token ([CLS]) set to bos."""
  return jnp.asarray(text_ids).at[:, 0].set(bos_id)


def itg_prefix_lm(lm_logits: jax.Array, text_ids: jax.Array,
                  text_mask: jax.Array, *, label_smoothing: float = 0.1
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Image-grounded text generation loss (BLIP-2's ITG, docs/probing.md §1.3).

  Position i predicts token i + 1: the logits of positions 0..L−2 are
  scored against ``text_ids[:, 1:]`` where ``text_mask[:, 1:]`` is set,
  and the smoothed CE is averaged over those tokens of the whole batch
  (0 with zero gradient when there are none).

  Args:
    lm_logits: [B, L, V] logits of the text rows of a 'decoder' pass.
    text_ids: [B, L] the tokens (the first, [CLS] or [DEC], is never a
      target).
    text_mask: [B, L], nonzero on real tokens.
    label_smoothing: ε (BLIP-2: 0.1; 0 disables).

  Returns:
    ``(loss, {'itg_loss', 'itg_acc', 'itg_num_tokens'})``.
  """
  if lm_logits.shape[:2] != text_ids.shape or (
      text_mask.shape != text_ids.shape):
    raise ValueError(f'itg_prefix_lm: logits {lm_logits.shape}, ids '
                     f'{text_ids.shape} and mask {text_mask.shape} disagree.')
  logits = lm_logits[:, :-1].astype(_dtype(lm_logits))
  targets = text_ids[:, 1:].astype(jnp.int32)
  weight = text_mask[:, 1:].astype(bool).astype(logits.dtype)
  count = jnp.sum(weight)
  denom = jnp.maximum(count, 1.0)
  ce = smoothed_cross_entropy(logits, targets, label_smoothing)
  loss = jnp.sum(ce * weight) / denom
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(logits.dtype)
  acc = jnp.sum(correct * weight) / denom
  return loss, {'itg_loss': loss, 'itg_acc': acc, 'itg_num_tokens': count}


def stage1_loss(model: nnx.Module, image_embeds: jax.Array, batch: Batch, *,
                rng: jax.Array, bos_id: int,
                weights: dict[str, float] | None = None,
                label_smoothing: float = 0.1,
                dropout_rngs: nnx.Rngs | None = None
                ) -> tuple[jax.Array, dict[str, Any]]:
  """ITC + ITM + ITG of a ``resamplers.QFormer`` on one batch (BLIP-2).

  Passes: 'image' (queries → ITC features), 'text' ([CLS] → ITC feature),
  'multimodal' on the 3B ITM rows, 'decoder' with [DEC] first. The decoder
  pass recomputes the query rows (LAVIS reuses the image pass's cached
  keys; the values are the same, only dropout draws differ).

  Args:
    model: the Q-Former (merged from the parameters being trained).
    image_embeds: [B, N, Dv] frozen image tokens before ``ln_vision``;
      stop-gradient is applied here.
    batch: ``text_ids`` [B, L] ([CLS] first), ``text_mask`` [B, L] and
      optionally ``image_id`` [B] (same-image pairs are never negatives).
    rng: key for the hard-negative draws.
    bos_id: the [DEC] token id that replaces [CLS] for ITG.
    weights: ``{'itc', 'itm', 'itg'}``; None: all 1.
    label_smoothing: ε of ITC and ITG.
    dropout_rngs: dropout randomness (None: deterministic).

  Returns:
    ``(total, metrics)``; metrics of the three losses plus ``loss``.
  """
  weights = weights or {'itc': 1.0, 'itm': 1.0, 'itg': 1.0}
  kw = dict(deterministic=dropout_rngs is None, rngs=dropout_rngs)
  image = jax.lax.stop_gradient(image_embeds)
  ids, mask = batch['text_ids'], batch['text_mask']
  queries = model(image, mode='image', **kw)['resampler_queries']
  texts = model(None, ids, mask, mode='text', **kw)['resampler_text']
  temp = itc.clamp_temp(model.temp[...])
  loss_itc, metrics, aux = itc_max_over_queries(
      model.image_feat(queries), model.text_feat(texts), temp,
      label_smoothing=label_smoothing)

  image_index, text_index, neg_metrics = itm_hard_negative_pairs(
      rng, aux['sim_i2t'], aux['sim_t2i'], batch.get('image_id'))
  fused = model(image[image_index], ids[text_index], mask[text_index],
                mode='multimodal', **kw)['resampler_queries']
  loss_itm, itm_metrics = itm_mean_over_queries(model.itm_logits(fused))

  dec = model(image, decoder_input_ids(ids, bos_id), mask, mode='decoder',
              **kw)['resampler_text']
  loss_itg, itg_metrics = itg_prefix_lm(model.lm_logits(dec), ids, mask,
                                        label_smoothing=label_smoothing)
  total = (weights['itc'] * loss_itc + weights['itm'] * loss_itm +
           weights['itg'] * loss_itg)
  metrics = {**metrics, **neg_metrics, **itm_metrics, **itg_metrics,
             'loss': total}
  return total, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
