"""Patch masks of boxes (docs/objectives.md §3.1), as the pipeline builds them.

``box_masks.box_patch_mask_np`` is the function that runs in training (the
typed parts call it in grain workers); the concept [CLS] pooled over these
masks is tested on the model's own ``embed_concept`` in
``tests/models/test_concepts.py``.
"""

import math

import numpy as np
import pytest

from vlg.data import box_masks


def reference_mask(box, grid, patch, size, whole=False):
  """docs/objectives.md §3.1 in float64, by loops: [CLS] + G·G row-major."""
  cx, cy, w, h = (float(v) for v in box)
  mask = np.zeros(1 + grid * grid, bool)
  mask[0] = True
  if whole:
    mask[:] = True
    return mask
  x, y, w, h = (cx - w / 2) * size, (cy - h / 2) * size, w * size, h * size
  x_min = min(math.floor(x / patch), grid - 1)
  x_max = max(x_min + 1, min(math.ceil((x + w) / patch), grid))
  y_min = min(math.floor(y / patch), grid - 1)
  y_max = max(y_min + 1, min(math.ceil((y + h) / patch), grid))
  for row in range(y_min, y_max):
    for col in range(x_min, x_max):
      mask[1 + row * grid + col] = True
  return mask


# Normalised boxes on a 64 px image, 8 px patches (G = 8), with the patch
# columns/rows they must cover (exclusive ends), worked by hand.
CASES = [
    ((0.5, 0.5, 1.0, 1.0), (0, 8), (0, 8)),            # full image
    ((0.05, 0.05, 0.1, 0.1), (0, 1), (0, 1)),          # top-left border
    ((0.9, 0.5, 0.2, 0.1), (6, 8), (3, 5)),            # right border
    ((0.3, 0.3, 0.01, 0.01), (2, 3), (2, 3)),          # tiny, one patch
    ((0.999, 0.999, 0.002, 0.002), (7, 8), (7, 8)),    # tiny at the corner
    ((1.0, 0.5, 0.0, 0.0), (7, 8), (4, 5)),            # point on the border
    ((0.375, 0.375, 0.25, 0.25), (2, 4), (2, 4)),      # on patch lines
    ((0.25, 0.75, 0.5, 0.125), (0, 4), (5, 7)),        # wide, flat
]


@pytest.mark.parametrize('box,cols,rows', CASES)
def test_mask_matches_hand_ranges_and_reference(box, cols, rows):
  want = np.zeros((8, 8), bool)
  want[rows[0]:rows[1], cols[0]:cols[1]] = True
  want = np.concatenate([[True], want.reshape(-1)])
  np.testing.assert_array_equal(reference_mask(box, 8, 8, 64), want)
  got_np = box_masks.box_patch_mask_np(np.array([box]), 8, 8, 64)
  assert got_np.dtype == bool and got_np.shape == (1, 65)
  np.testing.assert_array_equal(got_np[0], want)
  # The float32 boxes the pipeline carries give the same mask.
  got_f32 = box_masks.box_patch_mask_np(np.array([box], np.float32), 8, 8, 64)
  np.testing.assert_array_equal(got_f32[0], want)


@pytest.mark.parametrize('grid,patch,size', [(8, 8, 64), (4, 16, 64),
                                             (7, 16, 112), (5, 8, 40)])
def test_random_boxes_match_reference(grid, patch, size):
  rng = np.random.default_rng(grid * 1000 + size)
  centre = rng.uniform(0, 1, size=(50, 2))
  extent = rng.uniform(0, 0.6, size=(50, 2))
  # Clip to the image, as the pipeline does before computing masks.
  x1y1 = np.clip(centre - extent / 2, 0, 1)
  x2y2 = np.clip(centre + extent / 2, 0, 1)
  boxes = np.concatenate([(x1y1 + x2y2) / 2, x2y2 - x1y1], -1).astype(
      np.float32)
  whole = rng.random(50) < 0.2
  want = np.stack([reference_mask(b, grid, patch, size, w)
                   for b, w in zip(boxes, whole)])
  got_np = box_masks.box_patch_mask_np(boxes, grid, patch, size,
                                       whole_image=whole)
  np.testing.assert_array_equal(got_np, want)


def test_leading_dims_and_whole_image_rows():
  boxes = np.tile(np.array([0.1, 0.1, 0.1, 0.1], np.float32), (2, 3, 1))
  whole = np.array([[True, False, False], [False, False, True]])
  got = box_masks.box_patch_mask_np(boxes, 4, 16, 64, whole_image=whole)
  assert got.shape == (2, 3, 17)
  assert got[whole].all()
  np.testing.assert_array_equal(got[~whole].sum(-1), 2)  # [CLS] + patch 0


def test_float_noise_does_not_add_a_sliver_patch():
  # Pixels 16..32 normalised with float32 noise just past the patch lines.
  box = np.array([[24 / 64 + 1e-7, 24 / 64 - 1e-7, 0.25, 0.25]], np.float32)
  want = reference_mask((0.375, 0.375, 0.25, 0.25), 8, 8, 64)
  np.testing.assert_array_equal(box_masks.box_patch_mask_np(box, 8, 8, 64)[0],
                                want)


def test_bad_boxes_raise():
  with pytest.raises(ValueError, match=r'\[\.\.\., 4\]'):
    box_masks.box_patch_mask_np(np.zeros((3, 3)), 8, 8, 64)
  with pytest.raises(ValueError, match='non-finite'):
    box_masks.box_patch_mask_np(np.array([[np.nan, 0.5, 0.1, 0.1]]), 8, 8, 64)
  with pytest.raises(ValueError, match='whole_image'):
    box_masks.box_patch_mask_np(np.zeros((3, 4)), 8, 8, 64,
                                whole_image=np.zeros(2, bool))
