"""Tests of vlg.models.vit: patch layout, normalisation, interpolation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from flax import nnx

from vlg.models import sizes
from vlg.models import vit


@pytest.fixture(scope='module')
def tiny_vit():
  """A one-block tiny ViT with numpy-drawn parameters (no init compiles)."""
  cfg = sizes.model_config('tiny', vision_depth=1)
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(
        lambda: vit.VisionTransformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  rng = np.random.RandomState(0)

  def draw(path, x):
    scale = path[-1].key == 'scale'
    v = rng.randn(*x.shape) * (0.1 if scale else 0.05) + scale
    return jnp.asarray(v, x.dtype)

  state = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state))
  return cfg, graphdef, state


def test_interpolate_identity_on_same_grid():
  pos = jax.random.normal(jax.random.key(0), (1 + 8 * 8, 5))
  np.testing.assert_allclose(vit.interpolate_pos_embed(pos, 8), pos,
                             atol=1e-6)


def test_interpolate_smooth_ramp_as_bicubic_predicts():
  old, new, dim = 8, 12, 2
  i, j = np.meshgrid(np.arange(old), np.arange(old), indexing='ij')
  # Channel 0 ramps along rows, channel 1 along columns: a transposed or
  # mis-ordered reshape would swap them.
  grid = np.stack([0.3 * i + 1.0, -0.2 * j], -1).astype(np.float32)
  cls = np.array([[7.0, -7.0]], np.float32)
  pos = jnp.asarray(np.concatenate([cls, grid.reshape(-1, dim)]))
  out = np.asarray(vit.interpolate_pos_embed(pos, new))
  assert out.shape == (1 + new * new, dim)
  np.testing.assert_array_equal(out[0], cls[0])
  got = out[1:].reshape(new, new, dim)
  want = jax.image.resize(jnp.asarray(grid), (new, new, dim), 'bicubic',
                          antialias=False)
  np.testing.assert_allclose(got, want, atol=1e-6)
  # Cubic convolution reproduces a linear ramp exactly away from the border,
  # sampled at the new pixel centres (align_corners=False).
  centres = (np.arange(new) + 0.5) * old / new - 0.5
  ii, jj = np.meshgrid(centres, centres, indexing='ij')
  ramp = np.stack([0.3 * ii + 1.0, -0.2 * jj], -1)
  inner = slice(3, new - 3)
  np.testing.assert_allclose(got[inner, inner], ramp[inner, inner],
                             atol=1e-5)


def test_interpolate_torch_layout_and_rectangular_grid():
  pos = jax.random.normal(jax.random.key(0), (1, 1 + 4 * 4, 3))
  out = vit.interpolate_pos_embed(pos, (2, 6))
  assert out.shape == (1, 1 + 12, 3)
  with pytest.raises(ValueError, match='square'):
    vit.interpolate_pos_embed(pos[0, :-1], 3)


def test_normalize_uses_config_mean_std(tiny_vit):
  cfg, graphdef, state = tiny_vit
  model = nnx.merge(graphdef, state)
  img = np.full((1, 2, 2, 3), 255, np.uint8)
  want = (1.0 - np.array(cfg.image_mean)) / np.array(cfg.image_std)
  np.testing.assert_allclose(model.normalize(img)[0, 0, 0], want, rtol=1e-6)


def test_patch_embedding_is_a_strided_conv(tiny_vit):
  _, graphdef, state = tiny_vit
  model = nnx.merge(graphdef, state)
  p = model.patch_size
  x = jax.random.uniform(jax.random.key(0), (2, 4 * p, 4 * p, 3))
  b = x.shape[0]
  patches = x.reshape(b, 4, p, 4, p, 3).transpose(0, 1, 3, 2, 4, 5)
  ours = model.patch_embed(patches.reshape(b, 16, p, p, 3))
  conv = jax.lax.conv_general_dilated(
      x, model.patch_embed.kernel[...], (p, p), 'VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  conv = conv.reshape(b, 16, -1) + model.patch_embed.bias[...]
  np.testing.assert_allclose(ours, conv, atol=1e-4)


def test_forward_shapes_uint8_and_other_resolution(tiny_vit):
  cfg, graphdef, state = tiny_vit

  @jax.jit
  def fwd(state, image):
    return nnx.merge(graphdef, state)(image)

  rng = np.random.RandomState(0)
  img = rng.randint(0, 256, (2, cfg.image_size, cfg.image_size, 3))
  out_u8 = fwd(state, img.astype(np.uint8))
  grid = cfg.image_size // cfg.patch_size
  assert out_u8.shape == (2, 1 + grid * grid, cfg.vision_width)
  np.testing.assert_allclose(out_u8, fwd(state, img.astype(np.float32)),
                             atol=1e-6)
  big = cfg.image_size + 4 * cfg.patch_size
  out_big = fwd(state, rng.randint(0, 256, (2, big, big, 3)).astype(np.uint8))
  n = (big // cfg.patch_size) ** 2
  assert out_big.shape == (2, 1 + n, cfg.vision_width)
  assert np.isfinite(np.asarray(out_big)).all()
  with pytest.raises(ValueError, match='multiples'):
    fwd(state, np.zeros((1, cfg.image_size + 1, cfg.image_size, 3)))


def test_sincos2d_posemb_matches_the_formula():
  grid, dim = 3, 8
  got = np.asarray(vit.sincos2d_posemb(grid, dim), np.float64)
  assert got.shape == (1 + grid * grid, dim)
  np.testing.assert_array_equal(got[0], 0.0)  # [CLS] has no position.
  omega = 1.0 / 10_000.0 ** (np.arange(2) / 1.0)  # dim/4 = 2 frequencies.
  for y in range(grid):
    for x in range(grid):
      want = np.concatenate([np.sin(x * omega), np.cos(x * omega),
                             np.sin(y * omega), np.cos(y * omega)])
      np.testing.assert_allclose(got[1 + y * grid + x], want, atol=1e-6)
  with pytest.raises(ValueError, match='divisible by 4'):
    vit.sincos2d_posemb(grid, 6)


def test_posemb_init_option():
  def pos_embed(posemb, seed):
    cfg = sizes.model_config('tiny', vision_depth=1,
                             vision_posemb_init=posemb)
    with nnx.use_eager_sharding(False):
      model = vit.VisionTransformer(cfg, rngs=nnx.Rngs(seed))
    return np.asarray(model.pos_embed[...]), np.asarray(model.cls_token[...])

  grid = sizes.SIZES['tiny']['image_size'] // sizes.SIZES['tiny']['patch_size']
  sincos, cls_s = pos_embed('sincos2d', 0)
  np.testing.assert_allclose(
      sincos, vit.sincos2d_posemb(grid, sizes.SIZES['tiny']['vision_width']))
  random, cls_r = pos_embed('trunc_normal', 0)
  assert np.abs(random).max() <= 2 * 0.02 + 1e-6  # Truncated at 2 std.
  # The option changes only the table: the other draws are the same.
  np.testing.assert_array_equal(cls_s, cls_r)
  with pytest.raises(ValueError, match='vision_posemb_init'):
    pos_embed('learned', 0)


def _same_conv_reference(x, kernel, bias, stride):
  """float64 3×3 convolution of one [H, W, Cin] map with TensorFlow's
  'SAME' padding (pad total max((out - 1)·s + k − in, 0), the smaller
  half before), then the exact (erf) GELU of ``layers.gelu``."""
  h, w, _ = x.shape
  k = kernel.shape[0]
  out_h, out_w = -(-h // stride), -(-w // stride)
  pad_h = max((out_h - 1) * stride + k - h, 0)
  pad_w = max((out_w - 1) * stride + k - w, 0)
  padded = np.pad(x, ((pad_h // 2, pad_h - pad_h // 2),
                      (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
  out = np.zeros((out_h, out_w, kernel.shape[-1]))
  for i in range(out_h):
    for j in range(out_w):
      window = padded[i * stride:i * stride + k, j * stride:j * stride + k]
      out[i, j] = np.einsum('hwc,hwco->o', window, kernel) + bias
  return 0.5 * out * (1 + scipy.special.erf(out / np.sqrt(2)))


def _conv_stem(channels=(3, 5), patch=4, seed=0):
  with nnx.use_eager_sharding(False):
    stem = vit.ConvPatchStem(patch, channels, 6, dtype=jnp.float32,
                             rngs=nnx.Rngs(seed))
  rng = np.random.RandomState(seed)
  for b in stem.biases:  # Non-zero biases, so the test sees them added.
    b[...] = jnp.asarray(rng.randn(*b.shape) * 0.1, jnp.float32)
  return stem


def test_conv_stem_matches_a_float64_reference():
  stem = _conv_stem()
  patches = np.random.RandomState(1).randn(2, 3, 4, 4, 3)
  got = np.asarray(stem(jnp.asarray(patches, jnp.float32)), np.float64)
  assert got.shape == (2, 3, 6)
  kernels = [np.asarray(k[...], np.float64) for k in stem.kernels]
  biases = [np.asarray(b[...], np.float64) for b in stem.biases]
  out_k = np.asarray(stem.out.kernel[...], np.float64)
  out_b = np.asarray(stem.out.bias[...], np.float64)
  for i in range(2):
    for n in range(3):
      x = patches[i, n]
      for kernel, bias, stride in zip(kernels, biases, (1, 2)):
        x = _same_conv_reference(x, kernel, bias, stride)
      assert x.shape == (2, 2, 5)  # 4 pixels, one stride-2 stage.
      want = np.einsum('hwc,hwcd->d', x, out_k) + out_b
      np.testing.assert_allclose(got[i, n], want, rtol=1e-4, atol=1e-5)


def test_conv_stem_embeds_each_patch_from_its_own_pixels():
  cfg = sizes.model_config('tiny', vision_depth=1, vision_stem='conv')
  with nnx.use_eager_sharding(False):
    model = vit.VisionTransformer(cfg, rngs=nnx.Rngs(0))
  p, grid = cfg.patch_size, cfg.image_size // cfg.patch_size
  rng = np.random.RandomState(0)
  image = rng.randint(0, 256, (1, cfg.image_size, cfg.image_size, 3))

  def embed(img):
    x = model.normalize(jnp.asarray(img)).reshape(1, grid, p, grid, p, 3)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(1, grid * grid, p, p, 3)
    return np.asarray(model.patch_embed(x))[0]

  changed = image.copy()
  changed[0, p:2 * p, 2 * p:3 * p] = 255 - changed[0, p:2 * p, 2 * p:3 * p]
  diff = np.abs(embed(changed) - embed(image)).max(axis=-1)
  patch = grid + 2  # Row 1, column 2.
  assert diff[patch] > 1e-3
  np.testing.assert_array_equal(np.delete(diff, patch), 0.0)
  out = model(jnp.asarray(image, jnp.uint8))
  assert out.shape == (1, 1 + grid * grid, cfg.vision_width)


def test_stem_options_are_checked():
  with pytest.raises(ValueError, match='vision_stem='):
    cfg = sizes.model_config('tiny', vision_depth=1, vision_stem='resnet')
    with nnx.use_eager_sharding(False):
      vit.VisionTransformer(cfg, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='divisible by'):
    _conv_stem(channels=(3, 5, 5, 5), patch=4)


def test_conv_image_stem_matches_a_float64_reference():
  # The stem's layers over the whole image (zero padding at the image's
  # border only), then each patch's cell of the last feature map embedded.
  stem = _conv_stem()
  image = np.random.RandomState(2).randn(2, 8, 12, 3)
  got = np.asarray(stem.embed_image(jnp.asarray(image, jnp.float32), 4),
                   np.float64)
  assert got.shape == (2, 6, 6)  # A 2 x 3 grid of 4-px patches.
  kernels = [np.asarray(k[...], np.float64) for k in stem.kernels]
  biases = [np.asarray(b[...], np.float64) for b in stem.biases]
  out_k = np.asarray(stem.out.kernel[...], np.float64)
  out_b = np.asarray(stem.out.bias[...], np.float64)
  for i in range(2):
    x = image[i]
    for kernel, bias, stride in zip(kernels, biases, (1, 2)):
      x = _same_conv_reference(x, kernel, bias, stride)
    assert x.shape == (4, 6, 5)
    for gy in range(2):
      for gx in range(3):
        cell = x[2 * gy:2 * gy + 2, 2 * gx:2 * gx + 2]
        want = np.einsum('hwc,hwcd->d', cell, out_k) + out_b
        np.testing.assert_allclose(got[i, 3 * gy + gx], want, rtol=1e-4,
                                   atol=1e-5)


def test_conv_image_stem_sees_across_patch_borders():
  # Unlike 'conv', a change inside one patch reaches the tokens of the
  # patches beside it (through the convolutions' receptive fields) and no
  # token further away.
  cfg = sizes.model_config('tiny', vision_depth=1, vision_stem='conv_image')
  with nnx.use_eager_sharding(False):
    model = vit.VisionTransformer(cfg, rngs=nnx.Rngs(0))
  p, grid = cfg.patch_size, cfg.image_size // cfg.patch_size
  image = np.random.RandomState(0).randint(
      0, 256, (1, cfg.image_size, cfg.image_size, 3))

  def embed(img):
    return np.asarray(model.patch_embed.embed_image(
        model.normalize(jnp.asarray(img)), p))[0]

  changed = image.copy()
  changed[0, 2 * p:3 * p, 2 * p:3 * p] = 255 - changed[0, 2 * p:3 * p,
                                                        2 * p:3 * p]
  diff = np.abs(embed(changed) - embed(image)).max(axis=-1).reshape(grid,
                                                                    grid)
  near = np.zeros((grid, grid), bool)
  near[1:4, 1:4] = True  # The patch (2, 2) and its 8 neighbours.
  assert (diff[near] > 1e-3).all()
  np.testing.assert_array_equal(diff[~near], 0.0)
  out = model(jnp.asarray(image, jnp.uint8))
  assert out.shape == (1, 1 + grid * grid, cfg.vision_width)
