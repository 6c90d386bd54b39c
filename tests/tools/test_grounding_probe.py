"""vlg.tools.grounding_probe: cross-attention mass on the named object."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from vlg import restore
from vlg.tools import grounding_probe

from test_restore import trained_run

REPO = os.path.join(os.path.dirname(__file__), '..', '..')


def test_patch_mask_by_hand():
  # 16-pixel patches; columns 0-2 and rows 1-2 overlap the box.
  got = grounding_probe.patch_mask((10, 20, 40, 33), grid=4, resolution=64)
  want = np.zeros((4, 4), bool)
  want[1:3, 0:3] = True
  np.testing.assert_array_equal(got, want.ravel())
  # A box on the patch edges covers exactly its patches.
  got = grounding_probe.patch_mask((16, 16, 32, 32), grid=4, resolution=64)
  assert got.sum() == 1 and got[5]


def test_grounding_metrics_by_hand():
  # 2 layers, 2 rows, 2 heads, 3 text positions, [CLS] + 4 patches.
  probs = np.full((2, 2, 2, 3, 5), 0.2)
  masks = np.array([[1, 0, 0, 0], [1, 1, 0, 0]], bool)
  positions = np.array([1, 2])
  probs[1, 0, :, 1] = [0, 1, 0, 0, 0]  # Row 0's word on its patch.
  probs[1, 1, 0, 2] = [1, 0, 0, 0, 0]  # Row 1, head 0: on [CLS].
  got = grounding_probe.grounding_metrics(probs, positions, masks)
  assert got['ground_uniform'] == pytest.approx((1 / 5 + 2 / 5) / 2)
  assert got['ground_mass/layer0'] == pytest.approx(0.3)
  assert got['ground_lift/layer0'] == pytest.approx(1.0)
  # Layer 1: row 0 all inside (1.0); row 1 head 0 on [CLS] (0), head 1
  # uniform (0.4): mean 0.2.
  assert got['ground_mass/layer1'] == pytest.approx((1.0 + 0.2) / 2)
  assert got['ground_cls/layer1'] == pytest.approx((0 + 0.6) / 2)
  assert got['ground_num'] == 2


@pytest.mark.xdist_group('tiny_run')
def test_uniform_cross_attention_has_lift_one(tmp_path_factory,
                                              fast_compile):
  """Zero query kernels make every cross-attention uniform: the mass on the
  object is then exactly the uniform share."""
  workdir, _ = trained_run(tmp_path_factory)
  run = restore.load_run(workdir)
  try:
    trained = grounding_probe.probe(run, scenes=6, batch_size=8)
    model = nnx.merge(run.graphdef, run.params)
    for layer in model.text.fusion:
      layer.cross.query.kernel[...] = 0
      layer.cross.query.bias[...] = 0
    _, params = nnx.split(model)
    flat = grounding_probe.probe(dataclasses.replace(run, params=params),
                                 scenes=6, batch_size=8)
  finally:
    run.close()
  assert flat['ground_num'] == trained['ground_num'] > 0
  layers = [k for k in flat if k.startswith('ground_lift/')]
  assert len(layers) == run.config.model.fusion_layers
  for key in layers:
    assert flat[key] == pytest.approx(1.0, rel=1e-5), key
  assert 0 < trained['ground_uniform'] < 1


def test_command_line_help():
  helped = subprocess.run(
      [sys.executable, '-m', 'vlg.tools.grounding_probe', '--help'],
      capture_output=True, text=True, check=False, cwd=REPO)
  assert helped.returncode in (0, 1), helped.stderr  # absl's --help exits 1.
  assert 'cross-attention on the object a word names' in helped.stdout
  for flag in ('--workdir', '--step', '--scenes', '--split'):
    assert flag in helped.stdout, flag
