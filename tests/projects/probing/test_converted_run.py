"""Probing a released ALBEF: convert, train a Q-Former on its tower, probe.

docs/weights.md §2 says a run written by ``vlg.tools.convert`` is probed
like any vlg run. This converts the tiny ALBEF fixture of
tests/weights/test_albef_import.py (32 px, patch 8, written by ALBEF's own
code) at the 48 px the synthetic world renders at, runs stage 1 on its
frozen ViT (``vision_workdir`` = the converted folder) and then the probe
stage on the trained Q-Former (``resampler_workdir``), as the commands of
docs/weights.md do. The tokenizer is BERT's WordPiece: the first 100
pieces of tests/testdata/weights/bert_synth's vocabulary (the fixture has
100 word embeddings), so the synthetic captions tokenise into real pieces.
"""

import json
import os
import re

import jax
import numpy as np
import pytest
from flax import nnx

from vlg import restore
from vlg.projects.probing import run
from vlg.projects.probing import stage1
from vlg.tools import convert
from vlg.weights import common
from vlg.weights import files

import configs.albef as albef_config
import configs.probe as probe_config
import configs.qformer as qformer_config

DATA = os.path.join(os.path.dirname(__file__), '..', '..', 'testdata',
                    'weights')
FIXTURE = os.path.join(DATA, 'albef_tiny.pth')
TAP = 'tap=resampler_queries,reduce=flatten'


def _vocab(folder):
  """A 100-piece WordPiece vocabulary (specials, letters, shape words)."""
  with open(os.path.join(DATA, 'bert_synth', 'vocab.txt')) as f:
    pieces = f.read().splitlines()[:100]
  path = os.path.join(folder, 'vocab.txt')
  with open(path, 'w') as f:
    f.write('\n'.join(pieces) + '\n')
  return path


def _albef_config():
  # Head counts are not in the checkpoint's shapes: the fixture's are 2.
  c = albef_config.get_config('tiny,evals=False')
  c.model.update(vision_heads=2, text_heads=2)
  c.input.max_text_len = 16
  c.num_devices = 1
  return c


def _convert(tmp, name, resolution=None):
  out = str(tmp / name)
  convert.convert_albef(FIXTURE, out, _vocab(str(tmp)), _albef_config(),
                        resolution=resolution)
  return out


def _stage1_config(vision_workdir, total_steps):
  c = qformer_config.get_config('tiny')
  c.vision_workdir = vision_workdir
  c.qformer = dict(size='tiny', layers=2, width=32, heads=2, mlp=64,
                   num_queries=4, embed_dim=16)
  c.batch_size = 8
  c.num_devices = 1  # 8 fake devices would only slow the test.
  c.total_steps = total_steps
  c.ckpt_steps = total_steps
  c.log_training_steps = 1
  c.optim.warmup_steps = 1
  return c


def _params(module):
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module,
                                                             nnx.Param)))


