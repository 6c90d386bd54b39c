"""VALSE/VSR metrics on known cases, AUROC vs scipy, the padded scorer."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import stats

from vlg import benchmarks
from vlg import sharding
from vlg.data import tokenizer as tok_lib
from vlg.evaluators import common
from vlg.evaluators import valse
from vlg.evaluators import vsr

REAL = os.path.join(os.path.dirname(__file__), '..', 'testdata',
                    'real_benchmarks')


def test_valse_metrics_known_case():
  ex = benchmarks.load_valse(os.path.join(REAL, 'valse'),
                             instruments=['existence', 'counting-hard',
                                          'counting-small-quant'])
  n = len(ex)
  rng = np.random.default_rng(0)
  cap = rng.uniform(size=n)
  foil = cap.copy()
  # Ties count as wrong; make exactly the examples at even index correct.
  foil[::2] -= 0.25
  out = valse.metrics(list(ex), cap, foil, 'itm', num_in_file=n)
  assert out['acc_r'] == pytest.approx(np.mean(np.arange(n) % 2 == 0))
  by_inst = {}
  for i, e in enumerate(ex):
    by_inst.setdefault(e.instrument, []).append(i % 2 == 0)
  for inst, v in by_inst.items():
    assert out[f'{inst}/acc_r'] == pytest.approx(np.mean(v))
  counting = np.mean([np.mean(by_inst['counting-hard']),
                      np.mean(by_inst['counting-small-quant'])])
  assert out['counting/acc_r'] == pytest.approx(counting)
  assert out['acc_r_pieces'] == pytest.approx(
      np.mean([out['existence/acc_r'], counting]))
  assert out['precision_caption'] == pytest.approx(np.mean(cap >= 0.5))
  assert out['precision_foil'] == pytest.approx(np.mean(foil < 0.5))
  assert out['min_precision'] == min(out['precision_caption'],
                                     out['precision_foil'])


def test_auroc_matches_scipy_mann_whitney():
  rng = np.random.default_rng(1)
  pos = np.round(rng.normal(0.6, 0.2, 300), 2)  # Rounded: many ties.
  neg = np.round(rng.normal(0.4, 0.2, 200), 2)
  u = stats.mannwhitneyu(pos, neg).statistic
  assert common.auroc(pos, neg) == pytest.approx(u / (300 * 200))
  assert common.auroc([1, 2], [0]) == 1.0 and common.auroc([0], [1]) == 0.0


def test_vsr_metrics_threshold_and_groups():
  ex = list(benchmarks.load_vsr(os.path.join(REAL, 'vsr', 'random',
                                             'dev.jsonl')))[:200]
  cats = benchmarks.load_vsr_categories(
      os.path.join(REAL, 'vsr', 'rel_meta_category_dict.txt'))
  labels = np.array([e.label for e in ex])
  scores = np.where(labels == 1, 0.5, 0.49)  # s >= 0.5 is "true": all right.
  out = vsr.metrics(ex, scores, cats, num_in_file=len(ex))
  assert out['accuracy'] == 1.0
  flipped = vsr.metrics(ex, np.where(labels == 1, 0.49, 0.5), cats,
                        num_in_file=len(ex))
  assert flipped['accuracy'] == 0.0
  rel = ex[0].relation
  assert out[f'relation/{rel}'] == 1.0
  assert f'category/{cats[rel]}' in out


def _fake_predict(params, batch):
  # A score that depends on both the image and the text of the row only.
  img = batch['image'].astype(jnp.float32).mean(axis=(1, 2, 3)) / 255.0
  txt = batch['text_ids'].astype(jnp.float32).sum(-1) / 1000.0
  s = jax.nn.sigmoid(params['w'] * img + txt)
  return {'itm': s, 'itc': img - txt}


@pytest.mark.parametrize('mesh_sizes,batch_size',
                         [((1, 1, 1), 3), ((8, 1, 1), 8), ((2, 2, 2), 16)])
def test_pair_scorer_independent_of_batch_and_devices(tmp_path, mesh_sizes,
                                                      batch_size):
  tok = tok_lib.train_tokenizer(['a red circle', 'a blue square left of it'] *
                                5, 100)
  paths = []
  for i in range(5):
    p = tmp_path / f'{i}.png'
    Image.fromarray(np.full((10, 14, 3), 40 * i, np.uint8)).save(p)
    paths.append(str(p))
  texts = ['a red circle', 'a blue square', 'left of it', 'a circle',
           'square'] * 2
  images = paths * 2
  devices = jax.devices()[:int(np.prod(mesh_sizes))]
  mesh = sharding.make_mesh(mesh_sizes, devices=devices)
  rules = [('batch', ('data', 'fsdp'))]
  params = {'w': jnp.float32(2.0)}
  with jax.set_mesh(mesh):
    scorer = common.PairScorer(_fake_predict, tok, resolution=8,
                               max_text_len=8, batch_size=batch_size,
                               mesh=mesh, rules=rules)
    got = scorer.score(params, images, texts)
  # Reference: one row at a time, no mesh.
  ref = []
  for im, t in zip(images, texts):
    ids, mask = common.encode_texts(tok, [t], 8, 30)
    b = {'image': scorer.load_image(im)[None], 'text_ids': ids,
         'text_mask': mask}
    ref.append(float(_fake_predict(params, b)['itm'][0]))
  np.testing.assert_allclose(got['itm'], ref, rtol=1e-6)
  assert got['itm'].shape == (10,)


def test_missing_images_are_counted(tmp_path):
  tok = tok_lib.train_tokenizer(['a red circle'] * 3, 50)
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    scorer = common.PairScorer(_fake_predict, tok, resolution=8,
                               max_text_len=8, batch_size=2, mesh=mesh,
                               rules=[])
    ev = valse.Evaluator(scorer, root=os.path.join(REAL, 'valse'),
                         image_root=str(tmp_path), instruments=['existence'])
  assert len(ev.present) == 0 and len(ev.examples) == 505


# Genuine lines of the current VSR random split (dev.jsonl): three with a
# category and its one 'congruent' example, which rel_meta_category_dict.txt
# does not list.
UNCATEGORISED = os.path.join(REAL, 'vsr', 'random_current',
                             'dev_excerpt.jsonl')


def test_vsr_relation_without_category_counts_as_unknown(tmp_path, caplog):
  ex = list(benchmarks.load_vsr(UNCATEGORISED))
  cats = benchmarks.load_vsr_categories(
      os.path.join(REAL, 'vsr', 'rel_meta_category_dict.txt'))
  assert [e.relation for e in ex if e.relation not in cats] == ['congruent']
  labels = np.array([e.label for e in ex])
  out = vsr.metrics(ex, np.where(labels == 1, 0.5, 0.49), cats,
                    num_in_file=len(ex))
  assert out['category/unknown'] == 1.0
  assert out['relation/congruent'] == 1.0
  # Every example is in exactly one category figure.
  wrong_on_congruent = np.where(labels == 1, 0.5, 0.49)
  wrong_on_congruent[[e.relation == 'congruent' for e in ex]] = 0.9
  out = vsr.metrics(ex, wrong_on_congruent, cats, num_in_file=len(ex))
  assert out['category/unknown'] == 0.0
  assert all(v == 1.0 for k, v in out.items()
             if k.startswith('category/') and k != 'category/unknown')
  # The evaluator warns once per relation name, when it is built.
  tok = tok_lib.train_tokenizer(['a red circle'] * 3, 50)
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  twice = tmp_path / 'twice.jsonl'
  lines = open(UNCATEGORISED).read().splitlines()
  twice.write_text('\n'.join(lines + lines) + '\n')
  with jax.set_mesh(mesh), caplog.at_level('WARNING'):
    scorer = common.PairScorer(_fake_predict, tok, resolution=8,
                               max_text_len=8, batch_size=2, mesh=mesh,
                               rules=[])
    vsr.Evaluator(scorer, file=str(twice), image_root=str(tmp_path),
                  categories=os.path.join(REAL, 'vsr',
                                          'rel_meta_category_dict.txt'))
  warnings = [r.getMessage() for r in caplog.records
              if 'congruent' in r.getMessage()]
  assert len(warnings) == 1, warnings
  assert 'unknown' in warnings[0] and 'rel_meta_category_dict.txt' in (
      warnings[0])
