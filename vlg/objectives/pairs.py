"""In-batch image–text losses over pairs that may be padding (spec §3.2, §4).

X-VLM's three losses without momentum encoders or queues: ITC in-batch with
arange labels, ITM with hard negatives drawn from the in-batch ITC
similarities, MLM with plain cross-entropy. Used for X-VLM's (image,
caption) pairs, its (box concept, box text) pairs and VSG's (image,
verbalised graph) pairs. Pairs carry a ``valid`` flag (fixed-shape batches
are padded): padding rows add nothing to any loss and padding columns are
never negatives. ``groups`` are ids of which pairs may not be ITM negatives
of each other (the image id for captions; the text for box pairs, so an
identical text is never a negative). All in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlg.objectives import itm
from vlg.objectives import mlm

# A large finite negative: excluded similarities get zero sampling weight
# without creating infinities that could leak into gradients.
_NEG = -1e4


def masked_itc(image_feat: jax.Array, text_feat: jax.Array, temp: jax.Array,
               valid: jax.Array) -> tuple[jax.Array, dict[str, jax.Array],
                                          dict[str, jax.Array]]:
  """In-batch ITC over the valid pairs only.

  ``L = mean over valid b of ½(CE_b(s_i2t) + CE_b(s_t2i))`` with
  ``s = v wᵀ / τ``, target the diagonal, columns of padding pairs removed.
  Equals ``itc.itc_loss_in_batch`` when every pair is valid.

  Returns:
    ``(loss, {'itc_loss', 'itc_acc'}, {'sim_i2t', 'sim_t2i'})`` where the
    similarities have padding columns at ``_NEG``.
  """
  v = image_feat.astype(jnp.float32)
  w = text_feat.astype(jnp.float32)
  ok = valid.astype(bool)
  keep = ok[None, :]
  sim_i2t = jnp.where(keep, v @ w.T / temp, _NEG)
  sim_t2i = jnp.where(keep, w @ v.T / temp, _NEG)
  diag = jnp.arange(v.shape[0])
  ce_i2t = jax.nn.logsumexp(sim_i2t, -1) - sim_i2t[diag, diag]
  ce_t2i = jax.nn.logsumexp(sim_t2i, -1) - sim_t2i[diag, diag]
  weight = ok.astype(jnp.float32)
  n = jnp.maximum(weight.sum(), 1.0)
  loss = jnp.sum(0.5 * (ce_i2t + ce_t2i) * weight) / n
  acc = jnp.sum((jnp.argmax(sim_i2t, -1) == diag) * weight) / n
  return loss, {'itc_loss': loss, 'itc_acc': acc}, {'sim_i2t': sim_i2t,
                                                    'sim_t2i': sim_t2i}


def masked_itm(fuse_fn, image_embeds: jax.Array, image_mask: jax.Array | None,
               text_embeds: jax.Array, text_mask: jax.Array,
               sims: dict[str, jax.Array], groups: jax.Array,
               valid: jax.Array, rng: jax.Array
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """ITM on positives and one hard negative each way, padding weighted out.

  Args:
    fuse_fn: ``(text_embeds, text_mask, image_embeds, image_mask) ->
      itm logits [3P, 2]``.
    image_embeds: [P, N, D] per-pair visual tokens; image_mask [P, N] or None.
    text_embeds: [P, L, D]; text_mask [P, L].
    sims: :func:`masked_itc`'s similarities.
    groups: [P] int; equal ids are never negatives of each other.
    valid: [P] pair validity.
    rng: key for the negative draws.

  Returns:
    ``(loss, {'itm_loss', 'itm_acc', 'itm_no_negative'})``.
  """
  ok = valid.astype(bool)
  # Padding columns already sit at _NEG; padding rows are weighted out below.
  neg_img, neg_txt, metrics = itm.sample_hard_negatives(
      rng, sims['sim_i2t'], sims['sim_t2i'], groups)
  image_index, text_index = itm.itm_pairs(neg_img, neg_txt)
  mask_i = None if image_mask is None else image_mask[image_index]
  logits = fuse_fn(text_embeds[text_index], text_mask[text_index],
                   image_embeds[image_index], mask_i).astype(jnp.float32)
  labels = itm.itm_labels(ok.shape[0])
  weight = jnp.tile(ok.astype(jnp.float32), 3)
  ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
      logits, labels[:, None], -1)[:, 0]
  n = jnp.maximum(weight.sum(), 1.0)
  loss = jnp.sum(ce * weight) / n
  acc = jnp.sum((jnp.argmax(logits, -1) == labels) * weight) / n
  return loss, {'itm_loss': loss, 'itm_acc': acc,
                'itm_no_negative': metrics['itm_no_negative']}


def image_text_losses(model, *, image_embeds: jax.Array,
                      image_feat: jax.Array, image_mask: jax.Array | None,
                      text_ids: jax.Array, text_mask: jax.Array,
                      mlm_ids: jax.Array, mlm_labels: jax.Array,
                      groups: jax.Array, valid: jax.Array, rng: jax.Array,
                      temp: jax.Array, weights: dict[str, float],
                      dropout_rngs=None
                      ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted in-batch ITC + ITM + MLM of P (visual, text) pairs.

  Args:
    model: the online model.
    image_embeds: [P, N, Dv] visual tokens of each pair (an image's tokens
      or a box concept's); image_mask [P, N] (None: all visible).
    image_feat: [P, E] L2-normalised visual features.
    text_ids, text_mask, mlm_ids, mlm_labels: [P, L] (mlm_labels -100 where
      nothing is predicted, including every padding pair).
    groups, valid: [P], see :func:`masked_itm`.
    rng: key for the ITM negatives.
    temp: clamped temperature.
    weights: ``{'itc', 'itm', 'mlm'}``.
    dropout_rngs: dropout randomness (None: deterministic).

  Returns:
    (weighted total, metrics incl. ``itc_loss``, ``itm_loss``, ``mlm_loss``,
    accuracies).
  """
  txt = model.embed_text(text_ids, text_mask, rngs=dropout_rngs)
  loss_itc, metrics, sims = masked_itc(image_feat, txt['text_feat'], temp,
                                       valid)

  def fuse_itm(t, tm, i, im):
    fused = model.fuse(t, tm, i, im, rngs=dropout_rngs)
    return model.itm_logits(fused['fused_cls'])

  loss_itm, itm_metrics = masked_itm(
      fuse_itm, image_embeds, image_mask, txt['text_embeds'], text_mask,
      sims, groups, valid, rng)
  mlm_txt = model.embed_text(mlm_ids, text_mask, rngs=dropout_rngs)
  fused = model.fuse(mlm_txt['text_embeds'], text_mask, image_embeds,
                     image_mask, rngs=dropout_rngs)
  loss_mlm, mlm_metrics = mlm.mlm_loss(model.mlm_logits(fused['fused_embeds']),
                                       None, mlm_labels, 0.0)
  total = (weights['itc'] * loss_itc + weights['itm'] * loss_itm +
           weights['mlm'] * loss_mlm)
  return total, {**metrics, **itm_metrics, **mlm_metrics}


def whole_image_losses(model, batch: dict[str, jax.Array], prefix: str, *,
                       rng, temp, weights, dropout_rngs
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """:func:`image_text_losses` of whole images and their texts, read from
  the batch slots ``prefix + 'image'``, ``prefix + 'text_ids'``, ... (every
  pair valid, ITM groups by image id): X-VLM's caption losses (prefix '')
  and VSG's (prefix 'vsg_')."""
  slot = lambda k: batch[prefix + k]
  img = model.embed_image(slot('image'), rngs=dropout_rngs)
  return image_text_losses(
      model, image_embeds=img['image_embeds'], image_feat=img['image_feat'],
      image_mask=None, text_ids=slot('text_ids'),
      text_mask=slot('text_mask'), mlm_ids=slot('mlm_ids'),
      mlm_labels=slot('mlm_labels'), groups=slot('image_id'),
      valid=jnp.ones(slot('image_id').shape, jnp.int32), rng=rng,
      temp=temp, weights=weights, dropout_rngs=dropout_rngs)
