"""vlg's ALBEF computes what ALBEF's own PyTorch code computes at the same
weights (vlg/weights/albef.py).

The fixtures come from ``tests/testdata/weights/make_fixtures.py``: ALBEF's
public ``models/model_pretrain.py`` at a tiny size (ViT 32 wide, 2 blocks,
8-px patches on 32-px images; BERT 32 wide, 2 text + 2 fusion layers,
vocabulary 100; queue 8), random weights with distinct momentum weights,
run once on fixed inputs. The test converts ``albef_tiny.pth`` with the
restricted reader and recomputes every stored output with vlg's model and
losses, given the reference forward's own random draws (masked tokens and
hard negatives). Tolerance: float32 on both sides, atol 1e-5 + rtol 1e-5
on features, similarities and logits; 1e-5 relative on the losses.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlg import train_state
from vlg.models import sizes as sizes_lib
from vlg.objectives import itc
from vlg.objectives import itm
from vlg.objectives import mlm
from vlg.weights import albef
from vlg.weights import common
from vlg.weights import files

DATA = os.path.join(os.path.dirname(__file__), '..', 'testdata', 'weights')
TOL = dict(rtol=1e-5, atol=1e-5)


def tiny_config(sizes):
  sizes = dict(sizes)
  sizes.pop('queue_size')
  sizes['vision_mlp'] = 4 * sizes['vision_width']
  return sizes_lib.model_config(
      'tiny', init_std=0.02, vision_posemb_init='trunc_normal', dropout=0.0,
      **sizes)


def abstract(cfg):
  # jax.eval_shape (train_state.abstract_model), not nnx.eval_shape: the
  # latter resolves the logical axis names against whatever mesh another
  # test of the same process left set.
  graphdef, params, _ = train_state.abstract_model(cfg, rules=())
  return graphdef, params


@pytest.fixture(scope='module')
def converted():
  io = dict(np.load(os.path.join(DATA, 'albef_tiny_io.npz')))
  sizes = json.loads(str(io['sizes']))
  cfg = tiny_config(sizes)
  graphdef, target = abstract(cfg)
  sd = files.read(os.path.join(DATA, 'albef_tiny.pth'))
  conv = albef.convert(sd, target, grid=cfg.image_size // cfg.patch_size,
                       text_layers=cfg.text_layers)
  return io, sizes, graphdef, conv, sd


def test_every_key_is_placed_and_summary_says_so(converted):
  _, _, _, conv, sd = converted
  assert not conv.summary.fresh  # A whole model: nothing left fresh.
  assert conv.summary.skipped == ['text_encoder.bert.embeddings.position_ids',
                                  'text_encoder_m.bert.embeddings.position_ids']
  assert conv.ema is not None and conv.queues is not None
  # Momentum weights are their own, not a copy of the online ones.
  assert not np.allclose(conv.ema['vision']['cls_token'],
                         conv.params['vision']['cls_token'])
  np.testing.assert_array_equal(conv.queues['image'], sd['image_queue'].T)
  assert 'loaded' in str(conv.summary)


def _forward(graphdef, params, io):
  model = nnx.merge(graphdef, params)
  img = model.embed_image(jnp.asarray(io['images']))
  txt = model.embed_text(io['text_ids'], io['text_mask'])
  mlm_txt = model.embed_text(io['mlm_ids'], io['text_mask'])
  fused = model.fuse(mlm_txt['text_embeds'], io['text_mask'],
                     img['image_embeds'])
  return model, img, txt, model.mlm_logits(fused['fused_embeds'])


def test_forward_and_losses_match_albef(converted):
  io, _, graphdef, conv, _ = converted
  model, img, txt, mlm_logits = _forward(graphdef, conv.params, io)
  _, img_m, txt_m, mlm_logits_m = _forward(graphdef, conv.ema, io)
  np.testing.assert_allclose(img['image_embeds'], io['image_embeds'], **TOL)
  np.testing.assert_allclose(img['image_feat'], io['image_feat'], **TOL)
  np.testing.assert_allclose(txt['text_feat'], io['text_feat'], **TOL)
  np.testing.assert_allclose(img_m['image_feat'], io['image_feat_m'], **TOL)
  np.testing.assert_allclose(txt_m['text_feat'], io['text_feat_m'], **TOL)
  np.testing.assert_allclose(mlm_logits, io['mlm_logits'], **TOL)
  np.testing.assert_allclose(mlm_logits_m, io['mlm_logits_m'], **TOL)

  alpha = float(io['alpha'])
  temp = itc.clamp_temp(model.temp[...])
  loss_itc, _, aux = itc.itc_loss(
      img['image_feat'], txt['text_feat'], img_m['image_feat'],
      txt_m['text_feat'], jnp.asarray(conv.queues['image']),
      jnp.asarray(conv.queues['text']), temp, alpha)
  np.testing.assert_allclose(aux['sim_i2t'], io['sim_i2t'], **TOL)
  np.testing.assert_allclose(aux['sim_t2i'], io['sim_t2i'], **TOL)
  np.testing.assert_allclose(loss_itc, io['loss_itc'], rtol=1e-5)

  # ITM with the reference forward's own hard negatives.
  image_index, text_index = itm.itm_pairs(jnp.asarray(io['neg_image']),
                                          jnp.asarray(io['neg_text']))
  mask = jnp.asarray(io['text_mask'])
  fused = model.fuse(txt['text_embeds'][text_index], mask[text_index],
                     img['image_embeds'][image_index])
  logits = model.itm_logits(fused['fused_cls'])
  np.testing.assert_allclose(logits, io['itm_logits'], **TOL)
  b = io['text_ids'].shape[0]
  loss_itm, _ = itm.itm_loss(logits, itm.itm_labels(b))
  np.testing.assert_allclose(loss_itm, io['loss_itm'], rtol=1e-5)

  loss_mlm, m = mlm.mlm_loss(mlm_logits, mlm_logits_m, io['mlm_labels'],
                             alpha)
  assert m['mlm_num_masked'] > 0
  np.testing.assert_allclose(loss_mlm, io['loss_mlm'], rtol=1e-5)


def test_a_misplaced_layer_would_be_caught(converted):
  """The comparison is sharp: swapping two text layers changes the MLM
  logits far beyond the tolerance (so matching them means something)."""
  io, _, graphdef, conv, _ = converted
  params = jax.tree.map(lambda x: x, conv.params)
  layers = params['text']['layers']
  layers[0], layers[1] = layers[1], layers[0]
  _, _, _, logits = _forward(graphdef, params, io)
  assert np.max(np.abs(np.asarray(logits) - io['mlm_logits'])) > 1e-2


def test_mismatches_are_named(converted):
  io, sizes, _, _, sd = converted
  cfg = tiny_config(dict(sizes, vocab_size=101))
  _, target = abstract(cfg)
  with pytest.raises(common.WeightsError,
                     match=r'(?s)mismatched.*text/embeddings/word'):
    albef.convert(sd, target, grid=4, text_layers=2)
  extra = dict(sd, **{'itm_head.extra': np.zeros(2, np.float32)})
  _, target = abstract(tiny_config(sizes))
  with pytest.raises(common.WeightsError, match='itm_head.extra'):
    albef.convert(extra, target, grid=4, text_layers=2)
  short = {k: v for k, v in sd.items() if k != 'text_proj.bias'}
  with pytest.raises(common.WeightsError, match='text_proj.bias'):
    albef.convert(short, target, grid=4, text_layers=2)
  # One fusion layer too many in the model: the missing ones are listed.
  _, target = abstract(tiny_config(dict(sizes, fusion_layers=3)))
  with pytest.raises(common.WeightsError, match=r'missing.*text/fusion/2'):
    albef.convert(sd, target, grid=4, text_layers=2)


def test_model_sizes_read_from_the_checkpoint(converted):
  _, sizes, _, _, sd = converted
  got = albef.model_sizes(sd)
  for k, v in got.items():
    want = sizes.get(k, 4 * sizes['vision_width'] if k == 'vision_mlp'
                     else None)
    assert v == want, k


def test_a_checkpoint_without_momentum_or_queues_converts_online_only(
    converted):
  """Fine-tuning checkpoints keep no momentum copies or queues."""
  _, sizes, _, _, sd = converted
  online = {k: v for k, v in sd.items()
            if not k.startswith(('visual_encoder_m.', 'text_encoder_m.',
                                 'vision_proj_m.', 'text_proj_m.'))
            and k not in ('image_queue', 'text_queue', 'queue_ptr')}
  _, target = abstract(tiny_config(sizes))
  conv = albef.convert(online, target, grid=4, text_layers=2)
  assert conv.ema is None and conv.queues is None
  np.testing.assert_array_equal(conv.params['itm_head']['kernel'],
                                sd['itm_head.weight'].T)


def test_to_state_dict_inverts_convert(converted):
  _, _, _, conv, sd = converted
  back = albef.to_state_dict(conv.params, conv.ema, sd,
                             text_layers=converted[1]['text_layers'],
                             queues=conv.queues)
  assert sorted(back) == sorted(sd)
  folded = 0
  for name, value in sd.items():
    assert back[name].dtype == value.dtype, name
    if name.endswith('token_type_embeddings.weight'):
      # vlg adds row 0 to the positions: it goes back there, and is zero.
      emb = name[:-len('token_type_embeddings.weight')]
      np.testing.assert_array_equal(back[name][0], 0)
      np.testing.assert_array_equal(back[name][1:], value[1:])
      np.testing.assert_allclose(
          back[emb + 'position_embeddings.weight'],
          sd[emb + 'position_embeddings.weight'] + value[0], rtol=1e-6)
      folded += 1
    elif not name.endswith('position_embeddings.weight'):
      np.testing.assert_array_equal(back[name], value, err_msg=name)
  assert folded == 2  # Online and momentum.


def test_to_state_dict_writes_the_vlg_values_where_convert_reads_them(
    converted):
  # Changed values travel: the state dict of perturbed trees converts back
  # to exactly those trees (online and momentum apart).
  _, sizes, _, conv, sd = converted
  rng = np.random.default_rng(0)
  noisy = lambda t: jax.tree.map(
      lambda x: (np.asarray(x) + rng.normal(size=np.shape(x))).astype(
          np.asarray(x).dtype), t)
  params, ema = noisy(conv.params), noisy(conv.ema)
  back = albef.to_state_dict(params, ema, sd,
                             text_layers=sizes['text_layers'])
  # ALBEF has no momentum ITM head or temperature: the online ones go back.
  again = albef.convert(back, params, grid=int(
      round((sd['visual_encoder.pos_embed'].shape[1] - 1) ** 0.5)),
                        text_layers=sizes['text_layers'])
  jax.tree.map(np.testing.assert_array_equal, again.params, params)
  ema_expected = dict(ema, itm_head=params['itm_head'], temp=params['temp'])
  jax.tree.map(np.testing.assert_array_equal, again.ema, ema_expected)
  # The queues were not given: the template's stay.
  np.testing.assert_array_equal(back['image_queue'], sd['image_queue'])


def test_to_state_dict_without_ema_names_the_momentum_keys(converted):
  _, sizes, _, conv, sd = converted
  with pytest.raises(common.WeightsError, match='visual_encoder_m'):
    albef.to_state_dict(conv.params, None, sd,
                        text_layers=sizes['text_layers'])
