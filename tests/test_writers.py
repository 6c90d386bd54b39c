"""JSONL metrics: one object per write, NaN kept visible, resume dedupe;
CLU's writer beside it, and commands that start without TensorFlow."""

import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
from clu.metric_writers import interface

from vlg import writers


def test_jsonl_writer_and_curves(tmp_path):
  w = writers.JsonlWriter(str(tmp_path / 'metrics.jsonl'))
  w.write_scalars(1, {'train/loss': 2.0, 'train/lr': 1e-4})
  w.write_scalars(2, {'train/loss': float('nan')})
  w.write_scalars(2, {'train/loss': 1.5})  # A resumed run re-logs step 2.
  w.close()
  records = writers.read_metrics(str(tmp_path))
  assert records[0] == {'step': 1, 'train/loss': 2.0, 'train/lr': 1e-4}
  assert records[1]['train/loss'] == 'nan'
  curves = writers.metric_curves(str(tmp_path))
  assert curves['train/loss'] == {1: 2.0, 2: 1.5}
  assert not math.isnan(curves['train/loss'][2])


def test_colab_is_a_valid_notebook():
  import os
  path = os.path.join(os.path.dirname(__file__), '..', 'colabs',
                      'curves.ipynb')
  nb = json.load(open(path))
  assert nb['nbformat'] == 4
  code = '\n'.join(''.join(c['source']) for c in nb['cells']
                   if c['cell_type'] == 'code')
  assert 'metric_curves' in code
  compile(code.replace('!pip', '#!pip'), path, 'exec')


def test_progress_line_shows_the_keys_present_and_the_eta():
  line = writers.progress_line(
      10, 100, {'loss': 1.23456, 'mrc_acc': 0.5, 'other': 9.0}, 2.0, 3725.0,
      ('loss', 'itc_loss', 'mrc_acc'))
  assert line == ('step 10/100 | loss 1.2346 | mrc_acc 0.5000 | '
                  '2.00 steps/s | ETA 01:02:05')


def test_outcomes_round_trip_atomic_and_process_zero_only(tmp_path):
  from vlg.evaluators import common
  results = common.Results(
      {'accuracy': 0.5, 'relation/left of': 1.0, 'num_evaluated': 2.0},
      {'accuracy': [True, False], 'relation/left of': [1.0]})
  writers.write_outcomes(str(tmp_path), 300, 'vsr_dev', results, 0)
  writers.write_outcomes(str(tmp_path), 100, 'vsr_dev', results, 0)
  # Only process 0 writes; results without outcomes write nothing.
  writers.write_outcomes(str(tmp_path), 200, 'vsr_dev', results, 1)
  writers.write_outcomes(str(tmp_path), 200, 'skipped', {'skipped': 1.0}, 0)
  # A file a crash left half-written is not read.
  partial = writers.outcomes_path(str(tmp_path), 400, 'vsr_dev')
  open(partial + '.partial.npz', 'wb').close()
  got = writers.read_outcomes(str(tmp_path))
  assert sorted(got) == ['vsr_dev/accuracy', 'vsr_dev/relation/left of']
  assert sorted(got['vsr_dev/accuracy']) == [100, 300]
  np.testing.assert_array_equal(got['vsr_dev/accuracy'][300], [1.0, 0.0])
  np.testing.assert_array_equal(got['vsr_dev/relation/left of'][100], [1.0])
  assert writers.read_outcomes(str(tmp_path / 'nothing')) == {}


def test_jsonl_writer_implements_clus_interface_and_create_writer_writes_it(
    tmp_path):
  missing = sorted(name for name in interface.MetricWriter.__abstractmethods__
                   if not callable(getattr(writers.JsonlWriter, name, None)))
  assert not missing, f'JsonlWriter lacks {missing}'
  w = writers.create_writer(str(tmp_path), process_index=0)
  assert isinstance(w, interface.MetricWriter)
  w.write_scalars(3, {'train/loss': 0.5})
  w.write_texts(3, {'note': 'x'})
  w.write_images(3, {'img': np.zeros((1, 2, 2, 3), np.float32)})
  w.write_hparams({'lr': 1e-3})
  w.flush()
  w.close()
  assert writers.read_metrics(str(tmp_path)) == [
      {'step': 3, 'train/loss': 0.5}, {'step': 3, 'note': 'x'}]
  # Other processes only log: nothing is written to their workdir.
  other = tmp_path / 'other'
  other.mkdir()
  w = writers.create_writer(str(other), process_index=1)
  w.write_scalars(3, {'train/loss': 0.5})
  w.close()
  assert not (other / 'metrics.jsonl').exists()


def test_commands_start_without_tensorflow():
  """Every ``python -m`` command of vlg imports without TensorFlow, which
  only a metric writer needs (it takes seconds to import), so ``--help`` and
  the tools that read ``metrics.jsonl`` start fast."""
  root = pathlib.Path(__file__).resolve().parents[1]
  modules = sorted(
      '.'.join(p.relative_to(root).with_suffix('').parts)
      for p in (root / 'vlg').rglob('*.py')
      if "__name__ == '__main__'" in p.read_text())
  assert 'vlg.tools.eval' in modules and 'vlg.main' in modules
  code = ('import importlib, sys\n'
          f'for m in {modules!r}: importlib.import_module(m)\n'
          "print(sorted(m for m in sys.modules if m.split('.')[0] in "
          "('tensorflow', 'keras')))")
  out = subprocess.run([sys.executable, '-c', code], cwd=root,
                       capture_output=True, text=True, check=True,
                       env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert out.stdout.strip() == '[]', out.stdout[:500]
