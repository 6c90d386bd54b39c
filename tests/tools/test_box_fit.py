"""vlg.tools.box_fit: X-VLM's box losses trained directly on named objects."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from vlg import train_state
from vlg.data import batch_truth
from vlg.synthetic import language
from vlg.synthetic import layout
from vlg.synthetic import world
from vlg.tools import box_fit

from test_restore import load_on_one_device
from test_restore import trained_run

REPO = os.path.join(os.path.dirname(__file__), '..', '..')


class _Words:
  """A tokenizer that keeps each text (ids: the text's index)."""

  def __init__(self):
    self.texts = []

  def encode(self, text, max_len):
    self.texts.append(text)
    return np.full(max_len, len(self.texts) - 1), np.ones(max_len)


def test_referrals_name_each_object_once_with_its_box():
  cfg = world.WorldConfig(resolution=64)
  words = _Words()
  got = box_fit.referrals(cfg, words, num_scenes=5, split='val',
                          max_words=30, max_len=6, resolution=48)
  assert got.images.shape == (5, 48, 48, 3)
  row = 0
  for i in range(5):
    scene = layout.generate_scene('val', i, cfg)
    for k, obj in enumerate(scene.objects):
      name = language.referring_expression(scene, k)
      if name is None:
        continue
      assert words.texts[got.ids[row, 0]] == f'the {name}'
      assert got.image_index[row] == i
      x0, y0, x1, y1 = obj.box
      np.testing.assert_allclose(
          got.boxes[row], [(x0 + x1) / 128, (y0 + y1) / 128,
                           (x1 - x0) / 64, (y1 - y0) / 64], rtol=1e-6)
      row += 1
  assert row == len(got.ids) > 5


def test_box_loss_by_hand():
  """L1 + (1 - GIoU) of a box shifted by a tenth of the image."""

  class Fixed:  # Predicts the box in the first four text ids / 10.

    def embed_text(self, ids, mask):
      return {'text_embeds': ids}

    def fuse_cls(self, text, mask, tokens):
      return text

    def predict_box(self, cls):
      return cls[:, :4].astype(float) / 10

  ids = np.array([[5, 5, 2, 2]])
  target = np.array([[0.6, 0.5, 0.2, 0.2]])
  loss, iou = box_fit.box_loss(Fixed(), (None, ids, None, target))
  # Boxes [.4, .6] x [.4, .6] and [.5, .7] x [.4, .6]: overlap .02, union
  # .06, the enclosing box is the union, so GIoU = IoU = 1/3; L1 = 0.1.
  assert float(iou) == pytest.approx(1 / 3, rel=1e-5)
  assert float(loss) == pytest.approx(0.1 + 2 / 3, rel=1e-5)


@pytest.mark.xdist_group('tiny_run')
def test_fit_learns_the_training_boxes_and_checks_its_input(
    tmp_path_factory):
  workdir, _ = trained_run(tmp_path_factory)
  run = load_on_one_device(workdir)
  try:
    with pytest.raises(ValueError, match='box head'):
      box_fit.fit(run, scenes=2, val_scenes=2, steps=1)
    with pytest.raises(ValueError, match="fusion_posemb='sin'"):
      box_fit.fit(run, scenes=2, steps=1, fusion_posemb='sin')
    # The same model with X-VLM's box head (fresh), the run's tokenizer.
    model_cfg = run.config.model.copy_and_resolve_references()
    model_cfg.box_head = True
    with nnx.use_eager_sharding(False):
      model = train_state.create_model(model_cfg, nnx.Rngs(0))
    history = box_fit.fit_model(
        model, batch_truth.caption_world(run.config.input), run.tokenizer,
        max_words=30, max_len=int(run.config.input.max_text_len),
        resolution=int(run.config.input.resolution), mesh=run.mesh,
        rules=run.rules, scenes=6, val_scenes=4, steps=200, batch_size=16,
        lr=1e-3, eval_every=100, log=lambda _: None)
    with pytest.raises(FloatingPointError, match='box loss nan at step 2'):
      box_fit.fit_model(
          model, batch_truth.caption_world(run.config.input), run.tokenizer,
          max_words=30, max_len=int(run.config.input.max_text_len),
          resolution=int(run.config.input.resolution), mesh=run.mesh,
          rules=run.rules, scenes=2, val_scenes=2, steps=3, batch_size=2,
          lr=float('nan'), eval_every=3, log=lambda _: None)
  finally:
    run.close()
  assert [h["step"] for h in history] == [0, 100, 200]
  last = history[-1]
  # The few training objects are fitted well beyond where they started
  # and beyond the mean box's IoU on held-out objects.
  assert last['fit_iou'] > history[0]['fit_iou'] + 0.2
  assert last['fit_iou'] > last['mean_box_iou'] + 0.2
  assert 0 < last['val_num'] and 0 <= last['val_iou50'] <= 1


def test_help_lists_flags():
  helped = subprocess.run(
      [sys.executable, '-m', 'vlg.tools.box_fit', '--help'], cwd=REPO,
      capture_output=True, text=True, timeout=120)
  assert helped.returncode in (0, 1), helped.stderr  # absl's --help exits 1.
  assert 'find the object a text names' in helped.stdout
  for flag in ('--workdir', '--scenes', '--val_scenes', '--fusion_posemb',
               '--out'):
    assert flag in helped.stdout, flag
