"""Annotation-format readers and finalise: records against hand-worked values.

Also holds the writers of tiny hand-made data sets (images made with PIL,
annotation files in each format) that test_prepare.py and
test_prepared_source.py import.
"""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from vlg.data import formats
from vlg.data.formats import base
from vlg.data.formats import finalise

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


def test_normalise_box_matches_float64_reference():
  rng = np.random.default_rng(0)
  w, h = 640, 480
  xywh = np.stack([rng.uniform(-100, 700, 200), rng.uniform(-100, 500, 200),
                   rng.uniform(1, 300, 200), rng.uniform(1, 300, 200)], 1)
  x1 = np.clip(xywh[:, 0] / w, 0, 1)
  y1 = np.clip(xywh[:, 1] / h, 0, 1)
  x2 = np.clip((xywh[:, 0] + xywh[:, 2]) / w, 0, 1)
  y2 = np.clip((xywh[:, 1] + xywh[:, 3]) / h, 0, 1)
  inside = (x2 > x1) & (y2 > y1)
  ref = np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], 1)
  assert 0 < inside.sum() < len(inside)
  for i, (x, y, bw, bh) in enumerate(xywh):
    box, _, reason = finalise.normalise_box((x, y, x + bw, y + bh),
                                            base.PIXELS, (w, h))
    if inside[i]:
      np.testing.assert_allclose(box, ref[i], rtol=0, atol=1e-12)
    else:
      assert box is None and reason == 'box_outside_image'
  assert finalise.normalise_box((5, 5, 5, 9), base.PIXELS, (w, h))[2] == (
      'degenerate_box')
  box, clipped, _ = finalise.normalise_box((0.1, 0.2, 0.5, 0.6),
                                           base.NORMALISED, (w, h))
  np.testing.assert_allclose(box, [0.3, 0.4, 0.4, 0.4], atol=1e-12)
  assert not clipped


def test_coco_captions_groups_by_image(tmp_path):
  path, images = write_coco_captions(tmp_path)
  records, problems = run_format('coco_captions', [path], [images])
  assert [(r['image_id'], r['captions']) for r in records] == [
      (1, ['A dog runs.', 'a cat sits']), (2, ['two birds'])]
  assert records[0]['image_bytes'] == (tmp_path / 'images' /
                                       'a.png').read_bytes()
  assert records[0]['image_size'] == [20, 10]
  assert not records[0]['has_boxes'] and not records[0]['has_graph']
  assert reasons(problems, benign=False) == [
      'corrupt_image', 'malformed_annotation', 'unknown_image']
  assert reasons(problems, benign=True) == ['no_annotations']
  where = {p.reason: p.where for p in problems}
  assert where['malformed_annotation'].endswith('annotation 3')
  assert 'image id=3' in where['corrupt_image']


@pytest.mark.parametrize('name', ['coco_instances', 'objects365'])
def test_coco_instances_boxes(tmp_path, name):
  path, images = write_coco_instances(tmp_path)
  records, problems = run_format(name, [path], [images])
  assert [r['image_id'] for r in records] == [1, 2]
  a, b = records
  assert [o['label'] for o in a['objects']] == ['dog', 'cat']
  assert [o['iscrowd'] for o in a['objects']] == [False, True]
  np.testing.assert_allclose(a['objects'][0]['box'], DOG_A, atol=1e-12)
  np.testing.assert_allclose(a['objects'][1]['box'], CAT_A_CLIPPED,
                             atol=1e-12)
  np.testing.assert_allclose(b['objects'][0]['box'], CAT_B, atol=1e-12)
  assert a['has_boxes'] and a['captions'] == []
  assert reasons(problems) == ['box_outside_image', 'corrupt_image']
  outside = next(p for p in problems if p.reason == 'box_outside_image')
  assert outside.where.endswith('annotation 2')


def test_vg_relationships_objects_relations_and_dropped_box(tmp_path):
  srcs, images = write_vg_relationships(tmp_path)
  records, problems = run_format('vg_relationships', srcs, [images])
  one, two = records
  assert [o['label'] for o in one['objects']] == ['man', 'horse']
  np.testing.assert_allclose(one['objects'][0]['box'], [0.25, 0.5, 0.5, 1.0])
  np.testing.assert_allclose(one['objects'][1]['box'], [0.75, 0.75, 0.5, 0.5])
  rels = [(r['subject_label'], r['predicate'], r['object_label'])
          for r in one['relations']]
  assert rels == [('man', 'riding on', 'horse'), ('horse', 'next to', 'man')]
  np.testing.assert_allclose(one['relations'][1]['subject_box'],
                             [0.75, 0.75, 0.5, 0.5])
  assert one['relations'][0]['subject'] == 0 and one['has_graph']
  assert two['relations'][0]['predicate'] == 'riding on'
  np.testing.assert_allclose(two['relations'][0]['object_box'],
                             [0.5, 0.75, 1.0, 0.5])
  assert reasons(problems, benign=False) == ['box_outside_image']
  assert reasons(problems, benign=True) == ['relation_box_dropped']
  vocab = {'riding on'}
  records, problems = run_format('vg_relationships', srcs, [images],
                                 relation_vocab=frozenset(vocab))
  assert [len(r['relations']) for r in records] == [1, 1]
  assert reasons(problems, benign=True) == ['rare_relation',
                                            'relation_box_dropped']
  assert sorted(formats.reader('vg_relationships', srcs).predicates()) == [
      ' Riding  ON ', 'next to', 'riding on', 'under']