def test_stage1_and_probe_on_a_converted_albef(tmp_path, monkeypatch,
                                               fast_compile):
  monkeypatch.setenv('VLG_CACHE_DIR', str(tmp_path / 'vlg_cache'))
  out = _convert(tmp_path, 'albef_48', resolution=48)
  converted = restore.load_run(out)
  converted.close()
  assert converted.config.model.image_size == 48
  assert converted.config.input.resolution == 48
  # The position table was resized 4x4 -> 6x6 as ALBEF's
  # interpolate_pos_embed does (checked against it in tests/weights).
  fixture = files.read(FIXTURE)
  pos = fixture['visual_encoder.pos_embed'][0]
  np.testing.assert_allclose(converted.params['vision']['pos_embed'],
                             common.resize_pos_embed(pos, 6), rtol=1e-6)

  qdir = str(tmp_path / 'qformer')
  stage1.train_resampler(_stage1_config(out, 4), qdir)
  with open(os.path.join(qdir, 'metrics.jsonl')) as f:
    logged = [json.loads(line) for line in f if 'train/loss' in line]
  assert [r['step'] for r in logged] == [1, 2, 3, 4]
  for r in logged:
    for key in ('loss', 'itc_loss', 'itm_loss', 'itg_loss'):
      assert np.isfinite(r[f'train/{key}']), (r['step'], key)
  # ITG starts at ln(100 pieces + [DEC]) and learns the captions' pieces
  # (measured: 4.63 -> 4.56 over the 4 steps, total 7.39 -> 7.30).
  assert abs(logged[0]['train/itg_loss'] - np.log(101)) < 0.1
  for key in ('train/loss', 'train/itg_loss'):
    assert logged[-1][key] < logged[0][key] - 0.03, key
  with open(os.path.join(qdir, 'stage1.json')) as f:
    meta = json.load(f)
  assert meta['tower'] == f'{os.path.abspath(out)}@0'
  assert meta['input']['resolution'] == 48
  assert meta['tokenizer_kind'] == 'wordpiece'

  # The tokenizer is saved as what it is (vocab.txt) and round-trips.
  assert sorted(os.listdir(os.path.join(qdir, 'tokenizer'))) == [
      'tokenizer_config.json', 'vocab.txt']
  loaded = stage1.load_resampler(qdir)
  assert loaded.step == 4 and loaded.resolution == 48
  tok = loaded.tokenizer
  assert tok.kind == 'wordpiece'
  assert tok.fingerprint == converted.tokenizer.fingerprint
  caption = 'a large purple diamond is left of the small orange circle'
  ids, _ = tok.encode(caption, 16)
  np.testing.assert_array_equal(ids, converted.tokenizer.encode(caption,
                                                                16)[0])
  assert tok.unk_id not in ids.tolist()
  with pytest.raises(ValueError, match='was trained with 0123'):
    stage1.load_tokenizer(qdir, {'tokenizer_fingerprint': '0123'})
  # The frozen tower is the converted ViT, bit for bit.
  jax.tree.map(np.testing.assert_array_equal,
               _params(loaded.module.vision)['vision'],
               jax.tree.map(np.asarray, converted.params['vision']))

  # The probe stage on the trained Q-Former: VSR, frozen (feature cache,
  # head only) and unfrozen (the Q-Former too), one seed.
  config = probe_config.get_config('tiny')
  config.unlock()
  config.update(resampler_workdir=qdir, taps=(TAP,), tasks=('vsr',),
                regimes=('frozen', 'unfrozen'), seeds=(0,), max_text_len=16)
  config.hparams.update(epochs=2, batch_size=8, eval_batch_size=16)
  config.data.synthetic_num = 16
  workdir = str(tmp_path / 'probe')
  cells = run.run_grid(config, workdir, log=lambda line: None)
  assert [(c['task'], c['regime'], c['tap'], c['step']) for c in cells] == [
      ('vsr', 'frozen', TAP, 4), ('vsr', 'unfrozen', TAP, 4)]
  for cell in cells:
    metrics = cell['seeds'][0]
    assert metrics['epochs_run'] == 2
    assert metrics['test/num_examples'] == 16
    for split in ('val', 'test'):
      assert 0.0 <= metrics[f'{split}/accuracy'] <= 1.0
    preds = np.load(os.path.join(workdir, 'predictions', run.cell_name(
        'qformer', TAP, 'vsr', cell['regime'], 'linear') + '.seed0.npz'))
    # One prediction per example of each split (12 / 4 / 16 VSR examples).
    assert {k: preds[k].shape for k in preds.files} == {
        s: (int(metrics[f'{s}/num_examples']),) for s in ('train', 'val',
                                                           'test')}
  with open(os.path.join(workdir, 'results.md')) as f:
    assert '| qformer | ' + TAP + ' | frozen | linear |' in f.read()


def test_unusable_resolutions_are_named(tmp_path):
  # Not a multiple of the fixture's 8 px patches.
  with pytest.raises(ValueError, match=r'--resolution=44 .* patch size 8'):
    _convert(tmp_path, 'albef_44', resolution=44)
  # At its own 32 px the converted run is usable (evaluation), but stage 1
  # on the synthetic world is refused, naming the run and the fix.
  out = _convert(tmp_path, 'albef_32')
  with pytest.raises(ValueError, match=(
      rf'vision_workdir={re.escape(out)}: .* 32 px .*world.resolution.* '
      r'--resolution=48')):
    stage1.load_tower(_stage1_config(out, 1), str(tmp_path / 'q'))
  # So is probing the run itself on the synthetic sets at 32 px.
  config = probe_config.get_config('tiny')
  config.unlock()
  config.model_workdir = out
  with pytest.raises(ValueError, match=(
      r'probing albef_32 .* 32 px \(the resolution of albef_32\).*'
      r'--config.data.resolution=48')):
    run.run_grid(config, str(tmp_path / 'probe'), log=lambda line: None)
