"""Probing analyses (docs/probing.md §4, §5): breakdowns, Kendall τ, plots.

Pure functions over per-example predictions and the examples' metadata
(``RefExample``, ``RcmExample`` or anything with their fields), for the probe
runner, colabs and tools. Baselines go beside every number: :data:`CHANCE`
(0.5 for VSR and RCM) and the mean-box Acc@0.5 (:func:`mean_box_correct`:
always answer the training set's mean box). Breakdowns:
:func:`grouped_accuracy`, :func:`vsr_breakdown` (meta-category, relation),
:func:`refcocog_breakdown` (e.g. the 12 COCO super-categories of
:data:`COCO_CATEGORIES`); Kendall τ-b (``scipy.stats.kendalltau``) per group
(:func:`group_correlations`, the paper's Table 5) and per example;
:func:`rcm_confusion` (true × claimed cell). Seed means, layer curves and
Tables 1-3: :mod:`vlg.projects.probing.seed_tables`. Plots are matplotlib
``Figure`` objects without pyplot state, in
:mod:`vlg.projects.probing.plots`: ``fig.savefig('x.png')`` renders them
with Agg.

Predicted boxes are normalised (cx, cy, w, h), as the probe's sigmoid gives
them; IoU is the same in normalised and pixel coordinates.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.stats

from vlg import benchmarks
from vlg.analysis import curves as curves_lib

IOU_THRESHOLD = 0.5
CHANCE: dict[str, float] = {'vsr': 0.5, 'rcm': 0.5}
TASK_COLUMNS: tuple[tuple[str, str], ...] = (
    ('refcocog', 'RefCOCOg Acc@0.5'), ('vsr', 'VSR acc'), ('rcm', 'RCM acc'))
ALL = '(all)'
# A VSR relation the category file does not list, as the VSR evaluator
# counts it (vlg/benchmarks/vsr.py).
NO_CATEGORY = benchmarks.UNKNOWN_CATEGORY

# The 80 COCO detection categories by super-category: "id name" pairs.
_COCO_TAXONOMY = """
person: 1 person
vehicle: 2 bicycle, 3 car, 4 motorcycle, 5 airplane, 6 bus, 7 train,
  8 truck, 9 boat
outdoor: 10 traffic light, 11 fire hydrant, 13 stop sign, 14 parking meter,
  15 bench
animal: 16 bird, 17 cat, 18 dog, 19 horse, 20 sheep, 21 cow, 22 elephant,
  23 bear, 24 zebra, 25 giraffe
accessory: 27 backpack, 28 umbrella, 31 handbag, 32 tie, 33 suitcase
sports: 34 frisbee, 35 skis, 36 snowboard, 37 sports ball, 38 kite,
  39 baseball bat, 40 baseball glove, 41 skateboard, 42 surfboard,
  43 tennis racket
kitchen: 44 bottle, 46 wine glass, 47 cup, 48 fork, 49 knife, 50 spoon,
  51 bowl
food: 52 banana, 53 apple, 54 sandwich, 55 orange, 56 broccoli, 57 carrot,
  58 hot dog, 59 pizza, 60 donut, 61 cake
furniture: 62 chair, 63 couch, 64 potted plant, 65 bed, 67 dining table,
  70 toilet
electronic: 72 tv, 73 laptop, 74 mouse, 75 remote, 76 keyboard,
  77 cell phone
appliance: 78 microwave, 79 oven, 80 toaster, 81 sink, 82 refrigerator
indoor: 84 book, 85 clock, 86 vase, 87 scissors, 88 teddy bear,
  89 hair drier, 90 toothbrush
