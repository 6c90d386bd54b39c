"""The study end to end: a 2-model x 1-seed x 4-step study, resumed.

The models are shrunk like the other training tests (``shrink_for_tests``)
and every synthetic evaluator runs on 4 examples per file at steps 2 and 4.
Checks the run directories, the files and the tables' structure (not effect
sizes), and that a second invocation trains nothing.
"""

import json
import os
import subprocess
import sys

import pytest

from vlg import recipes
from vlg import train
from vlg.evaluators import synthetic as synthetic_evals
from vlg.projects.study import results as study_lib
from vlg.projects.study import runs as study

from test_train import shrink_for_tests

REPO = os.path.join(os.path.dirname(__file__), '..', '..', '..')
MODELS = ('albef', 'xvlm')
SETTINGS = dict(models=MODELS, seeds=1, steps=4, eval_every=2, eval_num=4)


def shrink(config):
  """The tiny config shrunk so a step compiles in seconds."""
  shrink_for_tests(config)
  config.batch_size = 8
  config.queue_size = 16
  config.ckpt_steps = 4  # The final step only: each save costs seconds.
  config.keep_every_steps = None
  config.log_training_steps = 2
  config.optim.warmup_steps = 1
  config.eval_batch_size = 8
  # Retrieval's text length: the two share their compiled text encoder.
  config.evals.paragraphs.max_text_len = 30
  for part in (config.input.get('parts') or {}).values():
    part.batch_size = 8


def test_config_keeps_data_and_eval_sets_across_seeds_and_models():
  configs = [study.study_config(m, s, steps=10, eval_every=5, eval_num=7,
                                cache_dir='/c')
             for m in study_lib.MODELS for s in (0, 1)]
  assert [c.seed for c in configs[:2]] == [0, 1]
  for c in configs:
    assert c.total_steps == 10
    assert {e.log_steps for e in c.evals.values()} == {5}
    assert {e.synthetic_num for e in c.evals.values()} == {7}
    assert {e.synthetic_seed for e in c.evals.values()} == {0}
    assert {e.synthetic_cache for e in c.evals.values()} == {'/c'}
    assert c.input.data.to_dict() == configs[0].input.data.to_dict()
  assert configs[-1].model.mrc_classes > 0  # rexvlm is the family asked for.
  with pytest.raises(ValueError, match="unknown model 'clip'"):
    study.study_config('clip', 0, steps=10, eval_every=5)
  with pytest.raises(ValueError, match="unknown preset 'huge'"):
    study.study_config('albef', 0, steps=10, eval_every=5, preset='huge')


def test_runs_share_a_named_wordpiece_tokenizer_as_named(tmp_path):
  """Runs naming BERT's vocabulary (``input.tokenizer.path``, as a
  BERT-initialised text tower needs) keep it; nothing is trained into the
  study's folder, whose ``tokenizer.model`` would not exist."""
  vocab = os.path.join(REPO, 'tests', 'testdata', 'weights', 'bert_synth',
                       'vocab.txt')
  configs = [study.study_config(m, 0, steps=4, eval_every=2)
             for m in MODELS]
  for c in configs:
    c.input.tokenizer.path = vocab
  assert study._share_tokenizer(configs, str(tmp_path)) == vocab  # pylint: disable=protected-access
  assert [c.input.tokenizer.path for c in configs] == [vocab, vocab]
  assert not os.path.exists(tmp_path / 'tokenizer')
  configs[0].input.tokenizer.path = str(tmp_path / 'missing' / 'vocab.txt')
  with pytest.raises(FileNotFoundError, match='missing'):
    study._share_tokenizer(configs, str(tmp_path))  # pylint: disable=protected-access


