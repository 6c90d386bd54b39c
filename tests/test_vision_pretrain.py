"""vlg/vision_pretrain.py: the vision tower's labelled pretraining on the
world, and a fresh run that starts from the tower it trained."""

import json
import os

import numpy as np
import pytest

from vlg import restore
from vlg import train
from vlg import train_state
from vlg import vision_pretrain
from vlg.synthetic import world
from vlg.weights import common
from vlg.weights import files

from test_train import tiny_test_config


def test_labels_mark_categories_colours_and_pairs_present():
  record = {'objects': [{'category': 'star', 'color': 'red', 'size': 'small'},
                        {'category': 'ring', 'color': 'blue',
                         'size': 'large'},
                        {'category': 'star', 'color': 'red',
                         'size': 'small'}]}
  got = vision_pretrain.labels(record)
  cats, cols = len(world.CATEGORIES), len(world.COLOURS)
  assert got.shape == (vision_pretrain.NUM_LABELS,)
  assert vision_pretrain.NUM_LABELS == cats + cols + cats * cols + cats * 2
  on = {int(i) for i in np.flatnonzero(got)}
  pair = lambda c, k: cats + cols + vision_pretrain.PAIRS.index((c, k))
  sized = lambda s, k: (cats + cols + cats * cols +
                        vision_pretrain.SIZED.index((s, k)))
  assert on == {world.CATEGORIES.index('star'), world.CATEGORIES.index('ring'),
                cats + world.COLOURS.index('red'),
                cats + world.COLOURS.index('blue'),
                pair('red', 'star'), pair('blue', 'ring'),
                sized('small', 'star'), sized('large', 'ring')}


def test_label_loss_averages_within_groups_and_sums_them():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, vision_pretrain.NUM_LABELS))
  targets = (rng.random((3, vision_pretrain.NUM_LABELS)) < 0.3).astype(float)
  # float64 re-derivation: -[t log s(x) + (1 - t) log(1 - s(x))].
  s = 1 / (1 + np.exp(-logits))
  per = -(targets * np.log(s) + (1 - targets) * np.log(1 - s))
  # The groups' columns, written out: 8 categories, 7 colours, 56 pairs,
  # 16 sized categories.
  want = (per[:, :8].mean() + per[:, 8:15].mean() + per[:, 15:71].mean() +
          per[:, 71:].mean())
  assert [n for _, n in vision_pretrain.GROUPS] == [8, 7, 56, 16]
  got = float(vision_pretrain.label_loss(logits.astype(np.float32),
                                         targets.astype(np.float32)))
  assert got == pytest.approx(want, rel=1e-5)
  # With weights: 3 on categories, the pairs left out.
  weights = {'category': 3.0, 'colour': 1.0, 'colour_category': 0.0,
             'size_category': 0.5}
  want = (3 * per[:, :8].mean() + per[:, 8:15].mean() +
          0.5 * per[:, 71:].mean())
  got = float(vision_pretrain.label_loss(
      logits.astype(np.float32), targets.astype(np.float32), weights))
  assert got == pytest.approx(want, rel=1e-5)


def test_patch_labels_mark_the_box_that_holds_each_patch_centre():
  # A 4 x 4 grid: patch centres at 0.125, 0.375, 0.625, 0.875.
  record = {'objects': [
      # Holds the centres of columns 0-1, rows 0-1.
      {'category': 'star', 'color': 'red', 'size': 'large',
       'box': [0.0, 0.0, 0.5, 0.5]},
      # Holds row 3, column 3 only; it also overlaps nothing.
      {'category': 'ring', 'color': 'blue', 'size': 'small',
       'box': [0.8, 0.8, 0.2, 0.2]},
      # Inside the star's box, holding only (row 1, column 1): the smaller
      # box wins there.
      {'category': 'circle', 'color': 'green', 'size': 'small',
       'box': [0.3, 0.3, 0.1, 0.1]}]}
  got = vision_pretrain.patch_labels(record, 4).reshape(4, 4, 4)
  cat = lambda k: 1 + world.CATEGORIES.index(k)
  col = lambda c: 1 + world.COLOURS.index(c)
  pair = lambda c, k: 1 + vision_pretrain.PAIRS.index((c, k))
  sized = lambda s, k: 1 + vision_pretrain.SIZED.index((s, k))
  want = np.zeros((4, 4, 4), np.int32)
  for r, c in [(0, 0), (0, 1), (1, 0)]:
    want[r, c] = (cat('star'), col('red'), pair('red', 'star'),
                  sized('large', 'star'))
  want[1, 1] = (cat('circle'), col('green'), pair('green', 'circle'),
                sized('small', 'circle'))
  want[3, 3] = (cat('ring'), col('blue'), pair('blue', 'ring'),
                sized('small', 'ring'))
  np.testing.assert_array_equal(got, want)


