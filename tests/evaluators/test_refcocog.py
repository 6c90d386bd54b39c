"""RefCOCOg: IoU and accuracy on hand-worked boxes, known predictions through
the evaluator, mesh independence, the skipped and missing-image paths."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlg import benchmarks
from vlg import sharding
from vlg.data import tokenizer as tok_lib
from vlg.evaluators import common
from vlg.evaluators import refcocog
from vlg.synthetic import benchmarks as synthetic_benchmarks


def _ref(box, width=64, height=64, name='a.png'):
  return benchmarks.RefExample(image_file=name, expression='the red circle',
                               box=box, width=width, height=height, ref_id=0,
                               sent_id=0)


def test_iou_hand_worked():
  a = np.array([[0, 0, 32, 16], [0, 0, 32, 16], [0, 0, 10, 10],
                [5, 5, 10, 10]], float)
  b = np.array([[0, 0, 16, 16], [16, 0, 32, 16], [20, 20, 5, 5],
                [0, 0, 10, 10]], float)
  # Inside (256 / 512); half overlap 256 / 768; disjoint; 25 / 175.
  np.testing.assert_allclose(refcocog.iou(a, b), [0.5, 1 / 3, 0, 25 / 175])
  np.testing.assert_allclose(refcocog.iou(b, a), refcocog.iou(a, b))


def test_boxes_to_pixels_and_accuracy_hand_worked():
  # Normalised (cx, cy, w, h) of a 64 x 32 image -> pixel (x, y, w, h).
  np.testing.assert_allclose(
      refcocog.boxes_to_pixels(np.array([[0.5, 0.25, 0.5, 0.5]]), [64], [32]),
      [[16, 0, 32, 16]])
  gt = (0, 0, 32, 16)
  ex = [_ref(gt)] * 4
  pred = np.array([
      [0.25, 0.125, 0.5, 0.25],  # Exactly gt: IoU 1.
      [0.125, 0.125, 0.25, 0.25],  # (0, 0, 16, 16) inside: IoU 0.5 counts.
      [0.5, 0.125, 0.5, 0.25],  # (16, 0, 32, 16): IoU 1/3.
      [0.9, 0.9, 0.1, 0.1],  # Disjoint.
  ])
  out = refcocog.metrics(ex, pred, num_in_file=5)
  assert out['accuracy'] == 0.5
  assert out['mean_iou'] == pytest.approx((1 + 0.5 + 1 / 3 + 0) / 4)
  # The whole 64 x 64 image against 32 x 16: IoU 1/8.
  assert out['baseline/whole_image/accuracy'] == 0.0
  assert out['num_evaluated'] == 4 and out['num_in_file'] == 5
  assert out['skipped'] == 0


@pytest.fixture(scope='module')
def synth(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('synth'))
  synthetic_benchmarks.write_all(root, resolution=48, seed=0, num=6,
                                 sets='refcocog')
  return os.path.join(root, 'refcocog')


def _normalised(e):
  x, y, w, h = e.box
  return [(x + w / 2) / e.width, (y + h / 2) / e.height, w / e.width,
          h / e.height]


class KnownBoxes:
  """Predicts the true box for even rows and a far-off one for odd rows."""

  def __init__(self, examples):
    self.truth = {e.expression + e.image_file: _normalised(e)
                  for e in examples}

  def score(self, params, images, texts):
    del params
    out = []
    for r, (image, text) in enumerate(zip(images, texts)):
      box = self.truth[text + os.path.basename(image)]
      out.append(box if r % 2 == 0 else [box[0], box[1], 1e-3, 1e-3])
    return {'box': np.array(out)}


@pytest.mark.parametrize('split', ['val', 'test'])
def test_evaluator_known_boxes(synth, split):
  ex = benchmarks.load_refcocog(synth, split=split)
  ev = refcocog.Evaluator(KnownBoxes(ex), root=synth, split=split,
                          image_root=os.path.join(synth, 'images'))
  out = ev.run(None)
  assert out['accuracy'] == pytest.approx(np.mean(np.arange(len(ex)) % 2 == 0))
  assert out['num_evaluated'] == out['num_in_file'] == len(ex) == 6
  whole = [refcocog.iou(np.array([[0, 0, e.width, e.height]], float),
                        np.array([e.box]))[0] >= 0.5 for e in ex]
  assert out['baseline/whole_image/accuracy'] == pytest.approx(np.mean(whole))


def test_no_box_head_is_skipped(synth):
  assert refcocog.make_scorer({'image_text_scores': None}, None, mesh=None,
                              rules=None) is None
  ev = refcocog.Evaluator(None, root=synth,
                          image_root=os.path.join(synth, 'images'))
  assert ev.run(None) == {'skipped': 1.0, 'num_evaluated': 0.0,
                          'num_in_file': 6.0}


def test_missing_images_counted(synth, tmp_path):
  ex = benchmarks.load_refcocog(synth)
  out = refcocog.Evaluator(KnownBoxes(ex), root=synth,
                           image_root=str(tmp_path)).run(None)
  assert out['num_evaluated'] == 0 and out['num_in_file'] == 6
  assert np.isnan(out['accuracy'])


def _fake_box(params, batch):
  img = batch['image'].astype(jnp.float32).mean(axis=(1, 2)) / 255.0
  txt = (batch['text_ids'] * batch['text_mask']).astype(jnp.float32)
  z = jnp.concatenate([img, txt.sum(-1, keepdims=True) / 50.0], -1)
  return {'box': jax.nn.sigmoid(params['w'] * jnp.sin(z * 3.0))}


def test_same_results_on_any_mesh_and_batch(synth):
  ex = benchmarks.load_refcocog(synth)
  tok = tok_lib.train_tokenizer([e.expression for e in ex] * 5, 40)
  results = []
  for mesh_sizes, batch_size in [((1, 1, 1), 5), ((8, 1, 1), 8),
                                 ((2, 2, 2), 16)]:
    mesh = sharding.make_mesh(
        mesh_sizes, devices=jax.devices()[:int(np.prod(mesh_sizes))])
    scorer = refcocog.make_scorer(
        {'predict_box': _fake_box}, tok, mesh=mesh,
        rules=[('batch', ('data', 'fsdp'))], resolution=16, max_text_len=10,
        batch_size=batch_size)
    assert isinstance(scorer, common.PairScorer)
    with jax.set_mesh(mesh):
      ev = refcocog.Evaluator(scorer, root=synth,
                              image_root=os.path.join(synth, 'images'))
      results.append(ev.run({'w': jnp.float32(2.0)}))
  for other in results[1:]:
    assert other == results[0]
  assert results[0]['mean_iou'] > 0
