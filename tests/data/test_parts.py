"""Typed parts (entity, MRC, VSG): slots, box-aware augmentation, zipping."""

import ml_collections
import numpy as np
import pytest

from vlg import recipes
from vlg.data import box_masks
from vlg.data import ops
from vlg.data.parts import common as parts_common
from vlg.data.parts import entity as entity_part
from vlg.data.parts import mrc as mrc_part
from vlg.data.parts import vsg as vsg_part
from vlg.data import pipeline
from vlg.data import tokenizer as tok_lib
from vlg.synthetic import source as synth_source


def _input_cfg(family='rexvlm'):
  c = recipes.family_config(family, 'tiny').input
  c.data.synthetic.num_examples = 64
  return c


@pytest.fixture(scope='module')
def tok():
  return tok_lib.train_tokenizer(pipeline.training_texts(_input_cfg(), 100),
                                 1024)


def _record_with_left_of():
  """The first synthetic training record with a 'left of' relation."""
  for i in range(200):
    rec = synth_source.make_record('train', i)
    for rel in rec['relations']:
      if rel['predicate'] == 'left of':
        return rec, rel
  raise AssertionError('no "left of" relation in 200 synthetic scenes')


def _decode(tok, ids):
  return tok.decode([int(i) for i in ids if i > tok_lib.MASK_ID])


def test_crop_keeping_anchor_keeps_anchor_and_drops_mostly_outside():
  image = np.zeros((100, 100, 3), np.uint8)
  boxes = np.array([[0.2, 0.2, 0.1, 0.1],    # anchor, top-left
                    [0.85, 0.85, 0.2, 0.2],  # far corner
                    [0.25, 0.25, 0.2, 0.2]], np.float32)
  for seed in range(30):
    rng = np.random.default_rng(seed)
    crop, out, kept = parts_common.crop_keeping_anchor(image, boxes, 0, rng,
                                                (0.1, 0.3))
    assert kept[0]
    x1, y1 = out[0, :2] - out[0, 2:] / 2
    x2, y2 = out[0, :2] + out[0, 2:] / 2
    assert x1 >= -1e-6 and y1 >= -1e-6 and x2 <= 1 + 1e-6 and y2 <= 1 + 1e-6
    # The crop's side is at most sqrt(0.3) < 0.55 of the image, so the far
    # box can never be mostly inside a crop that holds the anchor.
    assert not kept[1]
    assert crop.shape[0] == crop.shape[1]
    # Kept boxes are clipped into the crop.
    assert np.all(out[kept, 2:] <= 1 + 1e-6)


def test_entity_transform_slots_and_masks(tok):
  cfg = _input_cfg()
  part_cfg = cfg.parts.entity
  t = entity_part.Transform(tok, cfg, part_cfg)
  rec = synth_source.make_record('train', 3)
  out = t.random_map(rec, np.random.default_rng(0))
  m = part_cfg.max_pairs
  assert out['ent_text_ids'].shape == (m, cfg.max_text_len)
  g = cfg.resolution // part_cfg.patch_size
  assert out['ent_patch_mask'].shape == (m, 1 + g * g)
  valid = out['ent_valid'].astype(bool)
  assert valid.sum() >= 2  # A whole-image caption plus at least one box.
  # Pair 0 is the whole-image caption: all ones, not a box.
  assert out['ent_is_box'][0] == 0 and out['ent_patch_mask'][0].all()
  want = box_masks.box_patch_mask_np(out['ent_box'], g, part_cfg.patch_size,
                                     cfg.resolution,
                                     whole_image=out['ent_is_box'] == 0)
  np.testing.assert_array_equal(out['ent_patch_mask'], want)
  assert np.all(out['ent_mlm_labels'][~valid] == -100)
  assert np.all(out['ent_text_mask'][~valid] == 0)
  # Texts are the record's object labels / region texts (up to left/right).
  texts = {ops.pre_caption(o['label']) for o in rec['objects']}
  texts |= {ops.pre_caption(r['text']) for r in rec['regions']}
  texts |= {ops.pre_caption(ops.swap_left_right(x)) for x in list(texts)}
  for j in np.flatnonzero(out['ent_is_box']):
    assert _decode(tok, out['ent_text_ids'][j]) in texts


