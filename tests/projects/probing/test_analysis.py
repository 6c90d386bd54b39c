"""vlg.projects.probing.analysis on hand-worked examples and independent
references.

Kendall τ-b is checked against a float64 O(n²) re-derivation of the
formula; the COCO taxonomy against the published id gaps and group sizes;
the RCM map and the mean-box baseline against hand counts.
"""

import itertools
import math
import os

import numpy as np
import pytest

from vlg import benchmarks
from vlg.projects.probing import analysis as probing
from vlg.projects.probing import plots as probing_plots
from vlg.projects.probing import seed_tables

VSR_CATEGORIES = os.path.join(os.path.dirname(__file__), '..', '..',
                              'testdata', 'real_benchmarks', 'vsr',
                              'rel_meta_category_dict.txt')


def _ex(cxcywh, width=100, height=100, category_id=1):
  """A RefExample from a normalised (cx, cy, w, h) box."""
  cx, cy, w, h = cxcywh
  return benchmarks.RefExample(
      image_file='a.jpg', expression='it',
      box=((cx - w / 2) * width, (cy - h / 2) * height, w * width,
           h * height), width=width, height=height, ref_id=0, sent_id=0,
      category_id=category_id)


def _tau_b(x, y):
  """τ-b = (n_c − n_d) / sqrt((n0 − n1)(n0 − n2)), pair by pair."""
  nc = nd = tx = ty = 0
  for i, j in itertools.combinations(range(len(x)), 2):
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    nc += sx * sy > 0
    nd += sx * sy < 0
    tx += sx == 0
    ty += sy == 0
  n0 = len(x) * (len(x) - 1) / 2
  return (nc - nd) / math.sqrt((n0 - tx) * (n0 - ty))


def test_kendall_tau_b_matches_the_formula_with_ties():
  rng = np.random.default_rng(0)
  for n in (5, 17, 40):
    x = rng.integers(0, 4, n).astype(float)  # Many ties.
    y = x + rng.integers(-2, 3, n)
    tau, p = probing.kendall_tau(x, y)
    assert tau == pytest.approx(_tau_b(x, y), abs=1e-12)
    assert 0 <= p <= 1
  x = rng.normal(size=30)
  assert probing.kendall_tau(x, 2 * x + 1)[0] == pytest.approx(1.0)
  assert probing.kendall_tau(x, -x)[0] == pytest.approx(-1.0)
  assert probing.kendall_tau(x, -x)[1] < 1e-6
  assert all(math.isnan(v) for v in probing.kendall_tau(x, np.ones(30)))


def test_coco_taxonomy_covers_the_80_categories():
  gaps = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
  assert set(probing.COCO_CATEGORIES) == set(range(1, 91)) - gaps
  assert len(probing.COCO_CATEGORIES) == 80
  sizes = {'person': 1, 'vehicle': 8, 'outdoor': 5, 'animal': 10,
           'accessory': 5, 'sports': 10, 'kitchen': 7, 'food': 10,
           'furniture': 6, 'electronic': 6, 'appliance': 5, 'indoor': 7}
  assert probing.COCO_SUPERCATEGORIES == tuple(sizes)
  for sup, size in sizes.items():
    assert sum(s == sup for _, s in probing.COCO_CATEGORIES.values()) == size
  for cid, name, sup in ((1, 'person', 'person'), (18, 'dog', 'animal'),
                         (43, 'tennis racket', 'sports'),
                         (67, 'dining table', 'furniture'),
                         (77, 'cell phone', 'electronic'),
                         (90, 'toothbrush', 'indoor')):
    assert probing.COCO_CATEGORIES[cid] == (name, sup)
    assert probing.coco_supercategory_of(cid) == sup
  for bad in (12, 0, 91, None):
    with pytest.raises(ValueError, match='not a COCO category'):
      probing.coco_supercategory_of(bad)


