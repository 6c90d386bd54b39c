"""Tests of probe taps and reducers against NumPy re-derivations."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlg.models import create_model
from vlg.models import sizes
from vlg.projects.probing import taps


def _tokens(seed=0, b=3, n=5, d=4):
  rng = np.random.RandomState(seed)
  x = rng.randn(b, n, d).astype(np.float32)
  mask = np.ones((b, n), np.int32)
  mask[1, 2:] = 0
  mask[2, :] = 0  # No real token: the mean must not divide by zero.
  return x, mask


def test_parse_spec_round_trip_and_errors():
  spec = taps.parse_spec('tap=fused_cls,reduce=cls')
  assert (spec.tap, spec.reduce, spec.layer) == ('fused_cls', 'cls', None)
  assert taps.parse_spec(spec.key) == spec
  spec = taps.parse_spec('reduce=mean, tap=resampler_layer:6')
  assert (spec.tap, spec.reduce, spec.layer) == ('resampler_layer:6', 'mean',
                                                 6)
  assert taps.parse_spec('tap=resampler_queries').reduce == 'flatten'
  assert taps.parse_spec('tap=vision_layer:-2,reduce=cls').layer == -2
  for bad, words in [('tap=nope', 'unknown tap'),
                     ('tap=fused_cls,reduce=max', 'unknown reducer'),
                     ('tap=text_tokens,reduce=flatten', 'fixed number'),
                     ('tap=fused_cls,pool=cls', 'expected'),
                     ('reduce=cls', 'missing'),
                     ('tap=fusion_layer:1,reduce=flatten', 'fixed number')]:
    with pytest.raises(ValueError, match=words):
      taps.parse_spec(bad)


def test_fixed_reducers_match_numpy():
  x, mask = _tokens()
  x64, m64 = x.astype(np.float64), mask.astype(np.float64)
  flat = np.asarray(taps.reduce_fixed('flatten', x, mask))
  np.testing.assert_array_equal(flat.shape, (3, 20))
  # Query-major: index n·D + d.
  assert flat[1, 2 * 4 + 3] == x[1, 2, 3]
  np.testing.assert_array_equal(taps.reduce_fixed('cls', x, mask), x[:, 0])
  want = np.stack([
      (x64[i] * m64[i][:, None]).sum(0) / max(m64[i].sum(), 1.0)
      for i in range(3)])
  np.testing.assert_allclose(taps.reduce_fixed('mean', x, mask), want,
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(want[1], x64[1, :2].mean(0), rtol=1e-6)
  assert np.all(want[2] == 0)
  # Padded tokens do not move the mean.
  x2 = x.copy()
  x2[1, 2:] += 100.0
  np.testing.assert_allclose(taps.reduce_fixed('mean', x2, mask)[1], want[1],
                             rtol=1e-6)
  with pytest.raises(ValueError, match='learned'):
    taps.reduce_fixed('attn_pool', x, mask)


def test_attn_pool_matches_numpy_and_ignores_padding():
  x, mask = _tokens(seed=1)
  with nnx.use_eager_sharding(False):
    pool = taps.AttnPool(4, rngs=nnx.Rngs(0))
  rng = np.random.RandomState(2)  # Weights of order 1, so logits matter.
  pool.query[...] = jnp.asarray(rng.randn(4), jnp.float32)
  pool.key.kernel[...] = jnp.asarray(rng.randn(4, 4), jnp.float32)
  pool.value.kernel[...] = jnp.asarray(rng.randn(4, 4), jnp.float32)
  q = np.asarray(pool.query[...], np.float64)
  wk = np.asarray(pool.key.kernel[...], np.float64)
  wv = np.asarray(pool.value.kernel[...], np.float64)
  got = np.asarray(pool(jnp.asarray(x), jnp.asarray(mask)))
  for i in range(3):
    xi = x[i].astype(np.float64)
    logits = (xi @ wk) @ q / 2.0
    visible = mask[i].astype(bool)
    if visible.any():
      p = np.exp(logits[visible] - logits[visible].max())
      p /= p.sum()
    else:  # No real token: uniform weights, as attention.Attention does.
      visible, p = np.ones(5, bool), np.full(5, 0.2)
    np.testing.assert_allclose(got[i], p @ (xi[visible] @ wv), rtol=1e-5,
                               atol=1e-5)
  x2 = x.copy()
  x2[1, 2:] = 50.0
  np.testing.assert_allclose(pool(jnp.asarray(x2), jnp.asarray(mask))[1],
                             got[1], rtol=1e-6)


def test_resampler_taps_from_outputs():
  rng = np.random.RandomState(0)
  layers_ = rng.randn(3, 2, 4, 5).astype(np.float32)
  out = {'resampler_queries': layers_[-1], 'resampler_layers': layers_}
  got = taps.resampler_taps(out, ('resampler_queries', 'resampler_layer:1',
                                  'resampler_layer:-1'))
  np.testing.assert_array_equal(got['resampler_layer:1'][0], layers_[1])
  np.testing.assert_array_equal(got['resampler_layer:-1'][0], layers_[2])
  np.testing.assert_array_equal(got['resampler_queries'][1], np.ones((2, 4)))
  text_mask = np.array([[1, 1, 0], [1, 0, 0]], np.int32)
  got = taps.resampler_taps(
      {'resampler_text': np.zeros((2, 3, 5)), 'text_mask': text_mask},
      ('resampler_text',))
  np.testing.assert_array_equal(got['resampler_text'][1], text_mask)
  with pytest.raises(ValueError, match='0..2'):
    taps.resampler_taps(out, ('resampler_layer:3',))
  with pytest.raises(ValueError, match='return_layers'):
    taps.resampler_taps({'resampler_queries': layers_[-1]},
                        ('resampler_layer:0',))


@functools.partial(jax.jit, static_argnums=0)
def _all_taps(graphdef, params, batch):
  model = nnx.merge(graphdef, params)
  got = taps.model_taps(model, batch, taps.MODEL_TAPS + (
      'vision_layer:-1', 'vision_layer:0', 'fusion_layer:0',
      'fusion_layer:1'))
  got['normed_last_vision_layer'] = model.vision.norm(
      got['vision_layer:-1'][0])
  img = model.embed_image(batch['image'])
  txt = model.embed_text(batch['text_ids'], batch['text_mask'])
  fused = model.fuse(txt['text_embeds'], batch['text_mask'],
                     img['image_embeds'])
  return got, img, txt, fused


def test_model_taps_are_the_model_outputs(fast_compile):
  cfg = sizes.model_config('tiny')
  cfg.update(vision_depth=1, text_layers=1, fusion_layers=1)
  # Abstract init + NumPy draws: XLA initialisers compile once per shape.
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: create_model(cfg, nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract, nnx.Param)
  rng = np.random.RandomState(0)
  params = jax.tree.map(
      lambda a: jnp.asarray(rng.randn(*a.shape) * 0.05, jnp.float32),
      nnx.to_pure_dict(state))
  mask = np.ones((2, 6), np.int32)
  mask[1, 3:] = 0
  batch = {'image': rng.randint(0, 256, (2, 64, 64, 3)).astype(np.uint8),
           'text_ids': rng.randint(5, 100, (2, 6)).astype(np.int32),
           'text_mask': mask}
  got, img, txt, fused = _all_taps(graphdef, params, batch)
  np.testing.assert_array_equal(got['vision_tokens'][0], img['image_embeds'])
  assert got['vision_tokens'][1].shape == (2, 65)
  np.testing.assert_array_equal(got['text_tokens'][1], mask)
  np.testing.assert_array_equal(got['text_cls'][0][:, 0],
                                txt['text_embeds'][:, 0])
  np.testing.assert_array_equal(got['fused_tokens'][0], fused['fused_embeds'])
  np.testing.assert_array_equal(got['fused_cls'][0][:, 0],
                                fused['fused_cls'])
  assert got['fused_cls'][0].shape == (2, 1, cfg.text_width)
  # Per-layer stacks: the last ViT block's output, normed, is the final
  # token set; fusion layer 0 is its text-mode input, layer 1 its output.
  np.testing.assert_allclose(got['normed_last_vision_layer'],
                             img['image_embeds'], rtol=1e-6, atol=1e-6)
  assert got['vision_layer:0'][0].shape == (2, 65, cfg.vision_width)
  assert not np.allclose(got['vision_layer:0'][0], got['vision_layer:-1'][0])
  np.testing.assert_array_equal(got['fusion_layer:0'][0], txt['text_embeds'])
  np.testing.assert_array_equal(got['fusion_layer:1'][0],
                                fused['fused_embeds'])
  np.testing.assert_array_equal(got['fusion_layer:1'][1], mask)
  with pytest.raises(ValueError, match='0..1'):
    jax.eval_shape(lambda p: taps.model_taps(
        nnx.merge(graphdef, p), batch, ('fusion_layer:2',)), params)
  assert taps.feature_dim(taps.parse_spec('tap=vision_tokens'), 65, 128) == (
      65 * 128)
