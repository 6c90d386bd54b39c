"""Masked relation classification loss (MRC, docs/objectives.md §5).

The model encodes the subject and the object of a triplet as box concepts
fused with their label texts, and an MLP on the two pooled [CLS] features
scores every relation of the vocabulary (``vlg.data.relations``). The loss
is the cross-entropy of the true relation, averaged over the real triplets
(padding rows have weight 0). The majority-class rate of the batch is
logged beside the accuracy: relation data is very skewed (GQA's "on",
"left of", ...), and an accuracy near that rate means the head has learnt
the prior, not the relation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlg.objectives import part

Batch = dict[str, jax.Array]


def mrc_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted mean cross-entropy over relation classes.

  ``L = Σ_i w_i · (−log_softmax(logits_i)[y_i]) / max(Σ_i w_i, 1)``: a batch
  without triplets gives 0 and zero gradients. Labels must lie in
  ``[0, V)`` on weighted rows (the relation vocabulary's ``encode`` raises
  on unknown strings); padding rows may hold any label. Computed in
  float32 (float64 stays float64).

  Args:
    logits: [N, V] relation logits.
    labels: [N] int relation ids.
    weights: [N] 1 on real triplets, 0 on padding (any non-negative weight
      works).

  Returns:
    ``(loss, metrics)`` with ``mrc_loss``, ``mrc_acc`` (weighted argmax
    accuracy), ``mrc_majority_rate`` (weighted share of the most frequent
    label among the weighted rows: the accuracy of always predicting it)
    and ``mrc_num`` (Σ weights).
  """
  if logits.ndim != 2 or labels.shape != logits.shape[:1] or (
      weights.shape != labels.shape):
    raise ValueError(f'mrc_loss: expected [N, V], [N], [N], got '
                     f'{logits.shape}, {labels.shape}, {weights.shape}')
  dtype = jnp.promote_types(jnp.result_type(logits), jnp.float32)
  logp = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
  labels = labels.astype(jnp.int32)
  w = weights.astype(dtype)
  num = jnp.sum(w)
  denom = jnp.maximum(num, 1.0)
  # A weighted row whose label is outside [0, V) gets a NaN loss (loud, not
  # a silently wrong class); padding rows may hold any label.
  in_range = (labels >= 0) & (labels < logits.shape[-1])
  safe = jnp.where(in_range, labels, 0)
  nll = -jnp.take_along_axis(logp, safe[:, None], axis=-1)[:, 0]
  nll = jnp.where(in_range, nll, jnp.nan)
  loss = jnp.sum(jnp.where(w > 0, w * nll, 0.0)) / denom
  correct = (jnp.argmax(logp, axis=-1) == labels).astype(dtype)
  class_weight = jnp.sum(
      w[:, None] * jax.nn.one_hot(labels, logits.shape[-1], dtype=dtype),
      axis=0)
  metrics = {'mrc_loss': loss, 'mrc_acc': jnp.sum(w * correct) / denom,
             'mrc_majority_rate': jnp.max(class_weight) / denom,
             'mrc_num': num}
  return loss, metrics



def part_loss(model, batch: Batch, *, rng=None, temp=None, weights,
              dropout_rngs, options=None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The ``mrc`` part's loss, ``weights['mrc']`` · :func:`mrc_loss`:
  subject and object concepts, each fused with its label text, in one
  fusion pass, the relation scored from their fused [CLS] features.

  ``options['mrc_concept']='masked'`` (``config.loss.mrc_concept``, the
  default) encodes each entity with the ViT's
  self-attention restricted to its box (one pass per entity), so nothing
  outside the box reaches it — the relation must be inferred from the two
  entities alone, as "masked" relation classification intends.
  ``'shared'`` uses X-VLM's one pass per image (in-box tokens have seen
  the context through self-attention; cross-attention is still masked).
  """
  del rng, temp
  concept = (options or {}).get('mrc_concept', 'masked')
  index = part.pair_index(batch['mrc_valid'])
  p = index.shape[0]
  both = lambda key: jnp.concatenate([part.flat(batch[f'mrc_subject_{key}']),
                                      part.flat(batch[f'mrc_object_{key}'])])
  index2, patch_mask = jnp.concatenate([index, index]), both('patch_mask')
  if concept == 'masked':
    img = model.embed_image(batch['mrc_image'][index2], patch_mask,
                            rngs=dropout_rngs)
    concept_out = model.embed_concept(
        img['image_embeds'], jnp.arange(2 * p, dtype=jnp.int32), patch_mask)
  elif concept == 'shared':
    img = model.embed_image(batch['mrc_image'], rngs=dropout_rngs)
    concept_out = model.embed_concept(img['image_embeds'], index2,
                                      patch_mask)
  else:
    raise ValueError(f"loss.mrc_concept must be 'masked' or 'shared', got "
                     f'{concept!r}')
  concept = concept_out
  ids, mask = both('ids'), both('mask')
  txt = model.embed_text(ids, mask, rngs=dropout_rngs)
  cls = model.fuse_cls(txt['text_embeds'], mask, concept['concept_embeds'],
                       concept['concept_mask'], rngs=dropout_rngs)
  logits = model.mrc_logits(cls[:p], cls[p:])
  loss, metrics = mrc_loss(logits, part.flat(batch['mrc_label']),
                           part.flat(batch['mrc_valid']).astype(jnp.float32))
  return weights['mrc'] * loss, metrics


PART = part.PartObjective(loss=part_loss, rng_stream=None, weights=('mrc',),
                          progress=('mrc_acc',))
