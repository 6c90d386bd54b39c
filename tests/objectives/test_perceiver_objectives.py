"""Tests of vlg.objectives.perceiver (Perceiver stage 1: ITC + ITG).

The losses are re-derived in float64 NumPy from docs/probing.md §1.3 / §6.3
(explicit loops, torch's label smoothing ``(1 − ε)·onehot + ε/C``, max over
latents, [CLS] → [DEC] for ITG, padding never a target). The inputs of the
re-derivation are the modules' own states, each computed by a separate
call: the Perceiver's latents and the decoder's passes are checked against
float64 forwards in tests/models (test_resamplers, test_text_decoder).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlg.models import perceiver as perceiver_lib
from vlg.models import resamplers
from vlg.models import text_decoder
from vlg.objectives import perceiver as objectives

# The Q-Former test's float64 references (checked there on hand examples).
from test_qformer import _smoothed_ce, _unit

B, N, DV, L, V, BOS = 3, 4, 8, 6, 13, 12
MASK = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]],
                np.int32)


@pytest.fixture(autouse=True, scope='module')
def _fast_compile():
  """Most XLA optimisations off: compile time dominates these tiny tests."""
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', False)


def _random(module_fn, rng):
  with nnx.use_eager_sharding(False):
    graphdef, state = nnx.split(nnx.eval_shape(module_fn), nnx.Param)

  def draw(path, x):
    name = path[-1].key
    if name == 'temp':
      return jnp.full(x.shape, 0.1, x.dtype)
    return jnp.asarray(rng.randn(*x.shape) * 0.3 + (name == 'scale'),
                       x.dtype)

  return graphdef, jax.tree_util.tree_map_with_path(
      draw, nnx.to_pure_dict(state))


@functools.cache
def _models():
  """(graphdefs, params) of a micro Perceiver (width 8) and decoder."""
  p_cfg = resamplers.resampler_config('perceiver', 'tiny', vision_width=DV,
                                      layers=1, heads=2, head_dim=4,
                                      num_queries=2)
  d_cfg = text_decoder.decoder_config('tiny', latent_width=DV, vocab_size=V,
                                      layers=1, width=8, heads=2, mlp=16,
                                      embed_dim=4, max_positions=L)
  rng = np.random.RandomState(0)
  p = _random(lambda: perceiver_lib.PerceiverResampler(p_cfg,
                                                       rngs=nnx.Rngs(0)), rng)
  d = _random(lambda: text_decoder.TextDecoder(d_cfg, rngs=nnx.Rngs(0)), rng)
  return {'perceiver': p[0], 'decoder': d[0]}, {'perceiver': p[1],
                                                'decoder': d[1]}


def _batch(seed=5):
  rng = np.random.RandomState(seed)
  image = rng.randn(B, N, DV).astype(np.float32)
  ids = rng.randint(2, BOS, (B, L)).astype(np.int32)
  return image, {'text_ids': ids, 'text_mask': MASK}


WEIGHTS = {'itc': 0.5, 'itg': 2.0}


@jax.jit
def _run(params, image, batch, weights):
  """stage1_loss's (total, metrics), its gradients in (params, image), and
  the modules' states, each from its own call (the re-derivation's inputs).
  One compiled function serves every test."""
  graphdefs, _ = _models()

  def fn(params, image):
    return objectives.stage1_loss(
        nnx.merge(graphdefs['perceiver'], params['perceiver']),
        nnx.merge(graphdefs['decoder'], params['decoder']), image, batch,
        bos_id=BOS, weights=weights)

  (total, metrics), grads = jax.value_and_grad(
      fn, argnums=(0, 1), has_aux=True)(params, image)
  perceiver = nnx.merge(graphdefs['perceiver'], params['perceiver'])
  decoder = nnx.merge(graphdefs['decoder'], params['decoder'])
  latents = perceiver(image)['resampler_queries']
  ids, mask = batch['text_ids'], batch['text_mask']
  text = decoder(ids, mask, mode='text')['text_embeds']
  dec = decoder(ids.at[:, 0].set(BOS), mask, latents,
                mode='decoder')['text_embeds']
  states = {'latents': latents, 'cls': text[:, 0],
            'lm_logits': decoder.lm_logits(dec)}
  return total, metrics, grads, states


def _weighted(weights):
  return {k: jnp.float32(v) for k, v in weights.items()}


def _ref_losses(params, states, ids, mask, eps=0.1):
  """Float64 ITC (max over latents) and ITG from the modules' states."""
  d = jax.tree.map(lambda a: np.asarray(a, np.float64), params['decoder'])
  lat = np.asarray(states['latents'], np.float64)
  z = _unit(lat @ d['vision_proj']['kernel'] + d['vision_proj']['bias'])
  t = _unit(np.asarray(states['cls'], np.float64) @ d['text_proj']['kernel']
            + d['text_proj']['bias'])
  temp = float(d['temp'])
  sim = np.array([[max(z[i, r] @ t[j] for r in range(z.shape[1]))
                   for j in range(B)] for i in range(B)]) / temp
  itc = sum(0.5 * (_smoothed_ce(sim[i], i, eps) +
                   _smoothed_ce(sim[:, i], i, eps)) for i in range(B)) / B
  logits = np.asarray(states['lm_logits'], np.float64)
  terms = [_smoothed_ce(logits[b, i], ids[b, i + 1], eps)
           for b in range(B) for i in range(L - 1) if mask[b, i + 1]]
  return itc, float(np.mean(terms)), len(terms)


