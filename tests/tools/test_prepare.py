"""python -m vlg.tools.prepare: shards, bad input, resuming, vocabulary."""

import io
import json
import os
import subprocess
import sys

import grain
import numpy as np
import pytest
from PIL import Image

from vlg.data import prepared_source
from vlg.data import records
from vlg.data import relations
from vlg.tools import prepare as prepare_tool

import annotation_files as data  # tests/annotation_files.py: tiny data sets

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _prepare(fmt, srcs, images, out, **kw):
  kw.setdefault('log', lambda _: None)
  if kw.get('skip_bad'):  # The tiny data sets are bad on purpose.
    kw.setdefault('max_bad_fraction', 1.0)
  return prepare_tool.prepare(fmt, srcs, [images] if isinstance(
      images, str) else images, str(out), **kw)


def _read_all(out):
  src = prepared_source.PreparedSource(str(out))
  return [src[i] for i in range(len(src))]


def _same_record(got, want):
  """A read-back record equals a finalised one (boxes float32, image
  decoded from the original file)."""
  for key in ('image_id', 'captions', 'paragraph', 'has_graph', 'has_boxes',
              'image_size', 'origin'):
    assert got[key] == want[key], key
  for kind in ('objects', 'regions'):
    assert len(got[kind]) == len(want[kind])
    for g, w in zip(got[kind], want[kind]):
      assert g['box'].dtype == np.float32
      np.testing.assert_array_equal(g['box'], np.float32(w['box']))
      assert {k: v for k, v in g.items() if k != 'box'} == {
          k: v for k, v in w.items() if k != 'box'}
  assert len(got['relations']) == len(want['relations'])
  for g, w in zip(got['relations'], want['relations']):
    for k in ('subject_box', 'object_box'):
      np.testing.assert_array_equal(g[k], np.float32(w[k]))
    for k in ('subject', 'object', 'predicate', 'subject_label',
              'object_label'):
      assert g[k] == w[k]
  assert got['image'].dtype == np.uint8
  with Image.open(io.BytesIO(want['image_bytes'])) as image:
    np.testing.assert_array_equal(got['image'],
                                  np.asarray(image.convert('RGB')))


def _all_formats(tmp_path):
  """(format, srcs, image folders) of every format's tiny data set."""
  coco_caps, images = data.write_coco_captions(tmp_path / 'caps')
  coco_inst, _ = data.write_coco_instances(tmp_path / 'inst')
  vg_srcs, vg_images = data.write_vg_relationships(tmp_path / 'vg')
  gqa, gqa_images = data.write_gqa(tmp_path / 'gqa')
  xvlm, _ = data.write_xvlm(tmp_path / 'xvlm')
  oi_srcs, oi_images = data.write_openimages(tmp_path / 'oi')
  albef = tmp_path / 'albef.json'
  albef.write_text(json.dumps([{'image': 'a.png', 'caption': 'x'},
                               {'image': 'c.png', 'caption': 'y'}]))
  regions = tmp_path / 'region_descriptions.json'
  regions.write_text(json.dumps([{'id': 1, 'regions': [
      {'phrase': 'left', 'x': 0, 'y': 0, 'width': 10, 'height': 10}]}]))
  objects = tmp_path / 'objects.json'
  objects.write_text(json.dumps([{'image_id': 2, 'objects': [
      {'x': 0, 'y': 0, 'w': 8, 'h': 8, 'names': ['cat']}]}]))
  inst_images = str(tmp_path / 'inst' / 'images')
  return {
      'albef_json': ([str(albef)], [images]),
      'coco_captions': ([coco_caps], [images]),
      'coco_instances': ([coco_inst], [inst_images]),
      'objects365': ([coco_inst], [inst_images]),
      'vg_regions': ([str(regions), vg_srcs[1]], [vg_images]),
      'vg_objects': ([str(objects)], [vg_images]),
      'vg_relationships': (vg_srcs, [vg_images]),
      'gqa_scene_graphs': ([gqa], [gqa_images]),
      'xvlm_regions': ([xvlm], [str(tmp_path / 'xvlm' / 'images')]),
      'openimages': (oi_srcs, [oi_images]),
  }


