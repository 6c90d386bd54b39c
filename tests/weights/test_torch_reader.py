"""The restricted PyTorch reader (vlg/weights/torch_reader.py) and the
format dispatcher (vlg/weights/files.py).

Expected values come from torch itself (``reader_cases*.pth`` and
``reader_cases_expected.npz``, written by
tests/testdata/weights/make_fixtures.py); the malicious files are crafted
here with the standard pickle module, no torch needed.
"""

import os
import pickle
import zipfile

import numpy as np
import pytest

from vlg.weights import common
from vlg.weights import files
from vlg.weights import torch_reader

DATA = os.path.join(os.path.dirname(__file__), '..', 'testdata', 'weights')


@pytest.mark.parametrize('name', ['reader_cases.pth',
                                  'reader_cases_legacy.pth'])
def test_rebuilds_views_dtypes_and_containers_exactly(name):
  obj = torch_reader.load(os.path.join(DATA, name))
  assert obj['epoch'] == 3 and obj['note'] == 'plain data'
  assert obj['nested'] == [1.5, (2, 'x'), {'k': None}]
  expected = np.load(os.path.join(DATA, 'reader_cases_expected.npz'))
  got = obj['state_dict']
  assert sorted(got) == sorted(expected.files)
  for k in expected.files:
    want = expected[k]
    assert got[k].shape == want.shape, k
    # bfloat16 is stored widened to float32 in the npz.
    np.testing.assert_array_equal(got[k].astype(want.dtype), want, err_msg=k)
  assert got['bf16'].dtype.name == 'bfloat16'
  assert got['fp16'].dtype == np.float16 and got['int64'].dtype == np.int64
  assert got['scalar'].shape == () and isinstance(got['scalar'], np.ndarray)
  # Views are copies of the right elements, not aliases of the storage.
  np.testing.assert_array_equal(got['slice'], got['base'][1:3, 2:5])
  np.testing.assert_array_equal(got['transposed'], got['base'].T)


class _Evil:
  """Unpickling calls os.system with a command that leaves a marker."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def _zip_checkpoint(path, payload):
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr('archive/data.pkl', pickle.dumps(payload, protocol=2))
    zf.writestr('archive/version', '3\n')


def test_refuses_a_pickled_callable_in_a_zip_checkpoint(tmp_path):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.pth'
  _zip_checkpoint(path, {'model': {'w': 1}, 'x': _Evil(marker)})
  with pytest.raises(torch_reader.UnsafeCheckpointError,
                     match=r'global (posix|os|nt)\.system') as err:
    files.read(str(path))
  assert 'refusing to load' in str(err.value)
  assert not marker.exists()
  # The plain pickle module would have run it: the test's payload is real.
  with zipfile.ZipFile(path) as zf:
    pickle.loads(zf.read('archive/data.pkl'))
  assert marker.exists()


def test_refuses_a_pickled_callable_in_a_legacy_checkpoint(tmp_path):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.bin'
  with open(path, 'wb') as f:
    pickle.dump(_Evil(marker), f, protocol=2)
  with pytest.raises(torch_reader.UnsafeCheckpointError, match='system'):
    torch_reader.load(str(path))
  assert not marker.exists()


def test_refuses_other_objects_by_name(tmp_path):
  import argparse  # A classic: training scripts that save their args.
  path = tmp_path / 'args.pth'
  _zip_checkpoint(path, {'model': {}, 'args': argparse.Namespace(lr=1)})
  with pytest.raises(torch_reader.UnsafeCheckpointError,
                     match=r'argparse\.Namespace'):
    torch_reader.load(str(path))


def test_not_a_state_dict_is_a_clear_error(tmp_path):
  path = tmp_path / 'list.pth'
  _zip_checkpoint(path, [1, 2, 3])
  with pytest.raises(ValueError, match='no state dict'):
    files.read(str(path))
  with pytest.raises(common.WeightsError, match='unknown weights format'):
    bad = tmp_path / 'w.h5'
    bad.write_bytes(b'')
    files.read(str(bad))


def test_safetensors_reader_matches_the_pth_of_the_same_model():
  # Hugging Face wrote bert_tiny.safetensors; check a few invariants that a
  # wrong offset or dtype would break.
  arrays = files.read(os.path.join(DATA, 'bert_tiny.safetensors'))
  word = arrays['bert.embeddings.word_embeddings.weight']
  assert word.shape == (100, 32) and word.dtype == np.float32
  ln = arrays['bert.embeddings.LayerNorm.weight']
  # make_fixtures draws LayerNorm weights as 1 + 0.1 N(0, 1).
  assert 0.5 < ln.mean() < 1.5 and ln.std() > 0.01


def test_npz_is_read_without_pickle(tmp_path):
  path = tmp_path / 'w.npz'
  np.savez(path, a=np.arange(3), b=np.array([object()], dtype=object))
  with pytest.raises(ValueError, match='allow_pickle'):
    files.read(str(path))


def test_msgpack_is_read_as_flat_slash_joined_arrays(tmp_path):
  from flax import serialization
  tree = {'embedding': {'kernel': np.arange(6, dtype=np.float32).reshape(
      2, 3)}, 'cls': np.ones((1, 1, 3), np.float32)}
  path = tmp_path / 'w.msgpack'
  path.write_bytes(serialization.msgpack_serialize(tree))
  got = files.read(str(path))
  assert sorted(got) == ['cls', 'embedding/kernel']
  np.testing.assert_array_equal(got['embedding/kernel'],
                                tree['embedding']['kernel'])
