"""X-VLM L1/GIoU losses vs hand values, reference (docs/objectives.md §3.2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref  # tests/objectives/reference.py, on sys.path via pytest
from vlg.objectives import boxes

_iou_giou = jax.jit(boxes.box_iou_giou)
_losses = jax.jit(boxes.box_losses)


def _loss_sum(pred, target, weights):
  loss_bbox, loss_giou, _ = boxes.box_losses(pred, target, weights)
  return loss_bbox + loss_giou


_grad = jax.jit(jax.grad(_loss_sum))


def test_cxcywh_to_xyxy():
  got = boxes.cxcywh_to_xyxy(jnp.array([[0.5, 0.4, 0.2, 0.6],
                                        [0.1, 0.9, 0.0, 0.2]]))
  np.testing.assert_allclose(got, [[0.4, 0.1, 0.6, 0.7],
                                   [0.1, 0.8, 0.1, 1.0]], atol=1e-7)


# (a, b, iou, giou) worked by hand from GIoU = IoU − (|C| − |A∪B|)/|C|.
HAND = [
    # Identical.
    ((0, 0, 1, 1), (0, 0, 1, 1), 1.0, 1.0),
    # Unit squares 2 apart: union 2, hull 3×1 → 0 − 1/3.
    ((0, 0, 1, 1), (2, 0, 3, 1), 0.0, -1 / 3),
    # Diagonally apart, far: union 2, hull 16 → −14/16.
    ((0, 0, 1, 1), (3, 3, 4, 4), 0.0, -14 / 16),
    # Nested: inner 1 of outer 4; the hull is the outer box.
    ((0, 0, 2, 2), (0.5, 0.5, 1.5, 1.5), 0.25, 0.25),
    # Overlap 1, union 7, hull 9.
    ((0, 0, 2, 2), (1, 1, 3, 3), 1 / 7, 1 / 7 - 2 / 9),
    # Touching edges: no overlap, hull = union → GIoU 0.
    ((0, 0, 1, 1), (1, 0, 2, 1), 0.0, 0.0),
    # Zero-width box inside another: IoU 0, hull = the other box.
    ((0.5, 0, 0.5, 1), (0, 0, 1, 1), 0.0, 0.0),
    # Zero-width box outside: union 1, hull 2 → −1/2.
    ((2, 0, 2, 1), (0, 0, 1, 1), 0.0, -0.5),
    # Swapped corners clamp to the zero-width box at x = 0.75.
    ((0.75, 0, 0.25, 1), (0, 0, 1, 1), 0.0, 0.0),
    # Two points at the same place: every area floored, 0 and 0.
    ((0.3, 0.3, 0.3, 0.3), (0.3, 0.3, 0.3, 0.3), 0.0, 0.0),
]


def test_iou_giou_hand_values_and_reference():
  a = np.array([h[0] for h in HAND], np.float32)
  b = np.array([h[1] for h in HAND], np.float32)
  iou, giou = _iou_giou(a, b)
  np.testing.assert_allclose(iou, [h[2] for h in HAND], atol=1e-6)
  np.testing.assert_allclose(giou, [h[3] for h in HAND], atol=1e-6)
  for (x, y, want_iou, want_giou) in HAND:
    np.testing.assert_allclose(ref.iou_giou(x, y), (want_iou, want_giou),
                               atol=1e-12)
  # Symmetric in its arguments.
  iou2, giou2 = _iou_giou(b, a)
  np.testing.assert_allclose(iou2, iou, atol=1e-7)
  np.testing.assert_allclose(giou2, giou, atol=1e-7)


def test_iou_giou_random_boxes_match_reference():
  rng = np.random.default_rng(0)
  # Leading dims [3, 20]; some boxes with swapped corners.
  a = rng.uniform(-0.2, 1.2, size=(3, 20, 4)).astype(np.float32)
  b = rng.uniform(-0.2, 1.2, size=(3, 20, 4)).astype(np.float32)
  iou, giou = _iou_giou(a, b)
  assert iou.shape == (3, 20) and iou.dtype == jnp.float32
  want = np.array([ref.iou_giou(x, y) for x, y in
                   zip(a.reshape(-1, 4), b.reshape(-1, 4))]).reshape(3, 20, 2)
  np.testing.assert_allclose(iou, want[..., 0], atol=2e-6)
  np.testing.assert_allclose(giou, want[..., 1], atol=2e-6)
  assert np.all(np.asarray(giou) <= np.asarray(iou) + 1e-7)
  assert np.all(np.asarray(giou) >= -1 - 1e-6)


def _batch(seed, n):
  rng = np.random.default_rng(seed)
  centre = rng.uniform(0.2, 0.8, size=(2, n, 2))
  size = rng.uniform(0.05, 0.5, size=(2, n, 2))
  pred, target = np.concatenate([centre, size], -1).astype(np.float32)
  return pred, target


def test_box_losses_match_reference_with_padding():
  pred, target = _batch(1, 8)
  weights = np.array([1, 1, 0, 1, 0, 1, 1, 0], np.float32)
  loss_bbox, loss_giou, metrics = _losses(pred, target, weights)
  want = ref.box_losses(pred, target, weights)
  np.testing.assert_allclose(loss_bbox, want[0], rtol=1e-5)
  np.testing.assert_allclose(loss_giou, want[1], rtol=1e-5)
  np.testing.assert_allclose(metrics['mean_iou'], want[2], rtol=1e-5)
  assert float(metrics['num_boxes']) == 5.0
  # L_bbox divides by the number of boxes, not by 4·N.
  manual = np.abs(pred - target).sum(-1)[weights > 0].mean()
  np.testing.assert_allclose(loss_bbox, manual, rtol=1e-5)
  # Padding rows do not matter, whatever they hold.
  pred2 = pred.copy()
  pred2[weights == 0] = [0.9, 0.1, 0.0, 0.7]
  again = _losses(pred2, target, weights)
  np.testing.assert_allclose(again[0], loss_bbox, rtol=1e-6)
  np.testing.assert_allclose(again[1], loss_giou, rtol=1e-6)


def test_perfect_prediction_gives_zero_losses():
  pred, _ = _batch(2, 4)
  loss_bbox, loss_giou, metrics = _losses(pred, pred, np.ones(4, np.float32))
  np.testing.assert_allclose([loss_bbox, loss_giou], [0, 0], atol=1e-6)
  np.testing.assert_allclose(metrics['mean_iou'], 1.0, atol=1e-6)


def test_degenerate_predictions_finite_values_and_grads():
  target = np.array([[0.5, 0.5, 0.4, 0.4]] * 4, np.float32)
  pred = np.array([[0.5, 0.5, 0.0, 0.3],    # zero width, inside
                   [0.9, 0.9, 0.0, 0.0],    # a point, outside
                   [0.5, 0.5, -0.2, 0.3],   # negative width: swapped corners
                   [0.5, 0.5, 0.4, 0.4]],   # exact
                  np.float32)
  weights = np.ones(4, np.float32)
  loss_bbox, loss_giou, _ = _losses(pred, target, weights)
  want = ref.box_losses(pred, target, weights)
  np.testing.assert_allclose([loss_bbox, loss_giou], want[:2], rtol=1e-5)
  grad = np.asarray(_grad(pred, target, weights))
  assert np.all(np.isfinite(grad)), grad


def test_grads_match_finite_differences():
  pred, target = _batch(3, 5)
  weights = np.array([1, 0, 1, 1, 1], np.float32)
  grad = np.asarray(_grad(pred, target, weights))

  def f(p):
    loss_bbox, loss_giou, _, _ = ref.box_losses(p, target, weights)
    return loss_bbox + loss_giou

  want = ref.numerical_grad(f, pred.astype(np.float64), eps=1e-6)
  np.testing.assert_allclose(grad, want, atol=1e-4)
  assert np.all(grad[1] == 0)  # The padding row gets no gradient.


def test_no_box_batch_gives_zero_losses_and_zero_grads():
  pred, target = _batch(4, 3)
  weights = np.zeros(3, np.float32)
  loss_bbox, loss_giou, metrics = _losses(pred, target, weights)
  assert float(loss_bbox) == 0.0 and float(loss_giou) == 0.0
  assert float(metrics['num_boxes']) == 0.0
  assert float(metrics['mean_iou']) == 0.0
  grad = np.asarray(_grad(pred, target, weights))
  assert np.all(grad == 0)


def test_float64_stays_float64():
  with jax.enable_x64(True):
    pred, target = _batch(5, 4)
    weights = np.ones(4)
    out = jax.jit(boxes.box_losses)(jnp.asarray(pred, jnp.float64),
                                    jnp.asarray(target, jnp.float64),
                                    jnp.asarray(weights))
    assert out[0].dtype == jnp.float64
    want = ref.box_losses(pred, target, weights)
    np.testing.assert_allclose([out[0], out[1]], want[:2], rtol=1e-12)


def test_shape_errors():
  with pytest.raises(ValueError, match='expected'):
    boxes.box_losses(jnp.zeros((3, 4)), jnp.zeros((3, 4)), jnp.zeros((4,)))
  with pytest.raises(ValueError, match='box_iou_giou'):
    boxes.box_iou_giou(jnp.zeros((3, 4)), jnp.zeros((2, 4)))
