"""Typed parts are plug-ins: a new objective trains without editing the loop.

The toy part below is what docs/architecture.md ("Adding an objective")
shows: a data module and an objective module found by the part's name,
plus a config entry. The loop (``vlg/train.py``), the pipeline, the
progress line and ``vlg.tools.validate`` are not edited; if any of them
needed to be, this test fails.
"""

import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vlg.data.parts
import vlg.objectives
from vlg import train
from vlg import writers
from vlg.data import parts as data_parts
from vlg.objectives import part as part_lib
from vlg.objectives import pretrain

from test_train import tiny_test_config

TOY_DATA = '''
"""The toy part's data: the first caption's image, flipped."""
import grain
import numpy as np

from vlg.data import ops
from vlg.data.parts import common


class Transform(grain.transforms.RandomMap):
  prefix = 'toy_'
  requires = ('captions',)

  def __init__(self, tokenizer, input_cfg, part_cfg):
    self.resolution = int(input_cfg.resolution)

  def random_map(self, record, rng):
    image = ops.resize(ops.to_square(record['image']), self.resolution)
    return common.prefixed(self.prefix, {'image': image[:, ::-1]}, record)
'''

TOY_OBJECTIVE = '''
"""The toy part's objective: pull the flipped image's feature to zero."""
import jax.numpy as jnp

from vlg.objectives import part


def toy_loss(model, batch, *, rng, temp, weights, dropout_rngs, options):
  feat = model.embed_image(batch['toy_image'], rngs=dropout_rngs)
  loss = weights['toy'] * jnp.mean(jnp.square(feat['image_feat']))
  return loss, {'toy_loss': loss, 'toy_scale': options['toy_scale']}


PART = part.PartObjective(loss=toy_loss, rng_stream=7, weights=('toy',),
                          progress=('toy_loss',))
'''


@pytest.fixture
def toy_part(tmp_path, monkeypatch):
  """Registers the toy part as two modules on the packages' paths."""
  (tmp_path / 'data').mkdir()
  (tmp_path / 'objectives').mkdir()
  (tmp_path / 'data' / 'toy.py').write_text(textwrap.dedent(TOY_DATA))
  (tmp_path / 'objectives' / 'toy.py').write_text(
      textwrap.dedent(TOY_OBJECTIVE))
  monkeypatch.setattr(vlg.data.parts, '__path__',
                      list(vlg.data.parts.__path__) + [str(tmp_path / 'data')])
  monkeypatch.setattr(vlg.objectives, '__path__',
                      list(vlg.objectives.__path__) +
                      [str(tmp_path / 'objectives')])
  yield
  sys.modules.pop('vlg.data.parts.toy', None)
  sys.modules.pop('vlg.objectives.toy', None)


def test_a_new_part_trains_without_editing_the_loop(toy_part, tmp_path,
                                                    fast_compile):
  cfg = tiny_test_config()
  cfg.total_steps = 2
  cfg.log_training_steps = 1
  cfg.input.parts = dict(toy=dict(enabled=True, batch_size=4, ratio=0.5))
  cfg.loss.toy = 2.0
  cfg.loss.toy_scale = 3.0
  assert 'toy' in data_parts.names()
  assert pretrain.loss_weights(cfg)['toy'] == 2.0
  assert pretrain.progress_keys(cfg)[-1] == 'toy_loss'
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(cfg, workdir)
  last = [r for r in writers.read_metrics(workdir) if 'train/loss' in r][-1]
  assert last['step'] == 2
  assert last['train/toy_loss'] > 0 and last['train/toy_scale'] == 3.0
  # The total is the captions' loss plus ratio · the part's loss.
  assert last['train/loss'] == pytest.approx(
      last['train/caption_loss'] + 0.5 * last['train/toy_loss'], rel=1e-5)


def test_unknown_parts_and_bad_objectives_are_named(toy_part, tmp_path):
  with pytest.raises(ValueError, match=r"unknown part 'tyop'.*'toy'"):
    data_parts.part_module('tyop')
  with pytest.raises(ValueError, match='no objective module vlg.objectives.'
                     'nope'):
    part_lib.part_objective('nope')
  # A module without PART (itc has none) is not a part's objective.
  with pytest.raises(ValueError, match='defines no PART'):
    part_lib.part_objective('itc')


def test_parts_need_distinct_rng_streams(monkeypatch):
  cfg = tiny_test_config()
  cfg.input.parts = dict(vsg=dict(enabled=True, ratio=1.0),
                         entity=dict(enabled=True, ratio=1.0))
  entity = part_lib.part_objective('entity')
  vsg = part_lib.part_objective('vsg')
  same = part_lib.PartObjective(loss=vsg.loss, rng_stream=entity.rng_stream)
  monkeypatch.setattr(sys.modules['vlg.objectives.vsg'], 'PART', same)
  with pytest.raises(ValueError, match='distinct rng_stream'):
    pretrain.make_loss_fn(cfg)


def test_summation_order_and_keys_of_the_shipped_parts():
  """The parts add in a fixed order (rng_stream, the ones without last), and
  a part's key is split(rng, n)[rng_stream] whatever n is."""
  objectives = {n: part_lib.part_objective(n) for n in ('vsg', 'mrc',
                                                         'entity')}
  assert pretrain.summation_order(objectives) == ['entity', 'vsg', 'mrc']
  rng = jax.random.key(0)
  short = jax.random.key_data(jax.random.split(rng, 3))
  longer = jax.random.key_data(jax.random.split(rng, 8))[:3]
  np.testing.assert_array_equal(short, longer)


def test_flat_and_pair_index():
  valid = jnp.ones((2, 3), jnp.int32)
  np.testing.assert_array_equal(part_lib.pair_index(valid),
                                [0, 0, 0, 1, 1, 1])
  x = jnp.arange(12).reshape(2, 3, 2)
  np.testing.assert_array_equal(part_lib.flat(x), np.arange(12).reshape(6, 2))