def test_flip_keeps_text_and_boxes_consistent(tok):
  """After the entity transform, a region text saying 'left of' names a
  subject box left of its object box, flipped or not."""
  cfg = _input_cfg()
  cfg.augment = ('flip',)
  rng = np.random.default_rng(1)
  rec, rel = _record_with_left_of()
  rec = dict(rec, objects=[], regions=[
      {'text': 'subject', 'box': rel['subject_box']},
      {'text': 'object', 'box': rel['object_box']}])
  part_cfg = ml_collections.ConfigDict(cfg.parts.entity)
  part_cfg.update(max_pairs=3, whole_image_caption=False)
  t = entity_part.Transform(tok, cfg, part_cfg)
  flips = 0
  for seed in range(16):
    out = t.random_map(rec, np.random.default_rng(seed))
    boxes = {_decode(tok, out['ent_text_ids'][j]): out['ent_box'][j]
             for j in range(2)}
    flipped = boxes['subject'][0] > boxes['object'][0]
    flips += flipped
    # The image is mirrored exactly when the boxes are.
    orig = ops.resize(ops.to_square(rec['image']), cfg.resolution)
    assert np.array_equal(out['ent_image'], orig[:, ::-1]) == bool(flipped)
  assert 0 < flips < 16
  del rng


def test_mrc_transform_flip_swaps_left_right_labels(tok):
  cfg = _input_cfg()
  cfg.augment = ('flip',)
  vocab = mrc_part.relation_vocab(cfg.parts.mrc)
  t = mrc_part.Transform(tok, cfg, cfg.parts.mrc)
  rec, rel = _record_with_left_of()
  rec = dict(rec, relations=[rel])
  seen = set()
  for seed in range(16):
    out = t.random_map(rec, np.random.default_rng(seed))
    assert out['mrc_valid'].tolist() == [1, 0]
    label = vocab.decode(int(out['mrc_label'][0]))
    sx, ox = out['mrc_subject_box'][0, 0], out['mrc_object_box'][0, 0]
    assert (label == 'left of') == (sx < ox)
    seen.add(label)
  assert seen == {'left of', 'right of'}


def test_zipped_parts_batch(tok):
  cfg = _input_cfg()
  it = iter(pipeline.make_dataset(cfg, tok, global_batch=4, seed=0))
  b = next(it)
  assert b['image'].shape[0] == 4
  assert b['ent_image'].shape[0] == cfg.parts.entity.batch_size
  assert b['mrc_label'].shape == (cfg.parts.mrc.batch_size,
                                  cfg.parts.mrc.num_relations)
  assert b['vsg_text_ids'].shape == (cfg.parts.vsg.batch_size,
                                     cfg.parts.vsg.max_text_len)
  assert np.all(b['vsg_text_ids'][:, 0] == tok_lib.CLS_ID)
  assert (b['vsg_text_ids'] == tok_lib.SEP_ID).sum(-1).min() >= 1
  assert {k for k in b if k.startswith('_num_bad')} == {
      '_num_bad', '_num_bad_ent', '_num_bad_mrc', '_num_bad_vsg'}
  # Disabling a part removes its slots.
  cfg.parts.mrc.enabled = False
  b = next(iter(pipeline.make_dataset(cfg, tok, global_batch=4, seed=0)))
  assert not any(k.startswith('mrc_') for k in b)


def _entity_transform(tok, **part):
  """An entity transform without crops (no box is clipped onto another)
  and with room for many pairs of a synthetic scene."""
  cfg = _input_cfg()
  cfg.augment = ('flip', 'brightness')
  part_cfg = ml_collections.ConfigDict(cfg.parts.entity)
  part_cfg.update(max_pairs=12, **part)
  return entity_part.Transform(tok, cfg, part_cfg)


