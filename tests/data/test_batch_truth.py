"""The truth of a synthetic caption batch, mirrored examples included."""

import dataclasses

import numpy as np
import pytest

from vlg.data import batch_truth
from vlg.data import ops
from vlg.data import pipeline
from vlg.data import tokenizer as tok_lib
from vlg.synthetic import layout
from vlg.synthetic import truth
from vlg.synthetic import world

import configs.albef as albef_config


def _input_cfg():
  c = albef_config.get_config('tiny').input
  c.data.synthetic.num_examples = 64
  return c


@pytest.fixture(scope='module')
def tok():
  return tok_lib.train_tokenizer(pipeline.training_texts(_input_cfg(), 200),
                                 1024)


def _mirror(scene: world.Scene) -> world.Scene:
  """The scene mirrored left to right (what the flip does to the image)."""
  r = scene.resolution
  objects = tuple(dataclasses.replace(o, box=(r - o.box[2], o.box[1],
                                              r - o.box[0], o.box[3]))
                  for o in scene.objects)
  return dataclasses.replace(scene, objects=objects)


def test_matches_the_truth_of_the_mirrored_scenes(tok):
  """Every pair of a flipped batch, against a reference that mirrors the
  scenes themselves instead of swapping words."""
  cfg = _input_cfg()
  assert 'flip' in cfg.augment
  world_cfg = world.WorldConfig(**dict(cfg.data.synthetic.world))
  batch = next(iter(pipeline.make_dataset(cfg, tok, global_batch=16,
                                          seed=0)))
  assert 0 < batch['flipped'].sum() < 16
  got = batch_truth.batch_truth(batch, world_cfg, 'train', tok, cfg)
  base = world.image_id('train', 0)
  scenes, seen = [], []
  for image_id, k, f in zip(batch['image_id'], batch['caption_index'],
                            batch['flipped']):
    index = int(image_id) - base
    scene = layout.generate_scene('train', index, world_cfg)
    caption = pipeline.build_sources(cfg)['synthetic'][0][index][
        'captions'][int(k)]
    scenes.append(_mirror(scene) if f else scene)
    seen.append(ops.swap_left_right(caption) if f else caption)
  np.testing.assert_array_equal(got, truth.truth_matrix(scenes, seen))
  # Why each pair is or is not true, against the same reference.
  kinds = batch_truth.batch_negative_kinds(batch, world_cfg, 'train', tok,
                                           cfg)
  np.testing.assert_array_equal(kinds, truth.kind_matrix(scenes, seen))
  assert np.all(np.diag(got))  # Every caption is true of its own image.


def test_a_mirrored_copy_makes_a_left_right_caption_false(tok):
  """Known case: one image drawn twice with a caption that says 'left' or
  'right', once mirrored: each caption is true of its own copy and false
  of the other, where ignoring the flip would call all four true."""
  cfg = _input_cfg()
  world_cfg = world.WorldConfig(**dict(cfg.data.synthetic.world))
  source = pipeline.build_sources(cfg)['synthetic'][0]
  transform = pipeline.CaptionTransform(tok, cfg)
  for index in range(len(source)):
    record = source[index]
    scene = layout.generate_scene('train', index, world_cfg)
    ks = [k for k, c in enumerate(record['captions'])
          if truth.is_true(scene, c) is True and
          truth.is_true(scene, ops.swap_left_right(c)) is False]
    if ks:
      break
  else:
    pytest.fail('no caption with a decidable left/right statement')
  examples = {}
  seed = 0
  while len(examples) < 2:
    out = transform.random_map(record, np.random.default_rng(seed))
    seed += 1
    if int(out['caption_index']) == ks[0]:
      examples.setdefault(int(out['flipped']), out)
  batch = {key: np.stack([examples[0][key], examples[1][key]])
           for key in examples[0]}
  got = batch_truth.batch_truth(batch, world_cfg, 'train', tok, cfg)
  np.testing.assert_array_equal(got, [[True, False], [False, True]])
  unflipped = dict(batch, flipped=np.zeros(2, np.int32))
  with pytest.raises(ValueError, match='does not tokenise'):
    batch_truth.batch_truth(unflipped, world_cfg, 'train', tok, cfg)
  no_slot = {k: v for k, v in batch.items() if k != 'flipped'}
  with pytest.raises(ValueError, match='no "flipped" slot'):
    batch_truth.batch_truth(no_slot, world_cfg, 'train', tok, cfg)


def test_caption_world_needs_one_synthetic_configuration():
  cfg = _input_cfg()
  assert batch_truth.caption_world(cfg) == world.WorldConfig(
      **dict(cfg.data.synthetic.world))
  other = _input_cfg()
  other.data.more = dict(source='synthetic', weight=1.0, split='train',
                         num_examples=8, world=dict(resolution=48))
  assert batch_truth.caption_world(other) is None
  real = _input_cfg()
  real.data.synthetic.source = 'prepared'
  assert batch_truth.caption_world(real) is None
