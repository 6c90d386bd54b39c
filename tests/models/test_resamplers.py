"""Tests of vlg.models.resamplers: masks, structure, taps and numerics.

The forward passes are checked against float64 NumPy re-derivations written
from docs/probing.md §1.2–§1.5 (explicit loops over batch rows, heads and
mask entries). Modules get NumPy-drawn parameters through
``nnx.eval_shape`` (eager initialisation costs one XLA compilation per
parameter shape on CPU); the base sizes are only ever built abstractly.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from flax import nnx

from vlg import sharding
from vlg.models import resamplers

B, N, L = 2, 5, 5
LOGICAL = {None, 'embed', 'mlp', 'heads', 'kv', 'vocab', 'queries'}


@pytest.fixture(autouse=True, scope='module')
def _fast_compile():
  """Most XLA optimisations off: compile time dominates these tiny tests."""
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', False)


def _qformer_cfg(**kw):
  fields = dict(layers=2, width=16, heads=2, mlp=32, num_queries=3,
                vocab_size=40, max_positions=8, embed_dim=8)
  fields.update(kw)
  return resamplers.resampler_config('qformer', 'tiny', vision_width=12,
                                     **fields)


def _abstract(make):
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(make)


def _random_params(make, seed=0):
  """(graphdef, pure params) of ``make()`` with N(0, 0.3) weights."""
  graphdef, state = nnx.split(_abstract(make), nnx.Param)
  rng = np.random.RandomState(seed)

  def draw(path, x):
    if path[-1] == 'temp':
      return jnp.full(x.shape, 0.07, x.dtype)
    scale = path[-1] == 'scale'
    v = rng.randn(*x.shape) * (0.1 if scale else 0.3) + scale
    return jnp.asarray(v, x.dtype)

  pure = nnx.to_pure_dict(state)
  pure = jax.tree_util.tree_map_with_path(
      lambda p, x: draw(tuple(k.key for k in p), x), pure)
  return graphdef, pure


@functools.cache
def _qformer():
  cfg = _qformer_cfg()
  return (cfg,) + _random_params(lambda: resamplers.QFormer(
      cfg, rngs=nnx.Rngs(0)))


@functools.partial(jax.jit, static_argnums=0)
def _all_modes(graphdef, params, image, ids, mask):
  model = nnx.merge(graphdef, params)
  return {
      'image': model(image, mode='image', return_layers=True),
      'text': model(None, ids, mask, mode='text'),
      'multimodal': model(image, ids, mask, mode='multimodal',
                          return_layers=True),
      'decoder': model(image, ids, mask, mode='decoder', return_layers=True),
  }


def _inputs(seed=0):
  rng = np.random.RandomState(seed)
  image = rng.randn(B, N, 12).astype(np.float32) * 2 + 0.5
  ids = rng.randint(0, 40, (B, L)).astype(np.int32)
  mask = np.ones((B, L), np.int32)
  mask[0, 3:] = 0
  return image, ids, mask


# ----------------------------------------------------------------- masks


def test_attention_mask_blocks_match_hand_written_matrices():
  text_mask = np.array([[1, 1, 0], [1, 1, 1]])
  image = resamplers.attention_mask('image', 2, None)
  np.testing.assert_array_equal(image, np.ones((1, 2, 2), bool))

  text = np.asarray(resamplers.attention_mask('text', 0, text_mask))
  np.testing.assert_array_equal(text[0], [[1, 1, 0]] * 3)
  np.testing.assert_array_equal(text[1], np.ones((3, 3)))

  mm = np.asarray(resamplers.attention_mask('multimodal', 2, text_mask))
  np.testing.assert_array_equal(mm[0], [[1, 1, 1, 1, 0]] * 5)
  np.testing.assert_array_equal(mm[1], np.ones((5, 5)))

  dec = np.asarray(resamplers.attention_mask('decoder', 2, text_mask))
  #                          q0 q1 t0 t1 t2
  np.testing.assert_array_equal(dec[0], [[1, 1, 0, 0, 0],   # q0
                                         [1, 1, 0, 0, 0],   # q1
                                         [1, 1, 1, 0, 0],   # t0
                                         [1, 1, 1, 1, 0],   # t1
                                         [1, 1, 1, 1, 0]])  # t2 (padding)
  np.testing.assert_array_equal(dec[1], [[1, 1, 0, 0, 0],
                                         [1, 1, 0, 0, 0],
                                         [1, 1, 1, 0, 0],
                                         [1, 1, 1, 1, 0],
                                         [1, 1, 1, 1, 1]])
  for m in (text, mm, dec):
    assert m.dtype == bool


@pytest.mark.parametrize('args, match', [
    (('fused', 2, np.ones((1, 3))), 'Unknown Q-Former mode'),
    (('image', 2, np.ones((1, 3))), "'image' mode has no text"),
    (('text', 2, np.ones((1, 3))), "'text' mode has no queries"),
    (('multimodal', 2, None), 'needs text'),
    (('decoder', 0, np.ones((1, 3))), 'needs num_queries'),
])
def test_attention_mask_rejects_inconsistent_arguments(args, match):
  with pytest.raises(ValueError, match=match):
    resamplers.attention_mask(*args)


# ------------------------------------------------- float64 Q-Former reference


def _ln(x, p, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p['scale'] + p.get('bias', 0.0)


def _dense(x, p, n_in=1):
  y = np.tensordot(x, p['kernel'], axes=n_in)
  return y + p['bias'] if 'bias' in p else y


def _attend(p, x, ctx, visible):
  """Multi-head attention of one sequence: x [Lq, D], ctx [Lk, Dc]."""
  q, k, v = _dense(x, p['query']), _dense(ctx, p['key']), _dense(
      ctx, p['value'])
  heads = []
  for h in range(q.shape[1]):
    logits = q[:, h] @ k[:, h].T / np.sqrt(q.shape[-1])
    logits = np.where(visible, logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    heads.append((w / w.sum(-1, keepdims=True)) @ v[:, h])
  return _dense(np.stack(heads, 1), p['out'], n_in=2)


def _gelu(x):
  return 0.5 * x * (1 + scipy.special.erf(x / np.sqrt(2)))


def _ffn(p, x):
  return _dense(_gelu(_dense(x, p['fc1'])), p['fc2'])


def _visible(mode, q, text_mask):
  """§1.3's rules, entry by entry, for one example."""
  n = q + len(text_mask)
  m = np.zeros((n, n), bool)
  for i in range(n):
    for j in range(n):
      if j >= q and not text_mask[j - q]:
        continue  # Padding is never a key.
      if mode in ('image', 'text', 'multimodal'):
        m[i, j] = True
      elif i < q:
        m[i, j] = j < q  # decoder: queries see queries only.
      else:
        m[i, j] = j < q or j <= i
  return m