def test_patch_loss_is_softmax_cross_entropy_per_group():
  rng = np.random.default_rng(1)
  sizes = [n + 1 for _, n in vision_pretrain.GROUPS]  # 9, 8, 57, 17
  logits = rng.normal(size=(2, 5, vision_pretrain.NUM_PATCH_CLASSES))
  targets = np.stack([rng.integers(0, n, size=(2, 5)) for n in sizes], -1)
  # float64 re-derivation: -log softmax(x)[t] within each group's columns.
  want, start = [], 0
  for g, n in enumerate(sizes):
    x = logits[..., start:start + n]
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    want.append(-np.take_along_axis(logp, targets[..., g:g + 1], -1).mean())
    start += n
  weights = {'category': 2.0, 'colour': 1.0, 'colour_category': 0.5,
             'size_category': 0.0}
  got = float(vision_pretrain.patch_loss(
      logits.astype(np.float32), targets.astype(np.int32), weights))
  assert got == pytest.approx(2 * want[0] + want[1] + 0.5 * want[2],
                              rel=1e-5)


def test_label_weights_are_checked():
  c = tiny_test_config()
  assert vision_pretrain.group_weights(c) == {
      'category': 1.0, 'colour': 0.1, 'colour_category': 0.1,
      'size_category': 0.0}
  c.vision_pretrain.label_weights.colour_category = 0.0
  assert vision_pretrain.group_weights(c)['colour_category'] == 0.0
  # A config saved before a group existed: the default weight for it.
  with c.unlocked():
    del c.vision_pretrain.label_weights['size_category']
  assert vision_pretrain.group_weights(c)['size_category'] == 0.0
  c.vision_pretrain.label_weights.size_category = 0.0
  with c.unlocked():
    c.vision_pretrain.label_weights.shape = 2.0
  with pytest.raises(ValueError, match=r"unknown group\(s\) \['shape'\]"):
    vision_pretrain.group_weights(c)
  del c.vision_pretrain.label_weights['shape']
  c.vision_pretrain.label_weights.update(category=0.0, colour=0.0,
                                         size_category=0.0)
  with pytest.raises(ValueError, match='one at least above 0'):
    vision_pretrain.group_weights(c)
  c.vision_pretrain.label_weights.category = -1.0
  with pytest.raises(ValueError, match='finite number >= 0'):
    vision_pretrain.group_weights(c)


def test_off_by_default_and_clear_refusals(tmp_path):
  c = tiny_test_config()
  assert not vision_pretrain.enabled(c)
  assert vision_pretrain.prepare(c, str(tmp_path)) is c
  c.vision_pretrain.update(steps=4, warmup_steps=1)
  c.model.init.vision = 'deit.pth'
  with pytest.raises(ValueError, match='both give the vision tower'):
    vision_pretrain.prepare(c, str(tmp_path / 'a'))
  c.model.init.vision = ''
  c.vision_pretrain.warmup_steps = 4
  with pytest.raises(ValueError, match='warmup_steps=4'):
    vision_pretrain.prepare(c, str(tmp_path / 'b'))
  c.vision_pretrain.warmup_steps = 1
  c.input.data.synthetic.source = 'albef_json'
  with pytest.raises(ValueError, match='not one synthetic world'):
    vision_pretrain.prepare(c, str(tmp_path / 'c'))
  assert not os.listdir(tmp_path)  # Nothing half-made on a refusal.


