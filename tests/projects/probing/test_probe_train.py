"""Tests of probe training: freezing, multi_transform labels, early stopping,
the feature cache (bfloat16 on disk; stale and corrupt entries; on the
stand-in encoder of ``probe_stub``), and the encoders over a vlg Model and
over a ViT + Q-Former."""

import hashlib
import json
import os
import re
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

import probe_stub as stub  # tests/projects/probing/probe_stub.py, on sys.path
from vlg.models import create_model
from vlg.models import resamplers
from vlg.models import sizes
from vlg.models import vit
from vlg.projects.probing import feature_cache
from vlg.projects.probing import taps
from vlg.projects.probing import tasks
from vlg.projects.probing import train


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  return stub.splits(str(tmp_path_factory.mktemp('probe_images')))


def _copy(tree):
  return jax.tree.map(np.array, tree)


def _changed(before, after):
  return jax.tree.map(lambda a, b: not np.array_equal(a, b), before, after)


HP = train.HParams(lr=3e-2, epochs=6, batch_size=8, eval_batch_size=16,
                   patience=None)


def test_frozen_trains_head_only_and_caches_features(data, tmp_path,
                                                     monkeypatch,
                                                     fast_compile):
  encoder = stub.encoder()
  before = _copy(encoder.params)
  spec = taps.parse_spec('tap=resampler_queries,reduce=flatten')
  task = tasks.get_task('vsr')
  calls = []
  extract = feature_cache.extract_features
  monkeypatch.setattr(feature_cache, 'extract_features',
                      lambda *a, **k: calls.append(1) or extract(*a, **k))
  cache = str(tmp_path / 'features')
  result = train.train_probe(encoder, spec, task, data['binary'], stub.inputs(),
                             HP, regime='frozen', cache_dir=cache)
  assert len(calls) == 3 and result.cache_hits == {
      'train': False, 'val': False, 'test': False}
  # The encoder is bit-identical; every probe parameter moved.
  jax.tree.map(np.testing.assert_array_equal, before, _copy(encoder.params))
  assert result.encoder_params is None
  _, fresh = train.init_probe(spec, 16, 1, HP)
  assert all(jax.tree.leaves(_changed(fresh, result.probe_params)))
  assert result.history[-1]['train_loss'] < result.history[0]['train_loss']
  assert result.predictions['test'].shape == (12,)
  assert result.metrics['test/chance/accuracy'] == 0.5
  assert set(result.metrics) >= {'val/accuracy', 'test/accuracy',
                                 'test/category/0', 'best_epoch'}

  # Second call: every split from the cache, no extraction, same result.
  again = train.train_probe(encoder, spec, task, data['binary'], stub.inputs(),
                            HP, regime='frozen', cache_dir=cache)
  assert len(calls) == 3 and all(again.cache_hits.values())
  np.testing.assert_array_equal(again.predictions['test'],
                                result.predictions['test'])
  # A changed text changes the fingerprint: that split misses.
  splits = dict(data['binary'])
  splits['val'] = [splits['val'][0].__class__(
      **{**splits['val'][0].__dict__, 'text': 'another text'})
                   ] + splits['val'][1:]
  third = train.train_probe(encoder, spec, task, splits, stub.inputs(),
                            HP, regime='frozen', cache_dir=cache)
  assert len(calls) == 4
  assert third.cache_hits == {'train': True, 'val': False, 'test': True}
  assert len([d for d in os.listdir(cache) if not d.startswith('.')]) == 4


SPEC = taps.parse_spec('tap=resampler_queries,reduce=flatten')


