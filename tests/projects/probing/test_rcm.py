"""vlg.projects.probing.rcm: the RCM invariants of docs/probing.md §3, §6.5.

Cell assignment is checked on hand-placed boxes (borders included); the
balanced set is checked by recounting its rows; real-layout rows (hand-built
RefExamples, a flat jsonl read by load_refcocog) and the synthetic set go
through the same build_rcm.
"""

import collections
import dataclasses
import json
import os

import numpy as np
import pytest

from vlg import benchmarks
from vlg.projects.probing import rcm
from vlg.synthetic import benchmarks as synthetic_benchmarks


def _ref(cx, cy, *, ref_id=0, sent_id=0, width=90, height=60, w=4, h=4,
         category_id=1, split='val'):
  """A RefExample whose box (w x h pixels) is centred at pixel (cx, cy)."""
  return benchmarks.RefExample(
      image_file=f'img_{ref_id}.jpg', expression=f'the thing {sent_id}',
      box=(cx - w / 2, cy - h / 2, w, h), width=width, height=height,
      ref_id=ref_id, sent_id=sent_id, category_id=category_id, split=split)


def _grid_refs(per_cell, width=90, height=60):
  """``per_cell[k]`` expressions centred inside cell k of a width x height
  image (cell k spans columns k % 3 and rows k // 3 of thirds)."""
  refs, n = [], 0
  rng = np.random.default_rng(123)
  for cell, count in enumerate(per_cell):
    r, c = divmod(cell, 3)
    for _ in range(count):
      cx = (c + rng.uniform(0.2, 0.8)) * width / 3
      cy = (r + rng.uniform(0.2, 0.8)) * height / 3
      refs.append(_ref(cx, cy, ref_id=n // 2, sent_id=n, width=width,
                       height=height, w=2, h=2, category_id=1 + n % 5))
      n += 1
  return refs


def _check_invariants(rcm_set, source):
  """The §6.5 invariants, recounted from the rows."""
  n = rcm_set.per_cell
  assert n > 0 and n % 8 == 0
  examples = rcm_set.examples
  assert len(examples) == 18 * n
  by_claim = collections.Counter((e.claimed_cell, e.label) for e in examples)
  for cell in range(9):
    assert by_claim[(cell, 1)] == by_claim[(cell, 0)] == n
  pairs = collections.Counter((e.claimed_cell, e.true_cell) for e in examples
                              if e.label == 0)
  for claimed in range(9):
    for true in range(9):
      if true != claimed:
        assert pairs[(claimed, true)] == n // 8
    assert pairs[(claimed, claimed)] == 0
  by_key = {(r.ref_id, r.sent_id): r for r in source}
  for e in examples:
    assert e.label == int(e.claimed_cell == e.true_cell)
    ref = by_key[(e.ref_id, e.sent_id)]
    assert e.true_cell == rcm.cell_of_box(ref.box, ref.width, ref.height)
    assert e.text == rcm.DEFAULT_TEMPLATE.format(
        expression=ref.expression, cell=rcm.CELL_NAMES[e.claimed_cell])
    assert (e.box, e.category_id, e.image_file) == (
        ref.box, ref.category_id, ref.image_file)
  # Positives are distinct expressions; so are the negatives.
  for label in (0, 1):
    keys = [(e.ref_id, e.sent_id) for e in examples if e.label == label]
    assert len(set(keys)) == len(keys)


