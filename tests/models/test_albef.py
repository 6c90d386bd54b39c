"""Tests of the ALBEF model: outputs, masking, tying, sharding, sizes.

The tiny model is built once (eagerly: on CPU each new op shape costs a
compilation, so a module fixture shares them) and used functionally, as the
trainer does: ``nnx.split(model, nnx.Param)`` then ``nnx.merge`` inside
``jax.jit``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from random_params import random_params  # tests/random_params.py
from vlg import predict
from vlg import sharding
from vlg.models import albef
from vlg.models import create_model
from vlg.models import sizes
from vlg.models import vit

B, L = 4, 12
LOGICAL = {None, 'batch', 'length', 'embed', 'mlp', 'heads', 'kv', 'vocab',
           'patches'}
RULES = [('embed', 'fsdp'), ('mlp', 'tensor'), ('heads', 'tensor'),
         ('vocab', 'tensor')]


def _batch(cfg, seed=0):
  rng = np.random.RandomState(seed)
  size = cfg.image_size
  mask = np.ones((B, L), np.int32)
  mask[1, 7:] = 0
  mask[3, 4:] = 0
  return {
      'image': rng.randint(0, 256, (B, size, size, 3)).astype(np.uint8),
      'text_ids': rng.randint(5, cfg.vocab_size, (B, L)).astype(np.int32),
      'text_mask': mask,
  }


def _forward_fn(graphdef, params, batch):
  model = nnx.merge(graphdef, params)
  img = model.embed_image(batch['image'])
  txt = model.embed_text(batch['text_ids'], batch['text_mask'])
  fused = model.fuse(txt['text_embeds'], batch['text_mask'],
                     img['image_embeds'], batch.get('image_mask'))
  return {**img, **txt, **fused,
          'itm_logits': model.itm_logits(fused['fused_cls']),
          'mlm_logits': model.mlm_logits(fused['fused_embeds'])}


_forward = jax.jit(_forward_fn, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def _fuse(graphdef, params, text_embeds, text_mask, image_embeds, image_mask):
  return nnx.merge(graphdef, params).fuse(text_embeds, text_mask,
                                          image_embeds, image_mask)


@pytest.fixture(scope='module')
def tiny():
  cfg = sizes.model_config('tiny')
  graphdef, params = random_params(lambda: create_model(cfg, nnx.Rngs(0)))
  batch = _batch(cfg)
  return cfg, graphdef, params, batch, _forward(graphdef, params, batch)


def test_tiny_outputs_shapes_dtypes_and_unit_features(tiny):
  cfg, _, _, _, out = tiny
  n = (cfg.image_size // cfg.patch_size) ** 2
  want = {
      'image_embeds': (B, 1 + n, cfg.vision_width),
      'image_feat': (B, cfg.embed_dim),
      'text_embeds': (B, L, cfg.text_width),
      'text_feat': (B, cfg.embed_dim),
      'fused_embeds': (B, L, cfg.text_width),
      'fused_cls': (B, cfg.text_width),
      'itm_logits': (B, 2),
      'mlm_logits': (B, L, cfg.vocab_size),
  }
  assert {k: v.shape for k, v in out.items()} == want
  for k in ('image_feat', 'text_feat', 'itm_logits', 'mlm_logits'):
    assert out[k].dtype == jnp.float32, k
  for k, v in out.items():
    assert np.isfinite(np.asarray(v)).all(), k
  for k in ('image_feat', 'text_feat'):
    np.testing.assert_allclose(np.linalg.norm(out[k], axis=-1), 1.0,
                               rtol=1e-5)
  # Different images and texts give different features.
  assert np.abs(out['image_feat'][0] - out['image_feat'][1]).max() > 1e-3
  assert np.abs(out['text_feat'][0] - out['text_feat'][1]).max() > 1e-3


def test_image_mask_hides_image_tokens_from_fusion(tiny):
  _, graphdef, params, batch, out = tiny
  text, mask = out['text_embeds'], batch['text_mask']
  image = np.asarray(out['image_embeds'])
  image_mask = np.ones(image.shape[:2], bool)
  image_mask[:, 20:] = False
  base = _fuse(graphdef, params, text, mask, image, image_mask)
  all_visible = _fuse(graphdef, params, text, mask, image,
                      np.ones_like(image_mask))
  np.testing.assert_allclose(all_visible['fused_embeds'],
                             out['fused_embeds'], atol=1e-5)

  hidden = image.copy()
  hidden[:, 20:] += np.random.RandomState(0).randn(*hidden[:, 20:].shape)
  changed = _fuse(graphdef, params, text, mask, hidden, image_mask)
  np.testing.assert_allclose(changed['fused_embeds'], base['fused_embeds'],
                             atol=1e-6)
  visible = image.copy()
  visible[:, 5] += 1.0
  changed = _fuse(graphdef, params, text, mask, visible, image_mask)
  assert np.abs(changed['fused_cls'] - base['fused_cls']).max() > 1e-4


def test_text_padding_is_ignored(tiny):
  cfg, graphdef, params, batch, out = tiny
  mask = batch['text_mask'].astype(bool)
  ids = batch['text_ids'].copy()
  ids[~mask] = (ids[~mask] + 17) % cfg.vocab_size
  out2 = _forward(graphdef, params, dict(batch, text_ids=ids))
  for k in ('text_feat', 'fused_cls', 'itm_logits'):
    np.testing.assert_allclose(out2[k], out[k], atol=1e-5, err_msg=k)
  np.testing.assert_allclose(np.asarray(out2['fused_embeds'])[mask],
                             np.asarray(out['fused_embeds'])[mask], atol=1e-5)
  ids[1, 2] = (ids[1, 2] + 1) % cfg.vocab_size  # a real token this time
  out3 = _forward(graphdef, params, dict(batch, text_ids=ids))
  assert np.abs(out3['text_feat'][1] - out['text_feat'][1]).max() > 1e-4


def test_mlm_decoder_is_the_word_embedding_matrix(tiny):
  cfg, graphdef, pure, batch, out = tiny
  head = pure['text']['mlm_head']
  assert set(head) == {'dense', 'norm', 'bias'}  # No decoder matrix.
  fused = out['fused_embeds']

  @jax.jit
  def mlm(p):
    return nnx.merge(graphdef, p).mlm_logits(fused)

  # Editing one row of the word embeddings moves that vocabulary column of
  # the MLM logits, and only that one.
  v = 7
  edited = jax.tree.map(lambda x: x, pure)
  edited['text']['embeddings']['word'] = pure['text']['embeddings'][
      'word'].at[v, 0].add(1.0)
  delta = np.abs(np.asarray(mlm(edited)) - np.asarray(mlm(pure)))
  assert delta[..., v].min() > 0
  assert np.delete(delta, v, axis=-1).max() == 0

  # Gradients reach the matrix from the decoder (only the rows of the
  # vocabulary entries in the loss) and from the input embedding (only the
  # rows of the ids used), both into the one array.
  ids, mask = batch['text_ids'], batch['text_mask']

  @jax.jit
  def word_grads(word):
    def losses(word):
      p = dict(pure, text=dict(pure['text'], embeddings=dict(
          pure['text']['embeddings'], word=word)))
      m = nnx.merge(graphdef, p)
      return jnp.stack([jnp.sum(m.mlm_logits(fused)[..., :5]),
                        jnp.sum(m.embed_text(ids, mask)['text_feat'][:, 0])])
    return jax.jacrev(losses)(word)

  g_dec, g_in = np.asarray(word_grads(pure['text']['embeddings']['word']))
  assert np.abs(g_dec[:5]).min() > 0 and np.abs(g_dec[5:]).max() == 0
  used = np.unique(ids[mask.astype(bool)])
  assert np.abs(g_in[used]).sum(-1).min() > 0
  unused = np.setdiff1d(np.arange(cfg.vocab_size), ids.ravel())
  assert np.abs(g_in[unused]).max() == 0


@pytest.mark.parametrize('itm_head', ['linear', 'mlp'])
def test_every_param_has_logical_axis_names(itm_head):
  cfg = sizes.model_config('tiny', itm_head=itm_head)
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: create_model(cfg, nnx.Rngs(0)))
  assert isinstance(abstract, albef.Model)
  state = nnx.state(abstract, nnx.Param)
  leaves = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x,
                                                               nnx.Variable))
  assert len(leaves) > 50
  for var in leaves:
    names = var.get_metadata().get('out_sharding')
    assert names is not None and len(names) == len(var.shape), (var, names)
    assert set(names) <= LOGICAL, names
    assert var.dtype == jnp.float32
  # Parameters are the only state: nothing else to carry through jit.
  assert not jax.tree.leaves(nnx.state(abstract, nnx.Not(nnx.Param)))
  assert abstract.temp.shape == ()


def test_model_config_sizes():
  cfg = sizes.model_config('tiny')
  assert cfg.name == 'albef' and cfg.patch_size == 8 and cfg.embed_dim == 64
  assert (cfg.text_layers, cfg.fusion_layers, cfg.vocab_size) == (2, 2, 1024)
  with pytest.raises(KeyError, match='vision_widht'):
    sizes.model_config('tiny', vision_widht=3)
  with pytest.raises(ValueError, match='huge'):
    sizes.model_config('huge')
  base = sizes.model_config('base', vocab_size=32_000, name='xvlm')
  assert (base.vocab_size, base.name, base.image_size) == (32_000, 'xvlm', 256)


def test_bfloat16_compute_matches_float32(tiny):
  cfg, _, params, batch, out = tiny
  cfg16 = sizes.model_config('tiny', dtype='bfloat16')
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: create_model(cfg16, nnx.Rngs(0)))
  graphdef16 = nnx.graphdef(abstract)
  out16 = _forward(graphdef16, params, batch)  # The float32 parameters.
  assert out16['image_embeds'].dtype == jnp.bfloat16
  assert out16['mlm_logits'].dtype == jnp.float32
  for k in ('image_feat', 'text_feat'):
    cos = np.sum(np.asarray(out16[k]) * np.asarray(out[k]), -1)
    assert cos.min() > 0.98, (k, cos)


def test_sharded_init_and_forward_match_unsharded():
  # The published initialisers (tiny defaults to from-scratch ones).
  cfg = sizes.model_config('tiny', vision_depth=1, text_layers=1,
                           fusion_layers=1, init_std=0.02,
                           vision_posemb_init='trunc_normal')
  mesh = sharding.make_mesh([2, 2, 2])

  def init():
    with nnx.use_eager_sharding(False):
      model = albef.Model(cfg, rngs=nnx.Rngs(0))
    return nnx.to_pure_dict(nnx.split(model, nnx.Param)[1])

  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: albef.Model(cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_params = nnx.split(abstract, nnx.Param)
  specs = sharding.param_specs(abstract_params, RULES)
  # Optimisation level 0 only to compile faster here: an init runs once.
  params = jax.jit(init, out_shardings=sharding.named(mesh, specs),
                   compiler_options={'xla_backend_optimization_level': 0})()

  word = params['text']['embeddings']['word']
  assert word.sharding.spec == P('tensor', 'fsdp')
  assert len(word.sharding.device_set) == 8
  query = params['text']['layers'][0]['attn']['query']['kernel']
  assert query.sharding.spec == P('fsdp', 'tensor', None)
  fc1 = params['vision']['blocks'][0]['mlp']['fc1']['kernel']
  assert fc1.sharding.spec == P('fsdp', 'tensor')

  # The initialisers: BERT normal(0.02), timm trunc_normal(0.02) within 2
  # std, zero biases, unit LayerNorm scales, temp 0.07.
  local = jax.device_get(params)
  assert np.std(local['text']['embeddings']['word']) == pytest.approx(
      0.02, rel=0.05)
  assert np.abs(local['vision']['pos_embed']).max() <= 0.04
  assert np.std(local['vision']['blocks'][0]['attn']['query']['kernel']) > 0.01
  assert not np.any(local['text']['fusion'][0]['cross']['key']['bias'])
  np.testing.assert_array_equal(local['vision']['norm']['scale'], 1.0)
  assert float(local['temp']) == pytest.approx(0.07)

  batch = _batch(cfg, seed=1)
  want = _forward(graphdef, local, batch)
  rules = RULES + [('batch', ('data', 'fsdp'))]
  with jax.set_mesh(mesh), sharding.rules_context(rules):
    batch_sh = {k: sharding.batch_sharding(mesh, v.ndim, rules)
                for k, v in batch.items()}
    fwd = jax.jit(functools.partial(_forward_fn, graphdef),
                  in_shardings=(sharding.named(mesh, specs), batch_sh))
    got = fwd(params, batch)
  assert got['mlm_logits'].sharding.spec[0] == ('data', 'fsdp')
  # float32; sharded reductions only reorder sums.
  for k in want:
    np.testing.assert_allclose(got[k], want[k], atol=2e-5, rtol=2e-5,
                               err_msg=k)


def _analytic_counts(res=256, vocab=30_522, positions=512, embed=256):
  """Counts from the published shapes, derived independently of vlg."""
  d, mlp, p = 768, 3072, 16
  linear = lambda i, o: i * o + o  # noqa: E731
  ln = 2 * d
  # timm Block: 2 LNs, qkv (with bias), proj, fc1, fc2.
  layer = 2 * ln + linear(d, 3 * d) + linear(d, d) + linear(d, mlp) + linear(
      mlp, d)
  vit = (linear(p * p * 3, d) + d + (1 + (res // p) ** 2) * d + 12 * layer
         + ln)
  # BERT-base (109,482,240 with pooler and token types, published), minus
  # the pooler and the token-type embeddings that ALBEF does not use.
  bert = (vocab * d + positions * d + 2 * d + ln) + 12 * layer + linear(d, d)
  text = bert - linear(d, d) - 2 * d
  cross = 6 * (4 * linear(d, d) + ln)  # Q, K, V (from the 768 vision width), O.
  mlm = linear(d, d) + ln + vocab  # Transform + LN + decoder bias (tied).
  heads = 2 * linear(d, embed) + linear(d, 2) + 1  # Projections, ITM, temp.
  return dict(vit=vit, bert=bert, total=vit + text + cross + mlm + heads)


def _count(cfg):
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: create_model(cfg, nnx.Rngs(0)))
  state = nnx.state(abstract, nnx.Param)
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


def test_base_parameter_count_matches_published_shapes(tiny):
  counts = {'tiny': sum(x.size for x in jax.tree.leaves(tiny[2])),
            'base': _count(sizes.model_config('base'))}
  print('parameters:', counts)
  analytic = _analytic_counts()
  assert analytic['bert'] == 109_482_240  # bert-base-uncased, published.
  # timm vit_base_patch16_224: 86,567,656 with its 1000-class head.
  assert (_analytic_counts(res=224)['vit'] + 768 * 1000 + 1000
          == 86_567_656)
  assert counts['base'] == analytic['total'] == 209_936_189
  assert counts['tiny'] == 1_934_467


def _text_cls_cosine(model, rng):
  """Mean pairwise cosine of the text [CLS] of 8 caption-like texts: a
  shared 4-token prefix ("an image with a") and two varying words."""
  ids = np.tile(np.array([[2, 40, 41, 42, 43, 0, 0, 3]], np.int32), (8, 1))
  ids[:, 5:7] = rng.randint(50, 1000, (8, 2))
  ids = jnp.asarray(ids)
  cls = np.asarray(model.embed_text(ids, jnp.ones_like(ids))['text_embeds'][
      :, 0], np.float64)
  cls /= np.linalg.norm(cls, axis=1, keepdims=True)
  return (cls @ cls.T)[~np.eye(8, dtype=bool)].mean()


def test_init_std_scales_the_normal_inits_and_breaks_cls_symmetry():
  cfg = sizes.model_config('tiny', vision_depth=1, init_std=0.02,
                           vision_posemb_init='trunc_normal')
  wide = sizes.model_config('tiny', vision_depth=1, init_std=0.088,
                            vision_posemb_init='trunc_normal')
  with nnx.use_eager_sharding(False):
    default, scaled = (albef.Model(c, rngs=nnx.Rngs(0)) for c in (cfg, wide))
  # The ViT's normals are truncated at ±2 std, which leaves 0.88 of it.
  for get, factor in ((lambda m: m.text_proj.kernel, 1.0),
                      (lambda m: m.text.layers[0].attn.query.kernel, 1.0),
                      (lambda m: m.vision.pos_embed, 0.8796),
                      (lambda m: m.vision.blocks[0].mlp.fc1.kernel, 0.8796)):
    for model, std in ((default, 0.02), (scaled, 0.088)):
      assert np.std(np.asarray(get(model)[...])) == pytest.approx(
          factor * std, rel=0.1)
  # LayerNorm and the patch embedding (LeCun) do not follow init_std.
  np.testing.assert_array_equal(default.vision.patch_embed.kernel[...],
                                scaled.vision.patch_embed.kernel[...])
  # Real synthetic captions, measured: cosine 0.9997 at 0.02, 0.86 at
  # 0.088. These texts: > 0.999 and ~0.95, over 20x as far from collapse.
  near = _text_cls_cosine(default, np.random.RandomState(0))
  spread = _text_cls_cosine(scaled, np.random.RandomState(0))
  assert near > 0.999 and 1 - spread > 20 * (1 - near)
  with pytest.raises(ValueError, match='init_std must be > 0'):
    sizes_cfg = sizes.model_config('tiny', init_std=0.0)
    albef.Model(sizes_cfg, rngs=nnx.Rngs(0))


def test_fusion_posemb_adds_the_sincos_table_to_the_fused_tokens(tiny):
  cfg, graphdef, params, _, out = tiny
  pos_cfg = sizes.model_config('tiny')
  pos_cfg.fusion_posemb = 'sincos2d'
  pos_graphdef, pos_params = random_params(
      lambda: create_model(pos_cfg, nnx.Rngs(0)))
  # The option adds no parameter: the same parameters serve both models.
  assert jax.tree.structure(pos_params) == jax.tree.structure(params)
  text, mask = out['text_embeds'], np.ones(out['text_embeds'].shape[:2])
  image = np.asarray(out['image_embeds'])
  n = image.shape[1] - 1
  table = np.asarray(vit.sincos2d_posemb(int(np.sqrt(n)),
                                         cfg.vision_width))
  assert not table[0].any()  # [CLS] gets nothing.
  with_pos = _fuse(pos_graphdef, params, text, mask, image, None)
  by_hand = _fuse(graphdef, params, text, mask, image + table, None)
  np.testing.assert_allclose(with_pos['fused_embeds'],
                             by_hand['fused_embeds'], atol=1e-5)
  # Without it cross-attention cannot tell where a patch is: permuting the
  # patch tokens changes nothing. With it, it does.
  perm = np.concatenate([[0], 1 + np.random.RandomState(0).permutation(n)])
  for gd, changes in ((graphdef, False), (pos_graphdef, True)):
    a = _fuse(gd, params, text, mask, image, None)['fused_cls']
    b = _fuse(gd, params, text, mask, image[:, perm], None)['fused_cls']
    assert (np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3) == changes
  model = nnx.merge(pos_graphdef, params)
  with pytest.raises(ValueError, match='square grid.*got 11 tokens'):
    model.fusion_tokens(jnp.zeros((1, 11, cfg.vision_width)))
  bad = sizes.model_config('tiny')
  bad.fusion_posemb = 'sincos'
  with pytest.raises(ValueError, match="fusion_posemb='sincos'"):
    random_params(lambda: create_model(bad, nnx.Rngs(0)))


def _fusion_inputs(tiny, remat):
  """The tiny model's graphdef (under ``remat``), parameters, text states
  and mask (padded rows), image tokens and an image mask hiding part of
  row 2's patches."""
  _, graphdef, params, batch, out = tiny
  image = np.asarray(out['image_embeds'])
  image_mask = np.ones(image.shape[:2], bool)
  image_mask[2, 30:] = False
  if remat != 'none':
    with nnx.use_eager_sharding(False):
      graphdef, _ = nnx.split(nnx.eval_shape(
          lambda: create_model(sizes.model_config('tiny', remat=remat),
                               nnx.Rngs(0))), nnx.Param)
  return (graphdef, params, np.asarray(out['text_embeds']),
          batch['text_mask'], image, image_mask)


