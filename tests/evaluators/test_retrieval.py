"""Retrieval: hand-worked recalls, two-stage ranking vs brute-force numpy,
the evaluator over meshes and batch sizes, paragraphs, missing images."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from vlg import benchmarks
from vlg import predict
from vlg import sharding
from vlg import train_state
from vlg.data import tokenizer as tok_lib
from vlg.evaluators import common
from vlg.evaluators import retrieval
from vlg.synthetic import benchmarks as synthetic_benchmarks

from test_train import shrunk_model_setup


def test_metrics_hand_worked():
  txt2img = [0, 0, 1]
  score_i2t = np.array([[0.9, 0.1, 0.5],    # image 0: text 0 first: rank 0.
                        [0.2, 0.6, 0.4]])   # image 1: text 1 above: rank 1.
  score_t2i = np.array([[0.8, 0.3],    # rank 0.
                        [0.3, 0.3],    # tie with the wrong image: rank 1.
                        [0.7, 0.1]])   # rank 1.
  out = retrieval.metrics(score_i2t, score_t2i, txt2img, num_in_file=3)
  assert out['tr_r1'] == 0.5 and out['tr_r5'] == 1.0 and out['tr_r10'] == 1.0
  assert out['ir_r1'] == pytest.approx(1 / 3) and out['ir_r5'] == 1.0
  assert out['r_mean'] == pytest.approx((0.5 + 1 + 1 + 1 / 3 + 1 + 1) / 6)
  # Image 0 has 2 of 3 texts: P(top 1 hits) = 2/3; image 1: 1/3.
  assert out['chance/tr_r1'] == pytest.approx(0.5)
  assert out['chance/ir_r1'] == pytest.approx(0.5)
  assert out['chance/tr_r5'] == 1.0
  assert out['num_evaluated'] == 2 and out['num_in_file'] == 3
  assert out['num_texts'] == 3


def test_recall_chance_matches_simulation():
  rng = np.random.default_rng(0)
  m, k, c = 12, 3, 4
  hits = [np.any(rng.permutation(m)[:k] < c) for _ in range(20000)]
  assert retrieval.recall_chance([c], m, k) == pytest.approx(
      np.mean(hits), abs=0.01)
  assert retrieval.recall_chance([c], m, k) == pytest.approx(
      1 - math.comb(8, 3) / math.comb(12, 3))


def _reference_recalls(sim, itm, txt2img, k):
  """ALBEF's evaluation re-derived by brute force: full sorts, no tricks.

  Candidates outside a query's top k (by similarity) get -inf; the ranking
  sorts by score and puts a ground truth after every other candidate of the
  same score; a query hits at K when a ground truth is in the first K.
  """
  sim, itm = np.asarray(sim, np.float64), np.asarray(itm, np.float64)
  n, m = sim.shape
  gt = np.zeros((n, m), bool)
  gt[np.asarray(txt2img), np.arange(m)] = True

  def recalls(s, full, relevant, kk):
    hits = {1: [], 5: [], 10: []}
    for q in range(s.shape[0]):
      top = np.argsort(-s[q], kind='stable')[:min(kk, s.shape[1])]
      row = np.full(s.shape[1], -np.inf)
      row[top] = full[q, top]
      order = np.lexsort((relevant[q], -row))
      first = np.flatnonzero(relevant[q][order])[0]
      for kk_ in hits:
        hits[kk_].append(first < kk_)
    return {kk_: np.mean(v) for kk_, v in hits.items()}

  return recalls(sim, itm, gt, k), recalls(sim.T, itm.T, gt.T, k)


@pytest.mark.parametrize('k', [1, 3, 7, 100])
def test_two_stage_matches_brute_force(k):
  rng = np.random.default_rng(k)
  n, per = 9, 3
  txt2img = np.repeat(np.arange(n), per)
  sim = rng.normal(size=(n, n * per))
  itm = rng.normal(size=(n, n * per)) + 2 * sim  # Re-ranking reorders.
  calls = []

  def itm_fn(pairs):
    calls.append(len(pairs))
    assert len(np.unique(pairs[:, 0] * 1000 + pairs[:, 1])) == len(pairs)
    return itm[pairs[:, 0], pairs[:, 1]]

  score_i2t, score_t2i = retrieval.two_stage_scores(sim, k, itm_fn)
  out = retrieval.metrics(score_i2t, score_t2i, txt2img, num_in_file=n)
  tr, ir = _reference_recalls(sim, itm, txt2img, k)
  for kk in (1, 5, 10):
    assert out[f'tr_r{kk}'] == pytest.approx(tr[kk])
    assert out[f'ir_r{kk}'] == pytest.approx(ir[kk])
  # Each pair is fused at most once; at most k per query in each direction.
  assert calls[0] <= n * min(k, n * per) + n * per * min(k, n)
  if k == 1:  # Only the ITC top-1 is re-scored: R@5 = R@1 (misses rank last).
    assert out['tr_r5'] == out['tr_r1'] and out['ir_r5'] == out['ir_r1']


# The fake model: features and ITM logits any deterministic function of
# the row; the reference below calls the same functions on whole arrays.

_P = jnp.array(np.random.default_rng(5).normal(size=(3, 4)), jnp.float32)


def _l2(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _image_features(params, batch):
  img = batch['image'].astype(jnp.float32).mean(axis=(1, 2)) / 255.0
  embeds = jnp.stack([img, img**2 * params['w']], axis=1)
  return {'image_feat': _l2(img @ _P + 0.1), 'image_embeds': embeds}


def _text_features(params, batch):
  ids = batch['text_ids'].astype(jnp.float32)
  embeds = jnp.sin(ids[..., None] * jnp.arange(1.0, 4.0) / 7.0)
  m = batch['text_mask'].astype(jnp.float32)[..., None]
  pooled = (embeds * m).sum(1) / m.sum(1)
  return {'text_feat': _l2(pooled @ _P + 0.1 * params['w']),
          'fusion_text': embeds}


def _itm_from_embeds(params, batch):
  # The predict contract (vlg/predict.py): R times as many text rows as
  # images score R texts against each image, outputs [images, R].
  rows = batch['fusion_text'].shape[0] // batch['image_embeds'].shape[0]
  m = batch['text_mask'].astype(jnp.float32)[..., None]
  pooled = (batch['fusion_text'] * m).sum(1) / m.sum(1)
  img = jnp.repeat(batch['image_embeds'].mean(1), rows, axis=0)
  logit = jnp.sum(jnp.cos(5 * img * pooled * params['w']), -1)
  out = {'itm_logit': logit, 'itm': jax.nn.sigmoid(logit)}
  return out if rows == 1 else {k: v.reshape(-1, rows) for k, v in out.items()}


FNS = {'image_features': _image_features, 'text_features': _text_features,
       'itm_from_embeds': _itm_from_embeds}
WORDS = ('red', 'blue', 'green', 'circle', 'square', 'star', 'left', 'big')


@pytest.fixture(scope='module')
def karpathy(tmp_path_factory):
  root = tmp_path_factory.mktemp('karpathy')
  rng = np.random.default_rng(0)
  entries = []
  for i in range(10):
    name = f'images/img{i}.png'
    os.makedirs(root / 'images', exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (12, 16, 3), np.uint8)).save(
        root / name)
    entries.append({'image': name, 'caption': [
        ' '.join(rng.choice(WORDS, 4)) for _ in range(1 + i % 3)]})
  path = root / 'test.json'
  path.write_text(json.dumps(entries))
  texts = [c for e in entries for c in e['caption']]
  return str(root), str(path), tok_lib.train_tokenizer(texts * 3, 40)


def _make(tok, mesh_sizes, batch_size):
  mesh = sharding.make_mesh(mesh_sizes,
                            devices=jax.devices()[:int(np.prod(mesh_sizes))])
  return mesh, retrieval.make_scorer(
      FNS, tok, mesh=mesh, rules=[('batch', ('data', 'fsdp'))],
      resolution=8, max_text_len=8, batch_size=batch_size)


def test_group_pairs_puts_each_pair_once_with_its_key():
  keys = np.array([3, 1, 3, 3, 1, 0, 3, 3])
  groups, valid = retrieval.group_pairs(keys, 4)
  assert groups.shape == valid.shape == (4, 4)
  assert sorted(groups[valid].tolist()) == list(range(8))
  for g, v in zip(groups, valid):
    assert len(set(keys[g])) == 1  # One key a group.
    assert (g[~v] == g[v][-1]).all()  # Filled by repeating the last pair.
  assert groups[valid].tolist() == [5, 1, 4, 0, 2, 3, 6, 7]
  empty, none = retrieval.group_pairs(np.zeros(0, int), 4)
  assert empty.shape == none.shape == (0, 4)


def test_choose_rows_weighs_padding_and_width_against_image_tokens():
  # 48 short captions an image, 65 image tokens: groups of 16 cost
  # 3 (16 * 16 + 65/7) against 48 (16 + 65/7) one pair a row.
  keys, widths = np.repeat([0, 1], 48), np.full(96, 16)
  assert retrieval.choose_rows(keys, widths, 65, (2, 4, 8, 16)) == 16
  assert retrieval.choose_rows(keys, widths, 65, (2, 4)) == 4
  assert retrieval.choose_rows(keys, widths, 65, ()) == 1
  # Five paragraphs of 64 tokens an image: padding a group costs more
  # than the image's keys and values save.
  keys, widths = np.repeat([0, 1], 5), np.full(10, 64)
  assert retrieval.choose_rows(keys, widths, 65, (2, 4, 8, 16)) == 1
  # A base model's 257 image tokens make groups of two worth it: 3 (128 +
  # 257/7) a key against 5 (64 + 257/7).
  assert retrieval.choose_rows(keys, widths, 257, (2, 4, 8, 16)) == 2
  assert retrieval.choose_rows(np.zeros(0), np.zeros(0), 65, (2,)) == 1


def test_model_itm_in_image_groups_equals_one_pair_a_row(fast_compile):
  """The shrunk tiny model: re-scoring in groups of one image and width
  (batch 16) gives each pair's logit as fusing it alone (batch 3, one pair
  a row), texts of mixed lengths."""
  c, mesh, rules, graphdef, specs = shrunk_model_setup()
  full, res = 24, int(c.input.resolution)
  rng = np.random.default_rng(4)
  with jax.set_mesh(mesh):
    params = train_state.init_params(c.model, 0, sharding.named(mesh, specs))
    fns = predict.make_predict_fns(graphdef)
    images = rng.integers(0, 256, (3, res, res, 3), np.uint8)
    lengths = rng.integers(2, full + 1, 40)
    mask = (np.arange(full) < lengths[:, None]).astype(np.int32)
    ids = rng.integers(5, int(c.model.vocab_size), (40, full)) * mask
    img = jax.jit(fns['image_features'])(params, {'image': images})
    txt = jax.jit(fns['text_features'])(params, {'text_ids': ids,
                                                 'text_mask': mask})
    embeds = (np.asarray(img['image_embeds']), np.asarray(txt['fusion_text']),
              mask)
    scorers = [retrieval.RetrievalScorer(fns, None, resolution=res,
                                         max_text_len=full, batch_size=b,
                                         mesh=mesh, rules=rules)
               for b in (16, 3)]
    assert scorers[0]._group_sizes == (2, 4, 8, 16)
    assert not scorers[1]._group_sizes
    used = []
    make = scorers[0]._group_runner
    scorers[0]._group_runner = lambda rows, *a: used.append(rows) or make(
        rows, *a)
    every = np.stack(np.meshgrid(np.arange(3), np.arange(40),
                                 indexing='ij'), -1).reshape(-1, 2)
    few = every[rng.permutation(len(every))[:30]]  # ~10 pairs an image.
    for pairs in (every, few):
      grouped, alone = (s.itm_logits(params, *embeds, pairs) for s in scorers)
      np.testing.assert_allclose(grouped, alone, rtol=1e-5, atol=1e-5)
      assert np.ptp(alone) > 0  # Not vacuous: the pairs differ.
    # Every pair with its image: grouped; the size chosen at the first
    # call is kept for the fewer pairs of the second.
    assert len(used) == 2 and used[0] == used[1] > 1
    # A call of groups holds no more token rows than a batch of 16 single
    # pairs at the full width, and no fewer pairs.
    tokens = embeds[0].shape[1]
    for rows, groups in scorers[0]._group_runners:
      assert groups * rows >= 16
      assert groups * (rows * full + tokens) <= 16 * (full + tokens)


def test_evaluator_matches_brute_force_and_is_mesh_independent(karpathy):
  root, path, tok = karpathy
  params = {'w': jnp.float32(1.5)}
  results = []
  # Batch 3 and batch 8 over 8 devices fuse one pair a row; batch 16 over
  # 4 data shards fuses groups of 4 texts with one image.
  for mesh_sizes, batch_size in [((1, 1, 1), 3), ((8, 1, 1), 8),
                                 ((2, 2, 2), 16)]:
    mesh, scorer = _make(tok, mesh_sizes, batch_size)
    assert max(scorer._group_sizes, default=1) == (
        4 if batch_size == 16 else 1)
    with jax.set_mesh(mesh):
      ev = retrieval.Evaluator(scorer, file=path, image_root=root, k_test=4)
      results.append(ev.run(params))
  for other in results[1:]:
    assert other == results[0]
  out = results[0]
  # Reference: whole arrays through the same functions, no mesh, no batches.
  data = benchmarks.load_retrieval(path)
  load = common.ImageCache(8)
  images = np.stack([load(os.path.join(root, f)) for f in data.images])
  ids, mask = common.encode_texts(tok, data.texts, 8, 30)
  img = _image_features(params, {'image': images})
  txt = _text_features(params, {'text_ids': ids, 'text_mask': mask})
  sim = np.asarray(img['image_feat']) @ np.asarray(txt['text_feat']).T
  n, m = sim.shape
  ii, tt = np.meshgrid(np.arange(n), np.arange(m), indexing='ij')
  itm = np.asarray(_itm_from_embeds(params, {
      'image_embeds': img['image_embeds'][ii.ravel()],
      'fusion_text': txt['fusion_text'][tt.ravel()],
      'text_mask': mask[tt.ravel()]})['itm_logit']).reshape(n, m)
  tr, ir = _reference_recalls(sim, itm, data.txt2img, 4)
  for k in (1, 5, 10):
    assert out[f'tr_r{k}'] == pytest.approx(tr[k])
    assert out[f'ir_r{k}'] == pytest.approx(ir[k])
  assert out['num_evaluated'] == 10 and out['num_texts'] == m == 19
  # ITC only: rank by similarity, k plays no part.
  mesh, scorer = _make(tok, (1, 1, 1), 4)
  with jax.set_mesh(mesh):
    itc = retrieval.Evaluator(scorer, file=path, image_root=root,
                              scorer_name='itc').run(params)
  tr, ir = _reference_recalls(sim, sim, data.txt2img, 10**6)
  assert itc['tr_r1'] == pytest.approx(tr[1])
  assert itc['ir_r5'] == pytest.approx(ir[5])


def test_missing_images_drop_their_texts(karpathy, tmp_path):
  root, path, tok = karpathy
  partial = tmp_path / 'images'
  partial.mkdir()
  for i in (0, 2, 3):
    os.link(os.path.join(root, 'images', f'img{i}.png'),
            partial / f'img{i}.png')
  mesh, scorer = _make(tok, (1, 1, 1), 4)
  with jax.set_mesh(mesh):
    ev = retrieval.Evaluator(scorer, file=path, image_root=str(tmp_path),
                             k_test=2)
    out = ev.run({'w': jnp.float32(1.0)})
    none = retrieval.Evaluator(scorer, file=path,
                               image_root=str(tmp_path / 'nowhere')).run(
                                   {'w': jnp.float32(1.0)})
  # Images 0, 2, 3 have 1, 3, 1 captions.
  assert out['num_evaluated'] == 3 and out['num_in_file'] == 10
  assert out['num_texts'] == 5
  assert out['chance/ir_r1'] == pytest.approx(1 / 3)
  assert none['num_evaluated'] == 0 and none['num_in_file'] == 10
  assert np.isnan(none['tr_r1'])


def test_paragraphs_one_text_per_image(tmp_path):
  synthetic_benchmarks.write_all(str(tmp_path), resolution=48, seed=0, num=6,
                                 sets='paragraphs')
  pdir = tmp_path / 'paragraphs'
  paragraphs = benchmarks.load_paragraphs(pdir / 'paragraphs_v1.json',
                                          pdir / 'test_split.json')
  tok = tok_lib.train_tokenizer([p.paragraph for p in paragraphs] * 3, 60)
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  scorer = retrieval.make_scorer(FNS, tok, mesh=mesh, rules=[], resolution=8,
                                 max_text_len=64, batch_size=4,
                                 max_words=200)
  with jax.set_mesh(mesh):
    out = retrieval.Evaluator(
        scorer, file=str(pdir / 'paragraphs_v1.json'), format='paragraphs',
        split_file=str(pdir / 'test_split.json'),
        image_root=str(pdir / 'images'), k_test=3).run({'w': jnp.float32(1)})
  assert out['num_evaluated'] == out['num_texts'] == 6
  assert out['chance/tr_r1'] == pytest.approx(1 / 6)
  assert out['chance/ir_r5'] == pytest.approx(5 / 6)
  assert 0 <= out['tr_r1'] <= out['tr_r5'] <= out['tr_r10'] == 1.0
  # A long paragraph is not cut at 30 words when max_words allows more.
  longest = max(paragraphs, key=lambda p: len(p.paragraph.split()))
  ids, _ = common.encode_texts(tok, [longest.paragraph], 64, 200)
  short, _ = common.encode_texts(tok, [longest.paragraph], 64, 5)
  assert (ids > 0).sum() > (short > 0).sum()


def test_bad_arguments(karpathy):
  root, path, tok = karpathy
  _, scorer = _make(tok, (1, 1, 1), 4)
  with pytest.raises(ValueError, match='format'):
    retrieval.Evaluator(scorer, file=path, image_root=root, format='coco')
  with pytest.raises(ValueError, match='split_file'):
    retrieval.Evaluator(scorer, file=path, image_root=root, split_file=path)
  with pytest.raises(ValueError, match='k_test'):
    retrieval.Evaluator(scorer, file=path, image_root=root, k_test=0)
