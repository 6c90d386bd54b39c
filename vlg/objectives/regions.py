"""Box concepts: patch masks and the pooled [CLS] (docs/objectives.md §3.1).

X-VLM encodes each image once and represents a (box, text) pair by the
image's tokens restricted to the box: the patch mask (``[CLS]`` plus the
patches the box covers) is the cross-attention mask in fusion, and the
concept's [CLS] is the mean of its in-box patch features. This module holds
the jax versions, for use inside a jitted step (e.g. masks of predicted
boxes); the data pipeline uses the NumPy twin
``vlg.data.box_masks.box_patch_mask_np`` in grain workers, which follows
the same formula and float32 arithmetic (see that module for the formula
and its two guards).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlg.data import box_masks


def box_patch_mask(boxes_cxcywh: jax.Array, grid: int, patch_size: int,
                   image_size: int,
                   whole_image: jax.Array | None = None) -> jax.Array:
  """The [CLS] + patch mask of each box (docs/objectives.md §3.1), jit-friendly.

  Args:
    boxes_cxcywh: [..., 4] normalised (cx, cy, w, h) in the resized image.
    grid: patches per side G (static).
    patch_size: patch side P in pixels (static).
    image_size: image side S in pixels (static; usually G·P).
    whole_image: optional bool [...]; True rows get all ones.

  Returns:
    bool [..., 1 + G·G]: [CLS] always True, then the G×G patches row-major.
  """
  b = jnp.asarray(boxes_cxcywh, jnp.float32)
  if b.shape[-1:] != (4,):
    raise ValueError(f'boxes must have shape [..., 4], got {b.shape}')
  size, patch = jnp.float32(image_size), jnp.float32(patch_size)
  snap = jnp.float32(box_masks.SNAP)
  idx = jnp.arange(grid)

  def covered(centre, extent):
    lo = jnp.clip((centre - 0.5 * extent) * size, 0, size)
    hi = jnp.clip((centre + 0.5 * extent) * size, 0, size)
    first = jnp.minimum(jnp.floor(lo / patch + snap), grid - 1)
    last = jnp.maximum(first + 1, jnp.minimum(jnp.ceil(hi / patch - snap),
                                              grid))
    return (idx >= first[..., None]) & (idx < last[..., None])

  cols = covered(b[..., 0], b[..., 2])
  rows = covered(b[..., 1], b[..., 3])
  patches = (rows[..., :, None] & cols[..., None, :]).reshape(
      b.shape[:-1] + (grid * grid,))
  if whole_image is not None:
    patches = patches | jnp.asarray(whole_image, bool)[..., None]
  cls = jnp.ones(b.shape[:-1] + (1,), bool)
  return jnp.concatenate([cls, patches], axis=-1)


def concept_cls(patch_embeds_with_cls: jax.Array, mask: jax.Array
                ) -> jax.Array:
  """Replaces each sequence's [CLS] by the mean of its in-box patch tokens.

  The concept's [CLS] of docs/objectives.md §3.1 (X-VLM's Swin path): the
  average of the patch tokens whose mask entry is set, the [CLS] column of the
  mask being ignored. A row with no patch set (only padding can be) gets a zero
  [CLS] rather than NaN. The mean accumulates in float32 and is cast back to
  the input dtype.

  Args:
    patch_embeds_with_cls: [N, 1 + G·G, D] image tokens, [CLS] first.
    mask: [N, 1 + G·G] bool/int patch mask, e.g. :func:`box_patch_mask`.

  Returns:
    [N, 1 + G·G, D]: the input with token 0 replaced by the in-box mean.
  """
  x = patch_embeds_with_cls
  if mask.shape != x.shape[:-1]:
    raise ValueError(f'concept_cls: mask {mask.shape} does not match the '
                     f'tokens {x.shape}')
  w = (mask[..., 1:] != 0).astype(jnp.float32)
  total = jnp.einsum('...t,...td->...d', w, x[..., 1:, :].astype(jnp.float32),
                     precision=jax.lax.Precision.HIGHEST)
  count = jnp.maximum(jnp.sum(w, axis=-1, keepdims=True), 1.0)
  cls = (total / count).astype(x.dtype)
  return jnp.concatenate([cls[..., None, :], x[..., 1:, :]], axis=-2)