def test_iou_and_mean_box_baseline_hand_worked():
  # Training boxes average to (0.5, 0.5, 0.5, 0.5).
  train = [_ex((0.25, 0.25, 0.5, 0.5)), _ex((0.75, 0.75, 0.5, 0.5), 200, 50)]
  np.testing.assert_allclose(probing.mean_box(train), [0.5] * 4)
  test = [
      _ex((0.5, 0.5, 0.5, 0.5), 200, 100),  # Identical: IoU 1.
      _ex((0.5, 0.5, 0.25, 0.5), 64, 48),  # Inside, half the area: 0.5.
      _ex((0.25, 0.5, 0.5, 0.5)),  # Overlap 0.125 / union 0.375 = 1/3.
      _ex((0.1, 0.1, 0.1, 0.1)),  # Disjoint.
  ]
  pred = np.tile(probing.mean_box(train), (4, 1))
  iou, hit = probing.box_scores(pred, test)
  np.testing.assert_allclose(iou, [1, 0.5, 1 / 3, 0])
  np.testing.assert_array_equal(hit, [True, True, False, False])
  np.testing.assert_array_equal(probing.mean_box_correct(train, test), hit)
  # A custom IoU function is used when given.
  never = probing.mean_box_correct(train, test, lambda a, b: np.zeros(len(a)))
  assert not never.any()
  np.testing.assert_allclose(probing.box_area(test),
                             [0.25, 0.125, 0.25, 0.01])
  np.testing.assert_allclose(probing.centre_distance(test),
                             [0, 0, 0.25, math.hypot(0.4, 0.4)])
  with pytest.raises(ValueError, match='3 predictions for 4'):
    probing.box_scores(pred[:3], test)


def test_refcocog_breakdown_by_supercategory_with_mean_box_beside():
  train = [_ex((0.5, 0.5, 0.5, 0.5))]
  test = [_ex((0.5, 0.5, 0.5, 0.5), category_id=18),  # Mean box hits.
          _ex((0.1, 0.1, 0.1, 0.1), category_id=17),  # Misses.
          _ex((0.5, 0.5, 0.4, 0.4), category_id=3)]  # IoU .64: hits.
  correct = [True, True, False]
  groups = [probing.coco_supercategory_of(e.category_id) for e in test]
  stats = probing.refcocog_breakdown(correct, test, train, groups)
  assert list(stats) == [probing.ALL, 'animal', 'vehicle']
  assert stats['animal'] == probing.GroupStat(2, 1.0, 0.5)
  assert stats['vehicle'] == probing.GroupStat(1, 0.0, 1.0)
  assert stats[probing.ALL] == probing.GroupStat(3, pytest.approx(2 / 3),
                                                 pytest.approx(2 / 3))


def test_vsr_breakdown_with_the_real_category_file():
  categories = benchmarks.load_vsr_categories(VSR_CATEGORIES)
  relations = ['left of', 'right of', 'among', 'congruent', 'touching',
               'facing']
  correct = [1, 0, 1, 1, 0, 1]
  by_cat, by_rel = probing.vsr_breakdown(correct, relations, categories)
  # left/right of: Projective; among: Unallocated (the later line wins);
  # congruent has no category; touching: Topological; facing: Orientation.
  assert by_cat['Projective'] == probing.GroupStat(2, 0.5, 0.5)
  assert by_cat['Unallocated'] == probing.GroupStat(1, 1.0, 0.5)
  assert by_cat[probing.NO_CATEGORY] == probing.GroupStat(1, 1.0, 0.5)
  assert by_cat['Topological'].accuracy == 0.0
  assert by_cat[probing.ALL] == probing.GroupStat(6, pytest.approx(4 / 6),
                                                  0.5)
  assert by_rel['left of'].accuracy == 1 and by_rel['right of'].count == 1
  table = probing.breakdown_markdown({'frozen': by_cat, 'unfrozen': by_cat})
  lines = table.splitlines()
  assert lines[0] == '| group | n | chance | frozen | unfrozen |'
  assert '| Projective | 2 | 50.00 | 50.00 | 50.00 |' in lines
  other = dict(by_cat, Projective=probing.GroupStat(3, 0.5, 0.5))
  with pytest.raises(ValueError, match='Projective'):
    probing.breakdown_markdown({'frozen': by_cat, 'unfrozen': other})


