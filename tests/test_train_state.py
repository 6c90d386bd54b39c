"""vlg.train_state.init_params: deterministic per seed, compiled once.

The reference is the model built eagerly with ``nnx.Rngs(seed)`` (how the
parameters were drawn before the seed became a traced argument), so a
seed keeps giving the parameters it always gave.
"""

import logging

import jax
import numpy as np
import pytest
from flax import nnx

from vlg import sharding
from vlg import train_state
from vlg.models import create_model

from test_train import shrunk_model_setup


@pytest.fixture(scope='module')
def setup():
  """The shrunk tiny ALBEF model's config, mesh, rules and shardings."""
  c, mesh, _, _, specs = shrunk_model_setup()
  return c.model, mesh, sharding.named(mesh, specs)


def _init(setup, seed):
  model_cfg, mesh, shardings = setup
  with jax.set_mesh(mesh):
    return jax.device_get(train_state.init_params(model_cfg, seed,
                                                  shardings))


def _leaves(params):
  return dict(jax.tree_util.tree_leaves_with_path(params))


def test_same_seed_gives_identical_params_and_matches_eager_rngs(
    setup, fast_compile):
  model_cfg, mesh, _ = setup
  first, again = _init(setup, 3), _init(setup, 3)
  with jax.set_mesh(mesh), nnx.use_eager_sharding(False):
    eager = nnx.to_pure_dict(nnx.split(
        create_model(model_cfg, nnx.Rngs(3)), nnx.Param)[1])
  eager = _leaves(jax.device_get(eager))
  assert set(_leaves(first)) == set(eager)
  for path, value in _leaves(first).items():
    np.testing.assert_array_equal(value, _leaves(again)[path],
                                  err_msg=str(path))
    # The same random bits; XLA's fused arithmetic may round differently
    # from eager op-by-op execution in the last bit.
    np.testing.assert_allclose(value, eager[path], rtol=1e-6, atol=1e-8,
                               err_msg=str(path))


def test_different_seeds_give_different_random_params(setup, fast_compile):
  zero, one = _leaves(_init(setup, 0)), _leaves(_init(setup, 1))
  # Biases and LayerNorm scales start constant; every drawn tensor (weight
  # matrices, embeddings) must differ between seeds.
  # The tiny ViT's position embeddings start as a fixed sine-cosine table.
  fixed = [p for p in zero if 'pos_embed' in jax.tree_util.keystr(p)]
  assert fixed
  for path in fixed:
    np.testing.assert_array_equal(zero[path], one[path])
  drawn = [p for p, v in zero.items() if np.ptp(v) > 0 and p not in fixed]
  assert len(drawn) > 10
  for path in drawn:
    assert not np.array_equal(zero[path], one[path]), path


def _init_cache_keys(records):
  """The persistent-cache keys of the ``init`` program in log records."""
  return {word.strip("'") for r in records for word in r.getMessage().split()
          if word.strip("'").startswith('jit_init-')}


def test_a_later_seed_reuses_the_compiled_initialiser(setup, caplog,
                                                      fast_compile):
  # tests/conftest.py turns JAX's persistent compilation cache on: a seed
  # baked into the program as a constant would give every seed its own key.
  keys = []
  for seed in (5, 6):
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger='jax'), jax.log_compiles():
      _init(setup, seed)
    keys.append(_init_cache_keys(caplog.records))
  assert len(keys[0]) == 1 and keys[1] == keys[0], keys


def _compile_only_devices(topology='v5e:2x2', **kwargs):
  """libtpu's compile-only TPU devices: any computation on them fails."""
  pytest.importorskip('libtpu', reason='libtpu is not installed (pip '
                      'install -r requirements-tpu-aot.txt; CI installs it)')
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  return topologies.get_topology_desc(topology, platform='tpu',
                                      **kwargs).devices


def test_build_step_on_compile_only_devices_runs_nothing():
  # The model, optimizer state and shardings are built abstractly: an eager
  # op (e.g. optax's tx.init counters) would fail on these devices.
  from test_train import tiny_test_config  # pylint: disable=g-import-not-at-top
  from vlg import train  # pylint: disable=g-import-not-at-top
  c = tiny_test_config()
  devices = _compile_only_devices()
  mesh = sharding.make_mesh(c.mesh, devices=devices)
  rules = [tuple(r) for r in c.sharding_rules]
  with jax.set_mesh(mesh), sharding.rules_context(rules):
    built = train.build_step(c, mesh, rules)
    state = train_state.with_shardings(built['abstract_state'],
                                       built['shardings'])
  leaves = jax.tree.leaves(state)
  assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  assert {d for x in leaves for d in x.sharding.device_set} == set(devices)
  # Adam's moments follow the parameters' shardings; its counter is
  # replicated.
  opt = jax.tree.leaves(built['shardings']['opt'])
  params = jax.tree.leaves(built['shardings']['params'])
  assert len(opt) > 2 * len(params)