def test_vg_sizes_from_image_when_no_image_data(tmp_path):
  srcs, images = write_vg_relationships(tmp_path, with_image_data=False)
  records, _ = run_format('vg_relationships', srcs, [images])
  np.testing.assert_allclose(records[0]['objects'][1]['box'],
                             [0.75, 0.75, 0.5, 0.5])


def test_vg_regions_and_objects(tmp_path):
  folder = tmp_path / 'VG_100K_2'
  folder.mkdir()
  write_image(folder / '3.jpg', (40, 20), 10, 'JPEG')
  regions = tmp_path / 'region_descriptions.json'
  regions.write_text(json.dumps([
      {'id': 3, 'regions': [
          {'region_id': 1, 'image_id': 3, 'phrase': 'a red ball', 'x': 10,
           'y': 5, 'width': 20, 'height': 10},
          {'region_id': 2, 'image_id': 3, 'phrase': '  ', 'x': 0, 'y': 0,
           'width': 4, 'height': 4}]},
      {'id': 4, 'regions': []}]))
  records, problems = run_format('vg_regions', [str(regions)],
                                 [str(tmp_path / 'VG_100K'), str(folder)])
  assert [(r['image_id'], r['regions'][0]['text']) for r in records] == [
      (3, 'a red ball')]
  np.testing.assert_allclose(records[0]['regions'][0]['box'],
                             [0.5, 0.5, 0.5, 0.5])
  assert reasons(problems) == ['empty_text', 'no_annotations']
  objects = tmp_path / 'attributes.json'
  objects.write_text(json.dumps([{'image_id': 3, 'objects': [
      {'object_id': 1, 'x': 0, 'y': 0, 'w': 40, 'h': 20, 'names': ['wall'],
       'attributes': ['white ', 'tall']},
      {'object_id': 2, 'x': 'a', 'y': 0, 'w': 4, 'h': 4, 'names': ['x']}]}]))
  records, problems = run_format('vg_objects', [str(objects)], [str(folder)])
  (obj,) = records[0]['objects']
  assert obj['label'] == 'wall' and obj['attributes'] == ['white', 'tall']
  np.testing.assert_allclose(obj['box'], [0.5, 0.5, 1.0, 1.0])
  assert reasons(problems) == ['malformed_annotation']


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


def test_gqa_scene_graphs(tmp_path):
  path, images = write_gqa(tmp_path)
  records, problems = run_format('gqa_scene_graphs', [path], [images])
  (rec,) = records
  assert rec['image_id'] == 2354786 and rec['has_graph']
  assert [o['label'] for o in rec['objects']] == ['cup', 'plate', 'table']
  assert rec['objects'][0]['attributes'] == ['blue']
  np.testing.assert_allclose(rec['objects'][0]['box'],
                             [0.125, 0.25, 0.25, 0.5])
  np.testing.assert_allclose(rec['objects'][2]['box'],  # clipped
                             [0.5, 0.75, 1.0, 0.5])
  assert [(r['subject'], r['predicate'], r['object'])
          for r in rec['relations']] == [
              (0, 'to the left of', 1), (0, 'on', 2), (1, 'to the right of',
                                                       0)]
  assert reasons(problems) == ['malformed_annotation', 'no_annotations']
  records, problems = run_format(
      'gqa_scene_graphs', [path], [images],
      relation_vocab=frozenset({'to the left of', 'on'}))
  assert [r['predicate'] for r in records[0]['relations']] == ['on']
  assert reasons(problems, benign=True) == [
      'mirror_relation_missing', 'no_annotations', 'rare_relation']
  assert sorted(formats.reader('gqa_scene_graphs', [path]).predicates()) == [
      'near', 'on', 'to the left of', 'to the right of']


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


def test_xvlm_regions(tmp_path):
  path, images = write_xvlm(tmp_path)
  records, problems = run_format('xvlm_regions', [path], [images])
  first, second, third = records
  assert first['captions'] == ['a scene']
  (region,) = first['regions']
  assert region['text'] == 'red box' and region['texts'] == ['red box',
                                                             'a box']
  assert region['attributes'] == ['red']
  np.testing.assert_allclose(region['box'], [0.25, 0.5, 0.5, 1.0])
  assert first['image_id'] == base.stable_id('a.png')
  assert second['image_size'] == [4, 8]
  np.testing.assert_allclose(second['regions'][0]['box'],
                             [0.5, 0.5, 0.5, 0.5])
  assert second['image_id'] == base.stable_id('x1')
  assert [r['text'] for r in third['regions']] == ['left half']
  assert reasons(problems) == ['box_outside_image', 'malformed_json']
  bad = next(p for p in problems if p.reason == 'malformed_json')
  assert bad.where == f'{path} line 3'


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