def test_nearest_cell_at_borders_goes_to_lower_index():
  # A 90 x 60 image: column borders at x = 30, 60, row borders at y = 20, 40.
  cell = lambda cx, cy, **kw: rcm.cell_of_box(  # noqa: E731
      _ref(cx, cy, **kw).box, 90, 60)
  assert cell(15, 10) == 0 and cell(45, 30) == 4 and cell(75, 50) == 8
  assert cell(30, 10) == 0  # On the x border: equally near cells 0 and 1.
  assert cell(30.5, 10) == 1
  assert cell(60, 10) == 1 and cell(60.5, 10) == 2
  assert cell(45, 20) == 1 and cell(45, 20.5) == 4
  assert cell(45, 40) == 4 and cell(45, 40.5) == 7
  assert cell(30, 40) == 3  # Corner of four cells: the lowest, row 1 col 0.
  assert cell(0, 0, w=0.5, h=0.5) == 0 and cell(90, 60, w=0.5, h=0.5) == 8
  # Odd image size and a box with odd width: centre x = 7 + 13 / 2 = 13.5 on
  # a 40-wide image: border at 40 / 3 = 13.33..., so column 1; centre y =
  # 10 (border 10 of a 30-high image) goes to row 0.
  assert rcm.cell_of_box((7, 5, 13, 10), 40, 30) == 1
  # Independent reference: argmin distance to the cell centres, ties low.
  rng = np.random.default_rng(0)
  for _ in range(500):
    w, h = rng.integers(3, 50, size=2)
    x, y = rng.integers(0, w), rng.integers(0, h)
    bw, bh = rng.integers(1, w - x + 1), rng.integers(1, h - y + 1)
    cx, cy = x + bw / 2, y + bh / 2
    col = int(np.argmin([abs(cx - (k + 0.5) * w / 3) for k in range(3)]))
    row = int(np.argmin([abs(cy - (k + 0.5) * h / 3) for k in range(3)]))
    got = rcm.cell_of_box((x, y, bw, bh), w, h)
    # The float reference can tie-break either way only exactly on a border.
    if 3 * (2 * x + bw) % (2 * w) and 3 * (2 * y + bh) % (2 * h):
      assert got == row * 3 + col


def test_balanced_set_invariants_with_spare_expressions():
  source = _grid_refs([40, 25, 30, 27, 90, 33, 26, 41, 35])
  rcm_set = rcm.build_rcm(source, seed=0)
  # Rarest cell 25 -> N = 24, a multiple of 8. Cells with fewer than
  # 2N = 48 expressions must reuse some positives as negatives.
  assert rcm_set.per_cell == 24
  assert rcm_set.available == (40, 25, 30, 27, 90, 33, 26, 41, 35)
  _check_invariants(rcm_set, source)
  assert rcm_set.num_reused == sum(max(0, 24 - (n - 24))
                                   for n in rcm_set.available)
  assert rcm_set.card()['per_cell'] == 24
  assert rcm_set.card()['num_examples'] == 18 * 24


def test_negatives_avoid_positive_expressions_when_there_are_enough():
  source = _grid_refs([20] * 9)
  rcm_set = rcm.build_rcm(source, seed=3, max_per_cell=8)
  assert rcm_set.per_cell == 8 and rcm_set.num_reused == 0
  _check_invariants(rcm_set, source)
  pos = {(e.ref_id, e.sent_id) for e in rcm_set.examples if e.label}
  neg = {(e.ref_id, e.sent_id) for e in rcm_set.examples if not e.label}
  assert not pos & neg


def test_deterministic_under_seed_and_order_different_under_another():
  source = _grid_refs([20] * 9)
  a = rcm.build_rcm(source, seed=7)
  assert rcm.build_rcm(list(reversed(source)), seed=7).examples == a.examples
  b = rcm.build_rcm(source, seed=8)
  assert b.examples != a.examples
  assert {(e.ref_id, e.sent_id, e.claimed_cell) for e in b.examples} != {
      (e.ref_id, e.sent_id, e.claimed_cell) for e in a.examples}


def test_template_options_and_text():
  source = _grid_refs([8] * 9)
  paper = rcm.build_rcm(source, template=rcm.PAPER_TEMPLATE,
                        cell_names=rcm.PAPER_CELL_NAMES)
  e = next(e for e in paper.examples if e.claimed_cell == 5)
  assert e.text == (f"The phrase '{e.expression}' refers to the middle right "
                    'part of the image.')
  assert rcm.fill_template(rcm.DEFAULT_TEMPLATE, ' the dog. ', 'top') == (
      'the dog is in the top of the image.')
  with pytest.raises(ValueError, match='expression'):
    rcm.build_rcm(source, template='{cell} only')
  with pytest.raises(ValueError, match='9 cell names'):
    rcm.build_rcm(source, cell_names=('a', 'b'))