def test_entity_box_group_equal_exactly_for_the_same_box(tok):
  t = _entity_transform(tok)
  shared = 0
  for i in range(8):
    rec = synth_source.make_record('train', i)
    out = t.random_map(rec, np.random.default_rng(i))
    valid = out['ent_valid'].astype(bool)
    group, box = out['ent_box_group'], out['ent_box']
    assert np.all(group[~valid] == -1) and np.all(group[valid] >= 0)
    # The whole-image caption (pair 0) is a box of its own.
    assert out['ent_is_box'][0] == 0
    assert np.sum(group == group[0]) == 1
    pos = np.flatnonzero(out['ent_is_box'])
    for j in pos:
      for k in pos:
        same_box = np.array_equal(box[j], box[k])
        assert (group[j] == group[k]) == same_box, (i, j, k)
        shared += bool(j != k and same_box)
        if j != k and same_box:
          # One box, two different texts (an object label and a region).
          assert out['ent_text_group'][j] != out['ent_text_group'][k]
  assert shared > 0  # Synthetic scenes give boxes more than one text.


def test_entity_group_by_box_false_is_text_only(tok):
  """group_by_box=False changes only ent_box_group (-1: text-only grouping
  in the entity loss); every other slot is the same draw."""
  on, off = _entity_transform(tok), _entity_transform(tok, group_by_box=False)
  assert recipes.family_config('xvlm', 'tiny').input.parts.entity.group_by_box
  for i in range(4):
    rec = synth_source.make_record('train', i)
    a = on.random_map(rec, np.random.default_rng(i))
    b = off.random_map(rec, np.random.default_rng(i))
    assert set(a) == set(b)
    assert np.all(b['ent_box_group'] == -1)
    assert np.any(a['ent_box_group'] >= 0)
    for key in a:
      if key != 'ent_box_group':
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _one_object_record(image_id, label, box):
  return {'image': np.full((16, 16, 3), 80, np.uint8), 'image_id': image_id,
          'captions': ['a scene'], 'objects': [{'label': label, 'box': box}],
          'regions': [], 'relations': [], 'paragraph': '', 'has_graph': False,
          'has_boxes': True}


def _checked_entity(tok, skip):
  """An entity transform under the bad-input policy over source 'vg':
  record 0 has a label that normalises to nothing, record 1 a box of 3
  numbers, record 2 is good."""
  from vlg.data import sources  # pylint: disable=g-import-not-at-top
  records = [_one_object_record(10, '?!', [0.5, 0.5, 0.2, 0.2]),
             _one_object_record(11, 'ball', [0.5, 0.5, 0.2]),
             _one_object_record(12, 'ball', [0.5, 0.5, 0.2, 0.2])]
  src = sources.CheckedSource(records, 'vg', skip)
  return src, sources.CheckedTransform(_entity_transform(tok), {'vg': src},
                                       skip)


def test_part_bad_examples_are_skipped_counted_and_named(tok, caplog):
  src, t = _checked_entity(tok, skip=True)
  with caplog.at_level('WARNING'):
    out = t.random_map(src[0], np.random.default_rng(0))
  assert out['_num_bad_ent'] == 2  # Records 0 and 1; record 2 is used.
  assert out['ent_valid'].sum() == 2  # Its caption and its ball.
  assert "source 'vg' index 0 image_id 10" in caplog.text, caplog.text
  assert 'empty after normalisation' in caplog.text
  assert "source 'vg' index 1 image_id 11" in caplog.text
  assert 'box' in caplog.text


def test_part_bad_examples_raise_naming_the_record(tok):
  src, t = _checked_entity(tok, skip=False)
  with pytest.raises(ops.BadExampleError,
                     match=r"source 'vg' index 0 image_id 10\].*empty after "
                     r'normalisation.*skip_bad_examples'):
    t.random_map(src[0], np.random.default_rng(0))
  with pytest.raises(ops.BadExampleError,
                     match=r"source 'vg' index 1 image_id 11\].*box"):
    t.random_map(src[1], np.random.default_rng(0))


