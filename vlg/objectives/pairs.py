"""In-batch image–text losses over padded pairs (docs/objectives.md §3.2, §4).

X-VLM's three losses without momentum encoders or queues: ITC in-batch,
ITM with hard negatives drawn from the in-batch ITC similarities, MLM with
plain cross-entropy. Used for X-VLM's (image, caption) pairs, its (box
concept, box text) pairs and VSG's (image, verbalised graph) pairs. Pairs
carry a ``valid`` flag (fixed-shape batches are padded): padding rows add
nothing to any loss and padding columns are never negatives.

Groups say which pairs are interchangeable. ITM never draws a pair's group
mates as its negatives (for captions the group is the image id, so a second
caption of the same image is not a "negative"). ITC's targets are the
diagonal unless ``positives`` are given; then the target of row p is
uniform over p's valid group mates (ALBEF's retrieval fine-tuning,
``sim_targets = pos_idx / pos_idx.sum(1)``). X-VLM's box pairs need both:
two texts of one box give the same box concept, and an identical text gives
the same text feature, so such pairs are copies of each other on one side
and can be neither negatives nor competing targets (:func:`box_pair_groups`).
All in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlg.objectives import itm
from vlg.objectives import mlm

# A large finite negative: excluded similarities get zero sampling weight
# without creating infinities that could leak into gradients.
_NEG = -1e4


def group_matrix(*ids: jax.Array) -> jax.Array:
  """[P, P] bool: True where pairs p and q agree on every [P] id array."""
  if not ids:
    raise ValueError('group_matrix needs at least one id array')
  same = None
  for x in ids:
    x = jnp.asarray(x).reshape(-1)
    eq = x[:, None] == x[None, :]
    same = eq if same is None else same & eq
  return same


def box_pair_groups(text_group: jax.Array, row: jax.Array,
                    box_group: jax.Array) -> tuple[jax.Array, jax.Array]:
  """ITC positives and ITM exclusions of X-VLM's (box concept, text) pairs.

  Two pairs are in one group if they have the same normalised text
  (``text_group``) or come from the same image row and box (``row`` and
  ``box_group`` both equal): the first share a text feature, the second a
  box concept. A pair whose ``box_group`` is negative is grouped the
  text-only way: identical texts are not its ITM negatives and its ITC
  target is its own pair alone (``input.parts.entity.group_by_box=False``).

  Args:
    text_group: [P] int ids of the normalised texts.
    row: [P] int image row of each pair.
    box_group: [P] int, within a row equal for pairs of the same box; < 0
      for pairs not grouped by box.

  Returns:
    ``(positives, not_negatives)``, [P, P] bool, symmetric, diagonal True:
    the ITC positives of :func:`masked_itc` and the ITM exclusions of
    :func:`masked_itm`.
  """
  by_text = group_matrix(text_group)
  grouped = jnp.asarray(box_group).reshape(-1) >= 0
  both = grouped[:, None] & grouped[None, :]
  eye = jnp.eye(by_text.shape[0], dtype=bool)
  positives = eye | (both & (by_text | group_matrix(row, box_group)))
  return positives, positives | by_text


def masked_itc(image_feat: jax.Array, text_feat: jax.Array, temp: jax.Array,
               valid: jax.Array, positives: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array],
                          dict[str, jax.Array]]:
  """In-batch ITC over the valid pairs only, with optional group positives.

  ``L = mean over valid p of ½(CE_p(s_i2t) + CE_p(s_t2i))`` with
  ``s = v wᵀ / τ``, columns of padding pairs removed and
  ``CE_p(s) = −Σ_q t_pq log softmax(s_p)_q``. The target ``t_p`` is uniform
  over the valid columns q with ``positives[p, q]`` (p itself always
  included); without ``positives`` it is the diagonal, and the loss equals
  ``itc.itc_loss_in_batch`` when every pair is valid. ``itc_acc`` counts an
  argmax (image → text) inside p's positives as correct.

  Args:
    image_feat, text_feat: [P, E] L2-normalised features.
    temp: clamped temperature.
    valid: [P] pair validity.
    positives: [P, P] symmetric bool, True where q is a positive of p (e.g.
      :func:`box_pair_groups`), or None for the diagonal.

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
  eye = jnp.eye(v.shape[0], dtype=bool)
  pos = eye if positives is None else eye | positives.astype(bool)
  pos = pos & keep
  target = pos.astype(jnp.float32) / jnp.maximum(
      pos.sum(-1, keepdims=True), 1).astype(jnp.float32)
  # Targets sum to one on valid rows, so CE = logsumexp − Σ_q t_q s_q; with
  # one-hot targets this is exactly logsumexp − s_pp.
  ce_i2t = jax.nn.logsumexp(sim_i2t, -1) - jnp.sum(target * sim_i2t, -1)
  ce_t2i = jax.nn.logsumexp(sim_t2i, -1) - jnp.sum(target * sim_t2i, -1)
  weight = ok.astype(jnp.float32)
  n = jnp.maximum(weight.sum(), 1.0)
  loss = jnp.sum(0.5 * (ce_i2t + ce_t2i) * weight) / n
  hit = jnp.take_along_axis(pos, jnp.argmax(sim_i2t, -1)[:, None], -1)[:, 0]
  acc = jnp.sum(hit * weight) / n
  return loss, {'itc_loss': loss, 'itc_acc': acc}, {'sim_i2t': sim_i2t,
                                                    'sim_t2i': sim_t2i}


