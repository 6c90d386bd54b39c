"""The pretraining objective of every vlg model: caption losses plus parts.

- captions: ALBEF's ITC (momentum distillation, queues) + ITM + MLM
  (``albef.albef_loss``) when ``loss.momentum_distill`` (ALBEF, ReALBEF),
  else X-VLM's in-batch versions (``pairs.image_text_losses``; X-VLM,
  ReX-VLM);
- ``entity`` part (X-VLM, docs/objectives.md §3): the same three losses on
  (box concept, box text) pairs, plus box regression (L1 + GIoU) of the
  box text's box from the fused [CLS] of (full image, box text);
- ``vsg`` part (docs/objectives.md §4): in-batch ITC + ITM + MLM on (image,
  verbalised scene graph) pairs — no new parameters;
- ``mrc`` part (docs/objectives.md §5): subject and object concepts fused
  with their label texts, their fused [CLS] concatenated, relation
  cross-entropy.

``total = caption + Σ_part ratio_part · part``, each part's inner terms
weighted by ``loss.*``. Metrics are namespaced: ``itc_loss`` (captions),
``box_itc_loss``, ``bbox_loss``, ``giou_loss``, ``vsg_itm_loss``,
``mrc_loss``, ``mrc_acc``, ... Every part reads only its own slots
(``vlg/data/parts.py``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from vlg.objectives import albef
from vlg.objectives import boxes
from vlg.objectives import itc
from vlg.objectives import mrc
from vlg.objectives import pairs
from vlg.objectives import vsg

Batch = dict[str, jax.Array]


def _flat(x: jax.Array) -> jax.Array:
  """[B, M, ...] → [B·M, ...]."""
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _pair_index(valid: jax.Array) -> jax.Array:
  """Image index of each flattened pair of a [B, M] layout."""
  b, m = valid.shape
  return jnp.repeat(jnp.arange(b, dtype=jnp.int32), m)


def entity_loss(model, batch: Batch, *, rng, temp, weights, dropout_rngs
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """X-VLM's box-concept losses, box regression (docs/objectives.md §3.1–3.2).

  Pairs of one image row and box (two texts of one box share the box
  concept) and pairs with identical texts are one group: ITC positives of
  each other and never ITM negatives (``pairs.box_pair_groups``; pairs with
  ``ent_box_group`` < 0 are grouped by text for ITM only).
  """
  img = model.embed_image(batch['ent_image'], rngs=dropout_rngs)
  index = _pair_index(batch['ent_valid'])
  concept = model.embed_concept(img['image_embeds'], index,
                                _flat(batch['ent_patch_mask']))
  ids, mask = _flat(batch['ent_text_ids']), _flat(batch['ent_text_mask'])
  positives, not_negatives = pairs.box_pair_groups(
      _flat(batch['ent_text_group']), index, _flat(batch['ent_box_group']))
  total, metrics = pairs.image_text_losses(
      model, image_embeds=concept['concept_embeds'],
      image_feat=concept['concept_feat'], image_mask=concept['concept_mask'],
      text_ids=ids, text_mask=mask, mlm_ids=_flat(batch['ent_mlm_ids']),
      mlm_labels=_flat(batch['ent_mlm_labels']), groups=not_negatives,
      valid=_flat(batch['ent_valid']), rng=rng, temp=temp, weights=weights,
      dropout_rngs=dropout_rngs, positives=positives)
  metrics = {f'box_{k}': v for k, v in metrics.items()}
  # Box regression: the *full* image fused with the box text.
  txt = model.embed_text(ids, mask, rngs=dropout_rngs)
  fused = model.fuse(txt['text_embeds'], mask, img['image_embeds'][index],
                     rngs=dropout_rngs)
  pred = model.predict_box(fused['fused_cls'])
  loss_bbox, loss_giou, box_metrics = boxes.box_losses(
      pred, _flat(batch['ent_box']).astype(jnp.float32),
      _flat(batch['ent_is_box']).astype(jnp.float32))
  metrics.update(bbox_loss=loss_bbox, giou_loss=loss_giou,
                 box_mean_iou=box_metrics['mean_iou'],
                 box_num=box_metrics['num_boxes'])
  total = total + weights['bbox'] * loss_bbox + weights['giou'] * loss_giou
  return total, metrics


def mrc_part_loss(model, batch: Batch, *, dropout_rngs, concept='masked'
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Masked relation classification (docs/objectives.md §5): subject and
  object concepts, each fused with its label text, in one fusion pass.

  ``concept='masked'`` (default) encodes each entity with the ViT's
  self-attention restricted to its box (one pass per entity), so nothing
  outside the box reaches it — the relation must be inferred from the two
  entities alone, as "masked" relation classification intends.
  ``'shared'`` uses X-VLM's one pass per image (in-box tokens have seen
  the context through self-attention; cross-attention is still masked).
  """
  index = _pair_index(batch['mrc_valid'])
  p = index.shape[0]
  both = lambda key: jnp.concatenate([_flat(batch[f'mrc_subject_{key}']),
                                      _flat(batch[f'mrc_object_{key}'])])
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
    raise ValueError(f"mrc concept must be 'masked' or 'shared', got "
                     f'{concept!r}')
  concept = concept_out
  ids, mask = both('ids'), both('mask')
  txt = model.embed_text(ids, mask, rngs=dropout_rngs)
  fused = model.fuse(txt['text_embeds'], mask, concept['concept_embeds'],
                     concept['concept_mask'], rngs=dropout_rngs)
  cls = fused['fused_cls']
  logits = model.mrc_logits(cls[:p], cls[p:])
  return mrc.mrc_loss(logits, _flat(batch['mrc_label']),
                      _flat(batch['mrc_valid']).astype(jnp.float32))


