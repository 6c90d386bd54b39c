"""vlg.projects.probing.seed_tables against hand counts: Tables 1-3 (mean ±
sample std over seeds, baselines first, bad rows refused) and layer curves."""

import math

import pytest

from vlg.projects.probing import seed_tables


def test_results_table_layout_mean_and_std_over_seeds():
  rows = [dict(model='qformer', tap='resampler_queries', regime='frozen',
               head='linear', task='refcocog', value=v, seed=s)
          for s, v in enumerate((0.30, 0.32))]
  rows += [dict(model='qformer', tap='resampler_queries', regime='frozen',
                head='linear', task='vsr', value=0.65, seed=0),
           dict(model='qformer', tap='resampler_queries', regime='unfrozen',
                head='swiglu2', task='rcm', value=0.8135, seed=0)]
  table = seed_tables.results_table(rows, mean_box_accuracy=0.1234)
  assert table.splitlines() == [
      '| model | tap | regime | head | RefCOCOg Acc@0.5 | VSR acc | '
      'RCM acc | seeds |',
      '| --- | --- | --- | --- | --- | --- | --- | --- |',
      '| chance | – | – | – | – | 50.00 | 50.00 | – |',
      '| mean box (train) | – | – | – | 12.34 | – | – | – |',
      # std of (30, 32) with ddof 1 is sqrt(2) = 1.41.
      '| qformer | resampler_queries | frozen | linear | 31.00 ± 1.41 | '
      '65.00 | – | 2/1/0 |',
      '| qformer | resampler_queries | unfrozen | swiglu2 | – | – | 81.35 | '
      '0/0/1 |']
  with pytest.raises(ValueError, match='seed 1 appears twice'):
    seed_tables.results_table(rows + [rows[1]])
  with pytest.raises(ValueError, match='fraction'):
    seed_tables.results_table([dict(rows[0], value=31.0)])
  with pytest.raises(ValueError, match='task must be one of'):
    seed_tables.results_table([dict(rows[0], task='gqa')])


def test_layer_curves_from_taps_and_layer_keys():
  rows = [dict(task='vsr', model='qformer', regime='frozen', head='linear',
               tap=f'resampler_layer:{k}', seed=s, value=0.5 + 0.01 * k + s)
          for k in (1, 2, 3) for s in (0, 0.02)]
  rows += [dict(task='rcm', model='albef', layer=k, value=0.6, seed=0)
           for k in (2, 1)]
  curves = seed_tables.layer_curves(rows)
  assert set(curves) == {'vsr qformer frozen linear resampler_layer',
                         'rcm albef'}
  vsr = curves['vsr qformer frozen linear resampler_layer']
  assert list(vsr) == [1, 2, 3]
  assert vsr[2].mean == pytest.approx(0.53) and vsr[2].n == 2
  assert vsr[2].std == pytest.approx(math.sqrt(2 * 0.01 ** 2))
  assert list(curves['rcm albef']) == [1, 2]
  assert math.isnan(curves['rcm albef'][1].std)
  with pytest.raises(ValueError, match='no layer'):
    seed_tables.layer_curves([dict(task='vsr', tap='fused_cls', value=0.5)])
