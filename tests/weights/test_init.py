"""``model.init``: a training run starts from pretrained towers
(vlg/weights/init.py, vlg/train.py).

Fixtures of the real layouts at a small size: ``deit_tiny.pth`` (timm
ViT, random) for the vision tower and ``bert_synth/`` (a Hugging Face BERT
folder with its WordPiece ``vocab.txt``, trained by MLM on the synthetic
world's captions by tests/testdata/weights/make_fixtures.py) for the text
tower. The run is the test suite's shrunk tiny ALBEF recipe with the
towers' shapes.
"""

import math
import os

import jax
import numpy as np
import pytest
from flax import nnx

from vlg import train
from vlg import writers
from vlg import train_state
from vlg.weights import common
from vlg.weights import files
from vlg.weights import init as weights_init

from test_train import tiny_test_config

DATA = os.path.join(os.path.dirname(__file__), '..', 'testdata', 'weights')
BERT = os.path.join(DATA, 'bert_synth')
DEIT = os.path.join(DATA, 'deit_tiny.pth')


def pretrained_config(**overrides):
  vocab = len(open(os.path.join(BERT, 'vocab.txt')).read().splitlines())
  c = tiny_test_config(total_steps=1, ckpt_steps=1, keep_every_steps=1,
                       **overrides)
  c.model.update(vision_width=32, vision_depth=2, vision_heads=2,
                 vision_mlp=128, patch_size=8, text_width=64, text_layers=2,
                 fusion_layers=2, text_heads=2, text_mlp=128,
                 vocab_size=vocab, max_positions=32)
  c.model.init.vision = DEIT
  c.model.init.text = BERT
  c.input.tokenizer.path = BERT
  return c


def abstract_params(model_cfg):
  # jax.eval_shape (train_state.abstract_model), not nnx.eval_shape, which
  # resolves logical axis names against a mesh another test left set.
  return train_state.abstract_model(model_cfg, rules=())[1]


def test_load_replaces_both_towers_and_reports_the_rest():
  c = pretrained_config()
  params, summaries = weights_init.load(c.model, abstract_params(c.model))
  deit = files.read(DEIT)
  # 32-px DeiT on the run's 48-px images: positions resized to 6 x 6.
  assert params['vision']['pos_embed'].shape == (1 + 36, 32)
  np.testing.assert_array_equal(
      params['vision']['blocks'][1]['mlp']['fc2']['kernel'],
      deit['blocks.1.mlp.fc2.weight'].T)
  assert set(summaries) == {'vision', 'text'}
  assert {p.split('/')[3] for p in summaries['text'].fresh} == {
      'cross', 'cross_norm'}
  # Untouched parts are still the abstract (fresh) leaves.
  assert isinstance(params['itm_head']['kernel'], jax.ShapeDtypeStruct)


def test_wrong_stem_or_tokenizer_is_refused():
  c = pretrained_config()
  c.model.vision_stem = 'conv'
  with pytest.raises(common.WeightsError, match='vision_stem'):
    weights_init.load(c.model, abstract_params(c.model))

  class SentencePieceLike:
    kind = 'sentencepiece'

  with pytest.raises(ValueError, match='tokenizer.path'):
    weights_init.check_tokenizer(pretrained_config().model,
                                 SentencePieceLike())


def test_a_vision_tower_saved_by_vlg_loads_with_any_stem(tmp_path):
  # vlg's own layout ({'vision/<model path>': array}, as
  # vlg/vision_pretrain.py writes it) needs no stem of the papers' ViTs.
  c = pretrained_config()
  c.model.init.text = ''
  c.model.vision_stem = 'conv_image'
  target = abstract_params(c.model)
  rng = np.random.default_rng(0)
  saved = {p: rng.normal(size=x.shape).astype(np.float32)
           for p, x in common.flatten(target).items()
           if p.startswith('vision/')}
  path = tmp_path / 'tower.npz'
  np.savez(path, **saved)
  c.model.init.vision = str(path)
  params, summaries = weights_init.load(c.model, target)
  flat = common.flatten(params)
  for p, x in saved.items():
    np.testing.assert_array_equal(flat[p], x)
  assert summaries['vision'].loaded == sorted(saved)
  assert isinstance(params['itm_head']['kernel'], jax.ShapeDtypeStruct)
  # A tower of another shape is refused, naming the parameter.
  c.model.vision_width = 48
  with pytest.raises(common.WeightsError, match='mismatched shapes.*vision/'):
    weights_init.load(c.model, abstract_params(c.model))


def test_run_from_pretrained_towers_starts_with_low_mlm_loss(tmp_path):
  """One training step of the recipe with model.init: the first step's MLM
  loss (logged before any update takes effect) is far below ln(vocab),
  which a text tower from random weights cannot reach."""
  c = pretrained_config()
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(c, workdir)
  rec = [r for r in writers.read_metrics(workdir) if 'train/mlm_loss' in r]
  assert rec and rec[0]['step'] == 1
  mlm = rec[0]['train/mlm_loss']
  ln_v = math.log(c.model.vocab_size)
  print(f'first-step MLM loss {mlm:.3f}, ln(vocab) {ln_v:.3f}')
  assert mlm < 0.5 * ln_v
