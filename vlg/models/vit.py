"""Vision Transformer (ViT / DeiT, as in ALBEF's ``models/vit.py``).

Images come in as pixels in 0..255 (uint8 or float), so the data pipeline
can ship uint8; the model scales them to [0, 1] and normalises with the
config's mean and std. Patches are embedded by a linear map (a stride-p
convolution), a [CLS] token is prepended, position embeddings are added
(interpolated bicubically when the input grid differs from the one the
model was built for), then pre-LN blocks and a final LayerNorm. The output
keeps every token, [CLS] first, so later models (X-VLM) can pool patch
subsets with a mask.

With ``vision_stem='conv'`` the linear patch map is replaced by a small
convolutional network run on each patch separately (:class:`ConvPatchStem`):
weights shared across pixel positions see a shape the same wherever it sits
in a patch, which a linear map over a patch's pixels must learn once per
offset. On the synthetic world the tiny ViT with the linear map barely
learned shapes (docs/results.md); a convolutional stem is the usual remedy
for ViTs trained on little data (Xiao et al. 2021, "Early convolutions help
transformers see better"; Touvron et al. 2022's per-patch hMLP stem).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vlg import sharding
from vlg.models import blocks
from vlg.models import layers


def _grid(g: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(g, int):
    return (g, g)
  h, w = g
  return (int(h), int(w))


def interpolate_pos_embed(pos_embed: jax.Array,
                          new_grid: int | Sequence[int],
                          old_grid: int | Sequence[int] | None = None
                          ) -> jax.Array:
  """Resizes ViT position embeddings to a new patch grid (bicubic).

  The [CLS] position (row 0) is kept; the patch rows, laid out row-major on
  a square ``old_grid`` (inferred when None), are resized with
  ``jax.image.resize(..., 'bicubic', antialias=False)``, i.e. pixel-centre
  aligned (torch ``align_corners=False``). Keys' cubic (a = -0.5) differs
  slightly from torch's a = -0.75 used by ALBEF's own interpolation.

  Args:
    pos_embed: [1 + N, D] or [1, 1 + N, D] (the PyTorch layout).
    new_grid: patches per side, or (rows, cols).
    old_grid: the grid of ``pos_embed``; None: sqrt(N), which must be whole.

  Returns:
    Position embeddings of the same rank for ``1 + rows * cols`` tokens.
  """
  if pos_embed.ndim == 3:
    return interpolate_pos_embed(pos_embed[0], new_grid, old_grid)[None]
  n, dim = pos_embed.shape[0] - 1, pos_embed.shape[1]
  if old_grid is None:
    side = int(round(n ** 0.5))
    if side * side != n:
      raise ValueError(f'{n} patch positions are not a square grid; '
                       'pass old_grid')
    old_grid = side
  old_h, old_w = _grid(old_grid)
  new_h, new_w = _grid(new_grid)
  if old_h * old_w != n:
    raise ValueError(f'old_grid {old_grid} does not match {n} positions')
  cls, patches = pos_embed[:1], pos_embed[1:]
  patches = patches.reshape(old_h, old_w, dim).astype(jnp.float32)
  patches = jax.image.resize(patches, (new_h, new_w, dim), 'bicubic',
                             antialias=False)
  patches = patches.reshape(new_h * new_w, dim).astype(pos_embed.dtype)
  return jnp.concatenate([cls, patches], axis=0)


POSEMB_INITS = ('trunc_normal', 'sincos2d')


def sincos2d_posemb(grid: int, dim: int, temperature: float = 10_000.0
                    ) -> jax.Array:
  """2-D sine-cosine position embeddings [1 + grid², dim], [CLS] row zero.

  A patch at (row y, column x) gets ``[sin(x ω), cos(x ω), sin(y ω),
  cos(y ω)]`` with ``ω_k = temperature^(-k / (dim/4 - 1))``, k < dim/4
  (MAE, MoCo v3, big_vision's ``sincos2d``). The mean of these rows over a
  box is a smooth function of the box's centre and extent, so position is
  readable from pooled patch tokens from the first step, where random
  embeddings make the model learn a smooth layout first.
  """
  if dim % 4:
    raise ValueError(f'sincos2d needs a width divisible by 4, got {dim}')
  quarter = dim // 4
  omega = 1.0 / temperature ** (jnp.arange(quarter, dtype=jnp.float32) /
                                max(quarter - 1, 1))
  y, x = jnp.meshgrid(jnp.arange(grid, dtype=jnp.float32),
                      jnp.arange(grid, dtype=jnp.float32), indexing='ij')
  x = x.reshape(-1, 1) * omega
  y = y.reshape(-1, 1) * omega
  patches = jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)],
                            axis=1)
  return jnp.concatenate([jnp.zeros((1, dim), jnp.float32), patches])


STEMS = ('patch', 'conv', 'conv_image')


def to_patches(x: jax.Array, side: int) -> jax.Array:
  """[B, H, W, C] → [B, (H/side)(W/side), side, side, C], row-major
  patches (the order of the ViT's tokens)."""
  b, h, w, c = x.shape
  gh, gw = h // side, w // side
  x = x.reshape(b, gh, side, gw, side, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh * gw, side, side, c)


class ConvPatchStem(nnx.Module):
  """Per-patch convolutions: patches [..., p, p, 3] → [..., D].

  A 3×3 convolution at stride 1 to ``channels[0]``, then one 3×3 stride-2
  convolution to each further entry of ``channels``, each followed by GELU;
  the last feature map (``p / 2^(len(channels) - 1)`` pixels a side) is
  flattened and mapped linearly to the width. Every patch is zero-padded at
  its own border, so a patch's embedding depends on its pixels only, as
  with the linear map (box concepts hide their context by masking patches,
  ``VisionTransformer.__call__``).
  """

  def __init__(self, patch_size: int, channels: Sequence[int], dim: int, *,
               dtype: jnp.dtype, rngs: nnx.Rngs):
    channels = tuple(int(c) for c in channels)
    downsample = 2 ** (len(channels) - 1)
    if not channels or patch_size % downsample:
      raise ValueError(
          f'vision_stem_channels={channels}: need at least one entry and a '
          f'patch size ({patch_size}) divisible by 2^(entries - 1) = '
          f'{downsample}')
    self.dtype = dtype
    self.strides = (1,) + (2,) * (len(channels) - 1)
    # He initialisation (variance 2 / fan-in), which keeps the scale of
    # the activations through GELUs, so the embedding starts at the scale
    # of the linear map's.
    init = nnx.initializers.variance_scaling(
        2.0, 'fan_in', 'truncated_normal', in_axis=(0, 1, 2), out_axis=3)
    fan_in = (3,) + channels[:-1]
    self.kernels = nnx.List([
        layers.make_param(rngs, init, (3, 3, cin, cout),
                          (None, None, None, None))
        for cin, cout in zip(fan_in, channels)])
    self.biases = nnx.List([
        layers.make_param(rngs, nnx.initializers.zeros, (cout,), (None,))
        for cout in channels])
    side = patch_size // downsample
    self.out = layers.Dense((side, side, channels[-1]), dim,
                            (None, None, None, 'embed'), dtype=dtype,
                            kernel_init=nnx.initializers.lecun_normal(
                                in_axis=(0, 1, 2), out_axis=3),
                            rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    """The convolutions over pixels [N, H, W, 3] → [N, H/2^k, W/2^k, C]."""
    x = x.astype(self.dtype)
    for kernel, bias, stride in zip(self.kernels, self.biases, self.strides):
      x = jax.lax.conv_general_dilated(
          x, kernel[...].astype(self.dtype), (stride, stride), 'SAME',
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
          preferred_element_type=jnp.float32)
      x = layers.gelu(x + bias[...]).astype(self.dtype)
    return x

  def __call__(self, patches: jax.Array) -> jax.Array:
    lead = patches.shape[:-3]
    x = self.features(patches.reshape((-1,) + patches.shape[-3:]))
    x = self.out(x)
    return x.reshape(lead + x.shape[-1:])

  def embed_image(self, image: jax.Array, patch_size: int) -> jax.Array:
    """Whole-image convolutions, then one token per patch: normalised
    pixels [B, H, W, 3] → [B, (H/p)(W/p), D].

    The same layers as :meth:`__call__`, zero-padded at the image's border
    only, so each token also sees a few pixels beyond its patch (the
    receptive field of the convolutions) and a shape cut by a patch border
    reaches both tokens whole at their edges: the "early convolutions" of
    Xiao et al. (2021), Fig. 1, which make ViTs learn faster from less data.
    """
    x = self.features(image)
    # A patch's cell of the feature map: the patch side over the stride.
    side = patch_size // (image.shape[1] // x.shape[1])
    return self.out(to_patches(x, side))


class VisionTransformer(nnx.Module):
  """ViT image encoder: pixels [B, H, W, 3] → tokens [B, 1 + N, D].

  Config fields: ``image_size``, ``patch_size``, ``vision_width``,
  ``vision_depth``, ``vision_heads``, ``vision_mlp``, ``vision_ln_eps``,
  ``vision_dropout``, ``image_mean``, ``image_std``, ``dtype``, ``remat``,
  ``vision_posemb_init`` (optional): the position embeddings' initial
  value, ``'trunc_normal'`` (DeiT/ALBEF, the default) or ``'sincos2d'``
  (:func:`sincos2d_posemb`; still a learned parameter); ``vision_stem``
  (optional): ``'patch'`` (the linear patch map of ViT and ALBEF, the
  default), ``'conv'`` (:class:`ConvPatchStem` with
  ``vision_stem_channels``, on each patch alone) or ``'conv_image'`` (the
  same layers over the whole image, :meth:`ConvPatchStem.embed_image`).
  """

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.dtype = jnp.dtype(config.dtype)
    self.patch_size = p = int(config.patch_size)
    self.grid = int(config.image_size) // p
    self.mean = tuple(float(m) for m in config.image_mean)
    self.std = tuple(float(s) for s in config.image_std)
    self.remat = layers.check_remat(str(config.get('remat', 'none')))
    self.dropout_rate = float(config.get('vision_dropout', 0.0))
    dim = int(config.vision_width)
    eps = float(config.vision_ln_eps)
    stem = str(config.get('vision_stem', 'patch'))
    if stem not in STEMS:
      raise ValueError(f'vision_stem={stem!r}; valid: {STEMS}')
    self.stem = stem
    if stem in ('conv', 'conv_image'):
      self.patch_embed = ConvPatchStem(
          p, config.vision_stem_channels, dim, dtype=self.dtype, rngs=rngs)
    else:
      # A (p, p, 3, D) kernel: the PyTorch conv weight [D, 3, p, p]
      # transposed.
      self.patch_embed = layers.Dense(
          (p, p, 3), dim, (None, None, None, 'embed'), dtype=self.dtype,
          kernel_init=nnx.initializers.lecun_normal(in_axis=(0, 1, 2),
                                                    out_axis=3),
          rngs=rngs)
    init = layers.trunc_normal_init()
    # 1-D so that weight decay, which skips vectors, skips it
    # (docs/objectives.md §2.4).
    self.cls_token = layers.make_param(rngs, init, (dim,), ('embed',))
    posemb = str(config.get('vision_posemb_init', 'trunc_normal'))
    if posemb not in POSEMB_INITS:
      raise ValueError(f'vision_posemb_init={posemb!r}; valid: '
                       f'{POSEMB_INITS}')
    pos_init = init
    if posemb == 'sincos2d':
      table = sincos2d_posemb(self.grid, dim)
      pos_init = lambda key, shape, dtype: table.astype(dtype)
    self.pos_embed = layers.make_param(rngs, pos_init,
                                       (1 + self.grid ** 2, dim),
                                       (None, 'embed'))
    self.blocks = nnx.List([
        blocks.ViTBlock(dim, int(config.vision_heads),
                        int(config.vision_mlp), eps=eps,
                        dropout_rate=self.dropout_rate, dtype=self.dtype,
                        rngs=rngs)
        for _ in range(int(config.vision_depth))])
    self.norm = layers.LayerNorm(dim, eps=eps, dtype=self.dtype, rngs=rngs)

  def normalize(self, image: jax.Array) -> jax.Array:
    """Pixels in 0..255 → (x / 255 - mean) / std, float32."""
    x = image.astype(jnp.float32) / 255.0
    mean = jnp.asarray(self.mean, jnp.float32)
    std = jnp.asarray(self.std, jnp.float32)
    return (x - mean) / std

  def __call__(self, image: jax.Array, token_mask: jax.Array | None = None,
               *, rngs: nnx.Rngs | None = None, return_layers: bool = False
               ) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Encodes ``image`` [B, H, W, 3] (0..255); H and W multiples of the patch.

    ``token_mask`` [B, 1 + N] (optional) restricts self-attention to the
    marked tokens in every block: with [CLS] and a box's patches marked, the
    marked tokens depend only on the pixels of those patches (patch
    embedding is per patch), which is how a box concept hides its context;
    with ``vision_stem='conv_image'`` they also see the few pixels around
    those patches that the convolutions reach.

    Returns:
      [B, 1 + (H/p)(W/p), D] tokens after the final LayerNorm, [CLS] first,
      in the compute dtype; with ``return_layers`` (static) also the stack
      [depth + 1, B, 1 + N, D] of the embedded input and every block's output
      (before the final LayerNorm; index -2 is BLIP-2's penultimate layer).
    """
    b, h, w, c = image.shape
    p = self.patch_size
    if h % p or w % p or c != 3:
      raise ValueError(f'image {image.shape} is not [B, H, W, 3] with H, W '
                       f'multiples of the patch size {p}')
    gh, gw = h // p, w // p
    if self.stem == 'conv_image':
      x = self.patch_embed.embed_image(self.normalize(image), p)
    else:
      x = self.patch_embed(to_patches(self.normalize(image), p))
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype),
                           (b, 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1)
    pos = self.pos_embed[...]
    if (gh, gw) != (self.grid, self.grid):
      pos = interpolate_pos_embed(pos, (gh, gw), self.grid)
    x = x + pos.astype(x.dtype)
    x = sharding.constrain(x, ('batch', 'length', 'embed'))
    x = layers.dropout(x, self.dropout_rate, rngs)
    states = [x]
    for block in self.blocks:
      x = layers.call_block(block, x, token_mask, remat=self.remat, rngs=rngs)
      states.append(x)
    if return_layers:
      return self.norm(x), jnp.stack(states)
    return self.norm(x)
