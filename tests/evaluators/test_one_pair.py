"""vlg.evaluators.one_pair: the one-pair-a-call loop scores what the batched
scorers score, one row a call, each row encoded from its own pixels and
words."""

import json
import os

import jax
import numpy as np
import pytest

from vlg import benchmarks
from vlg import predict
from vlg import sharding
from vlg import train_state
from vlg.data import tokenizer as tok_lib
from vlg.evaluators import common
from vlg.evaluators import one_pair
from vlg.evaluators import retrieval
from vlg.evaluators import synthetic
from vlg.recipes import family_config

NUM = 4


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  """A tiny X-VLM (it has a box head) with random parameters on one device,
  and its VALSE, retrieval and RefCOCOg evaluators on synthetic sets."""
  tmp = str(tmp_path_factory.mktemp('one_pair'))
  config = family_config('xvlm', 'tiny,runlocal')
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  rules = [tuple(r) for r in config.sharding_rules]
  with jax.set_mesh(mesh):
    graphdef, _, specs = train_state.abstract_model(config.model, rules)
    params = train_state.init_params(config.model, 0,
                                     sharding.named(mesh, specs))
    fns = predict.make_predict_fns(graphdef, box_head=True)
    root = common.synthetic_root(64, 0, NUM, tmp)
    texts = [json.loads(line)['caption'] for line in open(
        os.path.join(root, 'vsr', 'random', 'test.jsonl'))]
    tok = tok_lib.train_tokenizer(texts * 5, 200)
    evals = synthetic.default_evals(num=NUM, cache_dir=tmp)
    evals = {k: evals[k] for k in ('valse', 'retrieval', 'refcocog_val')}
    out = common.from_config(
        evals, predict_fns=fns, tokenizer=tok, mesh=mesh, rules=rules,
        defaults=dict(resolution=64, max_text_len=24, batch_size=8))
  return {name: ev for name, (ev, _) in out.items()}, params, mesh


def _count_calls(monkeypatch, runner):
  """Records the rows of every call of ``runner``'s compiled function."""
  rows = []
  fn = runner._fn

  def counted(params, batch):
    rows.append(int(batch['_mask'].shape[0]))
    return fn(params, batch)
  monkeypatch.setattr(runner, '_fn', counted)
  return rows


def test_pair_rows_are_scored_one_a_call_with_the_batched_scores(
    built, monkeypatch):
  evaluators, params, mesh = built
  valse = evaluators['valse']
  ex = valse.present
  paths = [benchmarks.image_path(valse.image_root, e.image_file)
           for e in ex]
  images = paths + paths  # Every image with its caption and its foil.
  texts = [e.caption for e in ex] + [e.foil for e in ex]
  loop = one_pair.loop_scorer(valse.scorer)
  assert loop.load_image is valse.scorer.load_image  # Decoded once.
  rows = _count_calls(monkeypatch, loop.runner)
  with jax.set_mesh(mesh):
    batched = valse.scorer.score(params, images, texts)
    looped = loop.score(params, images, texts)
  assert rows == [1] * len(texts)  # One call a row, repeated images too.
  assert set(looped) == set(batched) == {'itm', 'itm_logit', 'itc'}
  for key in batched:
    np.testing.assert_allclose(looped[key], batched[key], rtol=1e-5,
                               atol=1e-6)


def test_box_rows_are_predicted_one_a_call(built):
  evaluators, params, mesh = built
  ref = evaluators['refcocog_val']
  loop = one_pair.loop_scorer(ref.scorer)
  assert loop.predict_fn is ref.scorer.predict_fn
  with jax.set_mesh(mesh):
    ex = ref.present[:3]
    images = [benchmarks.image_path(ref.image_root, e.image_file)
              for e in ex]
    texts = [e.expression for e in ex]
    batched = ref.scorer.score(params, images, texts)['box']
    looped = loop.score(params, images, texts)['box']
  assert looped.shape == (3, 4)
  np.testing.assert_allclose(looped, batched, rtol=1e-5, atol=1e-6)


def test_retrieval_rescores_each_pair_from_pixels_and_words(
    built, monkeypatch):
  evaluators, params, mesh = built
  ev = evaluators['retrieval']
  loop = one_pair.loop_scorer(ev.scorer)
  assert isinstance(loop, one_pair.OnePairRetrievalScorer)
  pair_rows = _count_calls(monkeypatch, loop._pairs.runner)
  images = [benchmarks.image_path(ev.image_root, p) for p in ev.data.images]
  texts = list(ev.data.texts)
  pairs = np.array([[0, 3], [2, 0], [0, 3], [1, len(texts) - 1]])
  with jax.set_mesh(mesh):
    with pytest.raises(ValueError, match='has not encoded'):
      loop.itm_logits(params, None, None, None, pairs)
    img = ev.scorer.image_features(params, images)
    txt = ev.scorer.text_features(params, texts)
    want = ev.scorer.itm_logits(params, img['image_embeds'],
                                txt['fusion_text'], txt['text_mask'], pairs)
    loop_img = loop.image_features(params, images)
    loop.text_features(params, texts)
    got = loop.itm_logits(params, None, None, None, pairs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loop_img['image_feat'], img['image_feat'],
                               rtol=1e-5, atol=1e-6)
    assert pair_rows == [1] * len(pairs)  # A repeated pair is recomputed.
    # The evaluator's own ranking gives the same recalls either way.
    a = retrieval.evaluate(ev.scorer, params, images, texts,
                           ev.data.txt2img, k_test=3)
    b = retrieval.evaluate(loop, params, images, texts, ev.data.txt2img,
                           k_test=3)
  assert a == pytest.approx(b)


def test_an_unknown_scorer_is_refused():
  with pytest.raises(TypeError, match='No one-pair loop for a dict'):
    one_pair.loop_scorer({})