@pytest.mark.parametrize('fmt', sorted(prepare_tool.formats.FORMATS))
def test_every_format_round_trips_through_shards(tmp_path, fmt):
  srcs, folders = _all_formats(tmp_path)[fmt]
  want, _ = data.run_format(fmt, srcs, folders)
  summary = _prepare(fmt, srcs, folders, tmp_path / 'out', skip_bad=True,
                     shard_size=2)
  got = _read_all(tmp_path / 'out')
  assert len(got) == len(want) == summary['records'] > 0
  for g, w in zip(got, want):
    _same_record(g, w)
  manifest = records.Manifest.load(str(tmp_path / 'out'))
  assert manifest.payload['num_records'] == len(want)


def test_coco_instances_summary_counts_and_boxes(tmp_path):
  path, images = data.write_coco_instances(tmp_path)
  lines = []
  summary = _prepare('coco_instances', [path], images, tmp_path / 'out',
                     skip_bad=True, shard_size=2, log=lines.append)
  assert summary['records'] == 2 and summary['items'] == 3
  assert summary['shards'] == 2 and summary['shards_written'] == 2
  assert summary['bad'] == {'box_outside_image': 1, 'corrupt_image': 1}
  assert summary['boxes_clipped'] == 1
  assert 'bad (dropped): box_outside_image 1, corrupt_image 1' in lines[0]
  a, b = _read_all(tmp_path / 'out')
  np.testing.assert_allclose(a['objects'][0]['box'], data.DOG_A, atol=1e-7)
  np.testing.assert_allclose(a['objects'][1]['box'], data.CAT_A_CLIPPED,
                             atol=1e-7)
  np.testing.assert_allclose(b['objects'][0]['box'], data.CAT_B, atol=1e-7)
  assert a['image'].shape == (10, 20, 3) and np.all(a['image'] == 100)


def test_bad_input_stops_naming_file_and_entry(tmp_path):
  path, images = data.write_coco_instances(tmp_path)
  out = tmp_path / 'out'
  with pytest.raises(prepare_tool.BadInputError,
                     match=r'(?s)instances_train.json annotation 2: .*no area '
                     r'inside it \[box_outside_image\].*--skip_bad'):
    _prepare('coco_instances', [path], images, out, shard_size=1)
  assert not [f for f in os.listdir(out) if f.endswith('.tmp')]
  # Fix the box: the re-run resumes and then stops at the corrupt image.
  fixed = json.loads(open(path).read())
  fixed['annotations'][2]['bbox'] = [0, 0, 5, 5]
  with open(path, 'w') as f:
    json.dump(fixed, f)
  with pytest.raises(ValueError, match='other inputs'):
    _prepare('coco_instances', [path], images, out, shard_size=1)
  with pytest.raises(prepare_tool.BadInputError,
                     match=r'image id=3: cannot decode image .*c.png'):
    _prepare('coco_instances', [path], images, tmp_path / 'out2',
             shard_size=1)
  assert records.Manifest.load(str(tmp_path / 'out2'),
                               require_complete=False).finished(1)
  summary = _prepare('coco_instances', [path], images, tmp_path / 'out2',
                     shard_size=1, skip_bad=True)
  assert summary['shards_written'] == 1 and summary['records'] == 2


def test_resume_rewrites_only_missing_or_unfinished_shards(tmp_path):
  path, images = data.write_coco_captions(tmp_path)
  out = tmp_path / 'out'
  _prepare('coco_captions', [path], images, out, shard_size=1, skip_bad=True)
  before = _read_all(out)
  manifest = records.Manifest.load(str(out))
  shards = [manifest.shard_path(i) for i in range(5)]
  for p in shards:
    os.utime(p, (1e9, 1e9))
  os.remove(shards[1])  # A deleted shard.
  # A crash while writing shard 3: no entry, its file only under .tmp.
  del manifest.payload['shards']['00003']
  manifest.save()
  os.replace(shards[3], shards[3] + '.tmp')
  with open(shards[4], 'ab') as f:  # A shard cut short.
    f.write(b'x')
  lines = []
  summary = _prepare('coco_captions', [path], images, out, shard_size=1,
                     skip_bad=True, log=lines.append)
  assert summary['shards_written'] == 3 and summary['shards'] == 5
  assert [os.path.getmtime(p) == 1e9 for p in shards] == [
      True, False, True, False, False]
  assert not os.path.exists(shards[3] + '.tmp')
  assert any('removing unfinished shard shard-00003' in x for x in lines)
  after = _read_all(out)
  assert [r['image_id'] for r in after] == [r['image_id'] for r in before]
  for a, b in zip(after, before):
    np.testing.assert_array_equal(a['image'], b['image'])
  assert summary['bad'] == {'corrupt_image': 1, 'malformed_annotation': 1,
                            'unknown_image': 1}
  again = _prepare('coco_captions', [path], images, out, shard_size=1,
                   skip_bad=True)
  assert again['shards_written'] == 0


