"""Image-text matching (ITM) with hard negatives (docs/objectives.md §2.2).

For each text one negative image, and for each image one negative text, is
drawn in proportion to the softmax of the ITC logits over the batch
columns (the harder the negative, the likelier). The fused [CLS] of
3B pairs — B positives, B (text, negative image), B (negative text,
image) — is then classified matched / not matched.

vlg's exclusion rule: besides the positive itself, every batch entry with
the same image id is excluded (ALBEF zeroes only the diagonal, so a second
caption of the same image could be drawn as a "negative"; ALBEF#126).
Excluded entries get log-weight −∞, so ``jax.random.categorical`` can never
draw them, and the weights are computed in float32 (BLIP#76, ALBEF#107).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _exclusion_mask(b: int, image_ids: jax.Array | None) -> jax.Array:
  """[B, B] bool: True where column j may not be a negative for row i."""
  eye = jnp.eye(b, dtype=bool)
  if image_ids is None:
    return eye
  ids = jnp.asarray(image_ids).reshape(b)
  return eye | (ids[:, None] == ids[None, :])


def _masked_log_softmax(logits: jax.Array, excluded: jax.Array
                        ) -> tuple[jax.Array, jax.Array]:
  """Log-softmax over the allowed columns; rows with none fall back.

  A row whose every column is excluded (the whole batch is one image) gets
  the deterministic fallback column ``(i + 1) % B`` — a different pair of
  the batch, labelled negative, as ALBEF would for duplicates — with
  log-weight 0 and −∞ elsewhere, so nothing downstream sees a NaN.

  Returns:
    ``(log_weights [B, B], has_negative [B] bool)``.
  """
  b = logits.shape[0]
  has_neg = ~jnp.all(excluded, axis=-1)
  masked = jnp.where(excluded, -jnp.inf, logits)
  # A finite stand-in for all-excluded rows keeps logsumexp free of NaN.
  safe = jnp.where(has_neg[:, None], masked, 0.0)
  log_w = safe - jax.nn.logsumexp(safe, axis=-1, keepdims=True)
  fallback = jnp.arange(b)[None, :] == ((jnp.arange(b) + 1) % b)[:, None]
  fallback_log_w = jnp.where(fallback, 0.0, -jnp.inf)
  return jnp.where(has_neg[:, None], log_w, fallback_log_w), has_neg


def hard_negative_weights(sim_i2t_batch: jax.Array, sim_t2i_batch: jax.Array,
                          image_ids: jax.Array | None = None
                          ) -> tuple[jax.Array, jax.Array]:
  """ITM hard-negative log sampling weights (docs/objectives.md §2.2, step 2).

  ``w_i2t[b] = log_softmax(s_i2t[b, :B])`` over the texts of the batch that
  belong to another image than image b (−∞ elsewhere); likewise ``w_t2i``
  over images for each text. The similarities are the online ITC logits
  (already divided by τ) and are stop-gradiented.

  Args:
    sim_i2t_batch: [B, B] ITC logits image b → text j (batch columns only).
    sim_t2i_batch: [B, B] ITC logits text b → image j.
    image_ids: [B] int ids of each pair's image; equal ids are never
      negatives of each other. None excludes only the diagonal.

  Returns:
    ``(w_i2t, w_t2i)``, float32 [B, B] log-weights; each row is a
    normalised log-distribution. A row without any allowed column holds the
    fallback of :func:`sample_hard_negatives` (one column at 0).
  """
  b = sim_i2t_batch.shape[0]
  if sim_i2t_batch.shape != (b, b) or sim_t2i_batch.shape != (b, b):
    raise ValueError('hard_negative_weights: expected two [B, B] arrays, got '
                     f'{sim_i2t_batch.shape} and {sim_t2i_batch.shape}.')
  excluded = _exclusion_mask(b, image_ids)
  dtype = jnp.promote_types(jnp.result_type(sim_i2t_batch), jnp.float32)
  sg = jax.lax.stop_gradient
  w_i2t, _ = _masked_log_softmax(sg(sim_i2t_batch).astype(dtype), excluded)
  w_t2i, _ = _masked_log_softmax(sg(sim_t2i_batch).astype(dtype), excluded)
  return w_i2t, w_t2i


def sample_hard_negatives(rng: jax.Array, sim_i2t_batch: jax.Array,
                          sim_t2i_batch: jax.Array,
                          image_ids: jax.Array | None = None
                          ) -> tuple[jax.Array, jax.Array,
                                     dict[str, jax.Array]]:
  """Draws one hard negative image per text and one text per image (§2.2).

  Uses ``jax.random.categorical`` on :func:`hard_negative_weights` (ALBEF:
  ``torch.multinomial`` on the zeroed softmax — the same distribution).
  If every pair of the batch shows the same image there is no valid
  negative; those rows take the deterministic fallback ``(b + 1) % B``
  (b itself when B = 1) and are counted in ``itm_no_negative``.

  Args:
    rng: PRNG key.
    sim_i2t_batch: [B, B] ITC logits image → text (batch columns).
    sim_t2i_batch: [B, B] ITC logits text → image (batch columns).
    image_ids: [B] image ids, or None (only the positive is excluded).

  Returns:
    ``(neg_image_idx, neg_text_idx, metrics)``: int32 [B] index of the
    negative image for each text b and of the negative text for each
    image b; metrics ``itm_no_negative`` (float32 count of rows without a
    valid negative; the exclusion is symmetric, so it is the same count
    for texts and images).
  """
  w_i2t, w_t2i = hard_negative_weights(sim_i2t_batch, sim_t2i_batch,
                                       image_ids)
  b = w_i2t.shape[0]
  has_neg = ~jnp.all(_exclusion_mask(b, image_ids), axis=-1)
  rng_image, rng_text = jax.random.split(rng)
  neg_image_idx = jax.random.categorical(rng_image, w_t2i, axis=-1)
  neg_text_idx = jax.random.categorical(rng_text, w_i2t, axis=-1)
  metrics = {'itm_no_negative': jnp.sum(~has_neg).astype(jnp.float32)}
  return (neg_image_idx.astype(jnp.int32), neg_text_idx.astype(jnp.int32),
          metrics)


def itm_pairs(neg_image_idx: jax.Array, neg_text_idx: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
  """Image/text indices of the 3B ITM rows (docs/objectives.md §2.2, step 3).

  Rows: ``[B positives (b, b)] ++ [B (image neg_image_idx[b], text b)] ++
  [B (image b, text neg_text_idx[b])]`` — the order of :func:`itm_labels`.

  Args:
    neg_image_idx: [B] negative image of each text.
    neg_text_idx: [B] negative text of each image.

  Returns:
    ``(image_index, text_index)``, int32 [3B] each.
  """
  ar = jnp.arange(neg_image_idx.shape[0], dtype=jnp.int32)
  image_index = jnp.concatenate([ar, neg_image_idx.astype(jnp.int32), ar])
  text_index = jnp.concatenate([ar, ar, neg_text_idx.astype(jnp.int32)])
  return image_index, text_index


def itm_labels(batch_size: int) -> jax.Array:
  """int32 [3B] labels ``[1]*B + [0]*2B`` (1 = matched)."""
  return jnp.concatenate([jnp.ones((batch_size,), jnp.int32),
                          jnp.zeros((2 * batch_size,), jnp.int32)])


def itm_loss(itm_logits: jax.Array, labels: jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean two-class CE of the ITM head (docs/objectives.md §2.2, step 3).

  Args:
    itm_logits: [N, 2] ITM head logits (class 1 = matched), N = 3B.
    labels: [N] int labels, e.g. :func:`itm_labels`.

  Returns:
    ``(loss, {'itm_loss', 'itm_acc'})``, computed in float32.
  """
  dtype = jnp.promote_types(jnp.result_type(itm_logits), jnp.float32)
  logp = jax.nn.log_softmax(itm_logits.astype(dtype), axis=-1)
  labels = labels.astype(jnp.int32)
  nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
  loss = jnp.mean(nll)
  acc = jnp.mean((jnp.argmax(logp, axis=-1) == labels).astype(jnp.float32))
  return loss, {'itm_loss': loss, 'itm_acc': acc}
