"""The grain pipeline: batch contract, shards, exact iterator resume."""

import threading
import time

import grain
import ml_collections
import numpy as np
import pytest

from vlg.data import ops
from vlg.data import pipeline
from vlg.data import tokenizer as tok_lib

import configs.albef as albef_config


def _input_cfg(workers=0):
  c = albef_config.get_config('tiny').input
  c.data.synthetic.num_examples = 64
  c.num_workers = workers
  return c


@pytest.fixture(scope='module')
def tok():
  return tok_lib.train_tokenizer(pipeline.training_texts(_input_cfg(), 100),
                                 1024)


def test_batch_contract(tok):
  it = iter(pipeline.make_dataset(_input_cfg(), tok, global_batch=8, seed=0))
  b = next(it)
  assert b['image'].shape == (8, 64, 64, 3) and b['image'].dtype == np.uint8
  for k in ('text_ids', 'text_mask', 'mlm_ids', 'mlm_labels'):
    assert b[k].shape == (8, 25) and b[k].dtype == np.int32, k
  assert np.all(b['text_ids'][:, 0] == tok_lib.CLS_ID)
  masked = b['mlm_labels'] != -100
  np.testing.assert_array_equal(b['mlm_labels'][masked],
                                b['text_ids'][masked])
  assert b['image_id'].dtype == np.int32 and b['_num_bad'].sum() == 0
  assert b['caption_index'].shape == (8,)
  assert b['caption_index'].dtype == np.int32
  assert b['flipped'].dtype == np.int32 and set(b['flipped']) <= {0, 1}


def test_caption_index_and_flipped_name_the_text_that_was_tokenised(tok):
  cfg = _input_cfg()
  transform = pipeline.CaptionTransform(tok, cfg)
  source, _ = pipeline.build_sources(cfg)['synthetic']
  drawn, flips = set(), set()
  for i in range(12):
    record = source[i]
    out = transform.random_map(record, np.random.default_rng(i))
    k = int(out['caption_index'])
    caption = record['captions'][k]
    if out['flipped']:  # The flip swapped left and right in the caption.
      caption = ops.swap_left_right(caption)
    want, _ = tok.encode(ops.pre_caption(caption, cfg.max_words),
                         cfg.max_text_len)
    np.testing.assert_array_equal(out['text_ids'], want, err_msg=str(i))
    drawn.add(k)
    flips.add(int(out['flipped']))
  # Both vary, so neither is a constant.
  assert len(drawn) > 1 and flips == {0, 1}


def test_process_shards_are_disjoint_and_cover():
  cfg = _input_cfg()
  source, _ = pipeline.build_sources(cfg)['synthetic']
  n = len(source)
  shards = [list(grain.MapDataset.range(n)[i::3]) for i in range(3)]
  flat = sorted(x for s in shards for x in s)
  assert flat == list(range(n))
  # The same slicing is what make_dataset applies per process: the image
  # ids each process sees in one pass are disjoint.
  seen = []
  for i in range(2):
    ds = grain.MapDataset.source(source)[i::2]
    seen.append({int(ds[j]['image_id']) for j in range(len(ds))})
  assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == n


def test_grouped_order_keeps_groups_whole_and_reshuffles_each_epoch():
  groups = grain.MapDataset.range(10).seed(4).shuffle().repeat()
  order = pipeline.GroupedOrder(groups, 2)
  epochs = [[order[j] for j in range(e * 20, (e + 1) * 20)] for e in (0, 1)]
  for got in epochs:
    assert sorted(got) == list(range(20))
    assert all(got[k] // 2 == got[k + 1] // 2 and got[k] % 2 == 0
               for k in range(0, 20, 2))
  assert epochs[0] != epochs[1]
  assert len(pipeline.GroupedOrder(grain.MapDataset.range(5), 2)) == 10


def test_contrast_twins_share_a_batch_and_a_mirror(tok):
  cfg = _input_cfg()
  cfg.data.synthetic.world.contrast_rate = 1.0
  source, _ = pipeline.build_sources(cfg)['synthetic']
  assert source.group_size == 2
  it = iter(pipeline.make_dataset(cfg, tok, global_batch=8, seed=0))
  flips = set()
  for _ in range(4):
    b = next(it)
    ids = b['image_id'].reshape(-1, 2)
    # Every pair (2k, 2k + 1) of the source arrives whole, in order.
    np.testing.assert_array_equal(ids[:, 1] - ids[:, 0], 1)
    np.testing.assert_array_equal(ids[:, 0] % 2, 0)
    pair_flips = b['flipped'].reshape(-1, 2)
    contrast_pairs = [k for k, i in enumerate(ids[:, 0])
                      if 'mirror' in source[int(i) % len(source)]]
    assert contrast_pairs
    for k in contrast_pairs:
      assert pair_flips[k, 0] == pair_flips[k, 1]
      flips.add(int(pair_flips[k, 0]))
  assert flips == {0, 1}


@pytest.mark.parametrize('workers,contrast', [(0, 0.0), (2, 0.0), (0, 1.0)])
def test_iterator_state_round_trip_reproduces_next_batches(tok, workers,
                                                           contrast):
  cfg = _input_cfg(workers)
  cfg.data.synthetic.world.contrast_rate = contrast
  it = iter(pipeline.make_dataset(cfg, tok, global_batch=4, seed=3))
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(5)]
  if hasattr(it, 'close'):
    it.close()
  again = iter(pipeline.make_dataset(cfg, tok, global_batch=4, seed=3))
  again.set_state(state)
  got = [next(again) for _ in range(5)]
  if hasattr(again, 'close'):
    again.close()
  for e, g in zip(expected, got):
    for k in e:
      np.testing.assert_array_equal(e[k], g[k], err_msg=k)