def _same_values_and_grads(loss, params):
  """Jits ``loss(params, variant) -> (scalar, values)`` for variants False
  (the reference) and True, asserts equal values and parameter gradients,
  and returns (values, gradient leaves by path) of the reference."""
  (_, ref), g_ref = jax.jit(jax.value_and_grad(
      lambda p: loss(p, False), has_aux=True))(params)
  (_, got), g_got = jax.jit(jax.value_and_grad(
      lambda p: loss(p, True), has_aux=True))(params)
  assert got.shape == ref.shape
  np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-5)
  flat_ref = jax.tree_util.tree_leaves_with_path(g_ref)
  flat_got = dict(jax.tree_util.tree_leaves_with_path(g_got))
  for path, g in flat_ref:
    np.testing.assert_allclose(flat_got[path], g, atol=2e-5, rtol=1e-4,
                               err_msg=jax.tree_util.keystr(path))
  return ref, flat_ref


@pytest.mark.parametrize('remat', ['none', 'full'])
def test_fuse_cls_equals_the_full_fusion_cls_in_values_and_gradients(
    tiny, remat):
  """``fuse_cls`` computes the last fusion layer's [CLS] row alone; values
  and parameter gradients must be the full fusion's, with padded texts and
  a partial image mask (the keys the [CLS] query reads)."""
  graphdef, params, text, mask, image, image_mask = _fusion_inputs(
      tiny, remat)
  weights = np.random.RandomState(1).randn(B, text.shape[-1])

  def loss(p, cls_only):
    model = nnx.merge(graphdef, p)
    if cls_only:
      cls = model.fuse_cls(text, mask, image, image_mask)
    else:
      cls = model.fuse(text, mask, image, image_mask)['fused_cls']
    return jnp.sum(cls * weights), cls

  full, flat_full = _same_values_and_grads(loss, params)
  assert full.shape == (B, text.shape[-1])
  # Not vacuous: the fusion's last-layer MLP gets a non-zero gradient.
  fusion_grads = [np.abs(g).max() for p, g in flat_full
                  if 'fusion' in jax.tree_util.keystr(p)]
  assert fusion_grads and min(fusion_grads) > 0


