"""Tiny hand-made data sets in each annotation format, for the tests.

Images made with PIL and annotation files in the published layouts, with
the hand-worked normalised boxes of the COCO set, and ``run_format`` (the
finalised records and problems of a format's reader over them). Read by
tests/prepare/test_formats.py, tests/tools/test_prepare.py and
tests/data/test_prepared_source.py.
"""

import base64
import io
import json

import numpy as np
from PIL import Image

from vlg import prepare as formats
from vlg.prepare import base
from vlg.prepare import finalise


# Image a.png is 20 wide, 10 high; b.jpg 16 x 16; c.png is corrupt.
A_SIZE, B_SIZE = (20, 10), (16, 16)


def write_image(path, size, value, fmt=None):
  """A flat-colour RGB image of ``size`` (width, height)."""
  w, h = size
  Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path, format=fmt)


def write_images(folder):
  """a.png (20x10, value 100), b.jpg (16x16, 50), c.png corrupt."""
  folder.mkdir(parents=True, exist_ok=True)
  write_image(folder / 'a.png', A_SIZE, 100)
  write_image(folder / 'b.jpg', B_SIZE, 50)
  (folder / 'c.png').write_bytes(b'\x89PNG broken')
  return folder


def write_coco_captions(tmp_path):
  """Images 1 (a, 2 captions), 2 (b, 1 caption + 1 malformed), 3 (c,
  corrupt), 4 (no annotation); one annotation of an unknown image."""
  images = write_images(tmp_path / 'images')
  path = tmp_path / 'captions_train.json'
  path.write_text(json.dumps({
      'images': [
          {'id': 1, 'file_name': 'a.png', 'width': 20, 'height': 10},
          {'id': 2, 'file_name': 'b.jpg', 'width': 16, 'height': 16},
          {'id': 3, 'file_name': 'c.png', 'width': 5, 'height': 5},
          {'id': 4, 'file_name': 'a.png', 'width': 20, 'height': 10}],
      'annotations': [
          {'id': 10, 'image_id': 1, 'caption': 'A dog runs.'},
          {'id': 11, 'image_id': 1, 'caption': ' a cat sits '},
          {'id': 12, 'image_id': 2, 'caption': 'two birds'},
          {'id': 13, 'image_id': 2, 'caption': 7},
          {'id': 14, 'image_id': 3, 'caption': 'broken'},
          {'id': 15, 'image_id': 99, 'caption': 'orphan'}]}))
  return str(path), str(images)


def write_coco_instances(tmp_path):
  """Image 1 (a, 20x10): an inside box, a box partly outside, a box
  entirely outside; image 2 (b): one box; image 3 (c): corrupt."""
  images = write_images(tmp_path / 'images')
  path = tmp_path / 'instances_train.json'
  path.write_text(json.dumps({
      'images': [
          {'id': 1, 'file_name': 'a.png', 'width': 20, 'height': 10},
          {'id': 2, 'file_name': 'b.jpg', 'width': 16, 'height': 16},
          {'id': 3, 'file_name': 'c.png', 'width': 5, 'height': 5}],
      'categories': [{'id': 1, 'name': 'dog'}, {'id': 2, 'name': 'cat'}],
      'annotations': [
          {'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [2, 1, 10, 4],
           'iscrowd': 0},
          {'id': 2, 'image_id': 1, 'category_id': 2,
           'bbox': [15, 5, 10, 10], 'iscrowd': 1},
          {'id': 3, 'image_id': 1, 'category_id': 2, 'bbox': [25, 0, 5, 5]},
          {'id': 4, 'image_id': 2, 'category_id': 2, 'bbox': [0, 0, 8, 16]},
          {'id': 5, 'image_id': 3, 'category_id': 1, 'bbox': [0, 0, 1, 1]}]}))
  return str(path), str(images)


# Hand-worked normalised (cx, cy, w, h) of the boxes above.
DOG_A = [7 / 20, 3 / 10, 10 / 20, 4 / 10]      # [2, 1, 10, 4] in 20x10


CAT_A_CLIPPED = [0.875, 0.75, 0.25, 0.5]        # [15, 5, 10, 10] → clipped


CAT_B = [0.25, 0.5, 0.5, 1.0]                   # [0, 0, 8, 16] in 16x16


def write_vg_relationships(tmp_path, with_image_data=True):
  """VG relationships of images 1 (20x10) and 2 (16x16), named 1.jpg and
  2.jpg; one relation's object box lies outside image 1."""
  folder = tmp_path / 'vg_images'
  folder.mkdir(parents=True, exist_ok=True)
  write_image(folder / '1.jpg', A_SIZE, 100, 'JPEG')
  write_image(folder / '2.jpg', B_SIZE, 50, 'JPEG')
  man = {'object_id': 5, 'x': 0, 'y': 0, 'w': 10, 'h': 10, 'names': ['man']}
  horse = {'object_id': 6, 'x': 10, 'y': 5, 'w': 10, 'h': 5, 'name': 'horse'}
  ghost = {'object_id': 7, 'x': 30, 'y': 0, 'w': 4, 'h': 4, 'names': ['sky']}
  path = tmp_path / 'relationships.json'
  path.write_text(json.dumps([
      {'image_id': 1, 'relationships': [
          {'relationship_id': 1, 'predicate': ' Riding  ON ',
           'subject': man, 'object': horse},
          {'relationship_id': 2, 'predicate': 'next to', 'subject': horse,
           'object': man},
          {'relationship_id': 3, 'predicate': 'under', 'subject': man,
           'object': ghost}]},
      {'image_id': 2, 'relationships': [
          {'relationship_id': 4, 'predicate': 'riding on',
           'subject': {'object_id': 8, 'x': 0, 'y': 0, 'w': 16, 'h': 8,
                       'names': ['girl']},
           'object': {'object_id': 9, 'x': 0, 'y': 8, 'w': 16, 'h': 8,
                      'names': ['bike']}}]}]))
  srcs = [str(path)]
  if with_image_data:
    meta = tmp_path / 'image_data.json'
    meta.write_text(json.dumps([
        {'image_id': 1, 'width': 20, 'height': 10, 'url': ''},
        {'image_id': 2, 'width': 16, 'height': 16, 'url': ''}]))
    srcs.append(str(meta))
  return srcs, str(folder)


