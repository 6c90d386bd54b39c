"""End to end: ``python -m vlg.projects.probing.run`` parsed and run in-process.

The command line is parsed into its own ``flags.FlagValues`` and ``main``
runs the grid. Only ``load_source`` is replaced, by the stand-in encoder of
``probe_stub`` (no trained run: compiling and training a real model would
cost minutes); the data is the real synthetic RefCOCOg-/VSR-style sets, tiny
(``synthetic_num=16``: 12 probe-train, 4 probe-val and 16 test examples per
task), written under a temporary ``VLG_CACHE_DIR``. The grid: box + VSR,
frozen + unfrozen, a linear head, 2 epochs, 2 seeds, no HPO.
"""

import json
import os
import re
import sys

import jax
import numpy as np
import pytest
from absl import app
from absl import flags

import probe_stub as stub  # tests/projects/probing/probe_stub.py, on sys.path
from vlg import sharding
from vlg.projects.probing import feature_cache
from vlg.projects.probing import run
from vlg.projects.probing import train

REPO = os.path.join(os.path.dirname(__file__), '..', '..', '..')
TAP = 'tap=resampler_queries,reduce=flatten'
COMMAND = [
    f'--config={REPO}/configs/probe.py:tiny',
    '--config.model_workdir=stub_model', '--config.model_name=stub',
    f'--config.taps=("{TAP}",)', '--config.tasks=("refcocog_box", "vsr")',
    '--config.seeds=(0, 1)', '--config.max_text_len=12',
    '--config.hparams.epochs=2', '--config.hparams.batch_size=8',
    '--config.hparams.eval_batch_size=16', '--config.data.synthetic_num=16']
HEADLINE = {'refcocog_box': 'acc@0.5', 'vsr': 'accuracy'}


class Calls:
  """Counts what the stubbed grid did."""

  def __init__(self):
    self.sources = self.closed = self.extractions = 0
    self.hits: list[dict[str, bool]] = []


@pytest.fixture
def calls(monkeypatch, tmp_path):
  """Stubs the model source; counts feature extractions and cache hits."""
  monkeypatch.setenv('VLG_CACHE_DIR', str(tmp_path / 'vlg_cache'))
  got = Calls()

  def load_source(config):
    assert config.model_workdir == 'stub_model'
    got.sources += 1

    def close():
      got.closed += 1
    return run.Source(
        name='stub_model', encoder=stub.encoder(), tokenizer=stub.Tokenizer(),
        resolution=48, step=0, close=close, mesh=sharding.make_mesh(
            (1, 1, 1), devices=jax.devices()[:1]))
  monkeypatch.setattr(run, 'load_source', load_source)

  extract = feature_cache.extract_features

  def counted_extract(*args, **kwargs):
    got.extractions += 1
    return extract(*args, **kwargs)
  monkeypatch.setattr(feature_cache, 'extract_features', counted_extract)

  train_probe = train.train_probe

  def counted_train(*args, **kwargs):
    result = train_probe(*args, **kwargs)
    got.hits.append(result.cache_hits)
    return result
  monkeypatch.setattr(train, 'train_probe', counted_train)
  return got


def _main(monkeypatch, *args):
  """Parses ``args`` as the tool's command line and runs its main."""
  argv = ['vlg.projects.probing.run', *args]
  # config_flags finds the --config.* overrides in sys.argv.
  monkeypatch.setattr(sys, 'argv', argv)
  monkeypatch.setattr(run, '_CONFIG', None)
  monkeypatch.setattr(run, '_WORKDIR', None)
  flag_values = flags.FlagValues()
  run.define_flags(flag_values)
  run.main(flag_values(argv))


def _table(markdown, section):
  """The rows of the first table under ``## section``, as lists of cells."""
  body = markdown.split(f'## {section}\n\n', 1)[1].split('\n\n', 1)[0]
  return [[c.strip() for c in line.strip('|').split('|')]
          for line in body.splitlines()]