@pytest.mark.parametrize('remat', ['none', 'full'])
def test_fuse_cls_image_index_equals_gathered_images(tiny, remat):
  """With ``image_index`` each image's cross-attention keys and values are
  projected once and gathered per row; values and parameter gradients
  must equal fusing ``image_embeds[image_index]`` (ITM's 3B rows: the
  positives, a negative image per text, a negative text per image), with
  padded texts and a partial image mask."""
  graphdef, params, text, mask, image, image_mask = _fusion_inputs(
      tiny, remat)
  ar = np.arange(B)
  image_index = np.concatenate([ar, np.roll(ar, 1), ar]).astype(np.int32)
  text_index = np.concatenate([ar, ar, np.roll(ar, 2)]).astype(np.int32)
  weights = np.random.RandomState(2).randn(3 * B, text.shape[-1])

  def loss(p, once):
    model = nnx.merge(graphdef, p)
    t, m = text[text_index], mask[text_index]
    if once:
      cls = model.fuse_cls(t, m, image, image_mask, image_index=image_index)
    else:
      cls = model.fuse_cls(t, m, image[image_index], image_mask[image_index])
    return jnp.sum(cls * weights), cls

  ref, flat_ref = _same_values_and_grads(loss, params)
  assert ref.shape == (3 * B, text.shape[-1])
  keys_seen = 0
  for path, g in flat_ref:
    name = jax.tree_util.keystr(path)
    if 'cross' in name and 'key' in name and 'kernel' in name:
      keys_seen += 1
      assert np.abs(g).max() > 0, name  # Not vacuous: the keys learn.
  assert keys_seen == 2  # Both fusion layers' cross-attention key kernels.


