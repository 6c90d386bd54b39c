"""The ``tfds`` source over a tiny TFDS dataset the test builds itself.

The builder below is prepared as ArrayRecord into a temporary data_dir from
generated arrays (no network); it is not registered, so it is read back from
its files as any prepared TFDS dataset would be.
"""

import io
import pickle

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from vlg.data import ops
from vlg.data import pipeline
from vlg.data import sources
from vlg.data import tfds_source
from vlg.data import tokenizer as tok_lib

import configs.albef as albef_config

NAME = 'vlg_tfds_test_captions'
CLASSES = ['cat', 'dog', 'bird', 'person']
# (TFDS bbox [ymin, xmin, ymax, xmax], label, vlg [cx, cy, w, h] worked by
# hand: cx = (xmin + xmax) / 2, cy = (ymin + ymax) / 2, w = xmax - xmin,
# h = ymax - ymin).
OBJECTS = [
    ((0.1, 0.2, 0.5, 0.6), 'dog', (0.4, 0.3, 0.4, 0.4)),
    ((0.0, 0.5, 1.0, 1.0), 'cat', (0.75, 0.5, 0.5, 1.0)),
    ((0.25, 0.0, 0.75, 0.5), 'person', (0.25, 0.5, 0.5, 0.5)),
]
NUM_TRAIN = 6
# Image ids of the 'bad' split and what is wrong with each (others are good).
BAD = {101: 'captions/text', 102: 'raw_image', 103: 'raw_boxes'}
BAD_CFG = dict(image_key='raw_image', caption_key='captions/text',
               boxes_key='raw_boxes', labels_key='objects/label',
               box_format='REL_YXYX', id_key='image/id')


def _image(i):
  height = 24 if i == 1 else 32  # One non-square image.
  rng = np.random.default_rng(i)
  return rng.integers(0, 256, (height, 32, 3), dtype=np.uint8)


def _png(array):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format='PNG')
  return buf.getvalue()


def _example(i, image_id):
  objects = OBJECTS[:i % 4]
  captions = [f'a photo number {i}', f'Second caption of {i}!']
  raw_image = _png(_image(i))
  raw_boxes = np.array([o[0] for o in objects], np.float32).reshape(-1, 4)
  if image_id == 101:
    captions = ['first is fine', '...']  # Empty once normalised.
  if image_id == 102:
    raw_image = b'\x89PNG broken'
  if image_id == 103:
    raw_boxes = np.array([[0.1, 0.2, 1.3, 0.5]], np.float32)
    objects = OBJECTS[:1]
  return {
      'image': _image(i), 'image/id': image_id, 'raw_image': raw_image,
      'raw_boxes': raw_boxes,
      'captions': {'text': captions, 'id': list(range(len(captions)))},
      'objects': {'bbox': [tfds.features.BBox(*o[0]) for o in objects],
                  'label': [o[1] for o in objects]},
  }


