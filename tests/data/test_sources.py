"""File-backed sources and the bad-input policy."""

import json

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vlg.data import ops
from vlg.data import sources


def _write_dataset(tmp_path, n=6, corrupt=(2,), missing=(4,)):
  entries = []
  for i in range(n):
    name = f'img{i}.png'
    if i in corrupt:
      (tmp_path / name).write_bytes(b'\x89PNG broken')
    elif i not in missing:
      Image.fromarray(np.full((8, 12, 3), i * 10, np.uint8)).save(
          tmp_path / name)
    entries.append({'image': name, 'caption': [f'caption {i}', 'other']})
  path = tmp_path / 'train.json'
  path.write_text(json.dumps(entries))
  return str(path)


def _input_cfg(skip):
  return ml_collections.ConfigDict(dict(skip_bad_examples=skip))


def test_albef_json_reads_images_and_captions(tmp_path):
  path = _write_dataset(tmp_path, corrupt=(), missing=())
  src = sources.AlbefJsonSource(path, str(tmp_path))
  rec = src[3]
  assert rec['image'].shape == (8, 12, 3) and rec['image'][0, 0, 0] == 30
  assert rec['captions'] == ['caption 3', 'other'] and rec['image_id'] == 3


def test_bad_images_raise_naming_the_file(tmp_path):
  path = _write_dataset(tmp_path)
  cfg = ml_collections.ConfigDict(dict(source='albef_json', path=path,
                                       image_root=str(tmp_path)))
  src = sources.build_source('coco', cfg, _input_cfg(False))
  with pytest.raises(ops.BadExampleError, match='img2.png'):
    src[2]
  with pytest.raises(ops.BadExampleError, match='img4.png'):
    src[4]


def test_skip_bad_counts_and_never_returns_a_wrong_example(tmp_path):
  path = _write_dataset(tmp_path, corrupt=(2,), missing=(3,))
  cfg = ml_collections.ConfigDict(dict(source='albef_json', path=path,
                                       image_root=str(tmp_path)))
  src = sources.build_source('coco', cfg, _input_cfg(True))
  rec = src[2]  # 2 corrupt, 3 missing -> 4 is read instead, 2 counted.
  assert rec['_num_bad'] == 2 and rec['captions'][0] == 'caption 4'
  assert src[0]['_num_bad'] == 0


def test_malformed_entry_and_json(tmp_path):
  bad = tmp_path / 'bad.json'
  bad.write_text('[{"image": "a.png"}]')
  src = sources.AlbefJsonSource(str(bad), str(tmp_path))
  with pytest.raises(ops.BadExampleError, match=r'bad.json entry 0'):
    src[0]
  broken = tmp_path / 'broken.json'
  broken.write_text('[{"image": ')
  with pytest.raises(ValueError, match='broken.json'):
    sources.AlbefJsonSource(str(broken))


def test_unknown_source_lists_valid_names():
  cfg = ml_collections.ConfigDict(dict(source='cocoo'))
  with pytest.raises(ValueError, match=r"valid: \['albef_json', 'prepared', 'synthetic'"):
    sources.build_source('x', cfg, _input_cfg(False))