def _bf16_bits(x):
  """float32 → bfloat16 bit patterns, rounded to nearest even, in NumPy."""
  bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
  return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def test_cache_stores_bfloat16_and_the_head_reads_float32(data, tmp_path,
                                                          fast_compile):
  encoder, inputs = stub.encoder(), stub.inputs()
  examples = data['binary']['val']
  ref = feature_cache.extract_features(encoder, SPEC, examples, inputs, 16)
  assert ref['x'].dtype == np.float32 and ref['x'].shape == (12, 16)
  cache = str(tmp_path / 'features')
  written, miss = feature_cache.cached_features(encoder, SPEC, examples,
                                                inputs, cache_dir=cache)
  read, hit = feature_cache.cached_features(encoder, SPEC, examples, inputs,
                                            cache_dir=cache)
  uncached, _ = feature_cache.cached_features(encoder, SPEC, examples, inputs,
                                              cache_dir=None)
  assert (miss, hit) == (False, True)
  [entry] = os.listdir(cache)
  x_path = os.path.join(cache, entry, 'x.npy')
  np.testing.assert_array_equal(np.load(x_path), _bf16_bits(ref['x']))
  np.save(tmp_path / 'f32.npy', ref['x'])  # Same header length.
  assert (os.path.getsize(tmp_path / 'f32.npy') - os.path.getsize(x_path)
          == ref['x'].size * 2)
  with open(os.path.join(cache, entry, 'meta.json')) as f:
    meta = json.load(f)
  assert meta['format'] == feature_cache.FORMAT
  assert meta['dtypes'] == {'x': 'bfloat16'} and meta['num'] == 12
  # Miss, hit and no cache give the head the same float32 values: the
  # bfloat16 bits shifted up, within 2^-8 of the extracted features.
  expected = (_bf16_bits(ref['x']).astype(np.uint32) << 16).view(np.float32)
  for arrays in (written, read, uncached):
    got = feature_cache.as_float32(arrays['x'][[3, 0, 5]])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected[[3, 0, 5]])
  np.testing.assert_allclose(expected, ref['x'], rtol=2.0**-8, atol=0)
  assert not np.array_equal(expected, ref['x'])  # Rounding did happen.

  # attn_pool keeps the tokens (bfloat16) and their int32 mask.
  pool = taps.parse_spec('tap=resampler_queries,reduce=attn_pool')
  tokens, _ = feature_cache.cached_features(encoder, pool, examples, inputs,
                                            cache_dir=cache)
  again, hit = feature_cache.cached_features(encoder, pool, examples, inputs,
                                             cache_dir=cache)
  assert hit and again['x'].shape == (12, 2, 8)
  assert again['mask'].dtype == np.int32
  np.testing.assert_array_equal(again['mask'], np.ones((12, 2)))
  np.testing.assert_array_equal(feature_cache.as_float32(again['x']),
                                feature_cache.as_float32(tokens['x']))


def test_old_float32_entries_are_not_read_and_bad_ones_raise(data, tmp_path,
                                                             fast_compile):
  encoder, inputs = stub.encoder(), stub.inputs()
  examples = data['binary']['val']
  cache = str(tmp_path)

  def features():
    return feature_cache.cached_features(encoder, SPEC, examples, inputs,
                                         cache_dir=cache)

  # An entry of the unversioned float32 layout, under the name its key gave
  # (no format in the hash), holding zeros: never opened.
  fp = feature_cache.fingerprint(examples, inputs.settings())
  old = 'resampler_queries-flatten-' + hashlib.sha256(json.dumps(
      [encoder.cache_id, SPEC.key, fp]).encode()).hexdigest()[:24]
  os.makedirs(tmp_path / old)
  np.save(tmp_path / old / 'x.npy', np.zeros((12, 16), np.float32))
  (tmp_path / old / 'meta.json').write_text(json.dumps(
      {'arrays': ['x'], 'encoder': encoder.cache_id, 'tap': SPEC.key,
       'data': fp, 'num': 12}))
  arrays, hit = features()
  assert not hit and np.all(feature_cache.as_float32(arrays['x']) != 0)
  [new] = set(os.listdir(cache)) - {old}
  folder = os.path.join(cache, new)
  x_path, meta_path = (os.path.join(folder, f) for f in ('x.npy', 'meta.json'))
  delete = f'delete {re.escape(folder)} to rebuild it'

  def fails(path, match):
    with pytest.raises(feature_cache.FeatureCacheError,
                       match=f'{re.escape(path)}: .*{match}.*{delete}'):
      features()

  with open(x_path, 'rb') as f:
    good_x = f.read()
  with open(x_path, 'wb') as f:
    f.write(good_x[:150])  # Truncated inside the data.
  fails(x_path, 'unreadable')
  np.save(x_path, np.zeros((12, 16), np.float32))
  fails(x_path, r'float32 \(12, 16\), expected uint16 with 12 rows')
  np.save(x_path, np.zeros((11, 16), np.uint16))
  fails(x_path, r'uint16 \(11, 16\), expected uint16 with 12 rows')
  with open(x_path, 'wb') as f:
    f.write(good_x)
  with open(meta_path) as f:
    meta = json.load(f)
  for bad, match in (({**meta, 'format': 'float32'}, "format 'float32'"),
                     ({**meta, 'num': 13}, r"\{'num': \(13, 12\)\}"),
                     ({**meta, 'tap': 'x'}, "'tap': \\('x'")):
    with open(meta_path, 'w') as f:
      json.dump(bad, f)
    fails(meta_path, match)
  with open(meta_path, 'w') as f:
    f.write('{"arrays": ')
  fails(meta_path, 'unreadable')
  # Deleting the named folder rebuilds the entry; the old one is untouched.
  shutil.rmtree(folder)
  rebuilt, hit = features()
  assert not hit and features()[1]
  np.testing.assert_array_equal(rebuilt['x'].view(np.uint16),
                                arrays['x'].view(np.uint16))
  assert np.load(tmp_path / old / 'x.npy').dtype == np.float32


