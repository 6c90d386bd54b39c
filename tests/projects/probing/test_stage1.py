"""Q-Former stage 1 on a frozen tower: trains, checkpoints, resumes, probes."""

import os

import jax
import numpy as np
import pytest

from vlg import writers
from vlg.data import pipeline
from vlg.projects.probing import stage1

import configs.qformer as qformer_config
from test_train import shrink_for_tests


def _config(total_steps):
  c = qformer_config.get_config('tiny')
  shrunk = shrink_for_tests(
      __import__('configs.albef', fromlist=['x']).get_config(
          'tiny,evals=False'))
  c.random_tower = shrunk.model
  c.input = shrunk.input
  c.qformer = dict(size='tiny', layers=2, width=32, heads=2, mlp=64,
                   num_queries=4, embed_dim=16)
  c.batch_size = 8
  c.num_devices = 1  # 8 fake devices would only slow the test.
  c.total_steps = total_steps
  c.ckpt_steps = 2
  c.log_training_steps = 1
  c.optim.warmup_steps = 1
  return c


def test_stage1_trains_resumes_and_loads_for_probing(tmp_path, monkeypatch,
                                                     fast_compile):
  workdir = str(tmp_path / 'qformer')
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
  for key in ('loss', 'itc_loss', 'itm_loss', 'itg_loss'):
    assert np.isfinite(first[2][f'train/{key}']), key
  # ITC over 8 pairs starts near log 8 (label smoothing keeps it close).
  assert abs(first[1]['train/itc_loss'] - np.log(8)) < 0.5
  loaded = stage1.load_resampler(workdir)
  assert loaded.step == 2
  # The tiny size's 64 positions stay (probe texts are longer than captions).
  assert loaded.module.resampler.position.shape[0] == 64
  tower_before = jax.tree.map(np.asarray, jax.tree.leaves(
      __import__('flax').nnx.state(loaded.module.vision)))

  # Resume to step 4: steps 1-2 are not re-run, 3-4 are logged once.
  stage1.train_resampler(_config(4), workdir)
  steps = [r['step'] for r in writers.read_metrics(workdir)
           if 'train/loss' in r]
  assert steps == [1, 2, 3, 4]
  loaded = stage1.load_resampler(workdir)
  assert loaded.step == 4
  tower_after = jax.tree.leaves(
      __import__('flax').nnx.state(loaded.module.vision))
  # The tower is frozen: bit-identical after two more steps.
  for a, b in zip(tower_before, tower_after):
    np.testing.assert_array_equal(a, np.asarray(b))

  # The loaded module gives the probe's taps on a real batch.
  tok = loaded.tokenizer
  batch = next(iter(pipeline.make_dataset(_config(4).input, tok,
                                          global_batch=2, seed=0)))
  out = loaded.module.taps({k: batch[k] for k in
                            ('image', 'text_ids', 'text_mask')},
                           ('resampler_queries', 'resampler_layer:-1'))
  assert out['resampler_queries'][0].shape == (2, 4, 32)
  np.testing.assert_array_equal(out['resampler_layer:-1'][0],
                                out['resampler_queries'][0])
  assert os.path.exists(os.path.join(workdir, 'stage1.json'))