class VlgTfdsTestCaptions(tfds.core.GeneratorBasedBuilder,
                          skip_registration=True):
  """Like coco_captions: an image, captions, and objects with boxes."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    features = tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(None, None, 3)),
        'image/id': tfds.features.Scalar(np.int64),
        'raw_image': tfds.features.Tensor(shape=(), dtype=np.object_),
        'raw_boxes': tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
        'captions': tfds.features.Sequence({
            'text': tfds.features.Text(), 'id': np.int64}),
        'objects': tfds.features.Sequence({
            'bbox': tfds.features.BBoxFeature(),
            'label': tfds.features.ClassLabel(names=CLASSES)}),
    })
    return tfds.core.DatasetInfo(builder=self, features=features)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(0, NUM_TRAIN),
            'bad': self._generate_examples(100, 5)}

  def _generate_examples(self, first_id, n):
    for i in range(n):
      yield first_id + i, _example(i, first_id + i)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('tfds')
  VlgTfdsTestCaptions(data_dir=str(root)).download_and_prepare(
      file_format='array_record')
  return str(root)


def _cfg(data_dir, split='train', **keys):
  keys = keys or dict(caption_key='captions/text', boxes_key='objects/bbox',
                      labels_key='objects/label', id_key='image/id')
  return ml_collections.ConfigDict(dict(source='tfds', name=NAME, split=split,
                                        data_dir=data_dir, **keys))


def _input_cfg(skip):
  return ml_collections.ConfigDict(dict(skip_bad_examples=skip))


def _raw_ids(data_dir, split):
  """Image ids in the order TFDS stored them (it shuffles on preparation)."""
  raw = tfds.data_source(NAME, split=split, data_dir=data_dir, download=False)
  return [int(raw[i]['image/id']) for i in range(len(raw))]


def test_records_match_the_generated_examples(data_dir):
  src = sources.build_source('tiny', _cfg(data_dir), _input_cfg(False))
  assert len(src) == NUM_TRAIN
  seen = set()
  for index in range(len(src)):
    rec = src[index]
    i = rec['image_id']
    seen.add(i)
    np.testing.assert_array_equal(rec['image'], _image(i))  # PNG: lossless.
    assert rec['image'].dtype == np.uint8
    assert rec['captions'] == [f'a photo number {i}',
                               f'Second caption of {i}!']
    expected = OBJECTS[:i % 4]
    assert [o['label'] for o in rec['objects']] == [o[1] for o in expected]
    for obj, (_, _, cxcywh) in zip(rec['objects'], expected):
      assert obj['box'].dtype == np.float32
      np.testing.assert_allclose(obj['box'], cxcywh, atol=1e-6)
    assert rec['has_boxes'] == bool(expected) and not rec['has_graph']
    assert (rec['regions'], rec['relations'], rec['paragraph']) == (
        [], [], '')
    assert rec['_num_bad'] == 0
  assert seen == set(range(NUM_TRAIN))
  # grain workers receive the source pickled.
  again = pickle.loads(pickle.dumps(src))
  np.testing.assert_array_equal(again[2]['image'], src[2]['image'])


def test_without_id_key_the_id_is_the_index(data_dir):
  src = tfds_source.TfdsSource(NAME, 'train', data_dir,
                               caption_key='captions/text')
  assert [src[i]['image_id'] for i in range(len(src))] == list(range(6))
  assert all(src[i]['objects'] == [] for i in range(len(src)))


def test_pixel_box_formats_against_hand_worked_boxes():
  # A 40 wide, 20 high image: XYWH (4, 2, 8, 10) px spans x 4..12, y 2..12.
  xyxy = tfds_source.normalised_xyxy(np.array([[4, 2, 8, 10]]), 'XYWH',
                                     (20, 40))
  np.testing.assert_allclose(xyxy, [[0.1, 0.1, 0.3, 0.6]])
  xyxy = tfds_source.normalised_xyxy(np.array([[2, 4, 12, 12]]), 'YXYX',
                                     (20, 40))
  np.testing.assert_allclose(xyxy, [[0.1, 0.1, 0.3, 0.6]])
  xyxy = tfds_source.normalised_xyxy(np.array([[0.1, 0.2, 0.3, 0.4]]),
                                     'REL_XYXY', (20, 40))
  np.testing.assert_allclose(xyxy, [[0.1, 0.2, 0.3, 0.4]])


def test_make_dataset_batches_follow_the_contract(data_dir):
  cfg = albef_config.get_config('tiny').input
  cfg.unlock()
  cfg.data = ml_collections.ConfigDict({'tiny': _cfg(data_dir).to_dict()})
  cfg.num_workers = 0
  patch = int(cfg.resolution) // 4
  cfg.parts = ml_collections.ConfigDict(dict(entity=dict(
      enabled=True, batch_size=4, max_pairs=3, objects=True, regions=False,
      whole_image_caption=False, patch_size=patch)))
  tok = tok_lib.train_tokenizer(pipeline.training_texts(cfg, 10) * 10, 128)
  it = iter(pipeline.make_dataset(cfg, tok, global_batch=4, seed=0))
  res, length = int(cfg.resolution), int(cfg.max_text_len)
  for _ in range(2):
    b = next(it)
    assert b['image'].shape == (4, res, res, 3) and b['image'].dtype == np.uint8
    for k in ('text_ids', 'text_mask', 'mlm_ids', 'mlm_labels'):
      assert b[k].shape == (4, length) and b[k].dtype == np.int32, k
    assert np.all(b['text_ids'][:, 0] == tok_lib.CLS_ID)
    assert set(b['image_id'].tolist()) <= set(range(NUM_TRAIN))
    assert b['_num_bad'].sum() == 0
    # The entity part drew its (object label, box) pairs from the tfds boxes.
    assert b['ent_valid'].shape == (4, 3) and b['ent_valid'].sum() >= 4


def test_bad_examples_raise_naming_index_and_key(data_dir):
  src = sources.build_source('bad', _cfg(data_dir, 'bad', **BAD_CFG),
                             _input_cfg(False))
  ids = _raw_ids(data_dir, 'bad')
  for index, image_id in enumerate(ids):
    if image_id not in BAD:
      assert src[index]['image_id'] == image_id
      continue
    with pytest.raises(ops.BadExampleError) as e:
      src[index]
    message = str(e.value)
    assert f"'{NAME}' split 'bad' example {index}" in message, message
    assert f"key '{BAD[image_id]}'" in message, message
    assert 'skip_bad_examples' in message


def test_skip_bad_counts_and_reads_the_next_good_example(data_dir):
  src = sources.build_source('bad', _cfg(data_dir, 'bad', **BAD_CFG),
                             _input_cfg(True))
  ids = _raw_ids(data_dir, 'bad')
  for index in range(len(ids)):
    skipped = 0
    while ids[(index + skipped) % len(ids)] in BAD:
      skipped += 1
    rec = src[index]
    assert rec['_num_bad'] == skipped
    assert rec['image_id'] == ids[(index + skipped) % len(ids)]
    assert rec['image_id'] not in BAD


def test_config_errors_name_the_key(data_dir):
  with pytest.raises(ValueError, match=r"caption_key='captions/txt'.*"
                     r"\['id', 'text'\]"):
    tfds_source.TfdsSource(NAME, 'train', data_dir,
                           caption_key='captions/txt')
  with pytest.raises(ValueError, match='not a BBoxFeature'):
    tfds_source.TfdsSource(NAME, 'train', data_dir, boxes_key='raw_boxes',
                           labels_key='objects/label')
  with pytest.raises(ValueError, match='must be a ClassLabel or a text'):
    tfds_source.TfdsSource(NAME, 'train', data_dir, boxes_key='objects/bbox',
                           labels_key='image/id')
  with pytest.raises(ValueError, match="Unknown split 'validation'"):
    tfds_source.TfdsSource(NAME, 'validation', data_dir,
                           caption_key='captions/text')
  with pytest.raises(ValueError, match=r"unknown keys \['captions_key'\]"):
    sources.build_source('x', _cfg(data_dir, captions_key='captions/text'),
                         _input_cfg(False))


def test_missing_dataset_says_how_to_prepare_and_never_downloads(
    tmp_path, monkeypatch):
  def no_download(*args, **kwargs):
    raise AssertionError('a download was attempted')
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare',
                      no_download)
  empty = str(tmp_path / 'empty')
  with pytest.raises(FileNotFoundError,
                     match=r"'vlg_no_such_dataset' is not prepared.*tfds "
                     r"build.*file_format='array_record'"):
    sources.build_source('x', ml_collections.ConfigDict(dict(
        source='tfds', name='vlg_no_such_dataset', data_dir=empty,
        caption_key='text')), _input_cfg(False))
  # A builder TFDS knows, but not prepared in this data_dir.
  with pytest.raises(FileNotFoundError, match=r"'mnist' is not prepared: no "
                     r'dataset_info.json in .*empty.*tfds build'):
    tfds_source.TfdsSource('mnist', 'train', empty, caption_key='label')


def test_tfrecord_preparation_is_refused_with_the_fix(tmp_path):
  root = str(tmp_path / 'tfrecord')
  VlgTfdsTestCaptions(data_dir=root).download_and_prepare(
      file_format='tfrecord')
  with pytest.raises(ValueError, match="no random access.*array_record"):
    tfds_source.TfdsSource(NAME, 'train', root, caption_key='captions/text')