def test_each_seed_trains_one_tower_that_every_family_starts_from(tmp_path):
  configs = {}
  for model in ('albef', 'rexvlm'):
    for seed in (0, 1):
      c = study.study_config(model, seed, steps=4, eval_every=2)
      shrink(c)
      c.vision_pretrain.update(steps=2, warmup_steps=1, batch_size=4)
      configs[model, seed] = c
  # A hook that changed one run's stage: that seed's runs keep their own.
  configs['rexvlm', 1].vision_pretrain.lr = 3e-3
  logs = []
  shared = study._share_towers(configs, str(tmp_path), logs.append)  # pylint: disable=protected-access
  tower = str(tmp_path / 'towers' / 'seed0' / 'tower.npz')
  assert shared == {0: tower} and os.path.exists(tower)
  assert os.path.exists(tmp_path / 'towers' / 'seed0' / 'tower.json')
  for model in ('albef', 'rexvlm'):
    assert configs[model, 0].model.init.vision == tower
    assert configs[model, 0].vision_pretrain.steps == 0
    assert configs[model, 1].model.init.vision == ''
    assert configs[model, 1].vision_pretrain.steps == 2
  assert not os.path.exists(tmp_path / 'towers' / 'seed1')
  # A resumed study reuses the tower.
  before = os.path.getmtime(tower)
  again = {k: study.study_config(k[0], 0, steps=4, eval_every=2)
           for k in [('xvlm', 0)]}
  for c in again.values():
    shrink(c)
    c.vision_pretrain.update(steps=2, warmup_steps=1, batch_size=4)
  assert study._share_towers(again, str(tmp_path), logs.append) == {0: tower}  # pylint: disable=protected-access
  assert os.path.getmtime(tower) == before
  assert 'starts from the tower' in logs[-1]
  # Other stage settings than the tower's: refused, naming the file.
  again['xvlm', 0].vision_pretrain.update(steps=3)
  with pytest.raises(ValueError, match='stage.json'):
    study._share_towers(again, str(tmp_path), logs.append)  # pylint: disable=protected-access


def test_stage_key_ignores_world_fields_added_at_their_neutral_value():
  """A study whose towers were keyed before ``contrast_captions`` existed
  still finds them; a world that sets it otherwise gets its own tower."""
  c = study.study_config('albef', 0, steps=4, eval_every=2)
  key = study._stage_key(c)  # pylint: disable=protected-access
  world_cfg = c.input.data.synthetic.world
  assert world_cfg.contrast_captions == 'independent'
  with world_cfg.unlocked():
    del world_cfg['contrast_captions']
  assert study._stage_key(c) == key  # pylint: disable=protected-access
  with world_cfg.unlocked():
    world_cfg.contrast_captions = 'mirrored'
  assert study._stage_key(c) != key  # pylint: disable=protected-access


def test_hour_preset_changes_the_tiny_recipe_and_nothing_else():
  tiny = study.study_config('rexvlm', 1, steps=100, eval_every=20,
                            preset='tiny')
  hour = study.study_config('rexvlm', 1, steps=100, eval_every=20,
                            preset='hour')
  # The tiny preset is the recipe's tiny variant as it is.
  assert tiny.batch_size == 16 and tiny.input.parts.vsg.k == 8
  assert {e.synthetic_num for e in tiny.evals.values()} == {50, 200}
  assert {n for n, e in tiny.evals.items() if e.synthetic_num == 200} == set(
      synthetic_evals.PAIRWISE)
  settings = study.HOUR
  assert hour.batch_size == settings['batch_size'] <= tiny.batch_size
  assert hour.eval_batch_size == settings['eval_batch_size']
  for name, part in settings['parts'].items():
    for key, value in part.items():
      assert hour.input.parts[name][key] == value, (name, key)
  for key, value in settings['model'].items():
    assert hour.model[key] == value, key
  assert hour.ckpt_steps == 20  # One checkpoint per evaluation.
  # The hour's towers start from scratch; tiny keeps the recipe's stage.
  assert hour.vision_pretrain.steps == 0 < tiny.vision_pretrain.steps
  nums = {name: e.synthetic_num for name, e in hour.evals.items()}
  assert nums['vsr_random_dev'] == nums['valse'] == 200
  assert nums['retrieval'] == nums['paragraphs'] == 50
  # The synthetic world and the benchmark sets' other settings are the
  # tiny recipe's: the preset makes nothing easier.
  assert hour.input.data.to_dict() == tiny.input.data.to_dict()
  assert hour.input.resolution == tiny.input.resolution
  for name, entry in hour.evals.items():
    changed = {k for k, v in entry.items() if tiny.evals[name][k] != v}
    assert changed <= {'synthetic_num'}, (name, changed)
  changed_model = {k for k, v in hour.model.items() if tiny.model[k] != v}
  assert changed_model == set(settings['model'])
  assert study.default_eval_every(300) == 60
  assert study.default_eval_every(3) == 1


