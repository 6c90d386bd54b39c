"""Tests of vlg.models.vit: patch layout, normalisation, interpolation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
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
