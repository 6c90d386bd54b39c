"""JSONL metrics: one object per write, NaN kept visible, resume dedupe."""

import json
import math

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