def run_format(name, srcs, image_dirs, **options):
  """Records (finalised) and problems of a format over tiny files."""
  opts = finalise.Options(image_dirs=tuple(image_dirs), **options)
  records, problems = [], []
  for item in formats.reader(name, srcs).items():
    if isinstance(item, base.Problem):
      problems.append(item)
      continue
    done = finalise.finalise(item, opts)
    problems += done.problems
    if done.record is not None:
      records.append(done.record)
  return records, problems


def reasons(problems, benign=None):
  return sorted(p.reason for p in problems
                if benign is None or p.benign == benign)


def write_gqa(tmp_path):
  """One GQA image (20x10) with 3 objects, 3 relations (one to a missing
  object), one image without objects."""
  folder = tmp_path / 'gqa_images'
  folder.mkdir(parents=True, exist_ok=True)
  write_image(folder / '2354786.jpg', A_SIZE, 80, 'JPEG')
  path = tmp_path / 'train_sceneGraphs.json'
  path.write_text(json.dumps({
      '2354786': {'width': 20, 'height': 10, 'objects': {
          '100': {'name': 'cup', 'x': 0, 'y': 0, 'w': 5, 'h': 5,
                  'attributes': ['blue'],
                  'relations': [{'name': 'to the left of', 'object': '101'},
                                {'name': 'on', 'object': '102'}]},
          '101': {'name': 'plate', 'x': 10, 'y': 0, 'w': 10, 'h': 10,
                  'attributes': [],
                  'relations': [{'name': 'to the right of', 'object': '100'},
                                {'name': 'near', 'object': '999'}]},
          '102': {'name': 'table', 'x': -5, 'y': 5, 'w': 30, 'h': 10,
                  'attributes': [], 'relations': []}}},
      '2354787': {'width': 5, 'height': 5, 'objects': {}}}))
  return str(path), str(folder)


def write_xvlm(tmp_path):
  """Three X-VLM lines (a path, base64 bytes, a bad box) and a broken one."""
  images = write_images(tmp_path / 'images')
  buf = io.BytesIO()
  Image.fromarray(np.full((8, 4, 3), 200, np.uint8)).save(buf, format='PNG')
  lines = [
      json.dumps({'image_rpath': 'a.png', 'caption': 'a scene',
                  'elems': [{'caption': ['red box', 'a box'],
                             'bb': [0, 0, 10, 10], 'attributes': 'red'}]}),
      json.dumps({'binary': base64.b64encode(buf.getvalue()).decode(),
                  'image_id': 'x1',
                  'elems': [{'caption': 'tall thing', 'bb': [1, 2, 2, 4]}]}),
      '{"image": "a.png", "elems": [',
      json.dumps({'image': 'b.jpg', 'elems': [
          {'caption': 'nowhere', 'bb': [40, 40, 5, 5]},
          {'caption': 'left half', 'bb': [0, 0, 8, 16]}]}),
  ]
  path = tmp_path / 'regions.jsonl'
  path.write_text('\n'.join(lines) + '\n')
  return str(path), str(images)


def write_openimages(tmp_path, rows=None):
  """Open Images box CSV (image 0a (20x10): 2 boxes, 0b (16x16): 1 box,
  0c: an unknown label) and the class descriptions."""
  folder = tmp_path / 'oi_images'
  folder.mkdir(parents=True, exist_ok=True)
  write_image(folder / '000a.jpg', A_SIZE, 30, 'JPEG')
  write_image(folder / '000b.jpg', B_SIZE, 30, 'JPEG')
  header = ('ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,'
            'IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside')
  rows = rows or [
      '000a,xclick,/m/01,1,0.1,0.5,0.2,0.6,0,1,0,0,0',
      '000a,xclick,/m/02,1,0.5,1.2,0.0,1.0,1,0,1,-1,0',
      '000b,xclick,/m/02,1,0,0.5,0,1,0,0,0,0,0',
      '000c,xclick,/m/zz,1,0,0.5,0,1,0,0,0,0,0']
  boxes = tmp_path / 'train-annotations-bbox.csv'
  boxes.write_text('\n'.join([header] + rows) + '\n')
  names = tmp_path / 'class-descriptions-boxable.csv'
  names.write_text('/m/01,Dog\n/m/02,Cat\n')
  return [str(boxes), str(names)], str(folder)
