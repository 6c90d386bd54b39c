"""vlg.analysis.curves and vlg.tools.curves on hand-made curves.

The expected best steps, drops and selection-table cells are worked out by
hand from the values below.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vlg import writers
from vlg.analysis import curves as cl

REPO = os.path.join(os.path.dirname(__file__), '..', '..')

CURVES = {
    'train/loss': {100: 3.0, 200: 2.0, 300: 1.5},
    'coco_dev/tr@1': {100: 0.20, 200: 0.50, 300: 0.40},
    'vsr_random_dev/accuracy': {100: 0.55, 200: 0.52, 300: 0.60},
    'vsr_random_test/accuracy': {100: 0.50, 200: 0.58, 300: 0.56},
    'valse/acc_r': {100: 0.60, 200: 0.70, 300: 0.65},
    'valse/existence/acc_r': {100: 0.8, 200: 0.8, 300: 0.7},
    'valse/num_evaluated': {100: 56.0, 200: 56.0, 300: 56.0},
    'valse/seconds': {100: 1.0, 200: 1.0, 300: 1.0},
    'valse/chance/acc_r': {100: 0.5, 200: 0.5, 300: 0.5},
    'svo/acc_r': {100: 'nan', 200: 0.70, 300: 0.72},
}


def test_skills_exclude_training_counts_times_and_chance():
  assert cl.skill_names(CURVES) == [
      'coco_dev/tr@1', 'svo/acc_r', 'valse/acc_r', 'valse/existence/acc_r',
      'vsr_random_dev/accuracy', 'vsr_random_test/accuracy']
  assert cl.is_dev('vsr_random_dev/accuracy') and cl.is_dev('coco_val/ir')
  assert not cl.is_dev('valse/acc_r')  # 'val' must be a whole token.
  assert cl.chance_value(CURVES, 'valse/acc_r') == 0.5
  assert cl.chance_value(CURVES, 'valse/existence/acc_r') == 0.5  # Leaf.
  assert cl.chance_value(CURVES, 'svo/acc_r') is None


def test_best_steps_final_values_and_drops():
  by_name = {s.name: s for s in cl.summarize(CURVES)}
  valse = by_name['valse/acc_r']
  assert (valse.best_step, valse.best_value) == (200, 0.70)
  assert (valse.final_step, valse.final_value) == (300, 0.65)
  assert valse.drop == pytest.approx(0.05)
  # A tie keeps the earliest step.
  assert by_name['valse/existence/acc_r'].best_step == 100
  assert by_name['valse/existence/acc_r'].drop == pytest.approx(0.1)
  # A NaN logged as a string is skipped; the best is the last step.
  svo = by_name['svo/acc_r']
  assert (svo.best_step, svo.drop) == (300, 0.0)
  assert cl.best_step({1: 0.3, 2: 0.3}) == (1, 0.3)
  with pytest.raises(ValueError):
    cl.best_step({1: 'nan'})


def test_selection_table_cells():
  table = cl.selection_table(CURVES)
  # Selectors: the headline Dev metrics; tasks: the other headline metrics.
  assert sorted(table) == ['coco_dev/tr@1', 'vsr_random_dev/accuracy']
  # coco_dev peaks at 200: tasks at 200 minus tasks at 300.
  coco = table['coco_dev/tr@1']
  assert sorted(coco) == ['svo/acc_r', 'valse/acc_r',
                          'vsr_random_test/accuracy']
  assert coco['valse/acc_r'] == pytest.approx(0.70 - 0.65)
  assert coco['vsr_random_test/accuracy'] == pytest.approx(0.58 - 0.56)
  assert coco['svo/acc_r'] == pytest.approx(0.70 - 0.72)
  # vsr_random_dev peaks at the last checkpoint: no gain anywhere.
  assert all(v == 0 for v in table['vsr_random_dev/accuracy'].values())
  custom = cl.selection_table(CURVES, selectors=['valse/acc_r'],
                              tasks=['coco_dev/tr@1', 'svo/acc_r'])
  assert custom == {'valse/acc_r': {
      'coco_dev/tr@1': pytest.approx(0.10), 'svo/acc_r': pytest.approx(
          -0.02)}}
  # A task not evaluated at the selector's best step: NaN, shown as a dash.
  gap = cl.selection_table({'a_dev/x': {1: 0.9, 2: 0.1},
                            'b/y': {2: 0.5}})
  assert np.isnan(gap['a_dev/x']['b/y'])
  assert '| a_dev/x | — |' in cl.selection_markdown(gap)


def test_plot_has_a_panel_per_piece_runs_in_legend_and_chance(tmp_path):
  other = {k: ({s: v + 0.01 for s, v in c.items()}
               if k == 'valse/acc_r' else c) for k, c in CURVES.items()}
  fig = cl.plot_curves({'runA': CURVES, 'runB': other})
  titles = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
  assert set(titles) == {'coco_dev', 'svo', 'valse', 'valse/existence',
                         'vsr_random_dev', 'vsr_random_test'}
  legend = [t.get_text() for t in titles['valse'].get_legend().get_texts()]
  assert legend == ['runA: acc_r', 'runB: acc_r', 'chance 0.5']
  lines = {l.get_label(): l for l in titles['valse'].get_lines()}
  np.testing.assert_allclose(lines['runB: acc_r'].get_ydata(),
                             [0.61, 0.71, 0.66])
  assert 'chance 0.5' not in [
      t.get_text() for t in titles['svo'].get_legend().get_texts()]
  path = tmp_path / 'c.png'
  fig.savefig(path)
  assert Image.open(path).size[0] > 100


def test_curves_tool_writes_png_and_markdown(tmp_path):
  workdirs = []
  for name, shift in (('run_a', 0.0), ('run_b', 0.1)):
    w = tmp_path / name
    writer = writers.JsonlWriter(str(w / 'metrics.jsonl'))
    for step in (100, 200, 300):
      writer.write_scalars(step, {k: (c[step] + shift if k == 'valse/acc_r'
                                      else c[step])
                                  for k, c in CURVES.items()})
    writer.close()
    workdirs.append(str(w))
  out = tmp_path / 'plots' / 'curves.png'
  proc = subprocess.run(
      [sys.executable, '-m', 'vlg.tools.curves', f'--workdir={workdirs[0]}',
       f'--workdir={workdirs[1]}', f'--out={out}'],
      capture_output=True, text=True, check=False,
      env=dict(os.environ, PYTHONPATH=os.path.abspath(REPO)))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert out.stat().st_size > 10_000
  assert Image.open(out).size[0] > 100
  text = (tmp_path / 'plots' / 'curves.md').read_text()
  assert text in proc.stdout
  # run_b's valse: best 0.80 at 200, final 0.75.
  assert ('| run_b | valse/acc_r | 200 | 0.8000 | 300 | 0.7500 | 0.0500 |'
          in text)
  assert '## Checkpoint selection: run_a' in text
  assert ('| coco_dev/tr@1 | -0.0200 | 0.0500 | 0.0200 |' in text)


def _run_with_outcomes(root, name, outcomes_by_step):
  """A run whose valse/acc_r curve is the mean of the given outcomes."""
  from vlg.evaluators import common
  w = root / name
  writer = writers.JsonlWriter(str(w / 'metrics.jsonl'))
  for step, values in outcomes_by_step.items():
    results = common.Results({'acc_r': float(np.mean(values))},
                             {'acc_r': values})
    writer.write_scalars(step, {'valse/acc_r': results['acc_r'],
                                'valse/chance/acc_r': 0.5})
    writers.write_outcomes(str(w), step, 'valse', results, 0)
  writer.close()
  return str(w)


def test_curves_tool_bands_and_whether_a_drop_is_real(tmp_path):
  # run_real: 80 of 100 right at step 100, 60 at step 200, and every
  # example right at 200 was right at 100: 20 discordant pairs, all one way
  # (McNemar p = 2 / 2^20). run_noise: 2 examples flip each way.
  real = {100: np.r_[np.ones(80), np.zeros(20)],
          200: np.r_[np.ones(60), np.zeros(40)]}
  base = np.r_[np.ones(60), np.zeros(40)]
  noisy = base.copy()
  noisy[:2], noisy[60:62] = 0, 1
  noise = {100: base, 200: noisy}
  workdirs = [_run_with_outcomes(tmp_path, 'run_real', real),
              _run_with_outcomes(tmp_path, 'run_noise', noise)]
  out = tmp_path / 'c.png'
  proc = subprocess.run(
      [sys.executable, '-m', 'vlg.tools.curves', f'--workdir={workdirs[0]}',
       f'--workdir={workdirs[1]}', f'--out={out}', '--bootstrap=500'],
      capture_output=True, text=True, check=False,
      env=dict(os.environ, PYTHONPATH=os.path.abspath(REPO)))
  assert proc.returncode == 0, proc.stderr[-2000:]
  text = (tmp_path / 'c.md').read_text()
  assert '## Confidence over examples' in text
  rows = {line.split(' | ')[0].strip('| '): line.split(' | ')
          for line in text.splitlines() if line.startswith('| run_')
          and 'mcnemar' in line}
  assert rows['run_real'][7:10] == ['mcnemar', f'{2 / 2**20:.4f}', 'yes |']
  assert rows['run_noise'][2] == '100'  # Best at 100 (0.60, tie-free).
  assert rows['run_noise'][7:10] == ['mcnemar', '1.0000', 'no |']
  # The best value's interval brackets it.
  best = rows['run_real'][3]
  assert best.startswith('0.8000 [')
  low, high = (float(v) for v in best[8:-1].split(', '))
  assert low < 0.8 < high


def test_plot_shades_bands(tmp_path):
  curves = {'valse/acc_r': {100: 0.6, 200: 0.7}}
  fig = cl.plot_curves({'run': curves}, bands={
      'run': {'valse/acc_r': {100: (0.5, 0.7), 200: (0.6, 0.8)}}})
  ax = [a for a in fig.axes if a.get_visible()][0]
  assert len(ax.collections) == 1  # The band.
  path = ax.collections[0].get_paths()[0]
  ys = path.vertices[:, 1]
  assert ys.min() == pytest.approx(0.5) and ys.max() == pytest.approx(0.8)
  fig = cl.plot_curves({'run': curves})
  assert not [a for a in fig.axes if a.get_visible()][0].collections