def test_stage1_loss_matches_float64_reference():
  _, params = _models()
  image, batch = _batch()
  total, metrics, _, states = _run(params, image, batch,
                                   _weighted(WEIGHTS))
  itc, itg, count = _ref_losses(params, states, batch['text_ids'], MASK)
  np.testing.assert_allclose(metrics['itc_loss'], itc, rtol=1e-5)
  np.testing.assert_allclose(metrics['itg_loss'], itg, rtol=1e-5)
  np.testing.assert_allclose(total, 0.5 * itc + 2.0 * itg, rtol=1e-5)
  assert metrics['itg_num_tokens'] == count == 10
  assert metrics['loss'] == total
  np.testing.assert_allclose(metrics['temp'], 0.1, rtol=1e-6)
  assert set(metrics) == {'itc_loss', 'itc_acc', 'temp', 'itg_loss',
                          'itg_acc', 'itg_num_tokens', 'loss'}


def test_itg_is_causal_ignores_padding_and_reads_the_image():
  _, params = _models()
  image, batch = _batch()
  ids = batch['text_ids']
  _, metrics, _, base = _run(params, image, batch, _weighted(WEIGHTS))
  # The logit at position t does not change when tokens > t change.
  for t in range(L - 1):
    later = ids.copy()
    later[:, t + 1:] = (ids[:, t + 1:] + 1) % BOS
    moved = _run(params, image, dict(batch, text_ids=later),
                 _weighted(WEIGHTS))[3]
    np.testing.assert_array_equal(moved['lm_logits'][:, :t + 1],
                                  base['lm_logits'][:, :t + 1])
    assert np.abs(moved['lm_logits'][:, t + 1:] -
                  base['lm_logits'][:, t + 1:]).max() > 1e-4
  # Padding and the first token ([CLS], replaced by [DEC]) never change ITG.
  noisy = ids.copy()
  noisy[MASK == 0] = (ids[MASK == 0] + 3) % BOS
  noisy[:, 0] = (ids[:, 0] + 1) % BOS
  again = _run(params, image, dict(batch, text_ids=noisy),
               _weighted(WEIGHTS))[1]
  np.testing.assert_allclose(again['itg_loss'], metrics['itg_loss'],
                             rtol=1e-6)
  # The latents matter: another image changes the ITG (and ITC) loss.
  other = np.random.RandomState(9).randn(*image.shape).astype(np.float32)
  moved = _run(params, other, batch, _weighted(WEIGHTS))[1]
  assert abs(float(moved['itg_loss']) - float(metrics['itg_loss'])) > 1e-4
  assert abs(float(moved['itc_loss']) - float(metrics['itc_loss'])) > 1e-4


def test_gradient_reaches_both_modules_but_not_the_image():
  _, params = _models()
  image, batch = _batch()
  grads, image_grad = _run(params, image, batch, _weighted(WEIGHTS))[2]
  assert np.abs(image_grad).max() == 0  # stop_gradient on frozen tokens.
  for path in (('perceiver', 'latents'),
               ('perceiver', 'blocks', 0, 'attn', 'key', 'kernel'),
               ('perceiver', 'norm', 'scale'),
               ('decoder', 'temp'), ('decoder', 'vision_proj', 'kernel'),
               ('decoder', 'text_proj', 'kernel'),
               ('decoder', 'layers', 0, 'cross', 'value', 'kernel'),
               ('decoder', 'lm_head', 'bias'),
               ('decoder', 'embeddings', 'word')):
    g = functools.reduce(lambda d, k: d[k], path, grads)
    assert np.abs(np.asarray(g)).max() > 0, path


def test_weights_must_name_exactly_itc_and_itg():
  graphdefs, params = _models()
  image, batch = _batch()
  p = nnx.merge(graphdefs['perceiver'], params['perceiver'])
  d = nnx.merge(graphdefs['decoder'], params['decoder'])
  for weights in ({'itc': 1.0}, {'itc': 1.0, 'itg': 1.0, 'itm': 1.0}):
    with pytest.raises(KeyError, match='exactly the keys'):
      objectives.stage1_loss(p, d, image, batch, bos_id=BOS, weights=weights)