def test_rerun_with_other_options_is_an_error(tmp_path):
  path, images = data.write_coco_captions(tmp_path)
  _prepare('coco_captions', [path], images, tmp_path / 'out', skip_bad=True)
  with pytest.raises(ValueError, match=r'other options.*shard_size'):
    _prepare('coco_captions', [path], images, tmp_path / 'out',
             shard_size=7, skip_bad=True)


@pytest.mark.parametrize('fmt', ['vg_relationships', 'gqa_scene_graphs'])
def test_relation_vocabulary_round_trip_and_min_count(tmp_path, fmt):
  if fmt == 'vg_relationships':
    srcs, images = data.write_vg_relationships(tmp_path)
    want = {'riding on': 2, 'next to': 1, 'under': 1}
  else:
    path, images = data.write_gqa(tmp_path)
    srcs = [path]
    want = {'to the left of': 1, 'on': 1, 'to the right of': 1, 'near': 1}
  out = tmp_path / 'all'
  summary = _prepare(fmt, srcs, images, out, skip_bad=True)
  vocab = relations.RelationVocab.load(str(out / 'relations.json'))
  assert vocab.counts == want and summary['relations'] == len(want)
  assert vocab == relations.RelationVocab.build(
      [r for r, n in want.items() for _ in range(n)])
  assert prepared_source.PreparedSource(str(out)).relation_vocab == str(
      out / 'relations.json')
  for rec in _read_all(out):
    for rel in rec['relations']:
      assert vocab.decode(vocab.encode(rel['predicate'])) == rel['predicate']
  if fmt == 'vg_relationships':
    summary = _prepare(fmt, srcs, images, tmp_path / 'min2', skip_bad=True,
                       min_relation_count=2)
    vocab = relations.RelationVocab.load(str(tmp_path / 'min2' /
                                             'relations.json'))
    assert vocab.relations == ('riding on',)
    assert summary['skipped']['rare_relation'] == 1  # 'next to'.
    rels = [r['predicate'] for rec in _read_all(tmp_path / 'min2')
            for r in rec['relations']]
    assert rels == ['riding on', 'riding on']


def test_min_relation_count_rejected_for_other_formats(tmp_path):
  path, images = data.write_coco_captions(tmp_path)
  with pytest.raises(ValueError, match='scene-graph formats'):
    _prepare('coco_captions', [path], images, tmp_path / 'out',
             min_relation_count=3)


def test_reencode_shorter_and_longer_side(tmp_path):
  path, images = data.write_coco_instances(tmp_path)
  _prepare('coco_instances', [path], images, tmp_path / 's', skip_bad=True,
           reencode_size=5)
  a, b = _read_all(tmp_path / 's')
  assert a['image'].shape == (5, 10, 3) and b['image'].shape == (5, 5, 3)
  assert abs(int(a['image'].mean()) - 100) <= 2  # JPEG of a flat image.
  assert a['image_size'] == [20, 10]  # The original size.
  np.testing.assert_allclose(a['objects'][0]['box'], data.DOG_A, atol=1e-7)
  _prepare('coco_instances', [path], images, tmp_path / 'l', skip_bad=True,
           reencode_size=10, reencode_side='longer')
  a, b = _read_all(tmp_path / 'l')
  assert a['image'].shape == (5, 10, 3) and b['image'].shape == (10, 10, 3)


def test_store_path_reads_images_from_the_folders(tmp_path):
  path, images = data.write_coco_captions(tmp_path)
  out = tmp_path / 'out'
  _prepare('coco_captions', [path], images, out, skip_bad=True, store='path')
  size = sum(os.path.getsize(p) for p, _ in records.Manifest.load(
      str(out)).shards())
  got = _read_all(out)
  assert [r['image_path'] for r in got] == ['a.png', 'b.jpg']
  assert np.all(got[0]['image'] == 100) and got[0]['image'].shape == (10, 20,
                                                                       3)
  moved = tmp_path / 'moved'
  os.rename(images, moved)
  src = prepared_source.PreparedSource(str(out), image_dirs=[str(moved)])
  np.testing.assert_array_equal(src[0]['image'], got[0]['image'])
  assert size < 10 * 131072  # No image bytes inside.