def _ref_qformer(params, cfg, mode, image, ids, mask):
  """Query rows, text rows and per-layer query rows, float64."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  eps = cfg.ln_eps
  out_q, out_t, layers_q = [], [], []
  for b in range(image.shape[0]):
    rows = []
    q = 0 if mode == 'text' else cfg.num_queries
    if q:
      rows.append(p['query_tokens'])
    tm = [] if mode == 'image' else mask[b]
    if mode != 'image':
      rows.append(p['word'][ids[b]] + p['position'][:len(ids[b])])
    x = _ln(np.concatenate(rows), p['embed_norm'], eps)
    visible = _visible(mode, q, tm)
    img = _ln(np.asarray(image[b], np.float64), p['ln_vision'],
              cfg.vision_ln_eps)
    per_layer = [x[:q]]
    for l in range(cfg.layers):
      lp = p['layers'][l]
      h = _ln(x + _attend(lp['attn'], x, x, visible), lp['attn_norm'], eps)
      hq, ht = h[:q], h[q:]
      if 'cross' in lp and q:
        hq = _ln(hq + _attend(lp['cross'], hq, img, True), lp['cross_norm'],
                 eps)
      hq = _ln(hq + _ffn(lp['query_mlp'], hq), lp['query_mlp_norm'], eps)
      ht = _ln(ht + _ffn(lp['mlp'], ht), lp['mlp_norm'], eps)
      x = np.concatenate([hq, ht])
      per_layer.append(x[:q])
    out_q.append(x[:q])
    out_t.append(x[q:])
    layers_q.append(np.stack(per_layer))
  return (np.stack(out_q), np.stack(out_t),
          np.stack(layers_q).transpose(1, 0, 2, 3))


def test_qformer_matches_float64_reference_in_every_mode():
  cfg, graphdef, params = _qformer()
  image, ids, mask = _inputs()
  out = _all_modes(graphdef, params, image, ids, mask)
  for mode in resamplers.MODES:
    ref_q, ref_t, ref_layers = _ref_qformer(params, cfg, mode, image, ids,
                                            mask)
    got = out[mode]
    if mode != 'text':
      np.testing.assert_allclose(got['resampler_queries'], ref_q, atol=2e-4,
                                 err_msg=mode)
      np.testing.assert_allclose(got['resampler_layers'], ref_layers,
                                 atol=2e-4, err_msg=mode)
      np.testing.assert_array_equal(got['query_mask'], np.ones((B, 3)))
    if mode != 'image':
      np.testing.assert_allclose(got['resampler_text'], ref_t, atol=2e-4,
                                 err_msg=mode)
      np.testing.assert_array_equal(got['text_mask'], mask)
  # The decoder's query rows are the image pass's (ITG reuses them), up to
  # float32 rounding: the two modes are separate XLA programs, which read
  # up to 1.2e-6 apart on an AVX2 CPU.
  np.testing.assert_allclose(out['decoder']['resampler_queries'],
                             out['image']['resampler_queries'], atol=1e-5)


def test_taps_and_keys_per_mode():
  cfg, graphdef, params = _qformer()
  out = _all_modes(graphdef, params, *_inputs())
  assert set(out['image']) == {'resampler_queries', 'query_mask',
                               'resampler_layers'}
  assert set(out['text']) == {'resampler_text', 'text_mask'}
  for mode in ('multimodal', 'decoder'):
    assert set(out[mode]) == {'resampler_queries', 'query_mask',
                              'resampler_text', 'text_mask',
                              'resampler_layers'}
  d, q = cfg.width, cfg.num_queries
  assert out['image']['resampler_queries'].shape == (B, q, d)
  assert out['decoder']['resampler_layers'].shape == (cfg.layers + 1, B, q, d)
  assert out['multimodal']['resampler_text'].shape == (B, L, d)
  np.testing.assert_array_equal(out['image']['resampler_layers'][-1],
                                out['image']['resampler_queries'])


def test_decoder_queries_are_bit_identical_under_text_changes():
  _, graphdef, params = _qformer()
  image, ids, mask = _inputs()
  base = _all_modes(graphdef, params, image, ids, mask)
  other_ids = (ids + 1 + np.arange(L)) % 40
  other_mask = np.ones_like(mask)
  other = _all_modes(graphdef, params, image, other_ids, other_mask)
  for key in ('resampler_queries', 'resampler_layers'):
    np.testing.assert_array_equal(other['decoder'][key],
                                  base['decoder'][key])
  # Under the bidirectional ITM mask the queries do read the text.
  assert np.abs(other['multimodal']['resampler_queries'] -
                base['multimodal']['resampler_queries']).max() > 1e-3

  # Text rows are causal: changing token 2 leaves rows 0, 1 untouched.
  later = ids.copy()
  later[:, 2] = (later[:, 2] + 7) % 40
  changed = _all_modes(graphdef, params, image, later, mask)
  np.testing.assert_array_equal(changed['decoder']['resampler_text'][:, :2],
                                base['decoder']['resampler_text'][:, :2])
  assert np.abs(changed['decoder']['resampler_text'][:, 2] -
                base['decoder']['resampler_text'][:, 2]).min() > 0


def test_padding_and_image_reach_only_the_rows_that_may_see_them():
  _, graphdef, params = _qformer()
  image, ids, mask = _inputs()
  base = _all_modes(graphdef, params, image, ids, mask)
  padded = ids.copy()
  padded[0, 3:] = (padded[0, 3:] + 5) % 40  # Padding of example 0 only.
  out = _all_modes(graphdef, params, image, padded, mask)
  for mode in ('text', 'multimodal', 'decoder'):
    np.testing.assert_allclose(out[mode]['resampler_text'][0, :3],
                               base[mode]['resampler_text'][0, :3],
                               atol=1e-6, err_msg=mode)
  np.testing.assert_allclose(out['multimodal']['resampler_queries'],
                             base['multimodal']['resampler_queries'],
                             atol=1e-6)
  # Text mode never sees the image; every query mode does. (A shift or a
  # scale of every token would vanish in ln_vision.)
  noise = np.random.RandomState(5).randn(*image.shape).astype(np.float32)
  out = _all_modes(graphdef, params, image + noise, ids, mask)
  np.testing.assert_array_equal(out['text']['resampler_text'],
                                base['text']['resampler_text'])
  for mode in ('image', 'multimodal', 'decoder'):
    assert np.abs(out[mode]['resampler_queries'] -
                  base[mode]['resampler_queries']).max() > 1e-3


def test_query_and_text_ffns_are_distinct_parameters():
  cfg, graphdef, params = _qformer()
  image, ids, mask = _inputs()
  base = _all_modes(graphdef, params, image, ids, mask)['multimodal']
  last = cfg.layers - 1
  for ffn, moved, kept in (('query_mlp', 'resampler_queries',
                            'resampler_text'),
                           ('mlp', 'resampler_text', 'resampler_queries')):
    layer = params['layers'][last]
    assert not np.array_equal(layer['query_mlp']['fc1']['kernel'],
                              layer['mlp']['fc1']['kernel'])
    edited = jax.tree.map(lambda x: x, params)
    edited['layers'][last][ffn]['fc2']['bias'] = (
        layer[ffn]['fc2']['bias'] + 0.5 * np.arange(cfg.width))
    out = _all_modes(graphdef, edited, image, ids, mask)['multimodal']
    np.testing.assert_array_equal(out[kept], base[kept], err_msg=ffn)
    assert np.abs(out[moved] - base[moved]).max() > 1e-3, ffn


def test_dropout_only_when_not_deterministic():
  cfg = _qformer_cfg(dropout=0.5)
  graphdef, params = _random_params(lambda: resamplers.QFormer(
      cfg, rngs=nnx.Rngs(0)))
  image, ids, mask = _inputs()

  @jax.jit
  def run(params, key):
    model = nnx.merge(graphdef, params)
    rngs = nnx.Rngs(dropout=key)
    return [model(image, ids, mask, mode='multimodal', deterministic=d,
                  rngs=rngs)['resampler_queries'] for d in (True, True, False)]

  a, b, noisy = run(params, jax.random.key(0))
  np.testing.assert_array_equal(a, b)  # rngs are ignored when deterministic.
  assert np.abs(noisy - a).max() > 1e-2
  ref_q, _, _ = _ref_qformer(params, cfg, 'multimodal', image, ids, mask)
  np.testing.assert_allclose(a, ref_q, atol=2e-4)


def test_call_rejects_wrong_inputs():
  cfg, graphdef, params = _qformer()
  model = nnx.merge(graphdef, params)
  image, ids, mask = _inputs()
  with pytest.raises(ValueError, match="'image' mode takes no text"):
    model(image, ids, mask, mode='image')
  with pytest.raises(ValueError, match="'text' mode takes no image"):
    model(image, ids, mask, mode='text')
  with pytest.raises(ValueError, match='needs image_embeds'):
    model(None, ids, mask, mode='decoder')
  with pytest.raises(ValueError, match='needs rngs'):
    model(image, mode='image', deterministic=False)


# ------------------------------------------------- structure and base sizes


def _flat_params(module):
  return {tuple(str(k) for k in path): var
          for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param))}


@pytest.mark.parametrize('layers, freq, want', [(4, 2, {0, 2}),
                                                 (6, 3, {0, 3})])
def test_cross_attention_only_on_layers_multiple_of_freq(layers, freq, want):
  cfg = _qformer_cfg(layers=layers, cross_attention_freq=freq)
  model = _abstract(lambda: resamplers.QFormer(cfg, rngs=nnx.Rngs(0)))
  with_cross = {int(p[1]) for p in _flat_params(model)
                if p[0] == 'layers' and p[2] == 'cross'}
  assert with_cross == want
  for l, layer in enumerate(model.layers):
    assert (layer.cross is not None) == (l in want)
    assert layer.query_mlp is not layer.mlp


def test_base_qformer_is_blip2_shaped_abstractly():
  cfg = resamplers.resampler_config('qformer', 'base')
  assert (cfg.layers, cfg.width, cfg.heads, cfg.mlp, cfg.num_queries,
          cfg.cross_attention_freq, cfg.vision_width, cfg.max_text_len,
          cfg.embed_dim) == (12, 768, 12, 3072, 32, 2, 1408, 32, 256)
  model = _abstract(lambda: resamplers.QFormer(cfg, rngs=nnx.Rngs(0)))
  flat = _flat_params(model)
  shapes = {'/'.join(p): v.shape for p, v in flat.items()}
  assert shapes['word'] == (30522 + 1, 768)  # BERT vocabulary + [DEC].
  assert shapes['query_tokens'] == (32, 768)
  assert shapes['layers/0/cross/key/kernel'] == (1408, 12, 64)
  assert shapes['ln_vision/scale'] == (1408,)
  assert 'layers/1/cross/key/kernel' not in shapes
  # Hand count of LAVIS's Blip2Qformer without its ViT.
  d, v, f, dv = 768, 30523, 3072, 1408
  embed = v * d + 512 * d + 2 * d
  self_attn = 4 * (d * d + d) + 2 * d
  ffn = 2 * d * f + f + d + 2 * d
  cross = 2 * (d * d + d) + 2 * (dv * d + d) + 2 * d
  heads = 2 * (d * 256 + 256) + (2 * d + 2) + (d * d + 3 * d + v) + 1
  want = (embed + 12 * (self_attn + 2 * ffn) + 6 * cross + 32 * d + 2 * dv +
          heads)
  assert sum(int(np.prod(s)) for s in shapes.values()) == want
  assert 185e6 < want < 190e6  # docs/probing.md §1.2: ≈188 M.

  graphdef, state = nnx.split(model)
  image = jax.ShapeDtypeStruct((2, 257, 1408), jnp.float32)
  ids = jax.ShapeDtypeStruct((2, 32), jnp.int32)

  def forward(state, image, ids):
    return nnx.merge(graphdef, state)(image, ids, mode='multimodal',
                                      return_layers=True)

  out = jax.eval_shape(forward, state, image, ids)
  assert out['resampler_queries'].shape == (2, 32, 768)
  assert out['resampler_layers'].shape == (13, 2, 32, 768)
  assert out['resampler_text'].shape == (2, 32, 768)


def _perceiver_cfg(**kw):
  fields = dict(layers=2, heads=2, head_dim=8, num_queries=3)
  fields.update(kw)
  return resamplers.resampler_config('perceiver', 'tiny', vision_width=16,
                                     **fields)


@pytest.mark.parametrize('make', [
    lambda: resamplers.QFormer(_qformer_cfg(), rngs=nnx.Rngs(0)),
    lambda: resamplers.PerceiverResampler(
        _perceiver_cfg(qk_norm=True, num_time_embeds=2), rngs=nnx.Rngs(0)),
])
def test_every_parameter_has_logical_axis_names(make):
  flat = _flat_params(_abstract(make))
  for path, var in flat.items():
    names = var.get_metadata().get('out_sharding')
    assert names is not None and len(names) == len(var.shape), path
    assert set(names) <= LOGICAL, (path, names)
  queries = [v for p, v in flat.items() if p[0] in ('query_tokens', 'latents')]
  assert queries[0].get_metadata()['out_sharding'] == ('queries', 'embed')
  rules = [('embed', 'fsdp'), ('mlp', 'tensor'), ('heads', 'tensor')]
  spec = sharding.logical_to_spec(('queries', 'embed'), rules)
  assert spec == jax.sharding.PartitionSpec(None, 'fsdp')


def test_resampler_config_sizes_and_errors():
  base = resamplers.resampler_config('perceiver', 'base')
  assert (base.layers, base.num_queries, base.heads, base.head_dim,
          base.activation) == (6, 64, 16, 96, 'sqrelu')
  assert base.width == base.vision_width == 1536 and base.mlp == 4 * 1536
  idefics = resamplers.resampler_config('perceiver', 'base', 1280,
                                        activation='relu', qk_norm=True)
  assert idefics.width == 1280 and idefics.mlp == 5120
  tiny = resamplers.resampler_config('qformer', 'tiny', vision_width=128)
  assert (tiny.layers, tiny.width, tiny.heads, tiny.mlp, tiny.num_queries,
          tiny.cross_attention_freq) == (4, 128, 4, 512, 8, 2)
  with pytest.raises(ValueError, match='Unknown resampler kind'):
    resamplers.resampler_config('lstm', 'tiny')
  with pytest.raises(ValueError, match='Unknown qformer size'):
    resamplers.resampler_config('qformer', 'huge')
  with pytest.raises(KeyError, match='widht'):
    resamplers.resampler_config('qformer', 'tiny', widht=3)
  with pytest.raises(ValueError, match='activation'):
    resamplers.resampler_config('perceiver', 'tiny', activation='swish')
  with pytest.raises(ValueError, match='time_mode'):
    resamplers.resampler_config('perceiver', 'tiny', time_mode='both')


# ------------------------------------------------------ Perceiver Resampler


@functools.cache
def _perceiver(**kw):
  cfg = _perceiver_cfg(**kw)
  return (cfg,) + _random_params(lambda: resamplers.PerceiverResampler(
      cfg, rngs=nnx.Rngs(0)), seed=1)


@functools.partial(jax.jit, static_argnums=0)
def _resample(graphdef, params, x):
  return nnx.merge(graphdef, params)(x, return_layers=True)


_ACT = {'relu': lambda x: np.maximum(x, 0),
        'sqrelu': lambda x: np.maximum(x, 0) ** 2,
        'gelu': _gelu}


def _ref_perceiver(params, cfg, x):
  """Flamingo's resampler in float64 (§1.5), one (example, media) at a time."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(x, np.float64)
  x = x[:, None] if x.ndim == 3 else x
  if cfg.num_time_embeds:
    x = x + p['time_embeds'][:x.shape[1]][None, :, None]
  if cfg.time_mode == 'flatten_time':
    x = x.reshape(x.shape[0], 1, -1, x.shape[-1])
  eps, act = cfg.ln_eps, _ACT[cfg.activation]
  out, layers = [], []
  for b in range(x.shape[0]):
    rows, layer_rows = [], []
    for m in range(x.shape[1]):
      lat = p['latents'].copy()
      taps = [lat]
      for l in range(cfg.layers):
        bp = p['blocks'][l]
        ap = bp['attn']
        nl = _ln(lat, ap['norm_latents'], eps)
        ctx = np.concatenate([_ln(x[b, m], ap['norm_media'], eps), nl])
        q, k, v = (np.tensordot(nl, ap['query']['kernel'], 1),
                   np.tensordot(ctx, ap['key']['kernel'], 1),
                   np.tensordot(ctx, ap['value']['kernel'], 1))
        if cfg.qk_norm:
          q, k = _ln(q, ap['q_norm'], eps), _ln(k, ap['k_norm'], eps)
        heads = []
        for h in range(cfg.heads):
          s = q[:, h] @ k[:, h].T / np.sqrt(cfg.head_dim)
          w = np.exp(s - s.max(-1, keepdims=True))
          heads.append(w / w.sum(-1, keepdims=True) @ v[:, h])
        lat = lat + np.tensordot(np.stack(heads, 1), ap['out']['kernel'], 2)
        hidden = act(_ln(lat, bp['mlp_norm'], eps) @ bp['fc1']['kernel'])
        lat = lat + hidden @ bp['fc2']['kernel']
        taps.append(lat)
      rows.append(_ln(lat, p['norm'], eps))
      layer_rows.append(np.stack([_ln(t, p['norm'], eps) for t in taps]))
    out.append(np.concatenate(rows))
    layers.append(np.concatenate(layer_rows, axis=1))
  return np.stack(out), np.stack(layers).transpose(1, 0, 2, 3)


