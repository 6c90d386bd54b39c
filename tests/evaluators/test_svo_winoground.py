"""SVO-Probes and Winoground evaluators: hand-worked metrics, known scores,
the real scorer over meshes and batch sizes, the missing-image path."""

import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlg import benchmarks
from vlg import sharding
from vlg.benchmarks import svo_probes as svo_reader
from vlg.data import tokenizer as tok_lib
from vlg.evaluators import common
from vlg.evaluators import svo_probes
from vlg.evaluators import winoground
from vlg.synthetic import benchmarks as synthetic_benchmarks


def _svo(neg_type):
  flags = [neg_type == t for t in svo_reader.NEG_TYPES]
  return benchmarks.SvoExample(
      index=0, sentence='s', pos_image='p.png', neg_image='n.png',
      pos_triplet=('a', 'b', 'c'), neg_triplet=('a', 'b', 'd'),
      subj_neg=flags[0], verb_neg=flags[1], obj_neg=flags[2],
      neg_type=neg_type)


def test_svo_metrics_hand_worked():
  ex = [_svo('subject'), _svo('subject'), _svo('verb'), _svo('object'),
        _svo(None)]
  pos = [0.9, 0.2, 0.5, 0.7, 0.6]
  neg = [0.1, 0.3, 0.5, 0.1, 0.1]  # Right, wrong, tie (wrong), right, right.
  out = svo_probes.metrics(ex, pos, neg, num_in_file=7)
  assert out['accuracy'] == pytest.approx(3 / 5)
  assert out['subject/accuracy'] == pytest.approx(1 / 2)
  assert out['verb/accuracy'] == 0.0
  assert out['object/accuracy'] == 1.0
  assert out['subject/num_evaluated'] == 2
  assert out['num_evaluated'] == 5 and out['num_in_file'] == 7
  assert out['chance/accuracy'] == 0.5


def _wino(tag='', secondary='', collapsed='', preds=None):
  return benchmarks.WinogroundExample(
      id=0, image_0='a', image_1='b', caption_0='x y', caption_1='y x',
      tag=tag, secondary_tag=secondary, num_main_preds=preds,
      collapsed_tag=collapsed)


def test_winoground_metrics_hand_worked():
  # scores[n, c, i] = s(caption c, image i).
  scores = np.array([
      [[0.9, 0.1], [0.2, 0.8]],  # text, image and group right.
      [[0.9, 0.95], [0.2, 0.99]],  # text right; image: 0.9 < 0.95 wrong.
      [[0.5, 0.1], [0.6, 0.7]],  # text: 0.5 < 0.6 wrong; image right.
      [[0.5, 0.5], [0.5, 0.5]],  # all ties: all wrong.
  ])
  ex = [_wino('Noun', 'Symbolic, Series', 'Object', 1),
        _wino('Noun', '', 'Object', 1), _wino('Verb', 'Series', 'Relation', 2),
        _wino('Verb', '', 'Relation', 2)]
  out = winoground.metrics(ex, scores, num_in_file=400)
  assert out['text'] == pytest.approx(2 / 4)
  assert out['image'] == pytest.approx(2 / 4)
  assert out['group'] == pytest.approx(1 / 4)
  assert out['tag/Noun/text'] == 1.0 and out['tag/Noun/image'] == 0.5
  assert out['tag/Verb/group'] == 0.0 and out['tag/Verb/image'] == 0.5
  assert out['secondary_tag/Series/group'] == pytest.approx(1 / 2)
  assert out['secondary_tag/Series/num_evaluated'] == 2
  assert out['secondary_tag/Symbolic/text'] == 1.0
  assert out['collapsed_tag/Relation/text'] == 0.0
  assert out['num_main_preds/1/group'] == 0.5
  assert out['chance/text'] == 0.25 and out['chance/group'] == pytest.approx(
      1 / 6)
  assert out['num_in_file'] == 400


def test_winoground_chance_is_random_score_rate():
  rng = np.random.default_rng(0)
  correct = winoground.example_scores(rng.uniform(size=(200_000, 2, 2)))
  for name, chance in winoground.CHANCE.items():
    assert correct[name].mean() == pytest.approx(chance, abs=0.005)


@pytest.fixture(scope='module')
def synth(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('synth'))
  synthetic_benchmarks.write_all(root, resolution=48, seed=0, num=10,
                                 sets='svo_probes,winoground')
  return root


def _table_score(image, text):
  """A fixed pseudo-random score of (image file name, text)."""
  key = f'{os.path.basename(image)}|{text}'.encode()
  return int(hashlib.sha256(key).hexdigest()[:8], 16) / 2**32