def test_unfrozen_trains_resampler_not_vision(data, fast_compile):
  encoder = stub.encoder()
  before = _copy(encoder.params)
  spec = taps.parse_spec('tap=resampler_queries,reduce=mean')
  result = train.train_probe(encoder, spec, tasks.get_task('refcocog_box'),
                             data['box'], stub.inputs(), HP, regime='unfrozen')
  # The caller's copy is untouched (the step does not donate it).
  jax.tree.map(np.testing.assert_array_equal, before, _copy(encoder.params))
  moved = _changed(before, result.encoder_params)
  assert not any(jax.tree.leaves(moved['vision']))
  assert all(jax.tree.leaves(moved['resampler']))
  assert result.history[-1]['train_loss'] < result.history[0]['train_loss']
  assert result.predictions['val'].shape == (12, 4)
  assert 0 <= result.metrics['test/acc@0.5'] <= 1
  assert 'test/mean_box/acc@0.5' in result.metrics


def test_inputs_pad_to_the_longest_text_only(data):
  inputs = stub.inputs()  # max_text_len 6.
  examples = data['box']['train']  # 'the square k': [CLS] + 3 words.
  assert inputs.text_len(examples, multiple=1) == 4
  assert inputs.text_len(examples, multiple=3) == 6
  assert inputs.text_len(examples) == 6  # Rounded up to 8, capped at 6.
  full = inputs(examples, [0, 1])
  cut = inputs(examples, [0, 1], text_len=4)
  assert full['text_ids'].shape == (2, 6) and cut['text_ids'].shape == (2, 4)
  np.testing.assert_array_equal(cut['text_ids'], full['text_ids'][:, :4])
  np.testing.assert_array_equal(cut['text_mask'].sum(1),
                                full['text_mask'].sum(1))
  with pytest.raises(ValueError, match='text_len=3 cuts real tokens'):
    inputs(examples, [0], text_len=3)


def test_early_stopping_on_a_plateau(data, fast_compile):
  stopper = train.EarlyStopping(patience=3)
  steps = [stopper.update(e, v) for e, v in
           enumerate([0.5, 0.6, 0.6, 0.55, 0.6], start=1)]
  assert [s[0] for s in steps] == [True, True, False, False, False]
  assert [s[1] for s in steps] == [False, False, False, False, True]
  assert stopper.best_epoch == 2
  # lr 0: the validation metric never changes, so training stops after the
  # first epoch plus `patience` epochs without improvement.
  hp = train.HParams(lr=0.0, epochs=20, batch_size=8, eval_batch_size=16,
                     patience=2)
  result = train.train_probe(stub.encoder(), taps.parse_spec(
      'tap=resampler_queries,reduce=cls'), tasks.get_task('rcm'),
                             data['binary'], stub.inputs(), hp)
  assert result.metrics['epochs_run'] == 3
  assert result.metrics['stopped_early'] == 1
  assert result.metrics['best_epoch'] == 1


