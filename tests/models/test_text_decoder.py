"""Tests of vlg.models.text_decoder against a float64 NumPy re-derivation.

The reference follows the module docstring literally (post-LN BERT layers:
self-attention under the mode's mask, cross-attention to the latents on
layers l % freq == 0 in 'decoder' mode only, GELU FFN; BERT's LM head tied
to the word table), with explicit loops over batch rows, heads and mask
entries. Parameters are NumPy draws put into an ``nnx.eval_shape`` tree.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from flax import nnx

from vlg.models import text_decoder

B, L, R, DL, V = 2, 5, 3, 12, 23
EPS = 1e-12
LOGICAL = {None, 'embed', 'mlp', 'heads', 'kv', 'vocab'}


@pytest.fixture(autouse=True, scope='module')
def _fast_compile():
  """Most XLA optimisations off: compile time dominates these tiny tests."""
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', False)


def _cfg(**kw):
  fields = dict(layers=2, width=16, heads=2, mlp=32, embed_dim=8,
                max_positions=8, cross_attention_freq=2)
  fields.update(kw)
  return text_decoder.decoder_config('tiny', latent_width=DL, vocab_size=V,
                                     **fields)


def _abstract(cfg):
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: text_decoder.TextDecoder(
        cfg, rngs=nnx.Rngs(0)))


@functools.cache
def _decoder():
  """(cfg, graphdef, params) with N(0, 0.3) weights, LN scales near 1."""
  cfg = _cfg()
  graphdef, state = nnx.split(_abstract(cfg), nnx.Param)
  rng = np.random.RandomState(0)

  def draw(path, x):
    name = path[-1].key
    if name == 'temp':
      return jnp.full(x.shape, 0.07, x.dtype)
    scale = name == 'scale'
    v = rng.randn(*x.shape) * (0.1 if scale else 0.3) + scale
    return jnp.asarray(v, x.dtype)

  params = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state))
  return cfg, graphdef, params


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, ids, mask, latents):
  model = nnx.merge(graphdef, params)
  text = model(ids, mask, mode='text')['text_embeds']
  dec = model(ids, mask, latents, mode='decoder')['text_embeds']
  return {'text': text, 'decoder': dec, 'text_feat': model.text_feat(text),
          'image_feat': model.image_feat(latents),
          'lm_logits': model.lm_logits(dec)}


def _inputs(seed=0):
  rng = np.random.RandomState(seed)
  ids = rng.randint(0, V, (B, L)).astype(np.int32)
  mask = np.ones((B, L), np.int32)
  mask[0, 3:] = 0
  latents = rng.randn(B, R, DL).astype(np.float32)
  return ids, mask, latents


# ------------------------------------------------------ float64 reference


def _ln(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + EPS) * p['scale'] + p['bias']


def _dense(x, p, n_in=1):
  return np.tensordot(x, p['kernel'], axes=n_in) + p['bias']


def _gelu(x):
  return 0.5 * x * (1 + scipy.special.erf(x / np.sqrt(2)))


def _attend(p, x, context, visible, heads):
  """One example: x [Lq, D] attends context [Lk, Dc] where visible[i, j]."""
  q, k, v = (_dense(x, p['query']), _dense(context, p['key']),
             _dense(context, p['value']))
  head_dim = q.shape[-1]
  out = np.zeros((x.shape[0], heads, head_dim))
  for h in range(heads):
    for i in range(x.shape[0]):
      s = np.array([q[i, h] @ k[j, h] / np.sqrt(head_dim)
                    for j in range(context.shape[0])])
      s = np.where(visible[i], s, -np.inf)
      w = np.exp(s - s.max())
      out[i, h] = (w / w.sum()) @ v[:, h]
  return _dense(out, p['out'], n_in=2)


def ref_decoder(params, cfg, ids, mask, latents, mode):
  """Float64 text states [B, L, D] of a 'text' or 'decoder' pass."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  out = []
  for b in range(ids.shape[0]):
    n = ids.shape[1]
    x = p['embeddings']['word'][ids[b]] + p['embeddings']['position'][:n]
    x = _ln(x, p['embeddings']['norm'])
    visible = np.array([[bool(mask[b, j]) and (mode == 'text' or j <= i)
                         for j in range(n)] for i in range(n)])
    for l in range(cfg.layers):
      lp = p['layers'][l]
      x = _ln(x + _attend(lp['attn'], x, x, visible, cfg.heads),
              lp['attn_norm'])
      if mode == 'decoder' and l % cfg.cross_attention_freq == 0:
        lat = np.asarray(latents[b], np.float64)
        everything = np.ones((n, lat.shape[0]), bool)
        x = _ln(x + _attend(lp['cross'], x, lat, everything, cfg.heads),
                lp['cross_norm'])
      ffn = _dense(_gelu(_dense(x, lp['mlp']['fc1'])), lp['mlp']['fc2'])
      x = _ln(x + ffn, lp['mlp_norm'])
    out.append(x)
  return np.stack(out)