def pretrain_loss(model, batch: Batch, *, momentum: dict[str, Any] | None,
                  queues: dict[str, jax.Array], rng: jax.Array,
                  alpha: jax.Array, weights: dict[str, float],
                  part_ratios: dict[str, float], dropout_rngs=None,
                  mrc_concept: str = 'masked'
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Caption losses (ALBEF or X-VLM style) plus the enabled parts.

  Args:
    model: the online model.
    batch: caption slots plus the enabled parts' slots.
    momentum: ``albef.momentum_outputs`` for ALBEF-style captions, or None
      for X-VLM-style (in-batch) captions.
    queues: the momentum queues (ALBEF style only).
    rng: key for the ITM negatives of every part.
    alpha: distillation weight (ALBEF style only).
    weights: ``itc``, ``itm``, ``mlm``, ``bbox``, ``giou``, ``mrc``.
    part_ratios: ``{part: ratio}`` of the enabled parts.
    dropout_rngs: dropout randomness (None: deterministic).
    mrc_concept: see :func:`mrc_part_loss`.

  Returns:
    (total loss, metrics).
  """
  rngs = dict(zip(('caption', 'entity', 'vsg'), jax.random.split(rng, 3)))
  if momentum is not None:
    total, metrics = albef.albef_loss(
        model, batch, momentum, queues, rng=rngs['caption'], alpha=alpha,
        weights=weights, dropout_rngs=dropout_rngs)
    temp = itc.clamp_temp(model.temp[...])
  else:
    temp = itc.clamp_temp(model.temp[...])
    total, metrics = pairs.whole_image_losses(
        model, batch, '', rng=rngs['caption'], temp=temp, weights=weights,
        dropout_rngs=dropout_rngs)
    metrics['temp'] = temp
  metrics['caption_loss'] = total
  kw = dict(temp=temp, weights=weights, dropout_rngs=dropout_rngs)
  if 'entity' in part_ratios:
    loss, m = entity_loss(model, batch, rng=rngs['entity'], **kw)
    total = total + part_ratios['entity'] * loss
    metrics.update(m, entity_loss=loss)
  if 'vsg' in part_ratios:
    loss, m = vsg.vsg_loss(model, batch, rng=rngs['vsg'], **kw)
    total = total + part_ratios['vsg'] * loss
    metrics.update(m, vsg_loss=loss)
  if 'mrc' in part_ratios:
    loss, m = mrc_part_loss(model, batch, dropout_rngs=dropout_rngs,
                            concept=mrc_concept)
    total = total + part_ratios['mrc'] * weights['mrc'] * loss
    metrics.update(m)
  metrics['loss'] = total
  return total, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
