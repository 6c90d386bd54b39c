"""vlg.data.batch_spec: a config's batch spec equals the pipeline's batches.

For the tiny config of each family (ALBEF captions only; X-VLM with the
entity part; ReALBEF with MRC and VSG; ReX-VLM with all three), the spec
derived from the transforms' ``example_spec`` must name exactly the slots
of a real batch of ``pipeline.make_dataset``, with the same shapes and
dtypes; on a mesh, with the shardings ``pipeline.to_global`` gives them.
"""

import types

import jax
import numpy as np
import pytest

from vlg import recipes
from vlg import sharding
from vlg.data import batch_spec
from vlg.data import pipeline
from vlg.data import tokenizer as tok_lib

FAMILIES = ('albef', 'xvlm', 'realbef', 'rexvlm')


def _config(family):
  c = (recipes.albef_config('tiny') if family == 'albef'
       else recipes.family_config(family, 'tiny'))
  c.input.data.synthetic.num_examples = 64
  return c


@pytest.fixture(scope='module')
def tok():
  return tok_lib.train_tokenizer(
      pipeline.training_texts(_config('rexvlm').input, 100), 1024)


def _real_batch(config, tok):
  it = iter(pipeline.make_dataset(config.input, tok,
                                  global_batch=config.batch_size, seed=0))
  return next(it)


@pytest.mark.parametrize('family', FAMILIES)
def test_spec_equals_a_real_batch(family, tok):
  config = _config(family)
  real = {k: (np.shape(v), np.asarray(v).dtype)
          for k, v in _real_batch(config, tok).items()}
  spec = {k: (s.shape, s.dtype)
          for k, s in batch_spec.batch_spec(config).items()}
  assert spec == real


def test_spec_follows_the_config():
  config = _config('rexvlm')
  config.batch_size = 12
  config.input.parts.vsg.max_text_len = 20
  config.input.parts.mrc.enabled = False
  spec = batch_spec.batch_spec(config)
  assert spec['image'].shape[0] == 12
  assert spec['vsg_text_ids'].shape[1] == 20
  assert not any(k.startswith('mrc_') for k in spec)


def test_spec_on_a_mesh_has_the_real_batch_shardings(tok):
  config = _config('rexvlm')
  # data × fsdp = 4 divides every tiny stream (entity and MRC batch 4).
  mesh = sharding.make_mesh((2, 2, 2))
  rules = [tuple(r) for r in config.sharding_rules]
  real = pipeline.to_global(_real_batch(config, tok), mesh, rules)
  spec = batch_spec.batch_spec(config, mesh, rules)
  assert set(spec) == set(real)
  for k, s in spec.items():
    assert s.sharding == real[k].sharding, k
    assert s.sharding.spec[0] == ('data', 'fsdp'), k


def test_check_divisible_names_the_batch_that_does_not_split():
  config = _config('rexvlm')
  mesh = sharding.make_mesh((8, 1, 1))
  with pytest.raises(ValueError, match=r'input.parts.entity.batch_size=4 '
                     r'does not divide over the 8 data shards'):
    batch_spec.check_divisible(config, mesh)
  config.input.parts.entity.batch_size = 8
  config.input.parts.mrc.batch_size = 8
  config.grad_accum_steps = 2
  with pytest.raises(ValueError, match='grad_accum_steps=2'):
    batch_spec.check_divisible(config, mesh)
  config.grad_accum_steps = 1
  batch_spec.check_divisible(config, mesh)  # 16, 8, 8, 8 over 8 shards.


def test_check_divisible_says_which_mesh_or_batch_would_split():
  # ReALBEF base on a v5e-256: MRC's 64 does not split 256 ways; 64 data
  # shards with tensor 4 would, as would an MRC batch of 256.
  config = _config('realbef')
  config.batch_size, config.input.parts.mrc.batch_size = 512, 64
  config.input.parts.vsg.batch_size = 128
  mesh = types.SimpleNamespace(shape={'data': 256, 'fsdp': 1, 'tensor': 1},
                               size=256)
  with pytest.raises(ValueError) as e:
    batch_spec.check_divisible(config, mesh)
  assert 'input.parts.mrc.batch_size=64' in str(e.value)
  assert 'at most 64 data shards divide every batch' in str(e.value)
  assert '--config.mesh=64,1,4' in str(e.value)
  assert 'set input.parts.mrc.batch_size to a multiple of 256' in str(e.value)
  # Only one data shard over 8 devices splits a batch of 3: the hint names
  # the batch size alone.
  config = _config('albef')
  config.batch_size = 3
  mesh = types.SimpleNamespace(shape={'data': 8, 'fsdp': 1, 'tensor': 1},
                               size=8)
  with pytest.raises(ValueError) as e:
    batch_spec.check_divisible(config, mesh)
  assert '--config.mesh' not in str(e.value)
  assert 'set batch_size to a multiple of 8' in str(e.value)
