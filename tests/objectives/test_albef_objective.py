"""vlg.objectives.albef: how ITM's 3B rows reach their images.

``albef_loss`` either gathers the image tokens to 3B rows before the
fusion or, by default where the batch is not split across devices, lets
every cross-attention project each image's keys and values once and
gather them per row. The two must give the same losses, metrics and
parameter gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from random_params import random_params  # tests/random_params.py
from vlg import sharding
from vlg.models import create_model
from vlg.models import sizes
from vlg.objectives import albef

B, L, Q = 4, 10, 8


def _batch(cfg):
  rng = np.random.RandomState(1)
  mask = np.ones((B, L), np.int32)
  mask[1, 6:] = 0
  text_ids = rng.randint(5, cfg.vocab_size, (B, L)).astype(np.int32)
  labels = np.full((B, L), -100, np.int32)
  labels[:, 2] = text_ids[:, 2]
  mlm_ids = text_ids.copy()
  mlm_ids[:, 2] = 3
  batch = {'image': rng.randint(0, 256, (B, cfg.image_size, cfg.image_size,
                                         3)).astype(np.uint8),
           'text_ids': text_ids, 'text_mask': mask, 'mlm_ids': mlm_ids,
           'mlm_labels': labels, 'image_id': np.arange(B, dtype=np.int32)}
  return {k: jnp.asarray(v) for k, v in batch.items()}


def test_itm_image_kv_once_equals_gathering_the_image_tokens():
  cfg = sizes.model_config('tiny')
  graphdef, params = random_params(lambda: create_model(cfg, nnx.Rngs(0)))
  batch = _batch(cfg)
  queues = {k: jnp.asarray(np.random.RandomState(2).randn(Q, cfg.embed_dim),
                           jnp.float32) for k in ('image', 'text')}
  queues = {k: v / jnp.linalg.norm(v, axis=-1, keepdims=True)
            for k, v in queues.items()}
  weights = {'itc': 1.0, 'itm': 1.0, 'mlm': 1.0}

  def loss(p, once):
    model = nnx.merge(graphdef, p)
    momentum = albef.momentum_outputs(model, batch)
    return albef.albef_loss(model, batch, momentum, queues,
                            rng=jax.random.key(3), alpha=0.4,
                            weights=weights, image_kv_once=once)

  results = {once: jax.jit(jax.value_and_grad(
      lambda p, once=once: loss(p, once), has_aux=True))(params)
             for once in (False, True)}
  (total0, m0), g0 = results[False]
  (total1, m1), g1 = results[True]
  assert float(total0) > 0 and float(m0['itm_loss']) > 0
  np.testing.assert_allclose(total1, total0, rtol=1e-5)
  for k in ('itc_loss', 'itm_loss', 'mlm_loss', 'itm_acc'):
    np.testing.assert_allclose(m1[k], m0[k], rtol=1e-5, err_msg=k)
  # Same negatives drawn: the draw precedes the fusion.
  np.testing.assert_array_equal(m1['itm_neg_image'], m0['itm_neg_image'])
  flat1 = dict(jax.tree_util.tree_leaves_with_path(g1))
  for path, g in jax.tree_util.tree_leaves_with_path(g0):
    np.testing.assert_allclose(flat1[path], g, atol=2e-6, rtol=1e-4,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('mesh_sizes,want', [((1, 1, 1), 1), ((2, 2, 2), 4),
                                             ((1, 1, 8), 1)])
def test_batch_shards_reads_the_batch_rule_on_the_mesh(mesh_sizes, want):
  assert sharding.batch_shards() == 1  # Off-mesh.
  mesh = sharding.make_mesh(mesh_sizes, devices=jax.devices()[:int(
      np.prod(mesh_sizes))])
  with sharding.rules_context([('batch', ('data', 'fsdp')),
                               ('embed', 'fsdp')]), jax.set_mesh(mesh):
    assert sharding.batch_shards() == want
  with sharding.rules_context([]), jax.set_mesh(mesh):
    assert sharding.batch_shards() == 1  # No rules: nothing is split.
