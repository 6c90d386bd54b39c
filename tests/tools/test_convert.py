"""vlg.tools.convert: ALBEF's checkpoint → a vlg run directory that
``restore.load_run`` (hence vlg.tools.eval, the Colab, probing) loads.

Uses the tiny ALBEF fixture of tests/weights/test_albef_import.py (written
by ALBEF's own code); the restored model must reproduce the reference
features and ITM logits (atol = rtol = 1e-5, float32).
"""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlg import restore
from vlg.tools import convert

import configs.albef as albef_config

DATA = os.path.join(os.path.dirname(__file__), '..', 'testdata', 'weights')
REPO = os.path.join(os.path.dirname(__file__), '..', '..')
TOL = dict(rtol=1e-5, atol=1e-5)


def vocab_file(path, size):
  pieces = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
  pieces += [f'w{i}' for i in range(size - len(pieces))]
  path.write_text('\n'.join(pieces) + '\n')
  return str(path)


def tiny_heads_config():
  # Head counts are not in the checkpoint's shapes: the fixture's are 2.
  c = albef_config.get_config('tiny,evals=False')
  c.model.update(vision_heads=2, text_heads=2)
  c.num_devices = 1
  return c


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('convert')
  out = str(tmp / 'albef_released')
  meta = convert.convert_albef(os.path.join(DATA, 'albef_tiny.pth'), out,
                               vocab_file(tmp / 'vocab.txt', 100),
                               tiny_heads_config())
  return out, meta


def test_converted_run_loads_and_reproduces_albef(converted):
  out, meta = converted
  assert meta['skipped'] == ['text_encoder.bert.embeddings.position_ids',
                             'text_encoder_m.bert.embeddings.position_ids']
  run = restore.load_run(out)
  try:
    assert run.step == 0 and run.tokenizer.kind == 'wordpiece'
    assert run.config.model.vocab_size == 100
    assert run.config.model.image_size == 32
    # ALBEF's fusion: no position table, whatever the recipe trains with.
    assert run.config.model.fusion_posemb == 'none'
    io = np.load(os.path.join(DATA, 'albef_tiny_io.npz'))
    model = nnx.merge(run.graphdef, run.params)
    img = model.embed_image(jnp.asarray(io['images']))
    txt = model.embed_text(io['text_ids'], io['text_mask'])
    np.testing.assert_allclose(img['image_feat'], io['image_feat'], **TOL)
    fused = model.fuse(txt['text_embeds'], io['text_mask'],
                       img['image_embeds'])
    b = io['text_ids'].shape[0]
    # The first B ITM rows of ALBEF's forward are the matched pairs.
    np.testing.assert_allclose(model.itm_logits(fused['fused_cls']),
                               io['itm_logits'][:b], **TOL)
  finally:
    run.close()
  with open(os.path.join(out, 'config.json')) as f:
    assert json.load(f)['queue_size'] == 8


def test_refuses_an_existing_run_and_a_wrong_tokenizer(converted, tmp_path):
  out, _ = converted
  vocab = vocab_file(tmp_path / 'vocab.txt', 100)
  with pytest.raises(FileExistsError):
    convert.convert_albef(os.path.join(DATA, 'albef_tiny.pth'), out, vocab,
                          tiny_heads_config())
  with pytest.raises(ValueError, match='101 pieces'):
    convert.convert_albef(os.path.join(DATA, 'albef_tiny.pth'),
                          str(tmp_path / 'x'),
                          vocab_file(tmp_path / 'v101.txt', 101),
                          tiny_heads_config())


def test_help_lists_the_flags():
  res = subprocess.run([sys.executable, '-m', 'vlg.tools.convert', '--help'],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       check=False)
  assert res.returncode in (0, 1), res.stderr  # absl's --help exits 1.
  assert 'Converts a released model' in res.stdout
  for flag in ('--format', '--src', '--out', '--tokenizer', '--resolution',
               '--config'):
    assert flag in res.stdout


def test_colab_scores_a_released_model(converted, tmp_path, monkeypatch,
                                       capsys):
  """The notebook's "score a released ALBEF" cell, run on the converted
  fixture with small synthetic stand-ins of the four benchmarks in their
  published layouts (the paths a user fills into ``BENCH``)."""
  import jax
  import nbformat
  from vlg.synthetic import benchmarks as synthetic_benchmarks
  out, _ = converted
  bench = str(tmp_path / 'bench')
  synthetic_benchmarks.write_all(bench, resolution=48, num=4,
                                 sets=('valse', 'vsr', 'svo_probes',
                                       'winoground'))
  paths = dict(
      valse=dict(type='valse', root=f'{bench}/valse',
                 image_root=f'{bench}/valse/images'),
      vsr_random_dev=dict(type='vsr', file=f'{bench}/vsr/random/dev.jsonl',
                          image_root=f'{bench}/vsr/images'),
      svo_probes=dict(type='svo_probes',
                      file=f'{bench}/svo_probes/svo_probes.jsonl',
                      image_root=f'{bench}/svo_probes/images'),
      winoground=dict(type='winoground', root=f'{bench}/winoground'))
  nb = nbformat.read(os.path.join(REPO, 'colabs', 'evaluate.ipynb'),
                     as_version=4)
  src = nb.cells[-1].source
  assert 'BENCH = dict(' in src
  src = src.replace('BENCH = dict(', 'BENCH = USER_PATHS or dict(', 1)
  monkeypatch.setenv('VLG_RELEASED_DIR', out)
  exec(src, {'os': os, 'jax': jax, 'restore': restore,  # pylint: disable=exec-used
             'USER_PATHS': paths})
  printed = capsys.readouterr().out
  rows = {line[:18].strip(): line[18:].split()
          for line in printed.splitlines()[1:]}
  assert set(rows) == {'VSR rand dev', 'VALSE acc_r', 'SVO acc',
                       'Winoground text', 'Winoground image',
                       'Winoground group'}, printed
  assert rows['VALSE acc_r'][1] == '72.2' and rows['SVO acc'][1] == '86.7'
  for vlg_value, *_ in rows.values():
    assert 0.0 <= float(vlg_value) <= 100.0