@pytest.mark.parametrize('rows', [2, 4])
def test_fuse_cls_rows_per_image_equals_repeated_images(tiny, rows):
  """With ``rows_per_image`` R, text rows g R .. g R + R - 1 share image g
  (keys and values projected once, queries of the R rows attended as one
  sequence); values and parameter gradients must equal fusing each image
  repeated R times, with padded texts and a partial image mask."""
  graphdef, params, text, mask, image, image_mask = _fusion_inputs(
      tiny, 'none')
  text_index = np.arange(B * rows) % B  # Each image reads R texts.
  weights = np.random.RandomState(3).randn(B * rows, text.shape[-1])

  def loss(p, grouped):
    model = nnx.merge(graphdef, p)
    t, m = text[text_index], mask[text_index]
    if grouped:
      cls = model.fuse_cls(t, m, image, image_mask, rows_per_image=rows)
    else:
      cls = model.fuse_cls(t, m, np.repeat(image, rows, axis=0),
                           np.repeat(image_mask, rows, axis=0))
    return jnp.sum(cls * weights), cls

  ref, flat_ref = _same_values_and_grads(loss, params)
  assert ref.shape == (B * rows, text.shape[-1])
  # Not vacuous: the cross-attention keys the groups share learn.
  assert any(np.abs(g).max() > 0 for path, g in flat_ref
             if 'cross' in jax.tree_util.keystr(path)
             and 'key' in jax.tree_util.keystr(path))
  # The predict function reads R from the shapes and returns [G, R].
  fns = predict.make_predict_fns(graphdef)
  states = nnx.merge(graphdef, params).fusion_text(text, mask)[text_index]
  out = jax.jit(fns['itm_from_embeds'])(params, {
      'image_embeds': image, 'fusion_text': states,
      'text_mask': mask[text_index]})
  each = jax.jit(fns['itm_from_embeds'])(params, {
      'image_embeds': np.repeat(image, rows, axis=0),
      'fusion_text': states, 'text_mask': mask[text_index]})
  assert out['itm_logit'].shape == (B, rows)
  np.testing.assert_allclose(out['itm_logit'].reshape(-1), each['itm_logit'],
                             atol=2e-5)
  with pytest.raises(ValueError, match='rows_per_image=3'):
    nnx.merge(graphdef, params).fuse_cls(
        text[text_index], mask[text_index], image, rows_per_image=3)


