"""Annotation-format readers and finalise: records against hand-worked values.

The tiny data sets they read are written by tests/annotation_files.py.
"""

import json

import numpy as np
import pytest

from vlg import prepare as formats
from vlg.prepare import base
from vlg.prepare import finalise

from annotation_files import CAT_A_CLIPPED
from annotation_files import CAT_B
from annotation_files import DOG_A
from annotation_files import reasons
from annotation_files import run_format
from annotation_files import write_coco_captions
from annotation_files import write_coco_instances
from annotation_files import write_gqa
from annotation_files import write_image
from annotation_files import write_images
from annotation_files import write_openimages
from annotation_files import write_vg_relationships
from annotation_files import write_xvlm


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
