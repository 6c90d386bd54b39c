"""Tests of the probing tasks: box loss and Acc@0.5, BCE, breakdowns."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from vlg import benchmarks
from vlg.projects.probing import tasks


def _logit(p):
  p = np.asarray(p, np.float64)
  return np.log(p / (1 - p))


def test_acc_at_half_counts_iou_exactly_half_as_hit():
  task = tasks.get_task('refcocog_box')
  target = np.array([[0.25, 0.25, 0.5, 0.5]] * 3, np.float32)
  # xyxy target (0, 0, .5, .5); predictions (0, 0, .5, h): IoU = h / .5.
  pred = np.array([[0.25, 0.125, 0.5, 0.25],         # IoU exactly 0.5
                   [0.25, 0.124, 0.5, 0.248],        # IoU 0.496
                   [0.25, 0.25, 0.5, 0.5]], np.float32)  # IoU 1
  correct, extra = task.per_example(pred, target)
  assert correct.tolist() == [True, False, True]
  np.testing.assert_allclose(extra['mean_iou'], (0.5 + 0.496 + 1) / 3,
                             rtol=1e-5)
  assert task.metrics(pred, target)['acc@0.5'] == pytest.approx(2 / 3)


def test_box_loss_through_the_task_matches_numpy_and_giou_is_negative():
  task = tasks.get_task('refcocog_box')
  # Two disjoint boxes: pred (0, 0, .2, .2), target (.6, .6, 1, 1).
  pred_box = np.array([[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.4, 0.4]])
  target = np.array([[0.8, 0.8, 0.4, 0.4], [0.5, 0.5, 0.2, 0.2]],
                    np.float32)
  weights = np.array([1.0, 1.0], np.float32)
  outputs = jnp.asarray(_logit(pred_box), jnp.float32)
  loss, m = task.loss(outputs, target, weights,
                      {'l1_weight': 3.0, 'giou_weight': 2.0})
  # GIoU by hand: disjoint: IoU 0, hull 1, union .2 → GIoU = -0.8 < 0.
  # Nested: IoU = .04/.16 = .25, hull = union → GIoU .25.
  giou = np.array([0 - (1 - 0.2) / 1, 0.25])
  assert giou[0] < 0
  l1 = np.abs(pred_box - target).sum(-1)
  np.testing.assert_allclose(m['loss_giou'], np.mean(1 - giou), rtol=1e-5)
  np.testing.assert_allclose(m['loss_l1'], l1.mean(), rtol=1e-5)
  np.testing.assert_allclose(loss, 3 * l1.mean() + 2 * np.mean(1 - giou),
                             rtol=1e-5)
  # A zero weight drops the row.
  _, m = task.loss(outputs, target, np.array([0.0, 1.0], np.float32))
  np.testing.assert_allclose(m['loss_giou'], 1 - 0.25, rtol=1e-5)


@pytest.mark.parametrize('name', ['vsr', 'rcm'])
def test_bce_matches_numpy_float64(name):
  task = tasks.get_task(name)
  rng = np.random.RandomState(0)
  logits = rng.randn(6, 1) * 4
  labels = rng.randint(0, 2, (6, 1)).astype(np.float32)
  weights = np.array([1, 1, 1, 1, 0, 1], np.float32)
  loss, _ = task.loss(jnp.asarray(logits, jnp.float32), labels, weights)
  p = 1 / (1 + np.exp(-logits[:, 0]))
  per = -(labels[:, 0] * np.log(p) + (1 - labels[:, 0]) * np.log(1 - p))
  np.testing.assert_allclose(loss, (per * weights).sum() / weights.sum(),
                             rtol=1e-5)
  probs = np.asarray(task.predict(jnp.asarray(logits, jnp.float32)))
  np.testing.assert_allclose(probs, p, rtol=1e-5)
  acc = task.metrics(probs, labels)['accuracy']
  assert acc == pytest.approx(np.mean((p >= 0.5) == (labels[:, 0] == 1)))


def test_breakdowns_and_baselines():
  task = tasks.get_task('vsr')
  probs = np.array([0.9, 0.2, 0.7, 0.4])
  labels = np.array([[1], [1], [0], [0]], np.float32)
  meta = [{'relation': 'left of', 'category': 'Directional'},
          {'relation': 'left of', 'category': 'Directional'},
          {'relation': 'near', 'category': 'Proximity'},
          {'relation': 'near', 'category': None}]
  m = task.metrics(probs, labels, meta)
  assert m['accuracy'] == 0.5
  assert m['relation/left of'] == 0.5 and m['relation/near'] == 0.5
  assert m['category/Directional'] == 0.5 and m['category/Proximity'] == 0.0
  assert 'category/None' not in m
  assert task.baseline(labels, labels) == {'chance/accuracy': 0.5}
  box = tasks.get_task('refcocog_box')
  train = np.array([[0.3, 0.5, 0.4, 0.4], [0.7, 0.5, 0.4, 0.4]], np.float32)
  test = np.array([[0.5, 0.5, 0.4, 0.4], [0.1, 0.1, 0.1, 0.1]], np.float32)
  assert box.baseline(train, test) == {'mean_box/acc@0.5': 0.5}
  assert tasks.get_task('rcm').breakdowns == ('true_cell', 'claimed_cell')
  with pytest.raises(ValueError, match='refcocog_box'):
    tasks.get_task('gqa')


def test_refcocog_examples_normalise_boxes():
  ref = benchmarks.RefExample(
      image_file='a.png', expression='the red circle', box=(10, 20, 30, 40),
      width=100, height=200, ref_id=1, sent_id=2, category_id=3)
  (ex,) = tasks.refcocog_examples([ref], '/imgs', {3: 'shape'})
  assert ex.image == '/imgs/a.png' and ex.group == 'a.png'
  np.testing.assert_allclose(ex.target, (0.25, 0.2, 0.3, 0.2))
  assert ex.meta['supercategory'] == 'shape'
  assert ex.meta['area'] == pytest.approx(0.06)
  assert ex.meta['distance'] == pytest.approx(math.hypot(0.25, 0.3))


def test_vsr_examples_put_a_relation_without_category_under_unknown():
  import os  # pylint: disable=g-import-not-at-top
  vsr_dir = os.path.join(os.path.dirname(__file__), '..', '..', 'testdata',
                         'real_benchmarks', 'vsr')
  items = benchmarks.load_vsr(os.path.join(vsr_dir, 'random_current',
                                           'dev_excerpt.jsonl'))
  categories = benchmarks.load_vsr_categories(
      os.path.join(vsr_dir, 'rel_meta_category_dict.txt'))
  rows = tasks.vsr_examples(items, 'images', categories)
  by_relation = {r.meta['relation']: r.meta['category'] for r in rows}
  assert by_relation['congruent'] == 'unknown'
  assert all(by_relation[r] == categories[r] for r in by_relation
             if r != 'congruent')
  # Without a category file there are no categories at all.
  assert all(r.meta['category'] is None
             for r in tasks.vsr_examples(items, 'images'))