class TableScorer:
  """Stands in for PairScorer: known scores, rows logged."""

  def __init__(self):
    self.calls = 0

  def score(self, params, images, texts):
    del params
    self.calls += 1
    s = np.array([_table_score(i, t) for i, t in zip(images, texts)])
    return {'itm': s, 'itc': -s}


def test_svo_evaluator_known_scores(synth):
  file = os.path.join(synth, 'svo_probes', 'svo_probes.jsonl')
  image_root = os.path.join(synth, 'svo_probes', 'images')
  ev = svo_probes.Evaluator(TableScorer(), file=file, image_root=image_root)
  out = ev.run(None)
  ex = benchmarks.load_svo_probes(file)
  right = [_table_score(e.pos_image, e.sentence) >
           _table_score(e.neg_image, e.sentence) for e in ex]
  assert out['accuracy'] == pytest.approx(np.mean(right))
  for t in svo_reader.NEG_TYPES:
    rows = [r for r, e in zip(right, ex) if e.neg_type == t]
    assert out[f'{t}/accuracy'] == pytest.approx(np.mean(rows))
  assert out['num_evaluated'] == out['num_in_file'] == 10
  itc = svo_probes.Evaluator(TableScorer(), file=file, image_root=image_root,
                             scorer_name='itc').run(None)
  # The itc stand-in is the negated itm score: every strict win flips.
  assert itc['accuracy'] == pytest.approx(1 - out['accuracy'])


def test_winoground_evaluator_known_scores(synth):
  root = os.path.join(synth, 'winoground')
  out = winoground.Evaluator(TableScorer(), root=root).run(None)
  text, image = [], []
  for e in benchmarks.load_winoground(root):
    s = {(c, i): _table_score(f'{e.image_0 if i == 0 else e.image_1}.png',
                              e.caption_0 if c == 0 else e.caption_1)
         for c in (0, 1) for i in (0, 1)}
    text.append(s[0, 0] > s[1, 0] and s[1, 1] > s[0, 1])
    image.append(s[0, 0] > s[0, 1] and s[1, 1] > s[1, 0])
  assert out['text'] == pytest.approx(np.mean(text))
  assert out['image'] == pytest.approx(np.mean(image))
  assert out['group'] == pytest.approx(
      np.mean(np.array(text) & np.array(image)))
  assert out['num_evaluated'] == 10


def test_missing_images_are_skipped_and_counted(synth, tmp_path):
  scorer = TableScorer()
  svo = svo_probes.Evaluator(
      scorer, file=os.path.join(synth, 'svo_probes', 'svo_probes.jsonl'),
      image_root=str(tmp_path)).run(None)
  assert svo['num_evaluated'] == 0 and svo['num_in_file'] == 10
  assert np.isnan(svo['accuracy'])
  wino = winoground.Evaluator(scorer, root=os.path.join(synth, 'winoground'),
                              image_root=str(tmp_path)).run(None)
  assert wino['num_evaluated'] == 0 and wino['num_in_file'] == 10
  with pytest.raises(ValueError, match='scorer_name'):
    winoground.Evaluator(scorer, root=os.path.join(synth, 'winoground'),
                         scorer_name='clip')


def _fake_predict(params, batch):
  img = batch['image'].astype(jnp.float32).mean(axis=(1, 2)) / 255.0
  txt = batch['text_ids'].astype(jnp.float32) * batch['text_mask']
  s = jnp.sin(params['w'] * img @ jnp.arange(1.0, 4.0) + txt.sum(-1) / 7.0)
  return {'itm': s, 'itc': -s}


def test_results_identical_across_meshes_and_batch_sizes(synth):
  tok = tok_lib.train_tokenizer(
      [e.sentence for e in benchmarks.load_svo_probes(
          os.path.join(synth, 'svo_probes', 'svo_probes.jsonl'))] * 3, 60)
  results = []
  for mesh_sizes, batch_size in [((1, 1, 1), 3), ((8, 1, 1), 8),
                                 ((2, 2, 2), 16)]:
    mesh = sharding.make_mesh(
        mesh_sizes, devices=jax.devices()[:int(np.prod(mesh_sizes))])
    with jax.set_mesh(mesh):
      scorer = common.PairScorer(
          _fake_predict, tok, resolution=16, max_text_len=12,
          batch_size=batch_size, mesh=mesh,
          rules=[('batch', ('data', 'fsdp'))])
      svo = svo_probes.Evaluator(
          scorer, file=os.path.join(synth, 'svo_probes',
                                    'svo_probes.jsonl'),
          image_root=os.path.join(synth, 'svo_probes', 'images'))
      wino = winoground.Evaluator(scorer,
                                  root=os.path.join(synth, 'winoground'))
      params = {'w': jnp.float32(3.0)}
      results.append((svo.run(params), wino.run(params)))
  for other in results[1:]:
    assert other == results[0]
  assert results[0][0]['num_evaluated'] == 10
