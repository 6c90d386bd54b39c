"""Patch masks of boxes on a ViT grid, in NumPy (X-VLM's box concepts).

A box concept (X-VLM) sees only the patches its box covers: the mask has
one entry per image token, ``[CLS]`` first, then the G×G patches row-major
(the ViT's token order). The data pipeline computes the masks of the
augmented boxes in grain workers, so this module imports NumPy only; the
model pools each concept over them (``Model.embed_concept``).

For a normalised box (cx, cy, w, h) on an image of ``image_size`` pixels
cut into patches of ``patch_size`` on a G×G grid, the box in pixels is
``x = (cx - w/2)·S``, ``y = (cy - h/2)·S``, ``w·S``, ``h·S``, and it covers
columns ``x_min = min(⌊x/P⌋, G-1)`` to ``x_max = max(x_min+1,
min(⌈(x+w)/P⌉, G))`` (exclusive), rows likewise: at least one patch, even
for a box thinner than a patch.

Two guards, no-ops on clean input: the pixel corners are clipped to
[0, S] (a box is clipped to the image before it gets here; clipping keeps
a stray negative corner from indexing from the far side), and a corner
within ``SNAP`` of a patch line (in patch units) counts as on it, so
float32 noise from normalising a pixel box (16 px → 0.2500001·64) cannot
add a sliver patch.
"""

from __future__ import annotations

import numpy as np

# Corners this close to a patch line (in patches) are snapped onto it.
SNAP = 1e-4


def patch_ranges_np(boxes_cxcywh: np.ndarray, grid: int, patch_size: int,
                    image_size: int) -> tuple[np.ndarray, ...]:
  """Covered patch ranges ``(x_min, x_max, y_min, y_max)`` (max exclusive).

  Args:
    boxes_cxcywh: [..., 4] normalised (cx, cy, w, h).
    grid: patches per side G.
    patch_size: patch side P in pixels.
    image_size: image side S in pixels (usually G·P).

  Returns:
    Four int32 arrays of shape [...].
  """
  b = np.asarray(boxes_cxcywh, np.float32)
  if b.shape[-1:] != (4,):
    raise ValueError(f'boxes must have shape [..., 4], got {b.shape}')
  if not np.all(np.isfinite(b)):
    raise ValueError('boxes contain a non-finite value')
  size, patch = np.float32(image_size), np.float32(patch_size)
  cx, cy, w, h = np.moveaxis(b, -1, 0)
  half = np.float32(0.5)

  def axis_range(centre, extent):
    lo = np.clip((centre - half * extent) * size, 0, size)
    hi = np.clip((centre + half * extent) * size, 0, size)
    first = np.minimum(np.floor(lo / patch + np.float32(SNAP)), grid - 1)
    last = np.maximum(first + 1, np.minimum(
        np.ceil(hi / patch - np.float32(SNAP)), grid))
    return first.astype(np.int32), last.astype(np.int32)

  x_min, x_max = axis_range(cx, w)
  y_min, y_max = axis_range(cy, h)
  return x_min, x_max, y_min, y_max


def box_patch_mask_np(boxes_cxcywh: np.ndarray, grid: int, patch_size: int,
                      image_size: int,
                      whole_image: np.ndarray | None = None) -> np.ndarray:
  """The [CLS] + patch mask of each box, NumPy.

  Args:
    boxes_cxcywh: [..., 4] normalised (cx, cy, w, h) in the resized image.
    grid: patches per side G.
    patch_size: patch side P in pixels.
    image_size: image side S in pixels (usually G·P).
    whole_image: optional bool [...]; rows marked True (whole-image pairs)
      get all ones whatever their box.

  Returns:
    bool [..., 1 + G·G]: column 0 ([CLS]) always True, column
    ``1 + row·G + col`` True for the patches the box covers.
  """
  x_min, x_max, y_min, y_max = patch_ranges_np(boxes_cxcywh, grid,
                                               patch_size, image_size)
  idx = np.arange(grid)
  cols = (idx >= x_min[..., None]) & (idx < x_max[..., None])
  rows = (idx >= y_min[..., None]) & (idx < y_max[..., None])
  patches = (rows[..., :, None] & cols[..., None, :]).reshape(
      x_min.shape + (grid * grid,))
  if whole_image is not None:
    whole = np.asarray(whole_image, bool)
    if whole.shape != x_min.shape:
      raise ValueError(f'whole_image has shape {whole.shape}, the boxes '
                       f'{x_min.shape}')
    patches = patches | whole[..., None]
  cls = np.ones(x_min.shape + (1,), bool)
  return np.concatenate([cls, patches], axis=-1)