def ref_lm_logits(params, states):
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  h = _ln(_gelu(_dense(states, p['lm_head']['dense'])), p['lm_head']['norm'])
  return h @ p['embeddings']['word'].T + p['lm_head']['bias']


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_decoder_matches_float64_reference_in_both_modes():
  cfg, graphdef, params = _decoder()
  ids, mask, latents = _inputs()
  out = _forward(graphdef, params, ids, mask, latents)
  text = ref_decoder(params, cfg, ids, mask, latents, 'text')
  dec = ref_decoder(params, cfg, ids, mask, latents, 'decoder')
  np.testing.assert_allclose(out['text'], text, atol=2e-4)
  np.testing.assert_allclose(out['decoder'], dec, atol=2e-4)
  np.testing.assert_allclose(out['lm_logits'], ref_lm_logits(params, dec),
                             atol=5e-4)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  np.testing.assert_allclose(
      out['text_feat'], _unit(_dense(text[:, 0], p['text_proj'])), atol=1e-5)
  np.testing.assert_allclose(
      out['image_feat'], _unit(_dense(np.float64(latents), p['vision_proj'])),
      atol=1e-5)
  assert out['lm_logits'].shape == (B, L, V)
  assert out['lm_logits'].dtype == jnp.float32


def test_decoder_is_causal_and_reads_the_latents():
  _, graphdef, params = _decoder()
  ids, mask, latents = _inputs()
  mask = np.ones_like(mask)
  base = _forward(graphdef, params, ids, mask, latents)
  for t in range(L - 1):
    later = ids.copy()
    later[:, t + 1:] = (ids[:, t + 1:] + 1 + t) % V
    moved = _forward(graphdef, params, later, mask, latents)
    # Decoder logits at positions <= t see no token after t ...
    np.testing.assert_array_equal(moved['lm_logits'][:, :t + 1],
                                  base['lm_logits'][:, :t + 1])
    assert np.abs(moved['lm_logits'][:, t + 1:] -
                  base['lm_logits'][:, t + 1:]).max() > 1e-3
    # ... while the text-only pass is bidirectional: [CLS] sees them all.
    assert np.abs(moved['text'][:, 0] - base['text'][:, 0]).max() > 1e-4
  other = _forward(graphdef, params, ids, mask, latents[::-1].copy())
  # Every decoder row reads the latents; the text pass never does.
  assert np.abs(other['lm_logits'] - base['lm_logits']).max(-1).min() > 1e-4
  np.testing.assert_array_equal(other['text'], base['text'])


def test_padding_never_changes_real_rows():
  _, graphdef, params = _decoder()
  ids, mask, latents = _inputs()
  base = _forward(graphdef, params, ids, mask, latents)
  noisy = ids.copy()
  noisy[0, 3:] = (ids[0, 3:] + 5) % V  # Padded positions of example 0.
  moved = _forward(graphdef, params, noisy, mask, latents)
  for key in ('text', 'decoder'):
    np.testing.assert_allclose(moved[key][0, :3], base[key][0, :3],
                               atol=1e-6)
    np.testing.assert_array_equal(moved[key][1], base[key][1])


def test_cross_attention_layers_and_logical_axis_names():
  model = _abstract(_cfg(layers=4, cross_attention_freq=2))
  assert [layer.cross is not None for layer in model.layers] == [
      True, False, True, False]
  flat = {tuple(str(k) for k in path): var for path, var in
          nnx.to_flat_state(nnx.state(model, nnx.Param))}
  for path, var in flat.items():
    names = var.get_metadata().get('out_sharding')
    assert names is not None and len(names) == len(var.shape), path
    assert set(names) <= LOGICAL, (path, names)
  assert flat[('embeddings', 'word')].get_metadata()['out_sharding'] == (
      'vocab', 'embed')
  # The cross-attention keys read the latent width.
  assert flat[('layers', '0', 'cross', 'key', 'kernel')].shape == (DL, 2, 8)
  # The LM head has no decoder matrix of its own (tied to the word table).
  assert not any(p[0] == 'lm_head' and p[-1] == 'kernel' and
                 var.shape[-1] == V for p, var in flat.items())


def test_config_and_call_errors():
  base = text_decoder.decoder_config('base', latent_width=1536,
                                     vocab_size=30523)
  assert (base.layers, base.width, base.latent_width, base.vocab_size) == (
      6, 768, 1536, 30523)
  with pytest.raises(ValueError, match='Unknown text decoder size'):
    text_decoder.decoder_config('huge')
  with pytest.raises(KeyError, match='widht'):
    text_decoder.decoder_config('tiny', widht=3)
  with pytest.raises(ValueError, match='cross_attention_freq'):
    text_decoder.decoder_config('tiny', cross_attention_freq=0)
  _, graphdef, params = _decoder()
  model = nnx.merge(graphdef, params)
  ids, mask, latents = _inputs()
  with pytest.raises(ValueError, match='cross-attends latents'):
    model(ids, mask, mode='decoder')
  with pytest.raises(ValueError, match='text only'):
    model(ids, mask, latents, mode='text')
  with pytest.raises(ValueError, match='Unknown text decoder mode'):
    model(ids, mask, mode='fused')
  with pytest.raises(ValueError, match='exceeds max_positions'):
    model(np.zeros((1, 9), np.int32), mode='text')
