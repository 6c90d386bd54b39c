"""``vlg.tools.train_reference`` and ``benchmarks/reference/albef_train.py``.

Without PyTorch (CI has none): which configs ALBEF's code can train, the
steps kept by default, and the vlg side's export (batches, schedule,
initial state) on the runlocal recipe, checked against what ``vlg.main``
trains on. With ``VLG_ALBEF_DIR`` and ``VLG_REFERENCE_PYTHON`` set
(benchmarks/reference/README.md), the whole round trip also runs: vlg's
initial weights through ALBEF's PyTorch model and back are vlg's initial
weights exactly, and ALBEF's code trains from them.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from vlg import recipes
from vlg import restore
from vlg import sharding
from vlg import train
from vlg import vision_pretrain
from vlg.data import pipeline
from vlg.tools import train_reference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _runlocal():
  c = recipes.albef_config('tiny,runlocal,evals=False')
  c.model.vision_stem = 'patch'
  c.model.fusion_posemb = 'none'
  return c


def test_the_tiny_recipe_is_refused_naming_stem_and_position_table():
  with pytest.raises(ValueError) as e:
    train_reference.check_config(recipes.albef_config('tiny'))
  assert 'vision_stem' in str(e.value)
  assert 'fusion_posemb=none' in str(e.value)


def test_other_families_are_refused():
  with pytest.raises(ValueError, match='typed parts'):
    train_reference.check_config(recipes.family_config('xvlm', 'tiny'))


def test_the_expressible_tiny_config_gives_albef_shapes():
  c = recipes.albef_config('tiny')
  c.model.vision_stem = 'patch'
  c.model.fusion_posemb = 'none'
  shapes = train_reference.check_config(c)
  assert shapes['batch_size'] == 16 and shapes['queue_size'] == 256
  assert 'notes' not in shapes


def test_default_save_steps_are_zero_the_evaluations_and_the_end():
  c = recipes.albef_config('tiny')
  total = int(c.total_steps)
  assert train_reference.default_save_steps(c) == [
      0, total // 4, total // 2, 3 * total // 4, total]
  assert train_reference.default_save_steps(_runlocal()) == [0, 20]


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('train_reference'))
  side = train_reference.export(_runlocal(), out)
  return out, side


def test_export_writes_the_batches_vlg_main_trains_on(exported):
  out, side = exported
  config = side['config']
  data = np.load(os.path.join(out, 'reference_data', 'batches.npz'))
  total, batch = int(config.total_steps), int(config.batch_size)
  res = int(config.input.resolution)
  assert data['images'].shape == (total, batch, res, res, 3)
  assert data['images'].dtype == np.uint8
  assert data['text_ids'].shape[:2] == (total, batch)
  # vlg.main's pipeline (the same config, seed and tokenizer in the same
  # workdir) yields these batches, in this order.
  tokenizer = pipeline.get_tokenizer(config.input, os.path.join(out, 'vlg'))
  assert tokenizer.fingerprint == side['tokenizer'].fingerprint
  stream = iter(pipeline.make_dataset(config.input, tokenizer,
                                      global_batch=batch,
                                      seed=int(config.seed)))
  for i in (0, 1):
    b = next(stream)
    np.testing.assert_array_equal(b['image'], data['images'][i])
    np.testing.assert_array_equal(b['text_ids'], data['text_ids'][i])
    np.testing.assert_array_equal(b['text_mask'], data['text_mask'][i])


def test_export_writes_the_runs_schedule_and_initial_state(exported):
  out, side = exported
  config = side['config']
  sched = np.load(os.path.join(out, 'reference_data', 'schedule.npz'))
  total = int(config.total_steps)
  assert sched['lr'].shape == sched['alpha'].shape == (total,)
  warm = int(config.optim.warmup_steps)
  # optax's warm-up from warmup_init_lr (float32), rising to the last step
  # of the warm-up (here the run ends inside it).
  assert sched['lr'][0] == pytest.approx(config.optim.warmup_init_lr,
                                         rel=1e-5)
  assert int(np.argmax(sched['lr'])) == min(warm, total - 1)
  assert np.all(np.diff(sched['lr'][:min(warm, total)]) > 0)
  assert sched['alpha'][0] == 0
  assert sched['alpha'][-1] == pytest.approx(
      config.loss.alpha * min(1.0, (total - 1) / config.alpha_warmup_steps))
  # The state is vlg.main's initialisation: the stage's tower in it.
  assert config.model.init.vision.startswith(os.path.join(out, 'vlg'))
  mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
  rules = [tuple(r) for r in config.sharding_rules]
  with jax.set_mesh(mesh), sharding.rules_context(rules):
    again = jax.device_get(train.build_step(config, mesh, rules)['init_fn']())
  jax.tree.map(np.testing.assert_array_equal, side['params'],
               again['params'])


def test_export_refuses_a_workdir_that_already_trained(tmp_path):
  os.makedirs(tmp_path / 'vlg' / 'checkpoints')
  with pytest.raises(FileExistsError, match='new --out'):
    train_reference.export(_runlocal(), str(tmp_path))


def test_help():
  proc = subprocess.run([sys.executable, '-m', 'vlg.tools.train_reference',
                         '--help'], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode in (0, 1), proc.stderr  # absl's --help exits 1.
  assert '--against_reference' in proc.stdout
  assert '--save_steps' in proc.stdout


@pytest.mark.skipif(
    not (os.environ.get('VLG_ALBEF_DIR') and
         os.environ.get('VLG_REFERENCE_PYTHON')),
    reason='needs VLG_ALBEF_DIR and VLG_REFERENCE_PYTHON '
           '(benchmarks/reference/README.md)')
def test_albefs_code_trains_from_vlgs_initial_weights(tmp_path):
  out = str(tmp_path)
  steps = train_reference.run(
      _runlocal(), out, os.environ['VLG_ALBEF_DIR'],
      os.environ['VLG_REFERENCE_PYTHON'], train_reference.DEFAULT_SCRIPT,
      save_steps=[0, 10], queues='albef', threads=1, device='cpu',
      torch_seed=0)
  assert steps == [0, 10, 20]
  # Step 0 through ALBEF's model and back: vlg's initial weights exactly.
  config = _runlocal()
  vlg_dir = os.path.join(out, 'vlg')
  config.model.init.vision = vision_pretrain.tower_path(vlg_dir)
  mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
  rules = [tuple(r) for r in config.sharding_rules]
  with jax.set_mesh(mesh), sharding.rules_context(rules):
    init = jax.device_get(train.build_step(config, mesh, rules)['init_fn']())
  ref = os.path.join(out, 'reference')
  at0 = restore.load_run(ref, step=0)
  jax.tree.map(np.testing.assert_array_equal, at0.params, init['params'])
  at20 = restore.load_run(ref, step=20)
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)),
                       at20.params, init['params'])
  assert sum(jax.tree.leaves(moved)) > 0.9 * len(jax.tree.leaves(moved))
  rows = [l for l in open(os.path.join(ref, 'reference_metrics.jsonl'))]
  assert len(rows) == 2  # Steps 10 and 20.