def test_budget_preset_gives_each_family_its_steps_at_equal_compute():
  steps = study.run_steps(study_lib.MODELS, 'budget')
  assert steps == {m: recipes.TINY_STEPS[m] for m in study_lib.MODELS}
  assert study.run_steps(('albef', 'xvlm'), 'budget', 300) == {
      'albef': 300, 'xvlm': 300}
  assert study.run_steps(('albef',), 'hour') == {'albef': 100}
  tiny = study.study_config('xvlm', 0, steps=steps['xvlm'], eval_every=280,
                            preset='tiny')
  budget = study.study_config('xvlm', 0, steps=steps['xvlm'], eval_every=280)
  # The recipe's model and batches; the hour preset's evaluation settings.
  assert budget.model.to_dict() == tiny.model.to_dict()
  assert budget.batch_size == tiny.batch_size
  assert budget.input.to_dict() == tiny.input.to_dict()
  assert budget.total_steps == recipes.TINY_STEPS['xvlm']
  assert budget.vision_pretrain.to_dict() == tiny.vision_pretrain.to_dict()
  assert budget.eval_batch_size == study.HOUR['eval_batch_size']
  nums = {name: e.synthetic_num for name, e in budget.evals.items()}
  assert nums['winoground'] == 200 and nums['retrieval'] == 50
  with pytest.raises(ValueError, match="unknown preset 'huge'"):
    study.run_steps(('albef',), 'huge')


def test_two_model_study_writes_results_and_resumes(tmp_path, fast_compile):
  out = str(tmp_path / 'study')
  logs = []
  first = study.run_study(out, config_hook=shrink, log=logs.append,
                          **SETTINGS)
  assert first['trained'] == [('albef', 0), ('xvlm', 0)]
  assert not first['skipped'] and not first['interrupted']
  assert any(line.startswith('[2/2] xvlm seed 0 done in') for line in logs)
  for model in MODELS:
    run = study_lib.run_dir(out, model, 0)
    assert run == os.path.join(out, 'runs', model, 'seed0')
    done = json.load(open(os.path.join(run, study_lib.DONE_FILE)))
    assert done['steps'] == 4
    curves = study_lib.load_runs(out)[model][0]
    assert sorted(curves['vsr_random_dev/accuracy']) == [2, 4]
    assert sorted(curves['retrieval/tr_r1']) == [2, 4]
  # One tokenizer, trained once, served every run.
  assert os.path.exists(os.path.join(out, 'tokenizer', 'tokenizer.model'))

  results = json.load(open(os.path.join(out, 'results.json')))
  assert results['models'] == list(MODELS)
  assert results['seeds'] == {'albef': [0], 'xvlm': [0]}
  for model in MODELS:
    # Every table column is logged by the synthetic evaluators.
    assert set(results['stats'][model]) == {k for k, _ in study_lib.COLUMNS}
    vsr = results['stats'][model]['vsr_random_dev/accuracy']
    assert vsr['final']['step'] == 4 and vsr['final']['n'] == 1
    assert vsr['final']['std'] is None  # One seed: undefined.
    assert vsr['best']['step'] in (2, 4)
    assert 0.0 <= vsr['final']['mean'] <= 1.0
  (claim,) = results['claims']
  assert (claim['model'], claim['baseline']) == ('xvlm', 'albef')
  assert {r['verdict'] for r in claim['skills']} == {'unjudged'}

  md = open(os.path.join(out, 'results.md')).read()
  header = ('| model | seeds | '
            + ' | '.join(label for _, label in study_lib.COLUMNS) + ' |')
  assert md.count(header) == 2  # Final step and best step.
  for name in ('ALBEF', 'X-VLM'):
    rows = [line for line in md.splitlines()
            if line.startswith(f'| {name} | 1 |')]
    assert len(rows) == 2
    assert all(row.count('|') == len(study_lib.COLUMNS) + 3 for row in rows)
  assert '| skill | ALBEF | X-VLM |' in md
  assert 'cannot be judged' in md
  assert os.path.getsize(os.path.join(out, 'curves.png')) > 10_000

  # Second invocation: nothing to train, the results are written again.
  os.remove(os.path.join(out, 'results.md'))
  again = study.run_study(out, config_hook=shrink, log=logs.append,
                          **SETTINGS)
  assert again['trained'] == []
  assert again['skipped'] == [('albef', 0), ('xvlm', 0)]
  assert '2 finished, 0 to train' in logs[-2]
  assert open(os.path.join(out, 'results.md')).read() == md

  with pytest.raises(ValueError, match=r"study\.json.*'steps': \(4, 6\)"):
    study.run_study(out, config_hook=shrink, log=logs.append,
                    **{**SETTINGS, 'steps': 6})


