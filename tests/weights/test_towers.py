"""Pretrained towers: a timm/DeiT ViT and a Hugging Face BERT loaded into
vlg compute what timm and transformers compute (vlg/weights/timm_vit.py,
vlg/weights/bert.py).

Fixtures from tests/testdata/weights/make_fixtures.py: timm's
``VisionTransformer`` (32 wide, 2 blocks, 8-px patches, 32-px images;
saved as DeiT's ``{'model': state_dict}``) and its tokens after the final
LayerNorm, also at 48 px with the position embeddings resized by ALBEF's
``interpolate_pos_embed``; transformers' ``BertForPreTraining`` (32 wide,
4 layers, vocabulary 100; ``model.safetensors``) with its last hidden
states and MLM logits. Tolerance: float32 both sides, atol = rtol = 1e-5.
"""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlg.models import create_model
from vlg.models import sizes as sizes_lib
from vlg.weights import augreg
from vlg.weights import bert
from vlg.weights import common
from vlg.weights import files
from vlg.weights import timm_vit

DATA = os.path.join(os.path.dirname(__file__), '..', 'testdata', 'weights')
TOL = dict(rtol=1e-5, atol=1e-5)


def build(**overrides):
  cfg = sizes_lib.model_config(
      'tiny', init_std=0.02, vision_posemb_init='trunc_normal', dropout=0.0,
      **dict(dict(vision_width=32, vision_depth=2, vision_heads=2,
                  vision_mlp=128, patch_size=8, image_size=32, text_width=32,
                  text_layers=4, fusion_layers=0, text_heads=2, text_mlp=64,
                  vocab_size=100, max_positions=24, embed_dim=16),
             **overrides))
  with nnx.use_eager_sharding(False):
    model = create_model(cfg, nnx.Rngs(0))
  graphdef, state = nnx.split(model, nnx.Param)
  return cfg, graphdef, nnx.to_pure_dict(state)


