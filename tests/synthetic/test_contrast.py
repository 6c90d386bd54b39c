"""Contrast pairs: twins one edit apart, captions that tell them apart."""

import dataclasses

import numpy as np
import pytest

from vlg.synthetic import contrast
from vlg.synthetic import source
from vlg.synthetic import truth
from vlg.synthetic import world

CFG = world.WorldConfig(contrast_rate=1.0)


def _pairs(cfg, n):
  """The contrast pairs among the first ``n`` index pairs of 'train'."""
  out = []
  for base in range(0, 2 * n, 2):
    pair = contrast.pair('train', base, cfg)
    if pair is not None:
      out.append((base, pair))
  return out


@pytest.fixture(scope='module')
def pairs():
  return _pairs(CFG, 40)


def test_most_pairs_are_drawn_at_rate_one_and_none_at_rate_zero(pairs):
  assert len(pairs) >= 20  # Scenes with one shape, or all in constructs, fail.
  assert not _pairs(world.WorldConfig(), 40)
  assert contrast.pair('train', 1, world.WorldConfig()) is None


def test_a_twin_is_the_scene_after_one_edit(pairs):
  changes = set()
  for _, (scene, twin, _, edit) in pairs:
    assert scene.background == twin.background
    assert len(scene.objects) == len(twin.objects)
    moved = [k for k, (a, b) in enumerate(zip(scene.objects, twin.objects))
             if a != b]
    if scene.actions != twin.actions:  # An arrow or a covering reversed.
      flipped = {(a.subject, a.object) for a in scene.actions} ^ {
          (a.object, a.subject) for a in twin.actions}
      assert len(flipped) < len(scene.actions) * 2
      # Only the two shapes of a covering trade layers.
      assert all(dataclasses.replace(scene.objects[k], layer=0) ==
                 dataclasses.replace(twin.objects[k], layer=0)
                 for k in moved)
      assert edit == 'reverse'
      changes.add('reverse')
      continue
    assert len(moved) == 2, moved
    a, b = (scene.objects[k] for k in moved)
    c, d = (twin.objects[k] for k in moved)
    swapped = ((c.side, d.side) == (a.side, b.side) and c.box != a.box and
               (c.colour, d.colour) == (a.colour, b.colour))
    recoloured = (c.colour, d.colour, c.box) == (b.colour, a.colour, a.box)
    assert swapped or recoloured
    assert edit == ('swap' if swapped else 'recolour')
    changes.add(edit)
  assert {'swap', 'recolour'} <= changes


def test_every_caption_of_a_pair_is_true_of_its_image_and_false_of_its_twin(
    pairs):
  for base, (scene, twin, _, _) in pairs[:12]:
    for index, own, other in ((base, scene, twin), (base + 1, twin, scene)):
      got, record = source.scene_and_record('train', index, CFG)
      assert got == own
      assert len(record['captions']) == CFG.num_captions
      for text in record['captions']:
        assert truth.is_true(own, text) is True, (index, text)
        assert truth.is_true(other, text) is False, (index, text)
        assert truth.parse(text)[0].kind == 'relation', text


def test_both_twins_are_mirrored_alike_and_records_are_deterministic(pairs):
  mirrored = set()
  for base, _ in pairs:
    a, b = (source.make_record('train', base + k, CFG) for k in (0, 1))
    assert a['mirror'] == b['mirror']
    mirrored.add(a['mirror'])
  assert mirrored == {False, True}
  again = source.make_record('train', pairs[0][0] + 1, CFG)
  first = source.make_record('train', pairs[0][0] + 1, CFG)
  np.testing.assert_array_equal(again['image'], first['image'])
  assert again['captions'] == first['captions']
  assert 'mirror' not in source.make_record('train', 0, world.WorldConfig())


def test_a_recoloured_twin_never_shows_a_held_out_composition_in_train(pairs):
  heldout = set(CFG.heldout)
  for _, (scene, twin, _, _) in pairs:
    for obj in scene.objects + twin.objects:
      assert (obj.colour, obj.category) not in heldout


def test_contrast_rate_zero_keeps_the_world_unchanged():
  plain = world.WorldConfig()
  off = dataclasses.replace(plain, contrast_rate=0.0)
  for index in range(6):
    a, b = source.make_record('train', index, plain), source.make_record(
        'train', index, off)
    assert a['captions'] == b['captions']
    np.testing.assert_array_equal(a['image'], b['image'])


def test_pairs_keep_false_negatives_rare_and_state_relations_often():
  stats = truth.caption_stats(world.WorldConfig(contrast_rate=0.5),
                              num_scenes=256)
  assert stats['pair_false_negative_rate'] < 0.01
  assert stats['relation_caption_rate'] > 0.3


def test_contrast_rate_outside_zero_one_is_refused():
  with pytest.raises(ValueError, match='contrast_rate'):
    world.WorldConfig(contrast_rate=1.5)


def test_mirrored_captions_are_one_couple_of_the_same_words():
  mirrored = dataclasses.replace(CFG, contrast_captions='mirrored')
  found = _pairs(mirrored, 40)
  assert len(found) >= 15
  edits_seen = set()
  for base, (scene, twin, texts, edit) in found:
    (a,), (b,) = texts
    assert a != b and sorted(a.split()) == sorted(b.split())
    assert truth.is_true(scene, a) is True and truth.is_true(twin, a) is False
    assert truth.is_true(twin, b) is True and truth.is_true(scene, b) is False
    # Every caption of each image is its side of the couple.
    for side, text in ((0, a), (1, b)):
      record = source.make_record('train', base + side, mirrored)
      assert record['captions'] == [text] * mirrored.num_captions
    edits_seen.add(edit)
  assert {'swap', 'recolour'} <= edits_seen


def test_mirrored_texts_by_hand():
  rng = np.random.default_rng(0)
  texts = (['the red circle is left of the star', 'a red circle'],
           ['the star is left of the red circle', 'a star'])
  assert contrast.mirrored_texts(texts, rng) == (
      ['the red circle is left of the star'],
      ['the star is left of the red circle'])
  assert contrast.mirrored_texts((['a red circle'], ['a star']), rng) is None


def test_independent_captions_are_the_default_and_others_are_refused():
  assert world.WorldConfig().contrast_captions == 'independent'
  with pytest.raises(ValueError, match="contrast_captions='mirror'"):
    world.WorldConfig(contrast_captions='mirror')
