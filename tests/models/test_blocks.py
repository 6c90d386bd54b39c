"""Tests of vlg.models.blocks: the ViT block's pre-LN and the BERT
layer's post-LN residual structure, and the fusion's cross-attention."""

import jax
import numpy as np
import pytest
from flax import nnx
# tests/module_params.py
from module_params import apply, as_f64, build, randn, ref_layer_norm

from vlg.models import blocks

D, HEADS, MLP, CTX = 8, 2, 16, 6


@pytest.fixture(autouse=True)
def _no_eager_sharding():
  with nnx.use_eager_sharding(False):
    yield


def _zero(*denses):
  for dense in denses:
    dense.kernel[...] = np.zeros(dense.kernel.shape, np.float32)
    dense.bias[...] = np.zeros(dense.bias.shape, np.float32)


def test_vit_block_is_pre_ln_residual():
  block = build(lambda r: blocks.ViTBlock(D, HEADS, MLP, eps=1e-6, rngs=r))
  x = randn(2, 3, D, scale=5)
  assert not np.allclose(apply(block, x), x)
  # With both branches' output projections zeroed a pre-LN block is the
  # identity (the residual stream is never normalised).
  _zero(block.attn.out, block.mlp.fc2)
  np.testing.assert_allclose(apply(block, x), x, atol=1e-6)


def test_bert_layer_is_post_ln_and_cross_attends():
  layer = build(lambda r: blocks.BertLayer(D, HEADS, MLP, eps=1e-12,
                                           context_dim=CTX, rngs=r))
  x, ctx = randn(2, 3, D, scale=5, shift=2), randn(2, 4, CTX, seed=1)
  mask = np.ones((2, 3), np.int32)
  y = apply(layer, x, mask, ctx)
  assert y.shape == (2, 3, D)
  assert not np.allclose(apply(layer, x, mask, ctx + 1.0), y)
  with pytest.raises(ValueError, match='context'):
    jax.eval_shape(layer, x, mask)
  # With the branches' outputs zeroed, a post-LN layer is its three
  # LayerNorms applied in turn to the residual stream.
  _zero(layer.attn.out, layer.cross.out, layer.mlp.fc2)
  want = as_f64(x)
  for ln in (layer.attn_norm, layer.cross_norm, layer.mlp_norm):
    want = ref_layer_norm(want, ln, 1e-12)
  np.testing.assert_allclose(apply(layer, x, mask, ctx), want, atol=1e-5)
