"""ALBEF's pretraining objective: ITC + ITM + MLM (docs/objectives.md §2).

Composes the pure objectives of ``itc.py``, ``itm.py`` and ``mlm.py`` over
the outputs of an online model and its momentum (EMA) copy. The momentum
forward runs first, under stop-gradient; the caller updates the EMA
parameters before calling (docs/objectives.md §2.1, step 2) and enqueues
the returned momentum features after the step (step 8).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vlg import sharding
from vlg.objectives import itc
from vlg.objectives import itm
from vlg.objectives import mlm

Batch = dict[str, jax.Array]


def momentum_outputs(model_m: nnx.Module, batch: Batch) -> dict[str, Any]:
  """Momentum features and MLM teacher logits, all stop-gradiented."""
  img = model_m.embed_image(batch['image'])
  txt = model_m.embed_text(batch['text_ids'], batch['text_mask'])
  mlm_txt = model_m.embed_text(batch['mlm_ids'], batch['text_mask'])
  fused = model_m.fuse(mlm_txt['text_embeds'], batch['text_mask'],
                       img['image_embeds'])
  out = {'image_feat': img['image_feat'], 'text_feat': txt['text_feat'],
         'mlm_logits': model_m.mlm_logits(fused['fused_embeds'])}
  return jax.tree.map(jax.lax.stop_gradient, out)


def albef_loss(model: nnx.Module, batch: Batch, momentum: dict[str, Any],
               queues: dict[str, jax.Array], *, rng: jax.Array,
               alpha: jax.Array, weights: dict[str, float],
               dropout_rngs: nnx.Rngs | None = None,
               image_kv_once: bool | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted ITC + ITM + MLM of the online ``model`` on one batch.

  Args:
    model: the online model (merged from the parameters being trained).
    batch: the caption batch (see ``vlg/data/pipeline.py``).
    momentum: :func:`momentum_outputs` of the EMA model on the same batch.
    queues: ``{'image': [Q, E], 'text': [Q, E]}`` momentum feature queues,
      optionally with ``'filled'``: the rows written so far (the rest are
      left out of ITC, see ``itc.itc_loss``).
    rng: key for the hard-negative draws.
    alpha: distillation weight (already ramped).
    weights: ``{'itc', 'itm', 'mlm'}`` loss weights.
    dropout_rngs: dropout randomness (None: deterministic).
    image_kv_once: (static) how ITM's 3B rows reach their images, both
      giving the same values. True: the fusion projects each of the B
      images' cross-attention keys and values once and gathers them per
      row (``Model.fuse_cls``'s ``image_index``), a third of the
      projections. False: the image tokens are gathered to 3B rows first,
      so each layer projects 3B images. None (default): True unless the
      batch is split across devices, where gathering every fusion layer's
      keys and values across devices would move 2 × fusion_layers tensors
      the size of the image tokens instead of one
      (``sharding.batch_shards``).

  Returns:
    (total loss, metrics) with ``itc_loss``, ``itm_loss``, ``mlm_loss``,
    ``itm_acc``, ``mlm_acc``, ``temp``, ``alpha`` and more scalars, and the
    [B] vectors ``itm_neg_image`` (the negative image of each text) and
    ``itm_neg_text`` (the negative text of each image).
  """
  mask = batch['text_mask']
  img = model.embed_image(batch['image'], rngs=dropout_rngs)
  txt = model.embed_text(batch['text_ids'], mask, rngs=dropout_rngs)
  temp = itc.clamp_temp(model.temp[...])
  loss_itc, metrics, aux = itc.itc_loss(
      img['image_feat'], txt['text_feat'], momentum['image_feat'],
      momentum['text_feat'], queues['image'], queues['text'], temp, alpha,
      queue_filled=queues.get('filled'))

  b = batch['text_ids'].shape[0]
  neg_image, neg_text, neg_metrics = itm.sample_hard_negatives(
      rng, aux['sim_i2t'][:, :b], aux['sim_t2i'][:, :b], batch['image_id'])
  image_index, text_index = itm.itm_pairs(neg_image, neg_text)
  if image_kv_once is None:
    image_kv_once = sharding.batch_shards() == 1
  images, per_row = img['image_embeds'], image_index
  if not image_kv_once:
    images, per_row = images[image_index], None
  fused_cls = model.fuse_cls(txt['text_embeds'][text_index],
                             mask[text_index], images, rngs=dropout_rngs,
                             image_index=per_row)
  loss_itm, itm_metrics = itm.itm_loss(model.itm_logits(fused_cls),
                                       itm.itm_labels(b))

  mlm_txt = model.embed_text(batch['mlm_ids'], mask, rngs=dropout_rngs)
  mlm_fused = model.fuse(mlm_txt['text_embeds'], mask, img['image_embeds'],
                         rngs=dropout_rngs)
  loss_mlm, mlm_metrics = mlm.mlm_loss(
      model.mlm_logits(mlm_fused['fused_embeds']), momentum['mlm_logits'],
      batch['mlm_labels'], alpha)

  total = (weights['itc'] * loss_itc + weights['itm'] * loss_itm +
           weights['mlm'] * loss_mlm)
  metrics = {**metrics, **neg_metrics, **itm_metrics, **mlm_metrics}
  # [B] vectors, not logged as scalars: which negatives were drawn (the
  # train loop checks them against the synthetic world's ground truth).
  metrics.update(itm_neg_image=neg_image, itm_neg_text=neg_text)
  metrics['loss'] = total
  return total, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