def test_grid_writes_tables_resumes_and_rerun_reads_the_cache(
    calls, monkeypatch, tmp_path, fast_compile, capsys):
  workdir = str(tmp_path / 'probe')
  _main(monkeypatch, *COMMAND, f'--workdir={workdir}')
  lines = capsys.readouterr().out.splitlines()
  assert (calls.sources, calls.closed) == (1, 1)
  # Progress: one line per epoch of every probe (2 epochs x 2 seeds x 4).
  epochs = [l for l in lines if re.match(
      r'  seed [01]: epoch [12], train_loss .*\[\d+s, at most \d+s left\]$',
      l)]
  assert len(epochs) == 16, lines
  # Frozen: each task's train/val/test split extracted once; 8 probes.
  assert calls.extractions == 6 and len(calls.hits) == 8
  assert sum(not h for h in calls.hits) == 4  # Unfrozen: no cache.
  # Per frozen probe (box seeds 0, 1; VSR seeds 0, 1): seed 1 hits on
  # every split.
  frozen_hits = [h for h in calls.hits if h]
  assert frozen_hits == [{'train': hit, 'val': hit, 'test': hit}
                         for hit in (False, True, False, True)]
  assert len(os.listdir(os.path.join(workdir, 'features'))) == 6

  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  cells = results['cells']
  assert [(c['task'], c['regime']) for c in cells] == [
      ('refcocog_box', 'frozen'), ('refcocog_box', 'unfrozen'),
      ('vsr', 'frozen'), ('vsr', 'unfrozen')]
  assert results['config']['hparams']['epochs'] == 2
  for c in cells:
    assert (c['model'], c['tap'], c['head'], c['step']) == (
        'stub', TAP, 'linear', 0)
    assert sorted(c['seeds']) == ['0', '1']
    headline = HEADLINE[c['task']]
    for m in c['seeds'].values():
      assert m['epochs_run'] == 2
      for split in ('val', 'test'):
        assert 0 <= m[f'{split}/{headline}'] <= 1
      assert all(np.isfinite(v) for v in m.values())
    if c['task'] == 'vsr':
      assert c['seeds']['0']['test/chance/accuracy'] == 0.5
    else:
      assert 0 <= c['seeds']['0']['test/mean_box/acc@0.5'] <= 1
    # The summary is the mean and sample std over the seeds.
    values = np.array([m[f'test/{headline}'] for m in c['seeds'].values()])
    np.testing.assert_allclose(c['summary'][f'test/{headline}'],
                               [values.mean(), values.std(ddof=1)])
    name = run.cell_name('stub', TAP, c['task'], c['regime'], 'linear')
    for seed in (0, 1):
      with np.load(os.path.join(workdir, 'predictions',
                                f'{name}.seed{seed}.npz')) as npz:
        assert sorted(npz) == ['test', 'train', 'val']
        assert len(npz['test']) == 16

  with open(os.path.join(workdir, 'results.md')) as f:
    markdown = f.read()
  assert markdown.startswith('# Probing stub (step 0)')
  by_cell = {(c['task'], c['regime']): c for c in cells}
  for split in ('val', 'test'):
    header, rule, chance, mean_box, *rows = _table(markdown, split)
    assert header == ['model', 'tap', 'regime', 'head', 'RefCOCOg Acc@0.5',
                      'VSR acc', 'RCM acc', 'seeds']
    assert set(rule) == {'---'}
    assert chance == ['chance', '–', '–', '–', '–', '50.00', '50.00', '–']
    box = cells[0]['seeds']['0'][f'{split}/mean_box/acc@0.5']
    assert mean_box[0] == 'mean box (train)'
    assert mean_box[4] == f'{100 * box:.2f}'
    assert [r[:4] for r in rows] == [['stub', TAP, 'frozen', 'linear'],
                                     ['stub', TAP, 'unfrozen', 'linear']]
    for row in rows:
      assert row[6:] == ['–', '2/2/0']
      for col, task in ((4, 'refcocog_box'), (5, 'vsr')):
        values = [m[f'{split}/{HEADLINE[task]}'] for m in
                  by_cell[(task, row[2])]['seeds'].values()]
        mean, std = (float(v) for v in re.fullmatch(
            r'(\d+\.\d\d) ± (\d+\.\d\d)', row[col]).groups())
        assert mean == pytest.approx(100 * np.mean(values), abs=0.006)
        assert std == pytest.approx(100 * np.std(values, ddof=1), abs=0.006)
  assert '## VSR test accuracy per category' in markdown

  # The same command again: every cell is kept, nothing is trained.
  calls.hits.clear()
  _main(monkeypatch, *COMMAND, f'--workdir={workdir}')
  assert calls.hits == [] and calls.extractions == 6
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['cells'] == cells

  # An interrupted grid (its last cell missing): only that cell is trained.
  with open(os.path.join(workdir, 'results.json')) as f:
    partial = json.load(f)
  partial['cells'] = partial['cells'][:3]
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(partial, f)
  _main(monkeypatch, *COMMAND, f'--workdir={workdir}')
  assert calls.hits == [{}, {}]  # vsr unfrozen, seeds 0 and 1.
  with open(os.path.join(workdir, 'results.json')) as f:
    resumed = json.load(f)['cells']
  assert resumed[:3] == cells[:3]
  assert [(c['task'], c['regime']) for c in resumed] == [
      (c['task'], c['regime']) for c in cells]
  calls.hits.clear()

  # A narrower grid trains nothing and keeps the other cells in the file.
  _main(monkeypatch, *COMMAND, '--config.regimes=("frozen",)',
        f'--workdir={workdir}')
  assert calls.hits == []

  # Other training settings in the same workdir: refused, naming them.
  with pytest.raises(ValueError, match=r"other settings \(hparams.epochs: 2 "
                     r"then, 3 now\); use another --workdir"):
    _main(monkeypatch, *COMMAND, '--config.hparams.epochs=3',
          f'--workdir={workdir}')

  # Without resuming: every cell trained again, every frozen split read
  # from the feature cache.
  _main(monkeypatch, *COMMAND, '--config.resume=False',
        f'--workdir={workdir}')
  assert calls.extractions == 6
  frozen_hits = [h for h in calls.hits if h]
  assert len(frozen_hits) == 4 and all(all(h.values()) for h in frozen_hits)
  with open(os.path.join(workdir, 'results.json')) as f:
    again = json.load(f)['cells']
  for before, after in zip(cells, again):
    if before['regime'] == 'frozen':
      assert after['seeds'] == before['seeds']


