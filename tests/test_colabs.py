"""colabs/evaluate.ipynb runs headless and prints the model's real scores.

The notebook is executed with nbclient on the ``python3`` kernel against the
session's tiny run (``tests/test_restore.py``); the scores it prints are
compared with scores computed here, independently, from the checkpoint.
"""

import os
import re

import jax
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from vlg import benchmarks
from vlg import restore
from vlg import sharding
from vlg.evaluators import common

from test_restore import trained_run

# The session's tiny run is trained once for all its users: with
# `pytest -n 2 --dist loadgroup` they share a worker.
pytestmark = pytest.mark.xdist_group('tiny_run')

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
SCORE_LINE = re.compile(r'example (\d) \(([\w-]+)\): caption score ([\d.]+) \| '
                        r'foil score ([\d.]+) \| (right|wrong)')


def _outputs(nb) -> str:
  texts = []
  for cell in nb.cells:
    for out in cell.get('outputs', []):
      texts.append(out.get('text', ''))
      texts.append(out.get('data', {}).get('text/plain', ''))
  return '\n'.join(texts)


def _reference_scores(workdir, bench, n):
  run = restore.load_run(workdir, mesh=sharding.make_mesh(
      (1, 1, 1), devices=jax.devices()[:1]))
  ex = list(benchmarks.load_valse(f'{bench}/valse', valid_only=True))[:n]
  paths = [f'{bench}/valse/images/{e.image_file}' for e in ex]
  with jax.set_mesh(run.mesh):
    scorer = common.PairScorer(run.predict_fns['image_text_scores'],
                               run.tokenizer, mesh=run.mesh, rules=run.rules,
                               **restore.eval_defaults(run))
    s = scorer.score(run.params, paths + paths,
                     [e.caption for e in ex] + [e.foil for e in ex])['itm']
  run.close()
  return ex, s[:n], s[n:]


def test_evaluate_notebook_runs_headless(tmp_path_factory, monkeypatch):
  workdir, bench = trained_run(tmp_path_factory)
  monkeypatch.setenv('VLG_WORKDIR', workdir)
  monkeypatch.setenv('VLG_BENCH_DIR', bench)
  monkeypatch.setenv('PYTHONPATH', REPO)
  # The kernel gets one CPU device, as a Colab host has one accelerator;
  # the run was trained on a 2x2x2 mesh, so restoring re-shards it.
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=1')
  nb = nbformat.read(os.path.join(REPO, 'colabs', 'evaluate.ipynb'),
                     as_version=4)
  NotebookClient(nb, kernel_name='python3', timeout=300,
                 resources={'metadata': {'path': REPO}}).execute()
  text = _outputs(nb)
  assert 'step 6 (kept: [3, 6])' in text
  lines = SCORE_LINE.findall(text)
  assert [int(i) for i, *_ in lines] == [0, 1, 2, 3]
  examples, caption, foil = _reference_scores(workdir, bench, 4)
  for (_, instrument, s_cap, s_foil, verdict), e, c, f in zip(
      lines, examples, caption, foil):
    assert instrument == e.instrument
    np.testing.assert_allclose([float(s_cap), float(s_foil)], [c, f],
                               atol=2e-4)
    assert verdict == ('right' if c > f else 'wrong')
  # The curves section: training logged VALSE at step 6.
  assert re.search(r'valse/acc_r: best [\d.]+ at step 6', text)
  images = [o for c in nb.cells for o in c.get('outputs', [])
            if 'image/png' in o.get('data', {})]
  assert len(images) == 2  # The examples and the curves.
