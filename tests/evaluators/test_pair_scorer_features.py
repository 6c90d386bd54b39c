"""PairScorer's feature path: each distinct image and text encoded once.

The reference is the single ``image_text_scores`` predict function of the
same (shrunk tiny) model run on every row; the feature path must give the
same ``itm`` and ``itc`` while encoding each distinct image of a chunk
once, and must stay off when nearly every row has its own image.
"""

import os

import jax
import numpy as np
import pytest
from PIL import Image

from vlg import predict
from vlg import sharding
from vlg import train_state
from vlg.data import tokenizer as tok_lib
from vlg.evaluators import common

from test_train import shrunk_model_setup

TEXTS = ('a red circle', 'a blue square left of a red circle',
         'two green stars', 'a small ring above a large hexagon',
         'a yellow cross', 'three objects')


@pytest.fixture(scope='module')
def model():
  """Predict functions, params, mesh and rules of the shrunk tiny model."""
  c, mesh, rules, graphdef, specs = shrunk_model_setup()
  with jax.set_mesh(mesh):
    params = train_state.init_params(c.model, 0, sharding.named(mesh, specs))
  return predict.make_predict_fns(graphdef), params, mesh, rules


def _images(tmp_path, n):
  rng = np.random.default_rng(0)
  paths = []
  for i in range(n):
    path = os.path.join(tmp_path, f'{i}.png')
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), np.uint8)).save(path)
    paths.append(path)
  return paths


def _scorer(model, with_features):
  fns, _, mesh, rules = model
  tok = tok_lib.train_tokenizer(list(TEXTS) * 4, 60)
  return common.PairScorer(
      fns['image_text_scores'], tok, resolution=48, max_text_len=12,
      batch_size=4, mesh=mesh, rules=rules,
      feature_fns=fns if with_features else None)


def _spy(monkeypatch, scorer):
  """Records how many rows each runner of ``scorer`` is asked for."""
  calls = []
  runners = {'image_text_scores': scorer.runner,
             **(scorer._feature_runners or {})}
  for name, runner in runners.items():
    def run(params, n, build_rows, _name=name, _run=runner.run, **kwargs):
      calls.append((_name, n))
      return _run(params, n, build_rows, **kwargs)
    monkeypatch.setattr(runner, 'run', run)
  return calls


def test_repeated_images_are_encoded_once_with_the_same_scores(
    tmp_path, model, monkeypatch, fast_compile):
  _, params, mesh, _ = model
  paths = _images(tmp_path, 5)
  rng = np.random.default_rng(1)
  # 13 rows over 5 images (VALSE-like: caption and foil per image), in an
  # order that interleaves the images.
  images = [paths[i] for i in rng.integers(0, 5, 13)]
  texts = [TEXTS[i] for i in rng.integers(0, len(TEXTS), 13)]
  with jax.set_mesh(mesh):
    single = _scorer(model, with_features=False).score(params, images, texts)
    scorer = _scorer(model, with_features=True)
    scorer.CHUNK_BATCHES = 2  # Chunks of 8 rows: two chunks.
    calls = _spy(monkeypatch, scorer)
    got = scorer.score(params, images, texts)
  assert set(got) == set(single) == {'itm', 'itm_logit', 'itc'}
  assert got['itm'].shape == (13,)
  for key in single:
    np.testing.assert_allclose(got[key], single[key], rtol=1e-5, atol=1e-6)
  # The rows sorted by (image, text), cut into chunks of 8: each chunk's
  # distinct images and texts are encoded once, its rows fused.
  order = sorted(range(13), key=lambda r: (images[r], texts[r]))
  expected = []
  for chunk in (order[:8], order[8:]):
    expected += [('image_features', len({images[r] for r in chunk})),
                 ('text_features', len({texts[r] for r in chunk})),
                 ('itm_from_embeds', len(chunk))]
  assert calls == expected
  assert sum(n for name, n in calls if name == 'image_features') < 13


def test_distinct_images_use_the_single_function(tmp_path, model,
                                                 monkeypatch, fast_compile):
  _, params, mesh, _ = model
  paths = _images(tmp_path, 4)
  images = paths + paths[:1]  # 4 distinct images in 5 rows: above 0.75.
  texts = list(TEXTS[:5])
  with jax.set_mesh(mesh):
    scorer = _scorer(model, with_features=True)
    calls = _spy(monkeypatch, scorer)
    got = scorer.score(params, images, texts)
  assert calls == [('image_text_scores', 5)]
  assert got['itm'].shape == (5,)