def test_bad_boxes_and_images_name_the_ref():
  good = _grid_refs([8] * 9)
  outside = dataclasses.replace(good[0], ref_id=77, sent_id=770,
                                box=(80.0, 10.0, 20.0, 5.0))
  with pytest.raises(rcm.RcmError, match=r'ref_id 77 sent_id 770.*outside'):
    rcm.build_rcm(good + [outside])
  no_image = dataclasses.replace(good[0], ref_id=78, sent_id=780, width=0)
  with pytest.raises(rcm.RcmError, match=r'ref_id 78 .*image size 0x60'):
    rcm.build_rcm(good + [no_image])
  flat = dataclasses.replace(good[0], ref_id=79, sent_id=790,
                             box=(1.0, 1.0, 0.0, 3.0))
  with pytest.raises(rcm.RcmError, match=r'ref_id 79 .*non-positive'):
    rcm.build_rcm(good + [flat])
  # Opted in: skipped and counted, the rest is built.
  skipped = rcm.build_rcm(good + [outside, no_image], skip_bad=True)
  assert len(skipped.skipped) == 2 and skipped.per_cell == 8
  assert skipped.num_source == len(good) + 2
  # Overhang within the tolerance is accepted (COCO rounding).
  edge = dataclasses.replace(good[0], ref_id=80, sent_id=800,
                             box=(80.0, 10.0, 10.5, 5.0))
  assert not rcm.build_rcm(good + [edge]).skipped


def test_too_few_and_mixed_splits_are_errors():
  with pytest.raises(rcm.RcmError, match='at least 8 per cell.*7 centre'):
    rcm.build_rcm(_grid_refs([9, 9, 9, 9, 7, 9, 9, 9, 9]))
  with pytest.raises(ValueError, match='max_per_cell=5'):
    rcm.build_rcm(_grid_refs([9] * 9), max_per_cell=5)
  # A cap that is not a multiple of 8 is rounded down.
  assert rcm.build_rcm(_grid_refs([20] * 9), max_per_cell=15).per_cell == 8
  mixed = _grid_refs([8] * 9)
  mixed[0] = dataclasses.replace(mixed[0], split='test')
  with pytest.raises(rcm.RcmError, match='splits'):
    rcm.build_rcm(mixed)


def test_jsonl_round_trip_and_bad_lines(tmp_path):
  rcm_set = rcm.build_rcm(_grid_refs([8] * 9), seed=1)
  path = tmp_path / 'rcm.jsonl'
  assert rcm.write_rcm_jsonl(path, rcm_set.examples) == 144
  loaded = rcm.load_rcm_jsonl(path)
  assert tuple(loaded) == rcm_set.examples
  record = json.loads(path.read_text().splitlines()[0])
  record['label'] = 1 - record['label']
  bad = tmp_path / 'bad.jsonl'
  bad.write_text(path.read_text() + json.dumps(record) + '\n')
  with pytest.raises(benchmarks.BenchmarkFormatError,
                     match=r'bad\.jsonl: line 145: label .* contradicts'):
    rcm.load_rcm_jsonl(bad)
  assert rcm.load_rcm_jsonl(bad, skip_bad=True).num_skipped == 1
  record['label'], record['true_cell'] = 0, 9
  bad.write_text(json.dumps(record) + '\n')
  with pytest.raises(benchmarks.BenchmarkFormatError, match='cell 0..8'):
    rcm.load_rcm_jsonl(bad)


def test_real_layout_jsonl_and_hand_built_rows_share_the_builder(tmp_path):
  hand = _grid_refs([9, 8, 10, 8, 12, 8, 8, 11, 8])
  flat = tmp_path / 'refcocog.jsonl'
  with open(flat, 'w') as f:
    for r in hand:
      f.write(json.dumps(dataclasses.asdict(r)) + '\n')
    other = dataclasses.replace(hand[0], ref_id=999, split='train')
    f.write(json.dumps(dataclasses.asdict(other)) + '\n')
  loaded = benchmarks.load_refcocog(str(flat), split='val')
  assert len(loaded) == len(hand) and loaded.num_filtered == 1
  from_file = rcm.build_rcm(loaded, seed=4)
  assert from_file.examples == rcm.build_rcm(hand, seed=4).examples
  _check_invariants(from_file, hand)


def test_synthetic_refcocog_goes_through_the_same_builder(tmp_path):
  synthetic_benchmarks.write_all(str(tmp_path), resolution=48, seed=0,
                                 num=250, sets='refcocog')
  refs = benchmarks.load_refcocog(os.path.join(tmp_path, 'refcocog'),
                                  split='test')
  rcm_set = rcm.build_rcm(refs, seed=0)
  _check_invariants(rcm_set, refs)
  assert {e.split for e in rcm_set.examples} == {'test'}
  # The cell of each box, recomputed from the synthetic box in pixels.
  counts = collections.Counter(
      rcm.cell_of_box(r.box, r.width, r.height) for r in refs)
  assert rcm_set.available == tuple(counts[c] for c in range(9))
