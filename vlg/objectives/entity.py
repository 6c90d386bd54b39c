"""The ``entity`` part's objective: X-VLM's box concepts
(docs/objectives.md §3).

On the (box, text) pairs of ``vlg/data/parts/entity.py``: ITC, ITM and MLM
between each box's concept (the ViT's tokens inside the box, pooled by
``Model.embed_concept``) and its text — X-VLM's in-batch versions
(``pairs.image_text_losses``), logged with a ``box_`` prefix — plus box
regression (L1 + GIoU, ``boxes.box_losses``) of the box text's box from the
fused [CLS] of (full image, box text).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlg.objectives import boxes
from vlg.objectives import pairs
from vlg.objectives import part

Batch = dict[str, jax.Array]



def entity_loss(model, batch: Batch, *, rng, temp, weights, dropout_rngs,
                options=None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """X-VLM's box-concept losses, box regression (docs/objectives.md §3.1–3.2).

  Pairs of one image row and box (two texts of one box share the box
  concept) and pairs with identical texts are one group: ITC positives of
  each other and never ITM negatives (``pairs.box_pair_groups``; pairs with
  ``ent_box_group`` < 0 are grouped by text for ITM only).
  """
  del options
  flat = lambda key: part.flat(batch[f'ent_{key}'])
  img = model.embed_image(batch['ent_image'], rngs=dropout_rngs)
  index = part.pair_index(batch['ent_valid'])
  concept = model.embed_concept(img['image_embeds'], index,
                                flat('patch_mask'))
  ids, mask = flat('text_ids'), flat('text_mask')
  positives, not_negatives = pairs.box_pair_groups(
      flat('text_group'), index, flat('box_group'))
  total, metrics = pairs.image_text_losses(
      model, image_embeds=concept['concept_embeds'],
      image_feat=concept['concept_feat'], image_mask=concept['concept_mask'],
      text_ids=ids, text_mask=mask, mlm_ids=flat('mlm_ids'),
      mlm_labels=flat('mlm_labels'), groups=not_negatives,
      valid=flat('valid'), rng=rng, temp=temp, weights=weights,
      dropout_rngs=dropout_rngs, positives=positives)
  metrics = {f'box_{k}': v for k, v in metrics.items()}
  # Box regression: the *full* image fused with the box text.
  txt = model.embed_text(ids, mask, rngs=dropout_rngs)
  pred = model.predict_box(model.fuse_cls(
      txt['text_embeds'], mask, img['image_embeds'][index],
      rngs=dropout_rngs))
  loss_bbox, loss_giou, box_metrics = boxes.box_losses(
      pred, flat('box').astype(jnp.float32),
      flat('is_box').astype(jnp.float32))
  metrics.update(bbox_loss=loss_bbox, giou_loss=loss_giou,
                 box_mean_iou=box_metrics['mean_iou'],
                 box_num=box_metrics['num_boxes'])
  total = total + weights['bbox'] * loss_bbox + weights['giou'] * loss_giou
  metrics['entity_loss'] = total
  return total, metrics


def heldout_boxes(model, batch: Batch) -> dict[str, jax.Array]:
  """Per-pair IoU of the predicted box with the true one (``box_iou`` [P])
  and which pairs are real boxes (``box_is_box`` [P]), for
  ``vlg.tools.validate`` to pool over batches."""
  flat = lambda key: part.flat(batch[f'ent_{key}'])
  img = model.embed_image(batch['ent_image'])
  ids, mask = flat('text_ids'), flat('text_mask')
  txt = model.embed_text(ids, mask)
  pred = model.predict_box(model.fuse_cls(
      txt['text_embeds'], mask,
      img['image_embeds'][part.pair_index(batch['ent_valid'])]))
  iou, _ = boxes.box_iou_giou(boxes.cxcywh_to_xyxy(pred),
                              boxes.cxcywh_to_xyxy(flat('box')))
  return {'box_iou': iou, 'box_is_box': flat('is_box')}


PART = part.PartObjective(loss=entity_loss, rng_stream=1,
                          weights=('bbox', 'giou'),
                          progress=('box_itc_loss', 'giou_loss'),
                          heldout=heldout_boxes)
