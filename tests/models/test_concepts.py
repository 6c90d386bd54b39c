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