def test_workers_write_the_same_records(tmp_path):
  srcs, images = data.write_vg_relationships(tmp_path)
  _prepare('vg_relationships', srcs, images, tmp_path / 'w0', skip_bad=True)
  _prepare('vg_relationships', srcs, images, tmp_path / 'w2', skip_bad=True,
           num_workers=2)

  def raw(out):
    paths = [p for p, _ in records.Manifest.load(str(out)).shards()]
    src = grain.sources.ArrayRecordDataSource(paths)
    return [src[i] for i in range(len(src))]

  assert len(raw(tmp_path / 'w0')) == 2
  assert raw(tmp_path / 'w0') == raw(tmp_path / 'w2')


def test_command_line(tmp_path):
  path, images = data.write_coco_captions(tmp_path)
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  cmd = [sys.executable, '-m', 'vlg.tools.prepare', '--format=coco_captions',
         f'--src={path}', f'--images={images}', f'--out={tmp_path / "out"}',
         '--shard_size=2']
  bad = subprocess.run(cmd, capture_output=True, text=True, env=env,
                       cwd=REPO, check=False)
  assert bad.returncode != 0
  assert 'error: ' in bad.stderr and 'annotation 3' in bad.stderr
  # 3 of the 5 items are bad: over the default --max_bad_fraction=0.01.
  over = subprocess.run(cmd + ['--skip_bad'], capture_output=True, text=True,
                        env=env, cwd=REPO, check=False)
  assert over.returncode != 0
  assert 'items with bad input: 3 (60.00%)' in over.stdout
  assert '3 of 5 input items (60.00%)' in over.stderr
  assert 'annotation 3' in over.stderr  # The first examples are named.
  good = subprocess.run(cmd + ['--skip_bad', '--max_bad_fraction=0.6'],
                        capture_output=True, text=True, env=env, cwd=REPO,
                        check=False)
  assert good.returncode == 0, good.stderr
  assert '2 records from 5 items in 3 shards (0 written now' in good.stdout
  helped = subprocess.run([sys.executable, '-m', 'vlg.tools.prepare',
                           '--help'], capture_output=True, text=True,
                          env=env, cwd=REPO, check=False)
  assert helped.returncode in (0, 1)  # absl's --help exits 1.
  assert '--min_relation_count' in helped.stdout
  assert '--max_bad_fraction' in helped.stdout


def _write_bad_mix(tmp_path):
  """X-VLM lines: 8 good and 8 bad (every kind of bad input once, and four
  missing images to check that only the first 3 examples are named)."""
  images = tmp_path / 'images'
  images.mkdir()
  Image.fromarray(np.full((10, 20, 3), 90, np.uint8)).save(images / 'a.png')
  (images / 'broken.png').write_bytes(b'not an image')

  def line(image, caption='a red cat', bb=(0, 0, 10, 5)):
    return json.dumps({'image': image, 'caption': caption,
                       'elems': [{'caption': 'cat', 'bb': list(bb)}]})

  lines = [line('a.png')] * 8
  lines[1:1] = [line('gone0.png'), line('broken.png'), '{"image": "a.png",',
                line('a.png', caption='   '),
                line('a.png', bb=(100, 100, 5, 5)),
                line('gone1.png'), line('gone2.png'), line('gone3.png')]
  path = tmp_path / 'mixed.jsonl'
  path.write_text('\n'.join(lines) + '\n')
  return str(path), str(images)


def test_bad_input_report_counts_kinds_and_names_first_examples(tmp_path):
  path, images = _write_bad_mix(tmp_path)
  logged = []
  summary = _prepare('xvlm_regions', [path], images, tmp_path / 'out',
                     skip_bad=True, max_bad_fraction=0.5, shard_size=4,
                     log=logged.append)
  assert summary['items'] == 16 and summary['bad_items'] == 8
  assert summary['bad_fraction'] == 0.5
  assert summary['bad'] == {'box_outside_image': 1, 'corrupt_image': 1,
                            'empty_text': 1, 'malformed_json': 1,
                            'missing_image': 4}
  # Lines 2..9 are the bad ones; the examples name them in input order.
  assert summary['bad_examples']['missing_image'] == [
      f"{path} line {n}: image 'gone{k}.png' not found in ['{images}'] "
      '[missing_image]' for k, n in ((0, 2), (1, 7), (2, 8))]
  for reason, n in (('corrupt_image', 3), ('malformed_json', 4),
                    ('empty_text', 5), ('box_outside_image', 6)):
    (example,) = summary['bad_examples'][reason]
    assert example.startswith(f'{path} line {n}') and reason in example
  report = logged[0]
  assert 'items with bad input: 8 (50.00%), limit --max_bad_fraction=0.5' in (
      report)
  assert f'missing_image 4, first:\n      {path} line 2:' in report
  assert f'{path} line 9' not in report  # Only the first 3 per reason.
  # Good lines 1, 10..16 and lines 5, 6 (caption or region left) are kept.
  assert summary['records'] == 10 == len(_read_all(tmp_path / 'out'))