def test_openimages(tmp_path):
  srcs, images = write_openimages(tmp_path)
  records, problems = run_format('openimages', srcs[::-1], [images])
  a, b = records
  assert a['image_id'] == 0xa and b['image_id'] == 0xb
  assert [o['label'] for o in a['objects']] == ['Dog', 'Cat']
  np.testing.assert_allclose(a['objects'][0]['box'], [0.3, 0.4, 0.4, 0.4],
                             atol=1e-12)
  np.testing.assert_allclose(a['objects'][1]['box'], [0.75, 0.5, 0.5, 1.0],
                             atol=1e-12)
  assert a['objects'][1]['is_group_of'] is True
  assert a['objects'][1]['is_depiction'] is None
  assert a['objects'][0]['label_id'] == '/m/01'
  # 000c: its only row has an unknown label, and it has no image.
  assert reasons(problems) == ['malformed_annotation', 'missing_image']
  unsorted = tmp_path / 'unsorted'
  unsorted.mkdir()
  srcs, _ = write_openimages(unsorted, rows=[
      '000a,x,/m/01,1,0,1,0,1,0,0,0,0,0', '000b,x,/m/01,1,0,1,0,1,0,0,0,0,0',
      '000a,x,/m/01,1,0,1,0,1,0,0,0,0,0'])
  with pytest.raises(base.AnnotationError, match='line 4.*not contiguous'):
    list(formats.reader('openimages', srcs).items())


def test_albef_json(tmp_path):
  images = write_images(tmp_path / 'images')
  path = tmp_path / 'coco.json'
  path.write_text(json.dumps([
      {'image': 'a.png', 'caption': 'one'},
      {'image': 'a.png', 'caption': ['two', 'three']},
      {'image': 'b.jpg'},
      {'image': 'b.jpg', 'caption': ''}]))
  records, problems = run_format('albef_json', [str(path)], [str(images)])
  assert [r['captions'] for r in records] == [['one'], ['two', 'three']]
  assert records[0]['image_id'] == records[1]['image_id'] == base.stable_id(
      'a.png')
  assert reasons(problems) == ['empty_text', 'malformed_entry']


def test_unreadable_annotation_files_name_the_file(tmp_path):
  broken = tmp_path / 'captions.json'
  broken.write_text('{"images": [')
  with pytest.raises(base.AnnotationError, match='captions.json: not valid'):
    list(formats.reader('coco_captions', [str(broken)]).items())
  wrong = tmp_path / 'instances.json'
  wrong.write_text('{"images": [], "annotations": []}')
  with pytest.raises(base.AnnotationError,
                     match='instances.json: missing top-level key '
                     '"categories"'):
    list(formats.reader('coco_instances', [str(wrong)]).items())
  with pytest.raises(ValueError, match="unknown format 'coco'.*valid"):
    formats.reader('coco', [str(wrong)])


def test_texts_empty_after_normalisation_are_empty_text(tmp_path):
  """Texts training's normalisation (ops.pre_caption) empties are bad input
  here already, so what prepare accepts, training accepts."""
  images = write_images(tmp_path / 'images')
  path = tmp_path / 'coco.json'
  path.write_text(json.dumps([
      {'image': 'a.png', 'caption': ['?!...', 'one']},
      {'image': 'b.jpg', 'caption': '?!...'}]))
  records, problems = run_format('albef_json', [str(path)], [str(images)])
  assert [r['captions'] for r in records] == [['one']]
  assert [(p.where, p.reason) for p in problems] == [
      (f'{path} entry 0', 'empty_text'), (f'{path} entry 1', 'empty_text')]
  assert "'?!...' is empty after normalisation" in problems[0].detail
  folder = tmp_path / 'VG_100K'
  folder.mkdir()
  write_image(folder / '3.jpg', (40, 20), 10, 'JPEG')
  regions = tmp_path / 'region_descriptions.json'
  regions.write_text(json.dumps([{'id': 3, 'regions': [
      {'region_id': 1, 'image_id': 3, 'phrase': 'a red ball', 'x': 10,
       'y': 5, 'width': 20, 'height': 10},
      {'region_id': 2, 'image_id': 3, 'phrase': '...', 'x': 0, 'y': 0,
       'width': 4, 'height': 4}]}]))
  records, problems = run_format('vg_regions', [str(regions)], [str(folder)])
  assert [r['text'] for r in records[0]['regions']] == ['a red ball']
  assert [(p.where, p.reason) for p in problems] == [
      (f'{regions} image_id=3 regions[1]', 'empty_text')]
