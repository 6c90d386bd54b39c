"""vlg.tools.validate: held-out data of the run's own mixture, combined by count.

The end-to-end run (a trained ReX-VLM workdir at steps 0 and 3) is in
``tests/test_families.py``, which trains that workdir anyway.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from vlg import recipes
from vlg.tools import validate

REPO = os.path.join(os.path.dirname(__file__), '..', '..')


def test_heldout_input_switches_every_synthetic_source_to_the_split():
  c = recipes.family_config('rexvlm', 'tiny,evals=False')
  c.input.parts.mrc.data = dict(
      graphs=dict(source='synthetic', split='train', weight=1.0))
  got = validate.heldout_input(c.input, 'val', batch_size=12)
  assert got.data.synthetic.split == 'val'
  assert got.parts.mrc.data.graphs.split == 'val'
  assert tuple(got.augment) == ()
  assert {p.batch_size for p in got.parts.values()} == {12}
  # The run's own config is untouched.
  assert c.input.data.synthetic.split == 'train'
  assert c.input.parts.mrc.data.graphs.split == 'train'
  assert tuple(c.input.augment) == ('crop', 'flip', 'brightness')


def test_heldout_input_refuses_real_data_and_the_training_split():
  c = recipes.family_config('rexvlm', 'tiny,evals=False')
  c.input.parts.entity.data = dict(
      vg_regions=dict(source='prepared', dir='/data/vg', weight=1.0))
  with pytest.raises(ValueError, match=r'input\.parts\.entity\.data\.'
                     r"vg_regions is a 'prepared' source"):
    validate.heldout_input(c.input, 'val', batch_size=8)
  with pytest.raises(ValueError, match="split='train'"):
    validate.heldout_input(recipes.albef_config('tiny').input, 'train', 8)


def test_combine_weights_batch_means_by_their_counts():
  batches = [
      dict(loss=np.float32(2.0), mrc_acc=np.float32(0.5),
           mrc_loss=np.float32(1.0), mrc_num=np.float32(2),
           mlm_acc=np.float32(1.0), mlm_num_masked=np.float32(1),
           mrc_majority_rate=np.float32(0.9), box_mean_iou=np.float32(0.9),
           box_iou=np.array([0.2, 0.6, 0.9]), box_is_box=np.array([1, 1, 0])),
      dict(loss=np.float32(4.0), mrc_acc=np.float32(0.0),
           mrc_loss=np.float32(4.0), mrc_num=np.float32(6),
           mlm_acc=np.float32(0.0), mlm_num_masked=np.float32(3),
           mrc_majority_rate=np.float32(0.9), box_mean_iou=np.float32(0.9),
           box_iou=np.array([0.4, 0.0, 0.0]), box_is_box=np.array([1, 0, 0])),
  ]
  got = validate.combine(batches)
  assert got['loss'] == pytest.approx(3.0)
  # 1 of 8 triplets right; losses 2 × 1.0 + 6 × 4.0 over 8.
  assert got['mrc_acc'] == pytest.approx(1 / 8)
  assert got['mrc_loss'] == pytest.approx(26 / 8)
  assert got['mrc_num'] == 8
  assert got['mlm_acc'] == pytest.approx(1 / 4)
  assert got['mlm_num_masked'] == 4
  # Only box pairs count: IoUs 0.2, 0.6 and 0.4.
  assert got['box_num'] == 3
  assert got['box_mean_iou'] == pytest.approx(0.4)
  assert got['box_acc50'] == pytest.approx(1 / 3)
  # A per-batch majority rate is not the held-out set's: it is left out
  # for validate() to compute from the labels.
  assert 'mrc_majority_rate' not in got


def test_majority_rate():
  assert validate.majority_rate(np.array([3, 1, 3, 3, 0])) == 0.6
  assert np.isnan(validate.majority_rate(np.array([], np.int32)))


def test_command_line_help():
  helped = subprocess.run(
      [sys.executable, '-m', 'vlg.tools.validate', '--help'],
      capture_output=True, text=True, check=False, cwd=REPO)
  assert helped.returncode in (0, 1), helped.stderr  # absl's --help exits 1.
  assert 'on held-out data, per kept checkpoint' in helped.stdout
  for flag in ('--workdir', '--steps', '--batches', '--split', '--write'):
    assert flag in helped.stdout, flag