@pytest.mark.parametrize('size,key', [(32, 'tokens'), (48, 'tokens48')])
def test_deit_tokens_match_timm(size, key):
  io = np.load(os.path.join(DATA, 'deit_tiny_io.npz'))
  cfg, graphdef, target = build(image_size=size)
  arrays = files.read(os.path.join(DATA, 'deit_tiny.pth'))
  params, summary = timm_vit.load_tower(arrays, target, size // 8)
  assert summary.skipped == ['head.bias', 'head.weight']
  assert not summary.fresh
  model = nnx.merge(graphdef, params)
  images = io['images' if size == 32 else 'images48']
  np.testing.assert_allclose(model.vision(jnp.asarray(images)), io[key],
                             **TOL)
  if size == 48:
    # The resized table itself equals torch's bicubic (ALBEF's function).
    np.testing.assert_allclose(params['vision']['pos_embed'],
                               io['pos_embed48'][0], **TOL)
  # Only the vision tower was touched.
  np.testing.assert_array_equal(params['text']['embeddings']['word'],
                                target['text']['embeddings']['word'])


def test_bert_hidden_states_and_mlm_logits_match_transformers():
  io = np.load(os.path.join(DATA, 'bert_tiny_io.npz'))
  _, graphdef, target = build()
  arrays = files.read(os.path.join(DATA, 'bert_tiny.safetensors'))
  params, summary = bert.load_tower(arrays, target, text_layers=4)
  assert summary.skipped == [
      'bert.pooler.dense.bias', 'bert.pooler.dense.weight',
      'cls.seq_relationship.bias', 'cls.seq_relationship.weight']
  assert not summary.fresh
  model = nnx.merge(graphdef, params)
  hidden = model.text.encode(io['text_ids'], io['text_mask'])
  mask = io['text_mask'].astype(bool)
  # Padded positions differ by design (vlg masks keys only); compare the
  # real tokens.
  np.testing.assert_allclose(np.asarray(hidden)[mask], io['hidden'][mask],
                             **TOL)
  logits = model.mlm_logits(hidden)
  np.testing.assert_allclose(np.asarray(logits)[mask],
                             io['mlm_logits'][mask], **TOL)


def test_bert_into_text_and_fusion_layers_keeps_cross_attention_fresh():
  arrays = files.read(os.path.join(DATA, 'bert_tiny.safetensors'))
  _, _, target = build(text_layers=2, fusion_layers=2)
  params, summary = bert.load_tower(arrays, target, text_layers=2)
  fresh = {p.split('/')[3] for p in summary.fresh}
  assert fresh == {'cross', 'cross_norm'}
  assert {p.split('/')[2] for p in summary.fresh} == {'0', '1'}
  # BERT layer 2 is fusion layer 0 (self-attention, FFN), as in ALBEF.
  q = arrays['bert.encoder.layer.2.attention.self.query.weight']
  np.testing.assert_array_equal(
      params['text']['fusion'][0]['attn']['query']['kernel'],
      q.T.reshape(32, 2, 16))
  np.testing.assert_array_equal(
      params['text']['fusion'][1]['cross']['query']['kernel'],
      target['text']['fusion'][1]['cross']['query']['kernel'])
  # Token type 0 is folded into the positions.
  np.testing.assert_allclose(
      params['text']['embeddings']['position'],
      arrays['bert.embeddings.position_embeddings.weight'] +
      arrays['bert.embeddings.token_type_embeddings.weight'][0])
  # The vision tower is untouched.
  np.testing.assert_array_equal(params['vision']['cls_token'],
                                target['vision']['cls_token'])


def test_tower_errors_name_the_culprits():
  arrays = files.read(os.path.join(DATA, 'bert_tiny.safetensors'))
  _, _, target = build(text_layers=2, fusion_layers=1)
  with pytest.raises(common.WeightsError, match='unexpected.*text/fusion/1'):
    bert.load_tower(arrays, target, text_layers=2)
  _, _, target = build(text_width=48, text_heads=2)
  with pytest.raises(common.WeightsError,
                     match=r'mismatched.*text/embeddings/word'):
    bert.load_tower(arrays, target, text_layers=4)
  untied = dict(arrays)
  untied['cls.predictions.decoder.weight'] = (
      arrays['bert.embeddings.word_embeddings.weight'] + 1)
  _, _, target = build()
  with pytest.raises(common.WeightsError, match='decoder.weight differs'):
    bert.load_tower(untied, target, text_layers=4)
  vit = files.read(os.path.join(DATA, 'deit_tiny.pth'))
  vit['blocks.0.attn.q_norm.weight'] = np.ones(16, np.float32)
  with pytest.raises(common.WeightsError, match='q_norm'):
    timm_vit.load_tower(vit, target, 4)


def test_augreg_npz_tokens_match_timm_reading_the_same_file():
  """AugReg fixture: random values in the vision_transformer ``.npz``
  layout, read by timm's own npz loader (the reference); vlg runs with
  AugReg's [-1, 1] pixel scaling (mean = std = 0.5)."""
  io = np.load(os.path.join(DATA, 'augreg_tiny_io.npz'))
  cfg, graphdef, target = build(image_mean=augreg.AUGREG_MEAN,
                                image_std=augreg.AUGREG_STD)
  arrays = files.read(os.path.join(DATA, 'augreg_tiny.npz'))
  params, summary = augreg.load_tower(arrays, target, 4)
  assert summary.skipped == ['head/bias', 'head/kernel']
  assert not summary.fresh
  model = nnx.merge(graphdef, params)
  np.testing.assert_allclose(model.vision(jnp.asarray(io['images'])),
                             io['tokens'], **TOL)
  del arrays['Transformer/encoderblock_1/LayerNorm_2/bias']
  with pytest.raises(common.WeightsError, match='LayerNorm_2/bias'):
    augreg.load_tower(arrays, target, 4)


def test_flax_bert_msgpack_matches_transformers_flax_model():
  """``bert_tiny_flax.msgpack``: the PyTorch fixture BERT converted and
  saved by transformers' ``FlaxBertForPreTraining``; compared with that
  Flax model's own outputs."""
  io = np.load(os.path.join(DATA, 'bert_tiny_io.npz'))
  ref = np.load(os.path.join(DATA, 'bert_tiny_flax_io.npz'))
  _, graphdef, target = build()
  arrays = files.read(os.path.join(DATA, 'bert_tiny_flax.msgpack'))
  assert bert.is_flax(arrays)
  params, summary = bert.load_tower(arrays, target, text_layers=4)
  assert not summary.fresh
  model = nnx.merge(graphdef, params)
  hidden = model.text.encode(io['text_ids'], io['text_mask'])
  mask = io['text_mask'].astype(bool)
  np.testing.assert_allclose(np.asarray(hidden)[mask], ref['hidden'][mask],
                             **TOL)
  np.testing.assert_allclose(np.asarray(model.mlm_logits(hidden))[mask],
                             ref['mlm_logits'][mask], **TOL)


def test_layer_and_block_counts_refuse_gaps():
  z = np.zeros(1)
  bert_src = common.Source({f'bert.encoder.layer.{i}.x': z for i in (0, 1, 2)},
                           'bert.bin')
  assert bert.num_layers(bert_src, 'bert.') == 3
  vit_src = common.Source({'blocks.0.w': z, 'blocks.2.w': z}, 'deit.pth')
  with pytest.raises(common.WeightsError,
                     match=r'deit.pth: block indices \[0, 2\]'):
    timm_vit.depth_of(vit_src)
  gap = common.Source({'bert.encoder.layer.1.x': z}, 'bert.bin')
  with pytest.raises(common.WeightsError, match='layer indices'):
    bert.num_layers(gap, 'bert.')
