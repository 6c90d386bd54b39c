"""Probing tasks: targets, losses, metrics (docs/probing.md §2.1, §2.4).

* ``refcocog_box``: the head's 4 outputs go through a sigmoid and are read
  as a normalised (cx, cy, w, h) box. Loss λ_L1·L1 + λ_GIoU·(1 − GIoU) with
  vlg's one box-loss implementation (``vlg.objectives.boxes``); defaults
  λ_L1 = 5, λ_GIoU = 2 (DETR), searched by the HPO. Metric ``acc@0.5``: the
  fraction of predictions whose IoU with the target is **≥ 0.5** (an IoU of
  exactly 0.5 is a hit, as in the RefCOCOg evaluator), plus ``mean_iou``.
  The reference is the mean-box baseline (always answer the training set's
  mean box).
* ``vsr`` and ``rcm``: one logit; binary cross-entropy with logits,
  −[y log σ(s) + (1 − y) log(1 − σ(s))]; ``accuracy`` counts s ≥ 0 (a
  probability ≥ 0.5) as "true", as the VSR evaluator does. Chance is 0.5.

Each task names its breakdown keys (``Task.breakdowns``): example metadata
over which the headline metric is also reported (``<key>/<value>``), e.g.
VSR's relation and meta-category, RCM's true and claimed cell. Examples are
:class:`ProbeExample` rows built from the benchmark readers by
:func:`refcocog_examples`, :func:`vsr_examples` and :func:`rcm_examples`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vlg import benchmarks
from vlg.objectives import boxes

IOU_THRESHOLD = 0.5
DEFAULT_LOSS_WEIGHTS = {'l1_weight': 5.0, 'giou_weight': 2.0}


@dataclasses.dataclass(frozen=True)
class ProbeExample:
  """One probe row: an image file, a text and the target.

  Attributes:
    image: the image file path.
    text: the text fed with the image (expression, caption or RCM phrase).
    target: normalised (cx, cy, w, h) for boxes, (label,) for binary tasks.
    group: examples of one group (the image) stay in one split when a set is
      split into train and validation.
    meta: breakdown fields (category, relation, true_cell, ...).
  """
  image: str
  text: str
  target: tuple[float, ...]
  group: str
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Task:
  """A probing task; see the module docstring."""
  name: str
  kind: str  # 'box' | 'binary'
  headline: str
  breakdowns: tuple[str, ...]

  @property
  def out_dim(self) -> int:
    """The head's number of outputs."""
    return 4 if self.kind == 'box' else 1

  def predict(self, outputs: jax.Array) -> jax.Array:
    """Head outputs → predictions: boxes [B, 4] or probabilities [B]."""
    outputs = outputs.astype(jnp.float32)
    if self.kind == 'box':
      return jax.nn.sigmoid(outputs)
    return jax.nn.sigmoid(outputs[:, 0])

  def loss(self, outputs: jax.Array, targets: jax.Array, weights: jax.Array,
           hparams: Mapping[str, float] | None = None
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted training loss of a batch and its parts.

    Args:
      outputs: the head's raw outputs [B, out_dim].
      targets: [B, 4] boxes or [B, 1] labels.
      weights: [B], 0 on padding rows.
      hparams: ``l1_weight`` / ``giou_weight`` for boxes (defaults
        :data:`DEFAULT_LOSS_WEIGHTS`).

    Returns:
      ``(loss, metrics)``.
    """
    weights = weights.astype(jnp.float32)
    if self.kind == 'box':
      hp = {**DEFAULT_LOSS_WEIGHTS, **(hparams or {})}
      l1, giou, m = boxes.box_losses(self.predict(outputs),
                                     targets.astype(jnp.float32), weights)
      loss = hp['l1_weight'] * l1 + hp['giou_weight'] * giou
      return loss, {'loss_l1': l1, 'loss_giou': giou,
                    'mean_iou': m['mean_iou']}
    per_example = optax.sigmoid_binary_cross_entropy(
        outputs[:, 0].astype(jnp.float32), targets[:, 0].astype(jnp.float32))
    loss = jnp.sum(weights * per_example) / jnp.maximum(jnp.sum(weights), 1.)
    return loss, {'loss_bce': loss}

  def metrics(self, predictions: np.ndarray, targets: np.ndarray,
              meta: Sequence[Mapping[str, Any]] = ()) -> dict[str, float]:
    """Headline metric, extras and breakdowns of ``predictions``.

    Args:
      predictions: :meth:`predict` outputs for every example.
      targets: the examples' targets [N, 4] / [N, 1].
      meta: the examples' metadata (for the breakdowns), or empty.

    Returns:
      ``{headline: ..., 'num_examples': N, '<key>/<value>': ...}`` and, for
      boxes, ``mean_iou``.
    """
    correct, extra = self.per_example(predictions, targets)
    out = {self.headline: _mean(correct), 'num_examples': float(len(correct)),
           **extra}
    groups: dict[str, list[float]] = {}
    for m, c in zip(meta, correct):
      for key in self.breakdowns:
        if m.get(key) is not None:
          groups.setdefault(f'{key}/{m[key]}', []).append(float(c))
    out.update({k: _mean(v) for k, v in sorted(groups.items())})
    return out

  def per_example(self, predictions: np.ndarray, targets: np.ndarray
                  ) -> tuple[np.ndarray, dict[str, float]]:
    """Per-example hit (boxes: IoU ≥ 0.5) or correctness, and extras."""
    predictions = np.asarray(predictions)
    targets = np.asarray(targets)
    if self.kind == 'box':
      iou = box_iou(predictions, targets)
      return iou >= IOU_THRESHOLD, {'mean_iou': _mean(iou)}
    return (predictions >= 0.5) == (targets[:, 0] >= 0.5), {}

  def baseline(self, train_targets: np.ndarray, targets: np.ndarray
               ) -> dict[str, float]:
    """Model-free references: the mean-box Acc@0.5, or chance 0.5."""
    if self.kind == 'box':
      mean_box = np.asarray(train_targets, np.float32).mean(0)
      pred = np.broadcast_to(mean_box, np.shape(targets))
      return {f'mean_box/{self.headline}': _mean(
          box_iou(pred, targets) >= IOU_THRESHOLD)}
    return {f'chance/{self.headline}': 0.5}


TASKS: dict[str, Task] = {
    'refcocog_box': Task('refcocog_box', 'box', 'acc@0.5',
                         ('category', 'supercategory')),
    'vsr': Task('vsr', 'binary', 'accuracy', ('relation', 'category')),
    'rcm': Task('rcm', 'binary', 'accuracy', ('true_cell', 'claimed_cell')),
}


def get_task(name: str) -> Task:
  """The task called ``name`` (one of :data:`TASKS`)."""
  if name not in TASKS:
    raise ValueError(f'Unknown probing task {name!r}; valid: {list(TASKS)}')
  return TASKS[name]


def box_iou(pred_cxcywh: np.ndarray, target_cxcywh: np.ndarray
            ) -> np.ndarray:
  """Row-wise IoU of normalised (cx, cy, w, h) boxes, via ``boxes``."""
  pred = jnp.asarray(pred_cxcywh, jnp.float32).reshape(-1, 4)
  target = jnp.asarray(target_cxcywh, jnp.float32).reshape(-1, 4)
  iou, _ = boxes.box_iou_giou(boxes.cxcywh_to_xyxy(pred),
                              boxes.cxcywh_to_xyxy(target))
  return np.asarray(iou)


def _mean(values: Iterable[float]) -> float:
  values = np.asarray(list(values) if not isinstance(values, np.ndarray)
                      else values, np.float64)
  return float(values.mean()) if values.size else float('nan')


# Examples from the benchmark readers
# ---------------------------------------------------------------------------


def normalised_box(box: Sequence[float], width: float, height: float
                   ) -> tuple[float, float, float, float]:
  """Pixel (x, y, w, h) → normalised (cx, cy, w, h) of the original image."""
  x, y, w, h = (float(v) for v in box)
  return ((x + w / 2) / width, (y + h / 2) / height, w / width, h / height)


def refcocog_examples(refs: Iterable[benchmarks.RefExample], image_root: str,
                      supercategories: Mapping[int, str] | None = None
                      ) -> list[ProbeExample]:
  """Probe rows of RefCOCOg expressions (target: the normalised box).

  ``meta`` holds ``category`` (and ``supercategory`` when a mapping is
  given), ``area`` (box area / image area), ``distance`` (of the box centre
  from the image centre, normalised units), ``ref_id`` and ``sent_id``.
  """
  out = []
  for r in refs:
    cx, cy, w, h = normalised_box(r.box, r.width, r.height)
    meta = {'category': r.category_id, 'ref_id': r.ref_id,
            'sent_id': r.sent_id, 'area': w * h,
            'distance': math.hypot(cx - 0.5, cy - 0.5)}
    if supercategories is not None and r.category_id is not None:
      meta['supercategory'] = supercategories.get(r.category_id)
    out.append(ProbeExample(
        image=benchmarks.image_path(image_root, r.image_file),
        text=r.expression, target=(cx, cy, w, h), group=r.image_file,
        meta=meta))
  return out


def vsr_examples(items: Iterable[benchmarks.VsrExample], image_root: str,
                 categories: Mapping[str, str] | None = None
                 ) -> list[ProbeExample]:
  """Probe rows of VSR (target: the 0/1 label); meta relation, category
  (with ``categories``, a relation it does not list is 'unknown', with a
  warning: ``benchmarks.categorise_relations``)."""
  items = list(items)
  categories = benchmarks.categorise_relations(
      (e.relation for e in items), categories) if categories else {}
  return [ProbeExample(
      image=benchmarks.image_path(image_root, e.image), text=e.caption,
      target=(float(e.label),), group=e.image,
      meta={'relation': e.relation, 'category': categories.get(e.relation)})
          for e in items]


def rcm_examples(items: Iterable[Any], image_root: str
                 ) -> list[ProbeExample]:
  """Probe rows of RCM examples (``image_file``, ``text``, ``label``,
  ``claimed_cell``, ``true_cell``, as ``vlg.projects.probing.rcm`` builds
  them)."""
  out = []
  for e in items:
    out.append(ProbeExample(
        image=benchmarks.image_path(image_root, e.image_file), text=e.text,
        target=(float(e.label),), group=e.image_file,
        meta={'true_cell': int(e.true_cell),
              'claimed_cell': int(e.claimed_cell)}))
  return out


def targets_array(examples: Sequence[ProbeExample]) -> np.ndarray:
  """The examples' targets stacked, float32 [N, 4] or [N, 1]."""
  if not examples:
    raise ValueError('no examples')
  return np.asarray([e.target for e in examples], np.float32)
