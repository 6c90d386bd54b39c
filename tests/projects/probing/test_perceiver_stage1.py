"""Perceiver stage 1 on a frozen tower: trains, checkpoints, resumes, probes.

The Perceiver counterpart of test_stage1.py (same shrunk random tower and
crash-and-resume within one schedule, so the step compiles once per run).
"""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from vlg import writers
from vlg.data import pipeline
from vlg.models import perceiver as perceiver_lib
from vlg.projects.probing import stage1

import configs.albef as albef_config
import configs.perceiver as perceiver_config
from test_train import shrink_for_tests


def _config(total_steps):
  c = perceiver_config.get_config('tiny')
  shrunk = shrink_for_tests(albef_config.get_config('tiny,evals=False'))
  c.random_tower = shrunk.model
  c.input = shrunk.input
  c.perceiver = dict(size='tiny', layers=1, heads=2, head_dim=8,
                     num_queries=4)
  c.decoder = dict(size='tiny', layers=1, width=32, heads=2, mlp=64,
                   embed_dim=16)
  c.batch_size = 8
  c.num_devices = 1  # 8 fake devices would only slow the test.
  c.total_steps = total_steps
  c.ckpt_steps = 2
  c.log_training_steps = 1
  c.optim.warmup_steps = 1
  return c


def _pure(module):
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module,
                                                             nnx.Param)))


def test_perceiver_stage1_trains_resumes_and_loads_for_probing(
    tmp_path, monkeypatch, fast_compile):
  workdir = str(tmp_path / 'perceiver')
  # Crash while step 3's batch is prepared (checkpoint at step 2).
  real_to_global = pipeline.to_global
  calls = []

  def crashing_to_global(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt('simulated crash')
    return real_to_global(*args, **kwargs)

  monkeypatch.setattr(pipeline, 'to_global', crashing_to_global)
  with pytest.raises(KeyboardInterrupt):
    stage1.train_resampler(_config(4), workdir)
  monkeypatch.setattr(pipeline, 'to_global', real_to_global)
  first = {r['step']: r for r in writers.read_metrics(workdir)}
  for step in (1, 2):
    for key in ('loss', 'itc_loss', 'itg_loss', 'grad_norm'):
      assert np.isfinite(first[step][f'train/{key}']), (step, key)
  assert 'train/itm_loss' not in first[1]  # No ITM for a Perceiver.
  np.testing.assert_allclose(
      first[1]['train/loss'],
      first[1]['train/itc_loss'] + first[1]['train/itg_loss'], rtol=1e-5)
  # ITC over 8 pairs starts near log 8 (label smoothing keeps it close).
  assert abs(first[1]['train/itc_loss'] - np.log(8)) < 0.5
  with open(os.path.join(workdir, 'stage1.json')) as f:
    meta = json.load(f)
  assert meta['resampler_kind'] == 'perceiver'
  assert meta['perceiver']['width'] == 32  # The tower's width.
  assert meta['decoder']['latent_width'] == 32

  loaded = stage1.load_resampler(workdir)  # run.py's default mode: ignored.
  assert loaded.step == 2
  assert isinstance(loaded.module.resampler, perceiver_lib.PerceiverResampler)
  assert loaded.module.mode is None
  step2 = _pure(loaded.module.resampler)
  tower_before = _pure(loaded.module.vision)

  # Resume to step 4: steps 1-2 are not re-run, 3-4 are logged once.
  stage1.train_resampler(_config(4), workdir)
  steps = [r['step'] for r in writers.read_metrics(workdir)
           if 'train/loss' in r]
  assert steps == [1, 2, 3, 4]
  loaded = stage1.load_resampler(workdir)
  assert loaded.step == 4
  # The tower is frozen: bit-identical after two more steps.
  jax.tree.map(np.testing.assert_array_equal, tower_before,
               _pure(loaded.module.vision))
  # The Perceiver trained on: its latents and attention moved.
  step4 = _pure(loaded.module.resampler)
  for path in (('latents',), ('blocks', 0, 'attn', 'query', 'kernel'),
               ('blocks', 0, 'fc2', 'kernel')):
    a, b = step2, step4
    for k in path:
      a, b = a[k], b[k]
    assert np.abs(a - b).max() > 1e-6, path

  # The loaded module gives the probe's taps of an image batch (no text;
  # jitted: an eager forward compiles every op).
  batch = next(iter(pipeline.make_dataset(_config(4).input, loaded.tokenizer,
                                          global_batch=2, seed=0)))
  graphdef, state = nnx.split(loaded.module)
  names = ('resampler_queries', 'resampler_layer:-1')
  out = jax.jit(lambda s, image: nnx.merge(graphdef, s).taps(
      {'image': image}, names))(state, batch['image'])
  assert out['resampler_queries'][0].shape == (2, 4, 32)
  np.testing.assert_array_equal(out['resampler_layer:-1'][0],
                                out['resampler_queries'][0])