def test_schedule_warms_up_over_ten_percent_then_decays_linearly():
  schedule = train.probe_schedule(train.HParams(lr=1.0), 100)
  got = [float(schedule(s)) for s in (0, 5, 10, 55, 100)]
  np.testing.assert_allclose(got, [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
  cosine = train.probe_schedule(train.HParams(lr=1.0, schedule='cosine'), 100)
  np.testing.assert_allclose(float(cosine(55)), 0.5, atol=1e-6)


def test_vlg_model_labels(fast_compile):
  cfg = sizes.model_config('tiny', box_head=True)
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: create_model(cfg, nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract, nnx.Param)
  run = type('Run', (), dict(graphdef=graphdef, workdir='/w', step=7,
                             params=nnx.to_pure_dict(state)))
  encoder = train.model_encoder(run)
  assert encoder.cache_id == '/w@7'
  labels = train.param_labels({'probe': {'w': 0}, 'encoder': encoder.params},
                              encoder)
  enc = labels['encoder']
  assert labels['probe']['w'] == 'probe'
  assert set(jax.tree.leaves(enc['vision'])) == {'vision'}
  assert set(jax.tree.leaves(enc['text']['fusion'])) == {'resampler'}
  assert set(jax.tree.leaves(enc['text']['embeddings'])) == {'resampler'}
  for head in ('vision_proj', 'itm_head', 'box_head', 'temp'):
    assert set(jax.tree.leaves(enc[head])) == {'frozen'}, head
  assert set(jax.tree.leaves(enc['text']['mlm_head'])) == {'frozen'}


def test_vision_resampler_encoder_taps_and_labels(fast_compile):
  cfg = sizes.model_config('tiny', vision_depth=1)
  qcfg = resamplers.resampler_config('qformer', 'tiny', layers=2,
                                     vocab_size=64)
  with nnx.use_eager_sharding(False):
    module = taps.VisionResampler(
        vit.VisionTransformer(cfg, rngs=nnx.Rngs(0)),
        resamplers.QFormer(qcfg, rngs=nnx.Rngs(1)))
  encoder = train.resampler_encoder(module, 'qformer@0')
  rng = np.random.RandomState(0)
  batch = {'image': rng.randint(0, 256, (2, 64, 64, 3)).astype(np.uint8),
           'text_ids': rng.randint(5, 64, (2, 5)).astype(np.int32),
           'text_mask': np.array([[1] * 5, [1, 1, 0, 0, 0]], np.int32)}

  @jax.jit
  def run(params):
    m = nnx.merge(encoder.graphdef, params)
    got = encoder.tap_fn(m, batch, ('resampler_queries', 'resampler_layer:1'),
                         None)
    direct = m.resampler(m.vision(batch['image']), batch['text_ids'],
                         batch['text_mask'], mode='multimodal',
                         return_layers=True)
    return got, direct
  got, direct = run(encoder.params)
  assert got['resampler_queries'][0].shape == (2, 8, 128)
  np.testing.assert_array_equal(got['resampler_queries'][0],
                                direct['resampler_queries'])
  np.testing.assert_array_equal(got['resampler_layer:1'][0],
                                direct['resampler_layers'][1])
  # More padding changes no tap (what Inputs.text_len relies on).
  padded = dict(batch, text_ids=np.pad(batch['text_ids'], ((0, 0), (0, 11))),
                text_mask=np.pad(batch['text_mask'], ((0, 0), (0, 11))))
  longer = jax.jit(lambda p: encoder.tap_fn(
      nnx.merge(encoder.graphdef, p), padded,
      ('resampler_queries', 'resampler_layer:1'), None))(encoder.params)
  for name in ('resampler_queries', 'resampler_layer:1'):
    np.testing.assert_allclose(longer[name][0], got[name][0], rtol=1e-5,
                               atol=1e-5)
  enc = train.param_labels({'probe': {}, 'encoder': encoder.params},
                           encoder)['encoder']
  assert set(jax.tree.leaves(enc['vision'])) == {'vision'}
  for part in ('query_tokens', 'layers', 'ln_vision', 'word'):
    assert set(jax.tree.leaves(enc['resampler'][part])) == {'resampler'}
  for part in ('itm_head', 'lm_head', 'vision_proj', 'temp'):
    assert set(jax.tree.leaves(enc['resampler'][part])) == {'frozen'}