def test_an_existing_tower_is_reused(tmp_path, monkeypatch):
  c = tiny_test_config()
  c.vision_pretrain.update(steps=4, warmup_steps=1)
  path = vision_pretrain.tower_path(str(tmp_path))
  os.makedirs(os.path.dirname(path))
  np.savez(path, **{'vision/norm/scale': np.ones(3, np.float32)})

  def no_training(*args):
    raise AssertionError('trained again')

  monkeypatch.setattr(vision_pretrain, 'train_tower', no_training)
  out = vision_pretrain.prepare(c, str(tmp_path))
  assert out.model.init.vision == path
  assert c.model.init.vision == ''  # The caller's config is not changed.


def test_a_fresh_run_starts_from_the_tower_it_trained(tmp_path,
                                                      fast_compile):
  c = tiny_test_config(total_steps=1, ckpt_steps=1, keep_every_steps=1)
  c.vision_pretrain.update(steps=6, warmup_steps=1, batch_size=4)
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(c, workdir)

  path = vision_pretrain.tower_path(workdir)
  tower = files.read(path)
  with open(os.path.join(os.path.dirname(path),
                         vision_pretrain.SUMMARY_FILE)) as f:
    summary = json.load(f)
  assert summary['steps'] == 6 and summary['batch_size'] == 4
  assert summary['gflop_per_step'] > 0
  assert summary['tflop'] == pytest.approx(6 * summary['gflop_per_step']
                                           / 1e3)
  for group, _ in vision_pretrain.GROUPS:
    assert 0 <= summary[f'val_{group}_accuracy'] <= 1
    assert 0.5 <= summary[f'val_{group}_majority'] <= 1

  run = restore.load_run(workdir)
  try:
    assert run.config.model.init.vision == path
    params = common.flatten(run.params)
  finally:
    run.close()
  vision = {p: v for p, v in params.items() if p.startswith('vision/')}
  assert sorted(tower) == sorted(vision)
  # The run's one Adam step moves a weight by at most its rate (1e-3); the
  # tower differs from the run's fresh initialisation by far more.
  fresh = common.flatten(train_state.init_params(c.model, c.seed, None))
  name = 'vision/blocks/0/mlp/fc1/kernel'
  np.testing.assert_allclose(np.asarray(vision[name]), tower[name],
                             atol=1.1e-3)
  assert np.abs(np.asarray(fresh[name]) - tower[name]).mean() > 0.01
  # A resumed run needs no tower: its checkpoint holds the weights.
  assert vision_pretrain.prepare(c, workdir) is c


def test_patch_target_trains_a_tower_of_the_same_layout(tmp_path,
                                                        fast_compile):
  c = tiny_test_config()
  c.vision_pretrain.update(steps=3, warmup_steps=1, batch_size=4,
                           target='patchs')
  with pytest.raises(ValueError, match="target='patchs'"):
    vision_pretrain.train_tower(c, str(tmp_path / 'typo' / 'tower.npz'))
  assert not os.listdir(tmp_path)
  c.vision_pretrain.target = 'patch'
  path = str(tmp_path / 'patch' / 'tower.npz')
  summary = vision_pretrain.train_tower(c, path)
  assert summary['target'] == 'patch'
  # The baseline: the most frequent class among the patches objects cover
  # in the world's val images, recomputed here from the labels.
  grid = c.model.image_size // c.model.patch_size
  world_cfg = vision_pretrain._world(c)
  from vlg.synthetic import source
  val = np.stack([vision_pretrain.patch_labels(
      source.make_record('val', i, world_cfg), grid)
      for i in range(vision_pretrain.NUM_VAL)])
  for g, (group, _) in enumerate(vision_pretrain.GROUPS):
    classes = val[..., g][val[..., g] > 0]
    assert summary[f'val_{group}_majority'] == pytest.approx(
        np.bincount(classes).max() / classes.size)
    assert 0 <= summary[f'val_{group}_accuracy'] <= 1
  tower = files.read(path)
  fresh = common.flatten(train_state.init_params(c.model, c.seed, None))
  assert sorted(tower) == sorted(p for p in fresh if p.startswith('vision/'))
