"""X-VLM's box regression losses: L1 and GIoU (docs/objectives.md §3.2).

The box head predicts ``b̂ = (cx, cy, w, h)`` normalised to the augmented
image from the fused [CLS] of (full image, box text). With ``N_boxes``
the number of real box pairs (whole-image and padding pairs excluded):

  L_bbox = Σ_i ‖b̂_i − b_i‖₁ / N_boxes   (summed over the 4 coordinates)
  L_giou = Σ_i (1 − GIoU(xyxy(b̂_i), xyxy(b_i))) / N_boxes
  GIoU   = IoU − (|C| − |A∪B|) / |C|,  C the smallest enclosing box.

vlg's guards (X-VLM instead zeroes a batch's GIoU loss when any predicted
box is degenerate, and divides by zero on a batch without boxes): corners
are clamped to a valid order (x2 ≥ x1, y2 ≥ y1), the IoU and enclosure
divisions have an ``EPS`` floor, and ``N_boxes = max(Σ weights, 1)``. So a
zero-area or swapped-corner prediction gets a finite loss and gradient,
and a batch without boxes gives 0 losses and zero gradients. Computed in
float32 (float64 stays float64).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Floor of the union and enclosure areas, in normalised units (image = 1).
EPS = 1e-7


def _dtype(x: jax.Array) -> jnp.dtype:
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def cxcywh_to_xyxy(b: jax.Array) -> jax.Array:
  """(cx, cy, w, h) → (x1, y1, x2, y2) over the last axis."""
  cx, cy, w, h = jnp.moveaxis(jnp.asarray(b), -1, 0)
  return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h],
                   axis=-1)


def _valid_corners(b: jax.Array) -> tuple[jax.Array, ...]:
  """(x1, y1, x2, y2) with x2, y2 clamped up to x1, y1."""
  x1, y1, x2, y2 = jnp.moveaxis(b, -1, 0)
  return x1, y1, jnp.maximum(x2, x1), jnp.maximum(y2, y1)


def box_iou_giou(pred_xyxy: jax.Array, target_xyxy: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
  """Elementwise IoU and GIoU of two [..., 4] (x1, y1, x2, y2) box arrays.

  Corners of either box are clamped to x2 ≥ x1 and y2 ≥ y1 first (a
  swapped box becomes a zero-width one); areas below ``EPS`` are floored in
  the divisions, so two empty boxes give IoU 0 and GIoU 0.

  Returns:
    ``(iou, giou)``, each [...], in [0, 1] and [-1, 1].
  """
  if pred_xyxy.shape != target_xyxy.shape or pred_xyxy.shape[-1:] != (4,):
    raise ValueError(f'box_iou_giou: expected two [..., 4] arrays of one '
                     f'shape, got {pred_xyxy.shape} and {target_xyxy.shape}')
  dtype = _dtype(pred_xyxy)
  px1, py1, px2, py2 = _valid_corners(pred_xyxy.astype(dtype))
  tx1, ty1, tx2, ty2 = _valid_corners(target_xyxy.astype(dtype))
  area_p = (px2 - px1) * (py2 - py1)
  area_t = (tx2 - tx1) * (ty2 - ty1)
  inter_w = jnp.maximum(jnp.minimum(px2, tx2) - jnp.maximum(px1, tx1), 0)
  inter_h = jnp.maximum(jnp.minimum(py2, ty2) - jnp.maximum(py1, ty1), 0)
  inter = inter_w * inter_h
  union = area_p + area_t - inter
  iou = inter / jnp.maximum(union, EPS)
  hull = ((jnp.maximum(px2, tx2) - jnp.minimum(px1, tx1)) *
          (jnp.maximum(py2, ty2) - jnp.minimum(py1, ty1)))
  giou = iou - (hull - union) / jnp.maximum(hull, EPS)
  return iou, giou


def box_losses(pred_cxcywh: jax.Array, target_cxcywh: jax.Array,
               weights: jax.Array
               ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """X-VLM's L1 and GIoU losses of the real box pairs (docs/objectives.md §3.2).

  Args:
    pred_cxcywh: [N, 4] predicted normalised (cx, cy, w, h) (after the
      head's sigmoid).
    target_cxcywh: [N, 4] target boxes, same convention. Padding rows must
      still be finite (e.g. the whole image (0.5, 0.5, 1, 1)).
    weights: [N] 1 on real box pairs, 0 on padding and whole-image pairs.

  Returns:
    ``(loss_bbox, loss_giou, metrics)``; metrics ``mean_iou`` (weighted mean
    IoU of the real boxes, 0 without any) and ``num_boxes`` (Σ weights).
  """
  if pred_cxcywh.shape != target_cxcywh.shape or (
      pred_cxcywh.shape[-1:] != (4,)) or (
          weights.shape != pred_cxcywh.shape[:-1]):
    raise ValueError(f'box_losses: expected [N, 4], [N, 4], [N], got '
                     f'{pred_cxcywh.shape}, {target_cxcywh.shape}, '
                     f'{weights.shape}')
  dtype = _dtype(pred_cxcywh)
  pred = pred_cxcywh.astype(dtype)
  target = target_cxcywh.astype(dtype)
  w = weights.astype(dtype)
  num_boxes = jnp.sum(w)
  denom = jnp.maximum(num_boxes, 1.0)
  l1 = jnp.sum(jnp.abs(pred - target), axis=-1)
  iou, giou = box_iou_giou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(target))
  loss_bbox = jnp.sum(w * l1) / denom
  loss_giou = jnp.sum(w * (1 - giou)) / denom
  metrics = {'mean_iou': jnp.sum(w * iou) / denom, 'num_boxes': num_boxes}
  return loss_bbox, loss_giou, metrics