"""


def _parse_taxonomy(text: str) -> dict[int, tuple[str, str]]:
  out = {}
  for block in re.split(r'\n(?=\w)', text.strip()):
    sup, _, members = block.partition(':')
    for member in ' '.join(members.split()).split(', '):
      cid, name = member.split(' ', 1)
      out[int(cid)] = (name, sup)
  return out


# COCO category id -> (name, super-category).
COCO_CATEGORIES: dict[int, tuple[str, str]] = _parse_taxonomy(_COCO_TAXONOMY)
COCO_SUPERCATEGORIES: tuple[str, ...] = tuple(
    dict.fromkeys(sup for _, sup in COCO_CATEGORIES.values()))


def coco_supercategory_of(category_id: int | None) -> str:
  """The COCO super-category of a category id.

  Raises:
    ValueError: the id is None or not one of the 80 COCO categories.
  """
  if category_id not in COCO_CATEGORIES:
    raise ValueError(f'category_id {category_id!r} is not a COCO category')
  return COCO_CATEGORIES[category_id][1]


# ------------------------------------------------------------------ boxes


def normalised_boxes(examples: Sequence[Any]) -> np.ndarray:
  """Pixel ``(x, y, w, h)`` boxes of examples -> normalised (cx, cy, w, h)."""
  box = np.array([e.box for e in examples], np.float64).reshape(-1, 4)
  size = np.array([(e.width, e.height) for e in examples],
                  np.float64).reshape(-1, 2)
  return np.concatenate([(box[:, :2] + box[:, 2:] / 2) / size,
                         box[:, 2:] / size], axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Row-wise IoU of (cx, cy, w, h) boxes [N, 4] (0 where the union is 0)."""
  a = np.asarray(a, np.float64).reshape(-1, 4)
  b = np.asarray(b, np.float64).reshape(-1, 4)
  lo = np.maximum(a[:, :2] - a[:, 2:] / 2, b[:, :2] - b[:, 2:] / 2)
  hi = np.minimum(a[:, :2] + a[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2)
  inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
  union = np.prod(a[:, 2:], axis=1) + np.prod(b[:, 2:], axis=1) - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


IouFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def box_scores(pred: np.ndarray, examples: Sequence[Any],
               iou_fn: IouFn = box_iou) -> tuple[np.ndarray, np.ndarray]:
  """(IoU, IoU >= 0.5) of normalised (cx, cy, w, h) predictions [N, 4]."""
  pred = np.asarray(pred, np.float64).reshape(-1, 4)
  if len(pred) != len(examples):
    raise ValueError(f'{len(pred)} predictions for {len(examples)} examples')
  overlap = np.asarray(iou_fn(pred, normalised_boxes(examples)), np.float64)
  return overlap, overlap >= IOU_THRESHOLD


def mean_box(train_examples: Sequence[Any]) -> np.ndarray:
  """The training set's mean normalised (cx, cy, w, h) box."""
  if not len(train_examples):
    raise ValueError('mean box of an empty training set')
  return normalised_boxes(train_examples).mean(axis=0)


def mean_box_correct(train_examples: Sequence[Any], examples: Sequence[Any],
                     iou_fn: IouFn = box_iou) -> np.ndarray:
  """Per example: does the training mean box hit it (IoU >= 0.5)?

  Its mean is the mean-box baseline Acc@0.5; per group it is the baseline
  beside a group's accuracy.
  """
  pred = np.tile(mean_box(train_examples), (len(examples), 1))
  return box_scores(pred, examples, iou_fn)[1]


def box_area(examples: Sequence[Any]) -> np.ndarray:
  """Box area as a fraction of the image area, per example."""
  box = normalised_boxes(examples)
  return box[:, 2] * box[:, 3]


def centre_distance(examples: Sequence[Any]) -> np.ndarray:
  """Euclidean distance of the box centre from the image centre, normalised
  coordinates (range [0, sqrt(0.5)])."""
  box = normalised_boxes(examples)
  return np.hypot(box[:, 0] - 0.5, box[:, 1] - 0.5)


# ------------------------------------------------------------ breakdowns


@dataclasses.dataclass(frozen=True)
class GroupStat:
  """Accuracy of one group, with its baseline on the same examples."""
  count: int
  accuracy: float
  baseline: float


def grouped_accuracy(correct: Sequence[Any], groups: Sequence[Any],
                     baseline: float | Sequence[Any] = 0.5
                     ) -> dict[str, GroupStat]:
  """Accuracy per group (keys sorted), plus :data:`ALL` first.

  Args:
    correct: per example, whether the prediction is right (or a score).
    groups: per example, its group (converted with ``str``).
    baseline: a constant (chance) or per-example baseline correctness (e.g.
      :func:`mean_box_correct`), averaged over each group.
  """
  correct = np.asarray(correct, np.float64).ravel()
  groups = np.array([str(g) for g in groups], dtype=object)
  if len(groups) != len(correct):
    raise ValueError(f'{len(correct)} results for {len(groups)} groups')
  base = np.broadcast_to(np.asarray(baseline, np.float64), correct.shape)
  out = {ALL: GroupStat(len(correct), mean_or_nan(correct),
                        mean_or_nan(base))}
  for g in sorted(set(groups)):
    idx = groups == g
    out[g] = GroupStat(int(idx.sum()), mean_or_nan(correct[idx]),
                       mean_or_nan(base[idx]))
  return out


def refcocog_breakdown(correct: Sequence[Any], examples: Sequence[Any],
                       train_examples: Sequence[Any], groups: Sequence[Any],
                       iou_fn: IouFn = box_iou) -> dict[str, GroupStat]:
  """Acc@0.5 per group, beside the training mean box's Acc@0.5 on the same
  group's examples.

  ``groups``: e.g. ``[coco_supercategory_of(e.category_id) for e in ...]``
  for real RefCOCOg, or the category ids (the synthetic world's shape ids
  1..8 are not COCO ids).
  """
  return grouped_accuracy(correct, groups,
                          mean_box_correct(train_examples, examples, iou_fn))


def mean_or_nan(x: np.ndarray) -> float:
  """The mean of ``x``, NaN when it is empty (a group with no examples)."""
  return float(np.mean(x)) if len(x) else math.nan


def vsr_breakdown(correct: Sequence[Any], relations: Sequence[str],
                  relation_to_category: Mapping[str, str]
                  ) -> tuple[dict[str, GroupStat], dict[str, GroupStat]]:
  """VSR accuracy per meta-category and per relation (chance 0.5 beside).

  A relation missing from ``relation_to_category`` (VSR's single
  ``congruent``) is counted under :data:`NO_CATEGORY` ('unknown', as the
  VSR evaluator counts it), never dropped.

  Returns:
    ``(by_category, by_relation)``.
  """
  categories = [relation_to_category.get(r, NO_CATEGORY) for r in relations]
  chance = CHANCE['vsr']
  return (grouped_accuracy(correct, categories, chance),
          grouped_accuracy(correct, relations, chance))


def breakdown_markdown(runs: Mapping[str, Mapping[str, GroupStat]],
                       baseline_name: str = 'chance') -> str:
  """A markdown table: group, n, baseline, then one accuracy column per run
  (e.g. frozen / unfrozen); percentages with 2 decimals.

  Raises:
    ValueError: runs disagree on a group's count or baseline (they were not
      scored on the same examples).
  """
  groups = list(dict.fromkeys(g for stats in runs.values() for g in stats))
  table = []
  for g in groups:
    stats = [s[g] for s in runs.values() if g in s]
    if any(s.count != stats[0].count or not math.isclose(
        s.baseline, stats[0].baseline, abs_tol=1e-12) for s in stats):
      raise ValueError(f'group {g!r}: runs have different counts or '
                       'baselines; compare runs on the same examples')
    table.append([g, stats[0].count, percent(stats[0].baseline)] + [
        percent(s[g].accuracy) if g in s else '–' for s in runs.values()])
  return curves_lib.markdown_table(['group', 'n', baseline_name, *runs], table)


def percent(value: float | None) -> str:
  """A fraction as a percentage with 2 decimals; '–' for None or NaN."""
  return '–' if value is None or math.isnan(value) else f'{100 * value:.2f}'


# --------------------------------------------------------------- Kendall


@dataclasses.dataclass(frozen=True)
class Correlation:
  """Kendall τ-b between a score and a factor, over ``n`` points."""
  factor: str
  tau: float
  p_value: float
  n: int


def kendall_tau(x: Sequence[float], y: Sequence[float]
                ) -> tuple[float, float]:
  """Kendall τ-b and its two-sided p-value (NaN for constant input)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.shape != y.shape:
    raise ValueError(f'kendall_tau of shapes {x.shape} and {y.shape}')
  if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
    return math.nan, math.nan
  result = scipy.stats.kendalltau(x, y, variant='b')
  return float(result.statistic), float(result.pvalue)


def group_correlations(scores: Sequence[Any], groups: Sequence[Any],
                       examples: Sequence[Any],
                       train_groups: Iterable[Any]) -> list[Correlation]:
  """Table 5: τ of the per-group mean of ``scores`` (correctness or IoU of
  the test ``examples``, grouped by ``groups``) against each group's count
  in ``train_groups`` (the group of every training example), its mean box
  area and its mean box-centre distance from the image centre."""
  if not len(scores) == len(groups) == len(examples):
    raise ValueError(f'{len(scores)} scores, {len(groups)} groups, '
                     f'{len(examples)} examples')
  counts = collections.Counter(str(g) for g in train_groups)
  score, area, distance = (
      {k: v.accuracy for k, v in grouped_accuracy(x, groups).items()
       if k != ALL} for x in (scores, box_area(examples),
                              centre_distance(examples)))
  factors = {'train examples': {k: counts[k] for k in score},
             'box area': area, 'distance from centre': distance}
  return [Correlation(name, *kendall_tau(list(score.values()),
                                         [f[k] for k in score]), len(score))
          for name, f in factors.items()]


def example_correlations(scores: Sequence[Any], examples: Sequence[Any],
                         groups: Sequence[Any] | None = None,
                         train_groups: Iterable[Any] | None = None
                         ) -> list[Correlation]:
  """Per-example score (IoU or correctness) against box area and distance,
  and, given the groups, against the training count of the example's group.
  """
  scores = np.asarray(scores, np.float64).ravel()
  if len(scores) != len(examples):
    raise ValueError(f'{len(scores)} scores for {len(examples)} examples')
  factors = {'box area': box_area(examples),
             'distance from centre': centre_distance(examples)}
  if groups is not None and train_groups is not None:
    counts = collections.Counter(str(g) for g in train_groups)
    factors['train examples'] = np.array([counts[str(g)] for g in groups],
                                         np.float64)
  return [Correlation(name, *kendall_tau(scores, values), len(scores))
          for name, values in factors.items()]


def correlations_markdown(runs: Mapping[str, Sequence[Correlation]]) -> str:
  """Factors as rows, runs as columns: ``τ (p)``."""
  factors = list(dict.fromkeys(c.factor for cs in runs.values() for c in cs))
  def cell(f, cs):
    c = next((c for c in cs if c.factor == f), None)
    return ('–' if c is None or math.isnan(c.tau)
            else f'{c.tau:.2f} (p={c.p_value:.3f}, n={c.n})')
  return curves_lib.markdown_table(['factor', *runs], [
      [f] + [cell(f, cs) for cs in runs.values()] for f in factors])


# -------------------------------------------------------------- RCM map


@dataclasses.dataclass(frozen=True)
class RcmConfusion:
  """Counts over (true cell, claimed cell), 9 x 9, cells ``row * 3 + col``.

  Attributes:
    counts: examples per (true, claimed).
    said_match: of those, how many the probe called a match (label 1).
    correct: of those, how many it got right.
  """
  counts: np.ndarray
  said_match: np.ndarray
  correct: np.ndarray

  def accuracy(self) -> np.ndarray:
    """Accuracy per (true, claimed); NaN where there are no examples."""
    return _ratio(self.correct, self.counts)

  def match_rate(self) -> np.ndarray:
    """P(probe says match | true, claimed); ideally the identity."""
    return _ratio(self.said_match, self.counts)

  def grid(self, by: str = 'claimed') -> np.ndarray:
    """Accuracy per ``'claimed'`` or ``'true'`` cell, laid out 3 x 3."""
    axis = {'claimed': 0, 'true': 1}[by]
    return _ratio(self.correct.sum(axis), self.counts.sum(axis)).reshape(3, 3)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def rcm_confusion(true_cells: Sequence[int], claimed_cells: Sequence[int],
                  predicted: Sequence[Any]) -> RcmConfusion:
  """The RCM true × claimed map from the probe's 0/1 predictions."""
  true = np.asarray(true_cells, np.int64).ravel()
  claimed = np.asarray(claimed_cells, np.int64).ravel()
  said = np.asarray(predicted).ravel().astype(bool)
  if not len(true) == len(claimed) == len(said):
    raise ValueError('true_cells, claimed_cells and predicted differ in '
                     'length')
  if len(true) and (min(true.min(), claimed.min()) < 0 or
                    max(true.max(), claimed.max()) > 8):
    raise ValueError('cells must be 0..8')
  counts, said_match, correct = (np.zeros((9, 9), np.int64) for _ in range(3))
  np.add.at(counts, (true, claimed), 1)
  np.add.at(said_match, (true, claimed), said)
  np.add.at(correct, (true, claimed), said == (true == claimed))
  return RcmConfusion(counts, said_match, correct)