def test_unknown_op_and_kind_fail_with_valid_names(tok):
  cfg = _input_cfg()
  cfg.augment = ('crop', 'rotate')
  with pytest.raises(ValueError, match=r"\['rotate'\].*valid"):
    pipeline.make_dataset(cfg, tok, global_batch=4, seed=0)
  cfg = _input_cfg()
  cfg.kind = 'boxes'
  with pytest.raises(ValueError, match='valid'):
    pipeline.make_dataset(cfg, tok, global_batch=4, seed=0)


def test_wait_for_tokenizer_returns_once_written_and_times_out_clearly(
    tmp_path):
  cfg = ml_collections.ConfigDict({'tokenizer': {'path': ''}})
  with pytest.raises(TimeoutError, match='did not appear within 0 s'):
    pipeline.wait_for_tokenizer(cfg, str(tmp_path), timeout_s=0.0,
                                poll_s=0.01)
  key = tmp_path / 'tokenizer' / tok_lib.KEY_FILE

  def write_later():
    time.sleep(0.3)
    key.parent.mkdir()
    key.write_text('k')

  writer = threading.Thread(target=write_later)
  start = time.time()
  writer.start()
  pipeline.wait_for_tokenizer(cfg, str(tmp_path), timeout_s=30.0,
                              poll_s=0.01)
  writer.join()
  assert key.exists() and 0.25 < time.time() - start < 30.0
  # A run with an explicit tokenizer path never waits.
  cfg.tokenizer.path = '/nonexistent/tokenizer.model'
  pipeline.wait_for_tokenizer(cfg, str(tmp_path / 'other'), timeout_s=0.0)


def _albef_input_cfg(tmp_path, captions, skip):
  """The tiny input config reading one albef_json source ``cap`` whose
  entry ``i`` (image id ``i``) has caption ``captions[i]``."""
  import json  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  entries = []
  for i, caption in enumerate(captions):
    Image.fromarray(np.full((8, 12, 3), 10 * i, np.uint8)).save(
        tmp_path / f'img{i}.png')
    entries.append({'image': f'img{i}.png', 'caption': caption})
  (tmp_path / 'train.json').write_text(json.dumps(entries))
  cfg = _input_cfg()
  cfg.data = ml_collections.ConfigDict({'cap': {
      'source': 'albef_json', 'path': str(tmp_path / 'train.json'),
      'image_root': str(tmp_path)}})
  cfg.skip_bad_examples = skip
  return cfg


PUNCTUATION_ONLY = ['a red ball', 'two blue cubes', '?!...', 'a green cone']


def test_caption_empty_after_normalisation_is_skipped_counted_and_named(
    tok, tmp_path, caplog):
  cfg = _albef_input_cfg(tmp_path, PUNCTUATION_ONLY, skip=True)
  it = iter(pipeline.make_dataset(cfg, tok, global_batch=4, seed=0))
  with caplog.at_level('WARNING'):
    b = next(it)  # One epoch of the 4 entries, shuffled.
  # Entry 2 is skipped and counted; the next entry (3) takes its place.
  assert b['_num_bad'].sum() == 1
  assert sorted(b['image_id'].tolist()) == [0, 1, 3, 3]
  assert "source 'cap' index 2 image_id 2" in caplog.text, caplog.text
  assert 'empty after normalisation' in caplog.text


def test_caption_empty_after_normalisation_raises_naming_the_record(
    tok, tmp_path):
  cfg = _albef_input_cfg(tmp_path, PUNCTUATION_ONLY, skip=False)
  it = iter(pipeline.make_dataset(cfg, tok, global_batch=4, seed=0))
  with pytest.raises(ops.BadExampleError,
                     match=r"source 'cap' index 2 image_id 2\].*empty after "
                     r"normalisation: '\?!\.\.\.'.*skip_bad_examples=True"):
    next(it)


def test_bad_input_policy_keeps_the_draws_of_good_examples(tok):
  """The transforms run under the bad-input policy draw exactly what
  grain's plain random_map of the same transform draws (same seed, same
  index): checked data trains as it did before the policy covered them."""
  cfg = _input_cfg()
  ds, _ = pipeline._mixture(cfg, None, 3, 0, 1)
  plain = ds.random_map(pipeline.CaptionTransform(tok, cfg), seed=3)
  for skip in (False, True):
    cfg.skip_bad_examples = skip
    checked = pipeline.make_dataset(cfg, tok, global_batch=4, seed=3)
    b = next(iter(checked))
    for j in range(4):
      for k, v in plain[j].items():
        np.testing.assert_array_equal(b[k][j], v, err_msg=f'{k} {j}')


def test_tokenizer_key_ignores_the_contrast_defaults_only():
  cfg = _input_cfg()
  without = _input_cfg()
  with without.unlocked():
    del without.data.synthetic.world['contrast_rate']
    del without.data.synthetic.world['contrast_captions']
  assert pipeline.tokenizer_key(cfg) == pipeline.tokenizer_key(without)
  cfg.data.synthetic.world.contrast_captions = 'mirrored'
  assert pipeline.tokenizer_key(cfg) != pipeline.tokenizer_key(without)
  cfg.data.synthetic.world.contrast_captions = 'independent'
  cfg.data.synthetic.world.contrast_rate = 0.5
  assert pipeline.tokenizer_key(cfg) != pipeline.tokenizer_key(without)
  cfg.data.synthetic.world.contrast_rate = 0.0
  cfg.data.synthetic.world.caption_relation_rate = 0.3
  assert pipeline.tokenizer_key(cfg) != pipeline.tokenizer_key(without)
