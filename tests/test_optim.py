"""Optimizer: warm-up + cosine schedule and the weight-decay mask."""

import jax
import numpy as np
import ml_collections
import pytest

from vlg import optim
from vlg import train_state
from vlg.models import sizes


def _cfg(**kw):
  base = dict(lr=1e-4, warmup_init_lr=1e-5, min_lr=1e-5, warmup_steps=10,
              weight_decay=0.02, b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=0.)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_schedule_warmup_then_cosine():
  sched = optim.make_schedule(_cfg(), total_steps=110)
  assert float(sched(0)) == pytest.approx(1e-5)
  assert float(sched(5)) == pytest.approx(1e-5 + 0.5 * 9e-5)
  assert float(sched(10)) == pytest.approx(1e-4)
  mid = 1e-5 + 0.5 * 9e-5 * (1 + np.cos(np.pi * 50 / 100))
  assert float(sched(60)) == pytest.approx(mid, rel=1e-5)
  assert float(sched(110)) == pytest.approx(1e-5)


def test_decay_mask_on_the_real_model():
  cfg = sizes.model_config('tiny', name='albef')
  _, params, _ = train_state.abstract_model(cfg, rules=[])
  mask = optim.decay_mask(params)
  flat = {'/'.join(str(getattr(k, 'key', k)) for k in path): v
          for path, v in jax.tree_util.tree_leaves_with_path(mask)}
  no_decay = [k for k, v in flat.items() if not v]
  decay = [k for k, v in flat.items() if v]
  assert any('pos_embed' in k for k in no_decay)
  assert any('position' in k for k in no_decay)
  assert 'temp' in no_decay
  assert any('cls_token' in k for k in no_decay)
  assert not any(k.endswith('bias') for k in decay)
  assert any('word' in k for k in decay)  # Word embeddings are decayed.
  assert all(len(params_shape) >= 2 for params_shape in
             [np.shape(x) for k, x in zip(flat, jax.tree.leaves(params))
              if flat[k]])


def test_adamw_decays_only_masked_params():
  tx, _ = optim.make_optimizer(_cfg(lr=0.0, warmup_init_lr=0.0, min_lr=0.0,
                                    weight_decay=0.5), total_steps=10)
  params = {'kernel': np.ones((2, 2), np.float32),
            'bias': np.ones((2,), np.float32)}
  state = tx.init(params)
  zeros = jax.tree.map(np.zeros_like, params)
  updates, _ = tx.update(zeros, state, params)
  # lr 0: no update at all; the decay is scaled by the lr too (AdamW).
  assert np.all(np.asarray(updates['kernel']) == 0)
  tx, _ = optim.make_optimizer(_cfg(lr=1.0, warmup_init_lr=1.0, min_lr=1.0,
                                    weight_decay=0.5), total_steps=10)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates['kernel'], -0.5)
  np.testing.assert_allclose(updates['bias'], 0.0)


def test_temp_lr_scale_moves_the_temperature_slower():
  """Adam moves every parameter by about lr per step; with temp_lr_scale
  the temperature moves by scale * lr and the rest as before."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  params = {'temp': jnp.asarray(0.07), 'w': {'kernel': jnp.ones((2, 2))}}
  grads = jax.tree.map(jnp.ones_like, params)
  moved = {}
  for scale in (1.0, 0.1):
    cfg = _cfg(lr=1e-3, warmup_init_lr=1e-3, warmup_steps=0, min_lr=1e-3,
               weight_decay=0.0, temp_lr_scale=scale)
    tx, _ = optim.make_optimizer(cfg, total_steps=100)
    state = tx.init(params)
    updates, _ = tx.update(grads, state, params)
    moved[scale] = jax.tree.map(lambda u: float(jnp.abs(u).max()), updates)
  assert moved[1.0]['temp'] == pytest.approx(1e-3, rel=1e-3)
  assert moved[0.1]['temp'] == pytest.approx(1e-4, rel=1e-3)
  assert moved[0.1]['w']['kernel'] == pytest.approx(
      moved[1.0]['w']['kernel'], rel=1e-6)
  with pytest.raises(ValueError, match='temp_lr_scale'):
    optim.make_optimizer(_cfg(temp_lr_scale=0.0), total_steps=10)