def test_killed_run_resumes_and_results_wait_for_every_run(tmp_path,
                                                           monkeypatch):
  # Training is faked (tests/test_train.py checks that a resumed run
  # continues exactly): it logs a VSR accuracy at each step and leaves the
  # checkpoint of the step it stopped at, as a SIGTERM'd run does.
  calls = []

  def fake_train(config, workdir):
    stop = 2 if not calls else config.total_steps  # The first run is killed.
    calls.append((config.seed, os.path.basename(workdir)))
    os.makedirs(os.path.join(workdir, 'checkpoints', str(stop)))
    with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
      for step in range(1, stop + 1):
        f.write(json.dumps({'step': step, 'vsr_random_dev/accuracy':
                            0.5 + 0.01 * step + 0.1 * config.seed}) + '\n')

  monkeypatch.setattr(train, 'train_and_evaluate', fake_train)
  out = str(tmp_path / 'study')
  settings = dict(models=('albef',), seeds=2, steps=4, eval_every=2)
  logs = []
  first = study.run_study(out, config_hook=shrink, log=logs.append,
                          **settings)
  assert first['interrupted'] and first['trained'] == []
  assert first['results'] is None
  assert not os.path.exists(os.path.join(out, 'results.md'))
  assert 'stopped at step 2 of 4' in logs[-1]
  assert not study.is_done(study_lib.run_dir(out, 'albef', 0), 4)

  again = study.run_study(out, config_hook=shrink, log=logs.append,
                          **settings)
  assert calls == [(0, 'seed0'), (0, 'seed0'), (1, 'seed1')]
  assert again['trained'] == [('albef', 0), ('albef', 1)]
  assert any('albef seed 0: resuming from step 2' in line for line in logs)
  vsr = again['results']['stats']['albef']['vsr_random_dev/accuracy']
  # Seeds 0 and 1 end at 0.54 and 0.64 (the resumed run's records win).
  assert vsr['final']['mean'] == pytest.approx(0.59)
  assert vsr['final']['std'] == pytest.approx(0.1 / 2 ** 0.5)


def test_help_lists_the_flags():
  out = subprocess.run([sys.executable, '-m', 'vlg.tools.study', '--help'],
                       cwd=REPO, capture_output=True, text=True, check=False)
  assert out.returncode in (0, 1), out.stderr  # absl's --help exits 1.
  assert 'The built-in study' in out.stdout
  for flag in ('--out', '--seeds', '--steps', '--models', '--eval_every',
               '--preset'):
    assert flag in out.stdout