@pytest.mark.parametrize('kw', [
    dict(activation='sqrelu', num_time_embeds=3, time_mode='flatten_time'),
    dict(activation='relu', qk_norm=True, num_time_embeds=2,
         time_mode='per_media'),
    dict(activation='gelu'),
])
def test_perceiver_matches_float64_reference(kw):
  cfg, graphdef, params = _perceiver(**kw)
  x = np.random.RandomState(2).randn(B, 2, N, 16).astype(np.float32)
  if not cfg.num_time_embeds:
    x = x[:, 0]
  out = _resample(graphdef, params, x)
  ref, ref_layers = _ref_perceiver(params, cfg, x)
  rows = (2 if cfg.time_mode == 'per_media' and x.ndim == 4 else 1) * 3
  assert out['resampler_queries'].shape == (B, rows, 16)
  assert out['resampler_layers'].shape == (cfg.layers + 1, B, rows, 16)
  np.testing.assert_allclose(out['resampler_queries'], ref, atol=2e-4)
  np.testing.assert_allclose(out['resampler_layers'], ref_layers, atol=2e-4)
  np.testing.assert_array_equal(out['query_mask'], np.ones((B, rows)))


def test_perceiver_time_modes():
  x = np.random.RandomState(3).randn(B, 2, N, 16).astype(np.float32)
  moved = x.copy()
  # Only the second frame changes (not by a shift, which LN would remove).
  moved[:, 1] += np.random.RandomState(4).randn(B, N, 16).astype(np.float32)
  same = np.repeat(x[:, :1], 2, axis=1)  # Two identical frames.

  per_media = _perceiver(num_time_embeds=2, time_mode='per_media')
  a, b = (_resample(*per_media[1:], v)['resampler_queries']
          for v in (x, moved))
  np.testing.assert_array_equal(a[:, :3], b[:, :3])  # Frame 0's latents.
  assert np.abs(a[:, 3:] - b[:, 3:]).max() > 1e-3
  twin = _resample(*per_media[1:], same)['resampler_queries']
  assert np.abs(twin[:, :3] - twin[:, 3:]).max() > 1e-3  # Time embeddings.

  flat = _perceiver(num_time_embeds=2, time_mode='flatten_time')
  a, b = (_resample(*flat[1:], v)['resampler_queries'] for v in (x, moved))
  assert a.shape == (B, 3, 16)
  assert np.abs(a - b).max(axis=-1).min() > 1e-4  # Every latent reads all.

  model = nnx.merge(*per_media[1:])
  with pytest.raises(ValueError, match='exceed num_time_embeds'):
    model(np.zeros((1, 3, N, 16), np.float32))


def test_perceiver_has_no_biases_in_projections():
  model = _abstract(lambda: resamplers.PerceiverResampler(
      _perceiver_cfg(qk_norm=True), rngs=nnx.Rngs(0)))
  flat = _flat_params(model)
  biases = {p for p in flat if p[-1] == 'bias'}
  # Only LayerNorms (norm_media, norm_latents, q/k_norm, mlp_norm, norm).
  assert biases and all('norm' in p[-2] for p in biases), biases
  assert model.time_embeds is None