@pytest.mark.parametrize('remat', ['none', 'full'])
def test_fuse_cls_from_fusion_text_equals_fuse_cls(tiny, remat):
  """``fusion_text`` runs the first fusion layer's self-attention on the
  text alone; ``fuse_cls(..., self_attended=True)`` continuing from it
  must give ``fuse_cls``'s values and parameter gradients, with padded
  texts and a partial image mask, each text's states used for two images
  (retrieval computes them once a text)."""
  graphdef, params, text, mask, image, image_mask = _fusion_inputs(
      tiny, remat)
  ar = np.arange(B)
  image_index = np.concatenate([ar, np.roll(ar, 1)]).astype(np.int32)
  text_index = np.concatenate([ar, ar]).astype(np.int32)
  weights = np.random.RandomState(3).randn(2 * B, text.shape[-1])

  def loss(p, split):
    model = nnx.merge(graphdef, p)
    t, m = text, mask
    if split:
      states = model.fusion_text(t, m)[text_index]
      cls = model.fuse_cls(states, m[text_index], image[image_index],
                           image_mask[image_index], self_attended=True)
    else:
      cls = model.fuse_cls(t[text_index], m[text_index], image[image_index],
                           image_mask[image_index])
    return jnp.sum(cls * weights), cls

  _, flat_ref = _same_values_and_grads(loss, params)
  # Not vacuous: the self-attention that moved out of the pair still learns.
  first = [np.abs(g).max() for p, g in flat_ref
           if "['fusion'][0]['attn']" in jax.tree_util.keystr(p)
           and 'kernel' in jax.tree_util.keystr(p)]
  assert len(first) == 4 and min(first) > 0
  model = nnx.merge(graphdef, params)
  states = np.asarray(model.fusion_text(text, mask))
  assert states.shape == text.shape
  assert not np.allclose(states, text)  # The block did run.


def test_image_index_needs_a_per_image_mask(tiny):
  _, graphdef, params, batch, out = tiny
  model = nnx.merge(graphdef, params)
  image = out['image_embeds']
  per_query = jnp.ones((B, batch['text_mask'].shape[1], image.shape[1]), bool)
  with pytest.raises(ValueError, match='context_index'):
    model.text.fusion[0].cross(out['text_embeds'], image, per_query,
                               context_index=jnp.arange(B))


def test_fuse_cls_rejects_return_layers(tiny):
  _, graphdef, params, batch, out = tiny
  model = nnx.merge(graphdef, params)
  with pytest.raises(ValueError, match='cls_only and return_layers'):
    model.text.fuse(out['text_embeds'], batch['text_mask'],
                    out['image_embeds'], cls_only=True, return_layers=True)
