"""The synthetic default evals: the cached, atomic set writer, the factory,
real annotation files without images, and every set end to end through the
real tiny model's predict functions."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from vlg import predict
from vlg import sharding
from vlg import train_state
from vlg.data import tokenizer as tok_lib
from vlg.evaluators import common
from vlg.evaluators import synthetic
from vlg.recipes import albef_config
from vlg.recipes import family_config
from vlg.synthetic import benchmarks as synthetic_benchmarks

REAL = os.path.join(os.path.dirname(__file__), '..', 'testdata',
                    'real_benchmarks')
NUM = 4


def test_synthetic_root_written_once_and_atomically(tmp_path, monkeypatch):
  calls = []
  real_write = synthetic_benchmarks.write_all

  def counting_write(out_dir, **kw):
    calls.append(out_dir)
    return real_write(out_dir, **kw)

  monkeypatch.setattr(synthetic_benchmarks, 'write_all', counting_write)
  root = common.synthetic_root(48, seed=1, num=2, cache_dir=str(tmp_path))
  assert os.path.basename(root) == (
      f'res48_seed1_num2_v{synthetic_benchmarks.VERSION}')
  assert json.load(open(os.path.join(root, 'manifest.json')))['settings'][
      'num'] == 2
  assert common.synthetic_root(48, 1, 2, str(tmp_path)) == root
  assert len(calls) == 1 and calls[0] != root  # Written aside, renamed.

  def crash(out_dir, **kw):
    os.makedirs(os.path.join(out_dir, 'valse'))
    raise RuntimeError('disk full')

  monkeypatch.setattr(synthetic_benchmarks, 'write_all', crash)
  with pytest.raises(RuntimeError, match='disk full'):
    common.synthetic_root(48, seed=2, num=2, cache_dir=str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'synthetic_benchmarks')) == [
      f'res48_seed1_num2_v{synthetic_benchmarks.VERSION}']


def test_placeholder_without_synthetic_is_an_error():
  evals = ml_collections.ConfigDict({'svo': dict(
      type='svo_probes', file='{synthetic}/svo_probes/svo_probes.jsonl',
      image_root='x', log_steps=1)})
  with pytest.raises(ValueError, match=r'evals\.svo.*synthetic'):
    common.from_config(evals, predict_fns={}, tokenizer=None, mesh=None,
                       rules=[], defaults=dict(resolution=48))


def test_default_evals_cover_every_set():
  evals = synthetic.default_evals(log_steps=7)
  assert set(evals) == {
      'valse', 'svo_probes', 'winoground', 'retrieval', 'paragraphs',
      'vsr_random_dev', 'vsr_random_test', 'vsr_zeroshot_dev',
      'vsr_zeroshot_test', 'refcocog_val', 'refcocog_test'}
  assert all(e.log_steps == 7 and e.synthetic for e in evals.values())
  assert evals.paragraphs.format == 'paragraphs'
  assert {e.synthetic_num for e in evals.values()} == {200}
  # The per-example sets can hold more examples than the others.
  mixed = synthetic.default_evals(num=50, pairwise_num=120)
  assert {n for n, e in mixed.items() if e.synthetic_num == 120} == set(
      synthetic.PAIRWISE)
  assert {e.synthetic_num for n, e in mixed.items()
          if n not in synthetic.PAIRWISE} == {50}


def test_real_annotation_files_without_images(tmp_path):
  """The real VALSE / VSR files: everything skipped, counted, reported."""
  evals = ml_collections.ConfigDict({
      'valse': dict(type='valse', root=os.path.join(REAL, 'valse'),
                    image_root=str(tmp_path), log_steps=1),
      'vsr': dict(type='vsr',
                  file=os.path.join(REAL, 'vsr', 'random', 'dev.jsonl'),
                  image_root=str(tmp_path), log_steps=1,
                  categories=os.path.join(REAL, 'vsr',
                                          'rel_meta_category_dict.txt'))})
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])

  def never(params, batch):
    raise AssertionError('nothing to score')

  built = common.from_config(
      evals, predict_fns={'image_text_scores': never},
      tokenizer=tok_lib.train_tokenizer(['a red circle'] * 3, 30), mesh=mesh,
      rules=[], defaults=dict(resolution=16, max_text_len=8, batch_size=2))
  valse = built['valse'][0].run(None)
  assert valse['num_evaluated'] == 0 and valse['num_in_file'] == 7702
  assert valse['chance/acc_r'] == 0.5 and valse['chance/auroc'] == 0.5
  vsr = built['vsr'][0].run(None)
  assert vsr['num_evaluated'] == 0 and vsr['num_in_file'] == 1012
  assert vsr['chance/accuracy'] == 0.5


def _tiny(config, mesh):
  rules = [tuple(r) for r in config.sharding_rules]
  graphdef, _, specs = train_state.abstract_model(config.model, rules)
  params = train_state.init_params(config.model, 0, sharding.named(mesh, specs))
  return graphdef, params, rules


def test_every_synthetic_set_end_to_end_tiny_model(tmp_path, fast_compile):
  config = family_config('xvlm', 'tiny,runlocal')  # Has a box head.
  # One device (mesh independence is tested per evaluator, e.g. in
  # test_retrieval.py): 8 fake devices make this test several times slower.
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    graphdef, params, rules = _tiny(config, mesh)
    fns = predict.make_predict_fns(graphdef, box_head=True)
    root = common.synthetic_root(64, 0, NUM, str(tmp_path))
    texts = [json.loads(line)['caption'] for line in open(
        os.path.join(root, 'vsr', 'random', 'test.jsonl'))]
    manifest = json.load(open(os.path.join(root, 'manifest.json')))
    texts += [json.load(open(os.path.join(root, 'paragraphs',
                                          'paragraphs_v1.json')))[0][
                                              'paragraph']]
    tok = tok_lib.train_tokenizer(texts * 5, 200)
    evals = synthetic.default_evals(log_steps=3, num=NUM,
                                    cache_dir=str(tmp_path),
                                    paragraph_max_text_len=24)
    built = common.from_config(
        evals, predict_fns=fns, tokenizer=tok, mesh=mesh, rules=rules,
        defaults=dict(resolution=64, max_text_len=24, batch_size=8))
    results = {name: ev.run(params) for name, (ev, _) in built.items()}
  counts = {name: sum(s['files'].values())
            for name, s in manifest['sets'].items()}
  assert results['valse']['num_evaluated'] == counts['valse']
  assert results['svo_probes']['num_evaluated'] == NUM
  assert results['winoground']['num_evaluated'] == NUM
  assert results['retrieval']['num_evaluated'] == NUM
  assert results['retrieval']['num_texts'] == 5 * NUM
  assert results['paragraphs']['num_evaluated'] == NUM
  for split in ('random_dev', 'random_test', 'zeroshot_dev', 'zeroshot_test'):
    assert results[f'vsr_{split}']['num_evaluated'] == NUM
  for split in ('val', 'test'):
    assert results[f'refcocog_{split}']['skipped'] == 0
    assert results[f'refcocog_{split}']['num_evaluated'] == NUM
  for name, out in results.items():
    assert any(k.startswith('chance/') or k.startswith('baseline/')
               for k in out), name
    for k, v in out.items():
      assert np.isfinite(v), (name, k)
      if not k.startswith('num') and 'num_evaluated' not in k:
        assert 0.0 <= v <= 1.0, (name, k, v)
  # Every evaluator hands back the per-example outcomes of its headline
  # metrics, one per example (query, for retrieval), averaging to the metric.
  headline = {'valse': ('acc_r', 'precision_caption', 'precision_foil'),
              'svo_probes': ('accuracy',),
              'winoground': ('text', 'image', 'group'),
              'retrieval': ('tr_r1', 'tr_r10', 'ir_r1', 'ir_r5'),
              'paragraphs': ('tr_r1', 'ir_r1'),
              'vsr_random_test': ('accuracy',),
              'refcocog_val': ('accuracy', 'mean_iou')}
  for name, keys in headline.items():
    outcomes = results[name].outcomes
    for key in keys:
      n = results[name]['num_texts' if name in ('retrieval', 'paragraphs')
                        and key.startswith('ir') else 'num_evaluated']
      assert outcomes[key].shape == (n,), (name, key)
      assert outcomes[key].mean() == pytest.approx(results[name][key])
  assert 'r_mean' not in results['retrieval'].outcomes  # Not a mean over
  assert 'auroc' not in results['valse'].outcomes       # examples.
  # The retrieval path (features, then ITM on the stored embeddings) gives
  # the pairwise path's ITM probability for the same (image, text).
  scorer = built['retrieval'][0].scorer
  images = np.stack([scorer.load_image(os.path.join(root, 'retrieval', p))
                     for p in built['retrieval'][0].data.images[:2]])
  ids, mask = common.encode_texts(tok, ['a red circle', 'two objects'], 24,
                                  30)
  with jax.set_mesh(mesh):
    pair = jax.jit(fns['image_text_scores'])(
        params, {'image': images, 'text_ids': ids, 'text_mask': mask})
    img = jax.jit(fns['image_features'])(params, {'image': images})
    txt = jax.jit(fns['text_features'])(params, {'text_ids': ids,
                                                 'text_mask': mask})
    itm = jax.jit(fns['itm_from_embeds'])(params, {
        'image_embeds': img['image_embeds'],
        'fusion_text': txt['fusion_text'], 'text_mask': mask})
    box = jax.jit(fns['predict_box'])(params, {
        'image': images, 'text_ids': ids, 'text_mask': mask})['box']
  np.testing.assert_allclose(itm['itm'], pair['itm'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      np.sum(np.asarray(img['image_feat']) * np.asarray(txt['text_feat']), -1),
      pair['itc'], rtol=1e-5, atol=1e-6)
  assert box.shape == (2, 4) and np.all((box > 0) & (box < 1))


def test_refcocog_skipped_without_box_head(tmp_path):
  config = albef_config('tiny,runlocal')
  graphdef, _, _ = train_state.abstract_model(
      config.model, [tuple(r) for r in config.sharding_rules])
  fns = predict.make_predict_fns(graphdef)
  assert 'predict_box' not in fns
  evals = synthetic.default_evals(num=NUM, cache_dir=str(tmp_path))
  evals = ml_collections.ConfigDict({'refcocog_val': evals.refcocog_val})
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  built = common.from_config(
      evals, predict_fns=fns, tokenizer=None, mesh=mesh, rules=[],
      defaults=dict(resolution=64, max_text_len=24, batch_size=8))
  out = built['refcocog_val'][0].run(None)
  assert out == {'skipped': 1.0, 'num_evaluated': 0.0,
                 'num_in_file': float(NUM)}
