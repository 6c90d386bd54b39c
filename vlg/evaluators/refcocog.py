"""RefCOCOg (umd): does the predicted box of the expression hit the target?

  config.evals.refcocog_val = dict(type='refcocog', root='.../refcocog',
                                   image_root='.../train2014', split='val',
                                   log_steps=5000)

For each expression the model's box head predicts a box on (image,
expression) (``predict_box``: normalised (cx, cy, w, h) of the square-resized
image, which maps linearly back to the original since resizing only scales
each axis). ``accuracy`` is the fraction with IoU(pred, gt) >= 0.5, gt being
the reader's pixel ``(x, y, w, h)``. Also ``mean_iou``,
``num_evaluated`` / ``num_in_file`` and a model-free reference,
``baseline/whole_image/accuracy``: the accuracy of answering the whole image
(RefCOCOg has no chance level of its own; the synthetic set's manifest gives
the random-object baseline). A model without a box head cannot be evaluated:
the evaluator logs why once and returns ``skipped`` = 1 with the counts.
"""

from __future__ import annotations

import logging

import numpy as np

from vlg import benchmarks
from vlg.evaluators import common

IOU_THRESHOLD = 0.5


def make_scorer(predict_fns, tokenizer, *, mesh, rules, **settings
                ) -> common.PairScorer | None:
  """A scorer over ``predict_box``; None when the model has no box head."""
  if 'predict_box' not in predict_fns:
    return None
  return common.PairScorer(predict_fns['predict_box'], tokenizer, mesh=mesh,
                           rules=rules, **settings)


def boxes_to_pixels(pred: np.ndarray, width, height) -> np.ndarray:
  """Normalised (cx, cy, w, h) [N, 4] → pixel (x, y, w, h) [N, 4]."""
  pred = np.asarray(pred, np.float64)
  scale = np.stack([np.asarray(width, np.float64),
                    np.asarray(height, np.float64)] * 2, axis=-1)
  xywh = np.concatenate([pred[:, :2] - pred[:, 2:] / 2, pred[:, 2:]], -1)
  return xywh * scale


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Row-wise IoU of (x, y, w, h) boxes [N, 4] (0 for empty unions)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  x0 = np.maximum(a[:, 0], b[:, 0])
  y0 = np.maximum(a[:, 1], b[:, 1])
  x1 = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
  y1 = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
  inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
  union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def metrics(examples, pred_boxes, num_in_file: int) -> common.Results:
  """Accuracy at IoU >= 0.5 from normalised (cx, cy, w, h) predictions,
  with the per-example hits and IoUs."""
  n = len(examples)
  out = {'num_evaluated': float(n), 'num_in_file': float(num_in_file),
         'skipped': 0.0}
  gt = np.array([e.box for e in examples], np.float64).reshape(n, 4)
  widths = np.array([e.width for e in examples], np.float64)
  heights = np.array([e.height for e in examples], np.float64)
  pred = boxes_to_pixels(np.asarray(pred_boxes).reshape(n, 4), widths,
                         heights)
  overlap = iou(pred, gt)
  whole = np.stack([np.zeros(n), np.zeros(n), widths, heights], -1)
  out['accuracy'] = common.mean_or_nan(overlap >= IOU_THRESHOLD)
  out['mean_iou'] = common.mean_or_nan(overlap)
  out['baseline/whole_image/accuracy'] = common.mean_or_nan(
      iou(whole, gt) >= IOU_THRESHOLD)
  return common.Results(out, {
      'accuracy': overlap >= IOU_THRESHOLD, 'mean_iou': overlap,
      'baseline/whole_image/accuracy': iou(whole, gt) >= IOU_THRESHOLD})


class Evaluator:
  """RefCOCOg box accuracy at IoU >= 0.5 (skipped without a box head)."""

  def __init__(self, scorer: common.PairScorer | None, *, root: str,
               image_root: str, split: str = 'val', split_by: str = 'umd'):
    self.scorer = scorer
    self.examples = benchmarks.load_refcocog(root, split=split,
                                             split_by=split_by)
    present, missing = benchmarks.check_images(self.examples, image_root,
                                               decode=True)
    if missing:
      logging.warning('RefCOCOg %s: %d images missing under %s, e.g. %s',
                      split, len(missing), image_root, missing[:5])
    self.present, self.image_root = present, image_root
    if scorer is None:
      logging.warning('RefCOCOg %s: skipped, the model has no box head '
                      '(config.model.box_head=False)', split)

  def run(self, params) -> dict[str, float]:
    if self.scorer is None:
      return {'skipped': 1.0, 'num_evaluated': 0.0,
              'num_in_file': float(len(self.examples))}
    ex = self.present
    paths = [benchmarks.image_path(self.image_root, e.image_file) for e in ex]
    boxes = self.scorer.score(params, paths, [e.expression for e in ex]).get(
        'box', np.zeros((0, 4)))
    return metrics(ex, boxes, num_in_file=len(self.examples))