class _FlaggedRecords:
  """Records 0..n-1 with relations where ``i % 3 != 2`` and has_graph where
  ``i % 4 == 3``; counts the records read and, with ``peek``, tells the
  flags without reading (as the synthetic source does)."""

  def __init__(self, n, peek):
    self.n, self.reads = n, []
    if peek:
      self.annotation_flags = lambda i: {'has_graph': i % 4 == 3}

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    self.reads.append(i)
    return {'image_id': i, 'relations': [{'predicate': 'near'}] * (i % 3 != 2),
            'has_graph': i % 4 == 3}


@pytest.mark.parametrize('peek', [True, False])
def test_records_with_flag_reads_only_flagged_records(peek):
  src = _FlaggedRecords(24, peek)
  flagged = parts_common.RecordsWith(src, ('relations',), flag='has_graph')
  plain = parts_common.RecordsWith(src, ('relations',))
  # Flagged 3, 7, 11, ...; 11 and 23 have no relations (i % 3 == 2).
  assert [flagged[i]['image_id'] for i in (0, 3, 4, 8, 9, 20)] == [
      3, 3, 7, 15, 15, 3]
  assert [plain[i]['image_id'] for i in (0, 2, 5)] == [0, 3, 6]
  src.reads.clear()
  assert flagged[8]['image_id'] == 15
  # With a cheap look at the flags only the flagged records are read.
  assert src.reads == ([11, 15] if peek else list(range(8, 16)))


def test_records_with_flag_fails_clearly_when_none_is_flagged():
  records = [{'relations': [{'predicate': 'near'}], 'has_graph': False}] * 5
  view = parts_common.RecordsWith(records, ('relations',), flag='has_graph')
  with pytest.raises(ops.BadExampleError,
                     match='relations flagged has_graph.*flagged_only=False'):
    view[0]


def test_synthetic_annotation_flags_are_the_records_flags():
  from vlg.data import sources  # pylint: disable=g-import-not-at-top
  src = synth_source.SyntheticSource('train', num_examples=40)
  checked = sources.CheckedSource(src, 'synthetic', skip_bad=False)
  for i in range(40):
    rec = src[i]
    want = {'has_graph': rec['has_graph'], 'has_boxes': rec['has_boxes']}
    assert src.annotation_flags(i) == want == checked.annotation_flags(i)
  assert sources.CheckedSource([{}], 'list', False).annotation_flags(0) is None


def test_flagged_only_parts_draw_flagged_records_only():
  """MRC and VSG read has_graph, entity has_boxes, with flagged_only; by
  default (the recipes) every record with the annotation, mostly unflagged
  at the world's 0.15 rates."""
  c = _input_cfg()
  c.data.synthetic.num_examples = 400
  assert all(pipeline.part_flag(n, p) is None for n, p in c.parts.items())
  for name, flag in (('mrc', 'has_graph'), ('vsg', 'has_graph'),
                     ('entity', 'has_boxes')):
    part = c.parts[name]
    part.flagged_only = True
    assert pipeline.part_flag(name, part) == flag
    requires = pipeline.parts_lib.part_module(name).Transform.requires
    ds, _ = pipeline._mixture(c, None, 5, 0, 1, requires, flag)
    assert all(ds[i][flag] for i in range(30)), name
    ds, _ = pipeline._mixture(c, None, 5, 0, 1, requires)
    assert sum(ds[i][flag] for i in range(30)) < 15, name


def test_flagged_only_fails_clearly_for_a_part_without_a_flag(monkeypatch):
  monkeypatch.delattr(vsg_part.Transform, 'flag')
  with pytest.raises(ValueError, match='vsg.*names no annotation flag'):
    pipeline.part_flag('vsg', ml_collections.ConfigDict(
        dict(flagged_only=True)))