@pytest.mark.parametrize('override, match', [
    ('--config.tasks=("refcocog_box", "refcoco_box")',
     "Unknown probing task 'refcoco_box'; valid: "
     r"\['refcocog_box', 'vsr', 'rcm'\]"),
    ('--config.taps=("tap=fused_clz,reduce=cls",)',
     "tap spec 'tap=fused_clz,reduce=cls': unknown tap 'fused_clz'"),
], ids=['task', 'tap'])
def test_bad_task_or_tap_fails_before_loading_anything(calls, monkeypatch,
                                                       tmp_path, override,
                                                       match):
  workdir = str(tmp_path / 'probe')
  with pytest.raises(ValueError, match=match):
    _main(monkeypatch, *COMMAND, override, f'--workdir={workdir}')
  assert calls.sources == 0 and not os.path.exists(workdir)


def test_main_needs_a_model_and_no_extra_arguments(calls, monkeypatch,
                                                   tmp_path):
  workdir = f'--workdir={tmp_path}'
  with pytest.raises(app.UsageError, match='set --config.model_workdir'):
    _main(monkeypatch, *COMMAND, '--config.model_workdir=', workdir)
  with pytest.raises(app.UsageError, match=r"unexpected arguments: \['x'\]"):
    _main(monkeypatch, *COMMAND, workdir, 'x')
  assert calls.sources == 0


def test_unreadable_results_file_is_refused_by_name(tmp_path):
  import configs.probe as probe_config  # pylint: disable=g-import-not-at-top
  config = probe_config.get_config('tiny')
  (tmp_path / 'results.json').write_text('{"config": {}, "cel')
  with pytest.raises(ValueError, match=r'results.json is not a readable '
                     r'results file .*move it away'):
    run.finished_cells(config, str(tmp_path))
  config.resume = False
  assert run.finished_cells(config, str(tmp_path)) == []