def sample_negatives(rng: jax.Array, sim_i2t: jax.Array, sim_t2i: jax.Array,
                     excluded: jax.Array
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One hard negative image per text and one text per image.

  As in docs/objectives.md §2.2, drawn in proportion to the softmax of the
  (stop-gradiented) ITC similarities over the columns not ``excluded`` — the
  distribution and the key split of ``itm.sample_hard_negatives``, with the
  exclusion given as a matrix rather than ids. A row whose every column is
  excluded has no negative: it gets its own index and ``has_negative`` False,
  so the caller can weight its negative rows out instead of training on a copy
  of the positive labelled "not matched".

  Args:
    rng: PRNG key.
    sim_i2t, sim_t2i: [P, P] ITC logits image → text and text → image.
    excluded: [P, P] bool, True where column q may not be a negative of row
      p, in both directions (the diagonal, group mates, padding columns).

  Returns:
    ``(neg_image_idx, neg_text_idx, has_negative)``: int32 [P] negative
    image of each text and negative text of each image; bool [P].
  """
  p = excluded.shape[0]
  has_neg = ~jnp.all(excluded, -1)
  sg = jax.lax.stop_gradient

  def draw(key, sim):
    logits = jnp.where(excluded, -jnp.inf, sg(sim).astype(jnp.float32))
    # A finite stand-in keeps rows without any allowed column free of NaN.
    logits = jnp.where(has_neg[:, None], logits, 0.0)
    logits = logits - jax.nn.logsumexp(logits, -1, keepdims=True)
    idx = jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
    return jnp.where(has_neg, idx, jnp.arange(p, dtype=jnp.int32))

  rng_image, rng_text = jax.random.split(rng)
  return draw(rng_image, sim_t2i), draw(rng_text, sim_i2t), has_neg


def masked_itm(fuse_fn, image_embeds: jax.Array, image_mask: jax.Array | None,
               text_embeds: jax.Array, text_mask: jax.Array,
               sims: dict[str, jax.Array], groups: jax.Array,
               valid: jax.Array, rng: jax.Array
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """ITM on positives and one hard negative each way, padding weighted out.

  Rows: P positives, P (negative image, text), P (image, negative text),
  labelled 1, 0, 0. The negative rows of a valid pair without any allowed
  negative (every other valid pair is a group mate) are weighted out and
  counted in ``itm_no_negative``.

  Args:
    fuse_fn: ``(text_embeds, text_mask, image_embeds, image_mask) ->
      itm logits [3P, 2]``.
    image_embeds: [P, N, D] per-pair visual tokens; image_mask [P, N] or None.
    text_embeds: [P, L, D]; text_mask [P, L].
    sims: :func:`masked_itc`'s similarities.
    groups: [P] int ids (equal ids are never negatives of each other) or a
      [P, P] bool matrix, True where q may not be a negative of p (e.g.
      :func:`box_pair_groups`).
    valid: [P] pair validity.
    rng: key for the negative draws.

  Returns:
    ``(loss, {'itm_loss', 'itm_acc', 'itm_no_negative', 'itm_neg_image',
    'itm_neg_text'})``; ``itm_no_negative`` is the number of valid pairs
    without a negative; the last two are [P] vectors: the negative image
    of each text and the negative text of each image (a pair without a
    negative names itself).
  """
  ok = valid.astype(bool)
  p = ok.shape[0]
  groups = jnp.asarray(groups)
  same = groups.astype(bool) if groups.ndim == 2 else group_matrix(groups)
  excluded = same | jnp.eye(p, dtype=bool) | ~ok[None, :]
  neg_img, neg_txt, has_neg = sample_negatives(
      rng, sims['sim_i2t'], sims['sim_t2i'], excluded)
  image_index, text_index = itm.itm_pairs(neg_img, neg_txt)
  mask_i = None if image_mask is None else image_mask[image_index]
  logits = fuse_fn(text_embeds[text_index], text_mask[text_index],
                   image_embeds[image_index], mask_i).astype(jnp.float32)
  labels = itm.itm_labels(p)
  with_neg = (ok & has_neg).astype(jnp.float32)
  weight = jnp.concatenate([ok.astype(jnp.float32), with_neg, with_neg])
  ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
      logits, labels[:, None], -1)[:, 0]
  n = jnp.maximum(weight.sum(), 1.0)
  loss = jnp.sum(ce * weight) / n
  acc = jnp.sum((jnp.argmax(logits, -1) == labels) * weight) / n
  no_neg = jnp.sum(ok & ~has_neg).astype(jnp.float32)
  return loss, {'itm_loss': loss, 'itm_acc': acc, 'itm_no_negative': no_neg,
                'itm_neg_image': neg_img, 'itm_neg_text': neg_txt}


def image_text_losses(model, *, image_embeds: jax.Array,
                      image_feat: jax.Array, image_mask: jax.Array | None,
                      text_ids: jax.Array, text_mask: jax.Array,
                      mlm_ids: jax.Array, mlm_labels: jax.Array,
                      groups: jax.Array, valid: jax.Array, rng: jax.Array,
                      temp: jax.Array, weights: dict[str, float],
                      dropout_rngs=None, positives: jax.Array | None = None
                      ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted in-batch ITC + ITM + MLM of P (visual, text) pairs.

  Args:
    model: the online model.
    image_embeds: [P, N, Dv] visual tokens of each pair (an image's tokens
      or a box concept's); image_mask [P, N] (None: all visible).
    image_feat: [P, E] L2-normalised visual features.
    text_ids, text_mask, mlm_ids, mlm_labels: [P, L] (mlm_labels -100 where
      nothing is predicted, including every padding pair).
    groups: [P] ids or [P, P] bool ITM exclusions, see :func:`masked_itm`.
    valid: [P] pair validity.
    rng: key for the ITM negatives.
    temp: clamped temperature.
    weights: ``{'itc', 'itm', 'mlm'}``.
    dropout_rngs: dropout randomness (None: deterministic).
    positives: [P, P] bool ITC positives, see :func:`masked_itc` (None:
      the diagonal).

  Returns:
    (weighted total, metrics incl. ``itc_loss``, ``itm_loss``, ``mlm_loss``,
    accuracies).
  """
  txt = model.embed_text(text_ids, text_mask, rngs=dropout_rngs)
  loss_itc, metrics, sims = masked_itc(image_feat, txt['text_feat'], temp,
                                       valid, positives)

  def fuse_itm(t, tm, i, im):
    return model.itm_logits(model.fuse_cls(t, tm, i, im, rngs=dropout_rngs))

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
  pair valid, ITM groups by image id, ITC targets the diagonal): X-VLM's
  caption losses (prefix '') and VSG's (prefix 'vsg_')."""
  slot = lambda k: batch[prefix + k]
  img = model.embed_image(slot('image'), rngs=dropout_rngs)
  return image_text_losses(
      model, image_embeds=img['image_embeds'], image_feat=img['image_feat'],
      image_mask=None, text_ids=slot('text_ids'),
      text_mask=slot('text_mask'), mlm_ids=slot('mlm_ids'),
      mlm_labels=slot('mlm_labels'), groups=slot('image_id'),
      valid=jnp.ones(slot('image_id').shape, jnp.int32), rng=rng,
      temp=temp, weights=weights, dropout_rngs=dropout_rngs)
