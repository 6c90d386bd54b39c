"""The ``prepared`` source: record contract, bad input, pipeline mixtures."""

import os
import pickle

import ml_collections
import numpy as np
import pytest

from vlg.data import ops
from vlg.data import pipeline
from vlg.data import prepared_source
from vlg.data import records
from vlg.data.parts import mrc as mrc_part
from vlg.data import sources
from vlg.data import tokenizer as tok_lib
from vlg.tools import prepare as prepare_tool

import configs.albef as albef_config
import annotation_files as data  # tests/annotation_files.py: tiny data sets


def _prepare(fmt, srcs, images, out, **kw):
  # The tiny sets hold bad input on purpose: accept any share of it.
  kw.setdefault('max_bad_fraction', 1.0)
  prepare_tool.prepare(fmt, srcs, [images], str(out), skip_bad=True,
                       log=lambda _: None, **kw)
  return str(out)


@pytest.fixture
def coco_dir(tmp_path):
  path, images = data.write_coco_captions(tmp_path)
  return _prepare('coco_captions', [path], images, tmp_path / 'coco')


def test_records_follow_the_contract(coco_dir):
  src = prepared_source.PreparedSource(coco_dir)
  assert len(src) == 2 and 'coco_captions' in repr(src)
  rec = src[1]
  assert rec['image'].dtype == np.uint8 and rec['image'].shape == (16, 16, 3)
  assert abs(int(rec['image'].mean()) - 50) <= 2  # b.jpg (JPEG, value 50).
  assert rec['image_id'] == 2 and rec['captions'] == ['two birds']
  for key in ('objects', 'regions', 'relations'):
    assert rec[key] == []
  assert rec['paragraph'] == '' and not rec['has_graph']
  assert not rec['has_boxes'] and 'image_bytes' not in rec
  with pytest.raises(IndexError):
    src[2]
  again = pickle.loads(pickle.dumps(src))  # Grain worker processes.
  np.testing.assert_array_equal(again[0]['image'], src[0]['image'])


def test_source_registered_in_sources(coco_dir):
  cfg = ml_collections.ConfigDict(dict(source='prepared', dir=coco_dir,
                                       weight=2.0))
  src = sources.build_source('coco', cfg, ml_collections.ConfigDict(
      dict(skip_bad_examples=False)))
  assert len(src) == 2 and src[0]['captions'] == ['A dog runs.', 'a cat sits']
  assert src[0]['_num_bad'] == 0


def test_unreadable_images_follow_the_bad_input_policy(tmp_path):
  path, images = data.write_coco_captions(tmp_path)
  out = _prepare('coco_captions', [path], images, tmp_path / 'p',
                 store='path', shard_size=1)
  os.remove(os.path.join(images, 'a.png'))
  cfg = ml_collections.ConfigDict(dict(source='prepared', dir=out))
  strict = sources.build_source('p', cfg, ml_collections.ConfigDict(
      dict(skip_bad_examples=False)))
  with pytest.raises(ops.BadExampleError,
                     match=r'shard-00000.array_record record 0 '
                     r'\(.*captions_train.json image id=1\): cannot read '
                     r'image .*a.png'):
    strict[0]
  lenient = sources.build_source('p', cfg, ml_collections.ConfigDict(
      dict(skip_bad_examples=True)))
  rec = lenient[0]
  assert rec['image_id'] == 2 and rec['_num_bad'] == 1


def test_corrupt_record_bytes_name_the_shard(coco_dir, tmp_path):
  writer = records.ShardWriter(os.path.join(coco_dir,
                                            records.shard_name(0)))
  writer.write(b'not a record')
  writer.write(records.serialise({'image_id': 5, 'captions': ['x'],
                                  'image_bytes': b'\x89PNG broken',
                                  'origin': 'hand-made'}))
  size = writer.commit()
  manifest = records.Manifest.load(coco_dir)
  manifest.payload['shards']['00000'].update(records=2, bytes=size)
  manifest.save()
  src = prepared_source.PreparedSource(coco_dir)
  with pytest.raises(ops.BadExampleError,
                     match=r'shard-00000.array_record record 0: not a vlg '
                     'record'):
    src[0]
  with pytest.raises(ops.BadExampleError,
                     match=r'Cannot decode image .*record 1 \(hand-made\)'):
    src[1]


def test_unfinished_or_missing_folders_are_errors(tmp_path, coco_dir):
  with pytest.raises(FileNotFoundError, match='manifest.json not found'):
    prepared_source.PreparedSource(str(tmp_path / 'nothing'))
  manifest = records.Manifest.load(coco_dir)
  manifest.payload['complete'] = False
  manifest.save()
  with pytest.raises(ValueError, match='did not finish; re-run'):
    prepared_source.PreparedSource(coco_dir)