def test_group_and_example_correlations_against_the_formula():
  # Three groups; group means worked out by hand below.
  test = [_ex((0.5, 0.5, 0.6, 0.6)), _ex((0.5, 0.5, 0.4, 0.4)),  # 'a'
          _ex((0.2, 0.2, 0.2, 0.2)),  # 'b'
          _ex((0.9, 0.1, 0.1, 0.1)), _ex((0.1, 0.9, 0.1, 0.1))]  # 'c'
  groups = ['a', 'a', 'b', 'c', 'c']
  scores = [1, 1, 1, 0, 1]
  train_groups = ['a'] * 5 + ['b'] * 3 + ['c']
  out = {c.factor: c for c in probing.group_correlations(
      scores, groups, test, train_groups)}
  acc = [1.0, 1.0, 0.5]
  area = [(0.36 + 0.16) / 2, 0.04, 0.01]
  dist = [0.0, math.hypot(0.3, 0.3), math.hypot(0.4, 0.4)]
  assert out['train examples'].tau == pytest.approx(_tau_b(acc, [5, 3, 1]))
  assert out['box area'].tau == pytest.approx(_tau_b(acc, area))
  assert out['distance from centre'].tau == pytest.approx(_tau_b(acc, dist))
  assert out['box area'].n == 3 and out['box area'].tau > 0
  per_example = {c.factor: c for c in probing.example_correlations(
      scores, test, groups, train_groups)}
  assert per_example['box area'].tau == pytest.approx(
      _tau_b(scores, probing.box_area(test)))
  assert per_example['train examples'].tau == pytest.approx(
      _tau_b(scores, [5, 5, 3, 1, 1]))
  table = probing.correlations_markdown({'frozen': list(out.values())})
  assert table.splitlines()[0] == '| factor | frozen |'
  assert f'| box area | {out["box area"].tau:.2f} (p=' in table


def test_rcm_confusion_hand_example():
  true = [0, 0, 0, 4, 4, 8, 8, 8]
  claimed = [0, 0, 4, 4, 0, 8, 0, 4]
  said = [1, 0, 1, 1, 0, 1, 0, 0]
  conf = probing.rcm_confusion(true, claimed, said)
  assert conf.counts[0, 0] == 2 and conf.counts[8, 0] == 1
  assert conf.counts.sum() == 8
  # (0,0): one match said (right), one not (wrong). (0,4): said match, wrong.
  assert conf.accuracy()[0, 0] == 0.5 and conf.accuracy()[0, 4] == 0.0
  assert conf.match_rate()[0, 4] == 1.0 and conf.accuracy()[4, 4] == 1.0
  assert math.isnan(conf.accuracy()[1, 1])
  # By claimed cell: 0 <- (0,0)x2, (4,0), (8,0): right 1 + 1 + 1 of 4.
  # 4 <- (0,4) wrong, (4,4) right, (8,4) right; 8 <- (8,8) right.
  by_claimed = conf.grid('claimed')
  assert by_claimed.shape == (3, 3)
  assert by_claimed[0, 0] == 0.75 and by_claimed[1, 1] == pytest.approx(2 / 3)
  assert by_claimed[2, 2] == 1.0 and math.isnan(by_claimed[0, 1])
  by_true = conf.grid('true')
  assert by_true[0, 0] == pytest.approx(1 / 3) and by_true[1, 1] == 1.0
  assert by_true[2, 2] == 1.0
  with pytest.raises(ValueError, match='0..8'):
    probing.rcm_confusion([9], [0], [1])


def test_plots_render_to_png(tmp_path):
  conf = probing.rcm_confusion([0, 4, 8, 8], [0, 4, 8, 0], [1, 1, 0, 0])
  fig = probing_plots.plot_rcm_confusion(conf, cell_names=('a',) * 9)
  np.testing.assert_array_equal(fig.axes[0].images[0].get_array(),
                                conf.grid('claimed'))
  np.testing.assert_array_equal(fig.axes[2].images[0].get_array(),
                                conf.match_rate())
  stats = probing.grouped_accuracy([1, 0, 1], ['x', 'y', 'y'])
  curves = {'vsr': {1: seed_tables.mean_std([0.6, 0.62]),
                    2: seed_tables.mean_std([0.7])}}
  for name, figure in (
      ('rcm', fig),
      ('groups', probing_plots.plot_group_accuracy({'frozen': stats}, 'VSR')),
      ('layers', probing_plots.plot_layer_curves(curves, {'chance': 0.5}))):
    path = tmp_path / f'{name}.png'
    figure.savefig(path, dpi=40)
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  bars = probing_plots.plot_group_accuracy({'frozen': stats}).axes[0].patches
  assert [b.get_height() for b in bars] == [pytest.approx(2 / 3), 1.0, 0.5]
