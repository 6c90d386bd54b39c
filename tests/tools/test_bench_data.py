"""``vlg.tools.bench_data`` on a tiny prepared folder: figures consistent,
sources listed, ``--help`` works."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vlg import recipes
from vlg.data import pipeline
from vlg.data import tokenizer as tok_lib
from vlg.tools import bench_data
from vlg.tools import prepare

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def prepared_config(tmp_path_factory):
  """ALBEF tiny reading 4 prepared 40x30 images stored at 16 px."""
  root = tmp_path_factory.mktemp('bench_data')
  rng = np.random.default_rng(0)
  entries = []
  for i in range(4):
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), np.uint8)).save(
        root / f'{i}.png')
    entries.append({'image': f'{i}.png', 'caption': f'a noisy picture {i}'})
  (root / 'captions.json').write_text(json.dumps(entries))
  prepare.prepare('albef_json', [str(root / 'captions.json')], [str(root)],
                  str(root / 'out'), reencode_size=16, log=lambda _: None)
  c = recipes.albef_config('tiny,evals=False')
  c.input.data = {'tiny': {'source': 'prepared', 'dir': str(root / 'out')}}
  c.batch_size = 4
  return c


def test_measure_and_run_on_prepared_shards(prepared_config):
  c = prepared_config
  tok = tok_lib.train_tokenizer(pipeline.training_texts(c.input, 4), 64)
  row = bench_data.measure(c, tok, resolution=32, workers=0, batches=2,
                           warmup=1)
  assert row['examples'] == 2 * 4  # batches x batch size, all timed.
  assert row['examples_per_s'] == pytest.approx(row['examples'] /
                                                row['seconds'])
  lines = []
  rows = bench_data.run(c, tok, [24], [0], batches=1, warmup=0,
                        log=lines.append)
  assert len(rows) == 1 and rows[0]['resolution'] == 24
  assert any('input.data.tiny:' in line and '4 records' in line and
             "format='albef_json'" in line for line in lines), lines
  assert lines[-1].split() == [
      '24', '0', f'{rows[0]["examples_per_s"]:.1f}',
      f'{rows[0]["examples_per_s"]:.1f}']


def test_synthetic_sources_follow_the_resolution():
  c = recipes.family_config('xvlm', 'tiny,evals=False')
  cfg = bench_data._input_at(c.input, 48, 2)  # pylint: disable=protected-access
  assert cfg.data.synthetic.world.resolution == 48
  assert cfg.resolution == 48 and cfg.num_workers == 2
  assert c.input.resolution == 64  # The config itself is left alone.


def test_help():
  proc = subprocess.run([sys.executable, '-m', 'vlg.tools.bench_data',
                         '--help'], cwd=ROOT, capture_output=True, text=True,
                        timeout=120, env={**os.environ, 'PYTHONPATH': ROOT})
  assert proc.returncode in (0, 1), proc.stderr  # absl's --help exits 1.
  assert '--workers' in proc.stdout and '--resolutions' in proc.stdout