def test_record_bytes_round_trip():
  rec = {'image_id': 7, 'captions': ['ä caption'], 'paragraph': '',
         'objects': [{'label': 'dog', 'box': np.float32([0.5, 0.5, 1, 1])}],
         'regions': [], 'relations': [], 'has_graph': False,
         'has_boxes': True, 'image_bytes': b'\x00\x01binary'}
  back = records.deserialise(records.serialise(rec))
  assert back['image_bytes'] == b'\x00\x01binary'
  assert back['captions'] == ['ä caption'] and back['image_id'] == 7
  np.testing.assert_array_equal(back['objects'][0]['box'],
                                np.float32([0.5, 0.5, 1, 1]))
  with pytest.raises(records.RecordError, match='not a vlg record'):
    records.deserialise(b'PICKLE' + b'\x00' * 20)


def _input_cfg(entries):
  cfg = albef_config.get_config('tiny').input
  cfg.unlock()
  cfg.data = ml_collections.ConfigDict(entries)
  cfg.augment = ('crop', 'flip')
  cfg.num_workers = 0
  if 'parts' in cfg:
    cfg.parts = ml_collections.ConfigDict()
  return cfg


def test_make_dataset_mixes_prepared_and_synthetic(coco_dir):
  cfg = _input_cfg({
      'coco': dict(source='prepared', dir=coco_dir, weight=1.0),
      'synthetic': dict(source='synthetic', num_examples=32, weight=1.0,
                        world=dict(resolution=64)),
  })
  tok = tok_lib.train_tokenizer(pipeline.training_texts(cfg, 40), 256)
  it = iter(pipeline.make_dataset(cfg, tok, global_batch=8, seed=0))
  ids = set()
  for _ in range(3):
    b = next(it)
    res = int(cfg.resolution)
    assert b['image'].shape == (8, res, res, 3)
    assert b['image'].dtype == np.uint8
    for k in ('text_ids', 'text_mask', 'mlm_ids', 'mlm_labels'):
      assert b[k].shape == (8, int(cfg.max_text_len)), k
      assert b[k].dtype == np.int32
    assert np.all(b['text_ids'][:, 0] == tok_lib.CLS_ID)
    assert b['_num_bad'].sum() == 0
    ids |= {int(i) for i in b['image_id']}
  assert {1, 2} & ids and ids - {1, 2}  # Both sources were drawn.


def test_entity_and_mrc_parts_read_prepared_boxes_and_vocab(tmp_path):
  inst, images = data.write_coco_instances(tmp_path / 'inst')
  inst_dir = _prepare('coco_instances', [inst], images, tmp_path / 'i')
  vg_srcs, vg_images = data.write_vg_relationships(tmp_path / 'vg')
  vg_dir = _prepare('vg_relationships', vg_srcs, vg_images, tmp_path / 'v')
  caps, images = data.write_coco_captions(tmp_path / 'caps')
  coco_dir = _prepare('coco_captions', [caps], images, tmp_path / 'c')
  cfg = _input_cfg({'coco': dict(source='prepared', dir=coco_dir)})
  patch = int(cfg.resolution) // 4
  cfg.parts = ml_collections.ConfigDict(dict(
      entity=dict(enabled=True, batch_size=4, max_pairs=3, objects=True,
                  regions=True, whole_image_caption=False, patch_size=patch,
                  data={'inst': dict(source='prepared', dir=inst_dir)}),
      mrc=dict(enabled=True, batch_size=4, num_relations=2, max_text_len=8,
               vocab=os.path.join(vg_dir, 'relations.json'),
               patch_size=patch,
               data={'vg': dict(source='prepared', dir=vg_dir)})))
  tok = tok_lib.train_tokenizer(
      ['a dog runs', 'a cat sits', 'two birds', 'dog cat man horse girl '
       'bike riding on next to'] * 20, 128)
  b = next(iter(pipeline.make_dataset(cfg, tok, global_batch=4, seed=0)))
  assert b['ent_valid'].shape == (4, 3) and b['ent_valid'].sum() >= 4
  assert b['mrc_valid'].shape == (4, 2) and b['mrc_valid'].sum() >= 4
  vocab = mrc_part.relation_vocab(cfg.parts.mrc)
  labels = b['mrc_label'][b['mrc_valid'] == 1]
  assert {vocab.decode(i) for i in labels} <= {'riding on', 'next to'}
