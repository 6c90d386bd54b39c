"""Box concepts, the box head and the MRC head of the X-VLM/relation models.

The invariance tests are the point: a box concept encoded with the masked
ViT (MRC's default) must not change when pixels outside its box change, and
a concept fused through masked cross-attention must not see image tokens
outside its box.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlg.data import box_masks
from vlg.models import create_model
from vlg.models import sizes

V = 15


@pytest.fixture(scope='module')
def model():
  cfg = sizes.model_config('tiny', box_head=True, mrc_classes=V,
                           itm_head='mlp')
  cfg.vision_depth = 2
  with nnx.use_eager_sharding(False):
    return create_model(cfg, nnx.Rngs(0)), cfg


def _box_mask(g, rows, cols):
  m = np.zeros((g, g), np.int32)
  m[rows[0]:rows[1], cols[0]:cols[1]] = 1
  return np.concatenate([[1], m.reshape(-1)])[None]


def test_masked_vit_concept_ignores_pixels_outside_the_box(model):
  m, cfg = model
  res, p = cfg.image_size, cfg.patch_size
  g = res // p
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (1, res, res, 3)).astype(np.uint8)
  mask = _box_mask(g, (1, 4), (2, 6))
  other = image.copy()
  inside = np.zeros((res, res), bool)
  inside[1 * p:4 * p, 2 * p:6 * p] = True
  other[0][~inside] = rng.integers(0, 256, ((~inside).sum(), 3))
  ids = jnp.asarray(rng.integers(5, 100, (1, 6)), jnp.int32)
  tmask = jnp.ones((1, 6), jnp.int32)

  def fused(img, token_mask):
    out = m.embed_image(jnp.asarray(img), token_mask)
    c = m.embed_concept(out['image_embeds'], jnp.zeros((1,), jnp.int32),
                        jnp.asarray(mask))
    t = m.embed_text(ids, tmask)
    return m.fuse(t['text_embeds'], tmask, c['concept_embeds'],
                  c['concept_mask'])['fused_cls'], c['concept_feat']

  a, fa = fused(image, jnp.asarray(mask))
  b, fb = fused(other, jnp.asarray(mask))
  np.testing.assert_allclose(a, b, atol=1e-5)
  np.testing.assert_allclose(fa, fb, atol=1e-5)
  # Without the ViT mask the context leaks in through self-attention: the
  # test above could fail.
  c, _ = fused(image, None)
  d, _ = fused(other, None)
  assert float(jnp.abs(c - d).max()) > 1e-4


def test_concept_is_masked_mean_and_cross_attention_hides_outside(model):
  m, cfg = model
  g = cfg.image_size // cfg.patch_size
  rng = np.random.default_rng(1)
  embeds = jnp.asarray(rng.normal(size=(2, 1 + g * g, cfg.vision_width)),
                       jnp.float32)
  mask = np.concatenate([_box_mask(g, (0, 2), (0, 3)),
                         np.ones((1, 1 + g * g), np.int32)])
  index = jnp.asarray([1, 0], jnp.int32)
  c = m.embed_concept(embeds, index, jnp.asarray(mask))
  e = np.asarray(embeds, np.float64)
  want0 = e[1, 1:][mask[0, 1:] == 1].mean(0)
  want1 = e[0, 1:].mean(0)
  np.testing.assert_allclose(c['concept_embeds'][0, 0], want0, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(c['concept_embeds'][1, 0], want1, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(c['concept_embeds'][0, 1:], e[1, 1:], atol=1e-6)
  np.testing.assert_allclose(jnp.linalg.norm(c['concept_feat'], axis=-1), 1.0,
                             rtol=1e-5)
  # Changing tokens outside the box leaves the fused output unchanged.
  ids = jnp.asarray(rng.integers(5, 100, (1, 5)), jnp.int32)
  tm = jnp.ones((1, 5), jnp.int32)
  t = m.embed_text(ids, tm)
  outside = jnp.asarray(mask[0] == 0)[None, :, None]
  noisy = jnp.where(outside, c['concept_embeds'][:1] + 3.0,
                    c['concept_embeds'][:1])
  f1 = m.fuse(t['text_embeds'], tm, c['concept_embeds'][:1],
              c['concept_mask'][:1])['fused_cls']
  f2 = m.fuse(t['text_embeds'], tm, noisy, c['concept_mask'][:1])['fused_cls']
  np.testing.assert_allclose(f1, f2, atol=1e-5)


@nnx.jit
def _embed_concept(m, tokens, index, mask):
  return m.embed_concept(tokens, index, mask)


def test_concept_cls_is_masked_mean_of_box_mask_patches(model):
  # The pipeline's patch masks (box_masks.box_patch_mask_np) pooled by the
  # model's jitted embed_concept, against a float64 mean over the patches.
  m, cfg = model
  rng = np.random.default_rng(0)
  grid, dim = 4, cfg.vision_width
  tokens = rng.normal(size=(3, 1 + grid * grid, dim)).astype(np.float32)
  boxes = np.array([[0.3, 0.3, 0.4, 0.2], [0.5, 0.5, 1.0, 1.0],
                    [0.9, 0.1, 0.05, 0.05]], np.float32)
  mask = box_masks.box_patch_mask_np(boxes, grid, 16, 64).astype(np.int32)
  index = jnp.arange(3, dtype=jnp.int32)
  got = np.asarray(_embed_concept(m, jnp.asarray(tokens), index,
                                  jnp.asarray(mask))['concept_embeds'])
  assert got.shape == tokens.shape
  for i in range(3):
    inside = [t for t in range(1, 1 + grid * grid) if mask[i, t]]
    want = tokens[i, inside].astype(np.float64).mean(0)
    np.testing.assert_allclose(got[i, 0], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got[:, 1:], tokens[:, 1:])
  # A row with no patch at all (padding) gets a zero [CLS], not NaN.
  empty = np.zeros_like(mask)
  empty[:, 0] = 1
  out = _embed_concept(m, jnp.asarray(tokens), index, jnp.asarray(empty))
  np.testing.assert_array_equal(np.asarray(out['concept_embeds'][:, 0]), 0)
  assert np.isfinite(np.asarray(out['concept_feat'])).all()


def test_concept_keeps_dtype_and_checks_mask_shape(model):
  m, cfg = model
  tokens = jnp.ones((2, 5, cfg.vision_width), jnp.bfloat16)
  index = jnp.arange(2, dtype=jnp.int32)
  out = _embed_concept(m, tokens, index, jnp.ones((2, 5), bool))
  assert out['concept_embeds'].dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      np.asarray(out['concept_embeds'], np.float32), 1.0)
  with pytest.raises(ValueError, match='does not match'):
    m.embed_concept(tokens, index, jnp.ones((2, 4), bool))


def test_box_and_mrc_heads(model):
  m, cfg = model
  x = jnp.asarray(np.random.default_rng(2).normal(size=(3, cfg.text_width)),
                  jnp.float32)
  box = m.predict_box(x)
  assert box.shape == (3, 4) and bool(jnp.all((box > 0) & (box < 1)))
  y = x[::-1] + 1.0
  logits = m.mrc_logits(x, y)
  assert logits.shape == (3, V) and logits.dtype == jnp.float32
  # Subject and object are ordered: swapping them changes the logits.
  assert float(jnp.abs(logits - m.mrc_logits(y, x)).max()) > 1e-4
  params = nnx.state(m, nnx.Param)
  assert params['mrc_head']['fc1']['kernel'].shape == (
      2 * cfg.text_width, 4 * cfg.text_width)
  with nnx.use_eager_sharding(False):
    plain = create_model(sizes.model_config('tiny'), nnx.Rngs(0))
  names = set(nnx.state(plain, nnx.Param).keys())
  assert 'box_head' not in names and 'mrc_head' not in names