def test_bad_fraction_above_the_limit_fails_and_a_rerun_can_accept_it(
    tmp_path):
  path, images = _write_bad_mix(tmp_path)
  out = tmp_path / 'out'
  with pytest.raises(prepare_tool.BadInputError) as failed:
    _prepare('xvlm_regions', [path], images, out, skip_bad=True,
             max_bad_fraction=0.49, shard_size=4)
  message = str(failed.value)
  assert '8 of 16 input items (50.00%) had bad input, more than ' in message
  assert '--max_bad_fraction=0.49' in message
  assert 'missing_image 4, first:' in message
  assert f'{path} line 4: not JSON' in message
  # The folder is written but unfinished: training refuses it.
  assert len(os.listdir(out)) == 5  # 4 shards + manifest.
  with pytest.raises(ValueError, match='did not finish'):
    prepared_source.PreparedSource(str(out))
  # The default limit (1% with --skip_bad) refuses it too.
  with pytest.raises(prepare_tool.BadInputError, match='more than '
                     r'--max_bad_fraction=0.01:'):
    _prepare('xvlm_regions', [path], images, out, skip_bad=True,
             max_bad_fraction=None, shard_size=4)
  # Accepting the loss reuses the shards and finishes the folder.
  summary = _prepare('xvlm_regions', [path], images, out, skip_bad=True,
                     max_bad_fraction=0.5, shard_size=4)
  assert summary['shards_written'] == 0 and summary['records'] == 10
  assert len(prepared_source.PreparedSource(str(out))) == 10


def test_max_bad_fraction_without_skip_bad(tmp_path):
  path, images = _write_bad_mix(tmp_path)
  with pytest.raises(ValueError, match='needs --skip_bad'):
    _prepare('xvlm_regions', [path], images, tmp_path / 'a',
             max_bad_fraction=0.5)
  with pytest.raises(ValueError, match=r'must be in \[0, 1\]'):
    _prepare('xvlm_regions', [path], images, tmp_path / 'b', skip_bad=True,
             max_bad_fraction=1.5)
  # 0 without --skip_bad is the old behaviour: the first bad input stops.
  with pytest.raises(prepare_tool.BadInputError,
                     match=rf"{path} line 2: image 'gone0.png' not found"):
    _prepare('xvlm_regions', [path], images, tmp_path / 'c',
             max_bad_fraction=0.0)


def test_clean_input_passes_a_zero_limit(tmp_path):
  path, images = _write_bad_mix(tmp_path)
  lines = open(path).read().splitlines()
  clean = tmp_path / 'clean.jsonl'
  clean.write_text('\n'.join([lines[0]] * 3) + '\n')
  summary = _prepare('xvlm_regions', [str(clean)], images, tmp_path / 'out',
                     skip_bad=True, max_bad_fraction=0.0)
  assert summary['bad_items'] == 0 and summary['bad'] == {}
  assert summary['records'] == 3


def test_caption_empty_after_normalisation_stops_naming_the_entry(tmp_path):
  """prepare applies training's text normalisation: a caption it empties
  is bad input here, not a failed step later."""
  images = data.write_images(tmp_path / 'images')
  path = tmp_path / 'coco.json'
  path.write_text(json.dumps([{'image': 'a.png', 'caption': 'a dog'},
                              {'image': 'b.jpg', 'caption': '?!...'}]))
  with pytest.raises(prepare_tool.BadInputError,
                     match=r'coco.json entry 1: .*empty after normalisation'
                     r'.*\[empty_text\]'):
    _prepare('albef_json', [str(path)], str(images), tmp_path / 'out')
  summary = _prepare('albef_json', [str(path)], str(images),
                     tmp_path / 'out2', skip_bad=True)
  assert summary['records'] == 1 and summary['bad'] == {'empty_text': 1}
