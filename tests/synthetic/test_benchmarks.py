"""``vlg.synthetic.benchmarks`` and ``python -m vlg.tools.synth``: synthetic
benchmark sets in the real layouts.

Every set is written once (``num=12``, 64 px) and read back with the reader
that reads the real files; records are compared key for key with the real
annotation files in ``tests/testdata/real_benchmarks``; truth is re-checked
from the scenes with this file's own parsing and box arithmetic.
"""

import collections
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vlg import benchmarks as bm
from vlg import synthetic as sy
from vlg.data import ops
from vlg.synthetic import benchmarks as sb
from vlg.synthetic import language
from vlg.synthetic.benchmarks import refcocog
from vlg.synthetic.benchmarks import retrieval
from vlg.synthetic.benchmarks import svo_probes
from vlg.synthetic.benchmarks import valse
from vlg.synthetic.benchmarks import vsr
from vlg.synthetic.benchmarks import winoground

REAL = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'testdata',
                    'real_benchmarks')
NUM = 12
CFG = sy.WorldConfig(resolution=64, seed=0)
HELDOUT = {f'{c} {k}' for c, k in CFG.heldout}
SINGULAR = {p: c for c, p in language.PLURALS.items()}
OPPOSITE = {'left of': 'right of', 'right of': 'left of', 'above': 'below',
            'below': 'above'}


@pytest.fixture(scope='module')
def out(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('synth'))
  manifest = sb.write_all(root, resolution=64, seed=0, num=NUM)
  return root, manifest


def _first_jsonl(path):
  with open(path, encoding='utf-8') as f:
    return json.loads(f.readline())


def _png(path):
  with Image.open(path) as image:
    assert image.format == 'PNG'
    return np.asarray(image.convert('RGB'))


def _find(scene, words):
  """Objects named by '[size] [colour] category' words (own matching)."""
  words = words.split()
  return [k for k, o in enumerate(scene.objects)
          if o.category == words[-1] and all(
              w in (o.size, o.colour) for w in words[:-1])]


def _axis(scene, s, predicate, o):
  """left of / right of / above / below from the boxes, own arithmetic."""
  a, b = scene.objects[s].box, scene.objects[o].box
  return {'left of': a[2] <= b[0], 'right of': a[0] >= b[2],
          'above': a[3] <= b[1], 'below': a[1] >= b[3]}[predicate]


def test_every_set_loads_with_the_real_readers(out):
  root, manifest = out
  assert set(manifest['sets']) == set(sb.SETS)
  examples = bm.load_valse(os.path.join(root, 'valse'))
  assert len(examples) == NUM * len(valse.INSTRUMENTS)
  assert examples.num_filtered == 0 and examples.num_skipped == 0
  assert {e.piece for e in examples} == {
      'existence', 'plurality', 'counting', 'relations', 'actions'}
  for split in vsr.SPLITS:
    assert len(bm.load_vsr(os.path.join(root, 'vsr', f'{split}.jsonl'))) == NUM
  svo = bm.load_svo_probes(os.path.join(root, 'svo_probes',
                                        'svo_probes.jsonl'))
  assert collections.Counter(e.neg_type for e in svo) == {
      'subject': NUM // 3, 'verb': NUM // 3, 'object': NUM // 3}
  wino = bm.load_winoground(os.path.join(root, 'winoground'))
  assert [e.id for e in wino] == list(range(NUM))
  for split in ('test', 'val'):
    ret = bm.load_retrieval(os.path.join(root, 'retrieval', f'{split}.json'))
    assert len(ret.images) == NUM and len(ret.texts) == 5 * NUM
  paragraphs = bm.load_paragraphs(
      os.path.join(root, 'paragraphs', 'paragraphs_v1.json'),
      os.path.join(root, 'paragraphs', 'test_split.json'))
  assert len(paragraphs) == NUM and paragraphs.num_filtered == 0
  for split in ('val', 'test'):
    refs = bm.load_refcocog(os.path.join(root, 'refcocog'), split=split)
    assert len(refs) == NUM and {e.split for e in refs} == {split}


def test_all_images_exist(out):
  root, _ = out
  groups = [
      (bm.load_valse(os.path.join(root, 'valse')),
       os.path.join(root, 'valse', 'images')),
      (bm.load_svo_probes(os.path.join(root, 'svo_probes',
                                       'svo_probes.jsonl')),
       os.path.join(root, 'svo_probes', 'images')),
      (bm.load_winoground(os.path.join(root, 'winoground')),
       bm.winoground_images_dir(os.path.join(root, 'winoground'))),
      (bm.load_retrieval(os.path.join(root, 'retrieval', 'test.json')).images,
       os.path.join(root, 'retrieval')),
      (bm.load_paragraphs(os.path.join(root, 'paragraphs',
                                       'paragraphs_v1.json')),
       os.path.join(root, 'paragraphs', 'images')),
      (bm.load_refcocog(os.path.join(root, 'refcocog'), split='test'),
       os.path.join(root, 'refcocog', 'images')),
  ] + [(bm.load_vsr(os.path.join(root, 'vsr', f'{s}.jsonl')),
        os.path.join(root, 'vsr', 'images')) for s in vsr.SPLITS]
  for examples, image_root in groups:
    present, missing = bm.check_images(examples, image_root)
    assert not missing and len(present) == len(examples), image_root
  jpeg = os.path.join(root, 'paragraphs', 'images',
                      bm.load_paragraphs(os.path.join(
                          root, 'paragraphs', 'paragraphs_v1.json'))[0]
                      .image_file)
  with Image.open(jpeg) as image:
    assert image.format == 'JPEG' and image.size == (64, 64)


def test_records_have_every_field_of_the_real_files(out):
  root, _ = out
  for instrument in valse.INSTRUMENTS:
    with open(os.path.join(REAL, 'valse', f'{instrument}.json')) as f:
      real = next(iter(json.load(f).values()))
    with open(os.path.join(root, 'valse', f'{instrument}.json')) as f:
      ours = json.load(f)
    for record in ours.values():
      assert set(real) <= set(record), (instrument, set(real) - set(record))
      assert type(record['dataset_idx']) is type(real['dataset_idx'])
      assert record['dataset'] == 'synthetic'
      assert record['mturk'] == {'foil': 0, 'caption': 3, 'other': 0}
      assert record['caption'] != record['foil']
  for split in vsr.SPLITS:
    real = _first_jsonl(os.path.join(REAL, 'vsr', f'{split}.jsonl'))
    ours = _first_jsonl(os.path.join(root, 'vsr', f'{split}.jsonl'))
    assert set(real) <= set(ours), (split, set(real) - set(ours))
    for key in ('label', 'annotator_id', 'vote_true_validator_id'):
      assert type(ours[key]) is type(real[key]), (split, key)
  line = _first_jsonl(os.path.join(root, 'svo_probes', 'svo_probes.jsonl'))
  assert set(line) == {'caption', 'pos_image', 'neg_image', 'svo_index',
                       'pos_triplet', 'neg_triplet', 'subj_neg', 'verb_neg',
                       'obj_neg'}
  line = _first_jsonl(os.path.join(root, 'winoground', 'data',
                                   'examples.jsonl'))
  assert set(line) == {'id', 'image_0', 'image_1', 'caption_0', 'caption_1',
                       'tag', 'secondary_tag', 'num_main_preds',
                       'collapsed_tag'}


def test_vsr_labels_relations_and_held_out_compositions(out):
  root, _ = out
  real_categories = bm.load_vsr_categories(
      os.path.join(REAL, 'vsr', 'rel_meta_category_dict.txt'))
  categories = bm.load_vsr_categories(
      os.path.join(root, 'vsr', 'rel_meta_category_dict.txt'))
  assert categories == real_categories
  for split in vsr.SPLITS:
    examples = bm.load_vsr(os.path.join(root, 'vsr', f'{split}.jsonl'))
    assert collections.Counter(e.label for e in examples) == {
        0: NUM // 2, 1: NUM // 2}
    by_relation = collections.defaultdict(list)
    for e in examples:
      assert e.relation in bm.VSR_RELATIONS and e.relation in categories
      by_relation[e.relation].append(e.label)
      mentioned = {h for h in HELDOUT if h in e.caption.lower()}
      if split.startswith('zeroshot'):
        assert mentioned and (e.subj in HELDOUT or e.obj in HELDOUT), e
        assert e.subj in e.caption.lower() and e.obj in e.caption.lower()
      else:
        assert not mentioned and e.subj is None, e
    assert all(sorted(v) == [0, 1] for v in by_relation.values())
  # The random split never draws a held-out composition, even as a
  # distractor; the zero-shot split always shows one.
  for k in range(8):
    _, scene = vsr.make_example(CFG, 'random/test', k)
    assert not {f'{o.colour} {o.category}' for o in scene.objects} & HELDOUT
    _, scene = vsr.make_example(CFG, 'zeroshot/test', k)
    assert {f'{o.colour} {o.category}' for o in scene.objects} & HELDOUT


_VSR = re.compile(r'^The (.+?) (is left of|is right of|is above|is below|'
                  r'is in front of|is connected to|contains|is inside|'
                  r'is touching|is near|is far from) the (.+)\.$')


def test_vsr_truth_rechecked_from_the_scenes(out):
  root, _ = out
  with open(os.path.join(root, 'vsr', 'random', 'dev.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  checked = collections.Counter()
  for k in range(44):  # Every relation, true and false, twice.
    record, scene = vsr.make_example(CFG, 'random/dev', k)
    if k < NUM:  # The file holds exactly these lines and images.
      assert record == lines[k]
      assert np.array_equal(
          _png(os.path.join(root, 'vsr', 'images', record['image'])),
          sy.render_scene(scene, CFG))
    m = _VSR.match(record['caption'])
    assert m, record['caption']
    (s,), (o,) = _find(scene, m.group(1)), _find(scene, m.group(3))
    verb, label = m.group(2).removeprefix('is '), record['label']
    assert verb == record['relation']
    if verb in OPPOSITE:
      assert _axis(scene, s, verb, o) == bool(label)
      assert _axis(scene, s, OPPOSITE[verb], o) == (not label)  # Clearly.
    elif verb == 'in front of':
      a, b = scene.objects[s], scene.objects[o]
      assert (a.layer > b.layer) == bool(label)
      assert max(sy.geometry.gaps(a.box, b.box)) < 0  # They overlap.
    elif verb == 'connected to':
      joined = [a.predicate for a in scene.actions
                if {a.subject, a.object} == {s, o}]
      assert joined == (['is connected to'] if label else [])
    else:  # near, far from, inside, contains, touching: the world's test.
      assert sy.relation_truth(scene, s, verb, o) is bool(label)
    checked[verb, label] += 1
  assert len(checked) == 2 * len(vsr.VSR_RELATIONS)


def test_valse_truth_rechecked_from_the_scenes(out):
  root, _ = out
  for instrument in valse.INSTRUMENTS:
    with open(os.path.join(root, 'valse', f'{instrument}.json')) as f:
      data = json.load(f)
    for k in range(NUM):
      key, record, scene = valse.make_example(CFG, instrument, k)
      assert data[key] == record
      assert np.array_equal(_png(os.path.join(
          root, 'valse', 'images', record['image_file'])),
                            sy.render_scene(scene, CFG))
      counts = collections.Counter(o.category for o in scene.objects)
      for text, truth in ((record['caption'], True), (record['foil'], False)):
        if instrument.startswith('counting'):
          m = re.match(r'There (?:is|are) exactly (\d+) (\w+)', text)
          n, noun = int(m.group(1)), m.group(2)
          assert (counts[SINGULAR.get(noun, noun)] == n) == truth, text
        elif instrument == 'existence':
          m = re.match(r'There (?:is|are) (no |an? )?(\w+)', text)
          noun = m.group(2)
          present = counts[SINGULAR.get(noun, noun)] > 0
          assert (present != (m.group(1) == 'no ')) == truth, text
        elif instrument == 'relations':
          m = _VSR.match(text)
          (s,), (o,) = _find(scene, m.group(1)), _find(scene, m.group(3))
          predicate = m.group(2).removeprefix('is ')
          if predicate in OPPOSITE:  # Own box arithmetic; a foil's
            assert _axis(scene, s, predicate, o) == truth, text
            # opposite must hold: clearly false, not borderline.
            assert truth or _axis(scene, s, OPPOSITE[predicate], o), text
          else:
            assert sy.relation_truth(scene, s, predicate, o) is truth, text
        elif instrument in ('action-replacement', 'actant-swap'):
          m = re.match(r'The (.+?) (points at|is connected to|covers) the '
                       r'(.+)\.$', text)
          (s,), (o,) = _find(scene, m.group(1)), _find(scene, m.group(3))
          drawn = {(a.predicate, a.subject, a.object) for a in scene.actions}
          assert ((m.group(2), s, o) in drawn) == truth, text


def test_svo_and_winoground_truth_rechecked(out):
  root, _ = out
  with open(os.path.join(root, 'svo_probes', 'svo_probes.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  for k in range(NUM):
    record, pos, neg = svo_probes.make_example(CFG, k)
    assert record == lines[k]
    for name, scene in ((record['pos_image'], pos), (record['neg_image'], neg)):
      assert np.array_equal(_png(os.path.join(root, 'svo_probes', 'images',
                                              name)),
                            sy.render_scene(scene, CFG))
    m = re.match(r'the (\w+ \w+) (points at|is connected to|covers) the '
                 r'(\w+ \w+)$', record['caption'])
    verb = m.group(2)
    for scene, truth in ((pos, True), (neg, False)):
      pairs = [(s, o) for s in _find(scene, m.group(1))
               for o in _find(scene, m.group(3))]
      drawn = {(a.predicate, a.subject, a.object) for a in scene.actions}
      if verb == 'is connected to':
        drawn |= {(p, o, s) for p, s, o in drawn}
      assert any((verb, s, o) in drawn for s, o in pairs) == truth, record
    assert not np.array_equal(sy.render_scene(pos, CFG),
                              sy.render_scene(neg, CFG))
  with open(os.path.join(root, 'winoground', 'data', 'examples.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  axis = re.compile(r'an? (\w+ \w+) (left of|right of|above|below) an? '
                    r'(\w+ \w+)$')
  for k in range(NUM):
    record, scene0, scene1 = winoground.make_example(CFG, k)
    assert record == lines[k]
    for stem, scene in ((record['image_0'], scene0),
                        (record['image_1'], scene1)):
      assert np.array_equal(_png(bm.winoground_image_path(
          os.path.join(root, 'winoground'), stem)), sy.render_scene(scene, CFG))
    c0, c1 = record['caption_0'], record['caption_1']
    assert c0 != c1 and sorted(c0.split()) == sorted(c1.split())
    for i, caption in enumerate((c0, c1)):
      m = axis.match(caption)
      if not m:
        continue
      for j, scene in enumerate((scene0, scene1)):
        holds = any(_axis(scene, s, m.group(2), o)
                    for s in _find(scene, m.group(1))
                    for o in _find(scene, m.group(3)) if s != o)
        assert holds == (i == j), (record, i, j)


def test_retrieval_paragraphs_and_refcocog_match_the_world(out):
  root, _ = out
  ret = bm.load_retrieval(os.path.join(root, 'retrieval', 'test.json'))
  for k in (0, NUM - 1):
    record = sy.make_record('test', k, CFG)
    assert list(ret.texts[5 * k:5 * k + 5]) == record['captions']
    assert np.array_equal(_png(os.path.join(root, 'retrieval',
                                            ret.images[k])), record['image'])
  paragraphs = bm.load_paragraphs(
      os.path.join(root, 'paragraphs', 'paragraphs_v1.json'),
      os.path.join(root, 'paragraphs', 'test_split.json'))
  for k, example in enumerate(paragraphs):
    entry, scene = retrieval.paragraph_entry(CFG, k)
    assert example.image_id == entry['image_id']
    assert example.paragraph == language.paragraph(scene)
    with Image.open(os.path.join(root, 'paragraphs', 'images',
                                 example.image_file)) as image:
      pixels = np.asarray(image.convert('RGB'), np.float32)
    assert np.abs(pixels - sy.render_scene(scene, CFG)).mean() < 4
  refs = bm.load_refcocog(os.path.join(root, 'refcocog'), split='val')
  scenes = {}
  for e in refs:
    index = e.image_id - sy.world.image_id('val', 0)
    if index not in scenes:
      scenes[index] = sy.generate_scene('val', index, CFG)
    scene = scenes[index]
    assert index >= refcocog.REF_OFFSET and (e.width, e.height) == (64, 64)
    named = e.expression.removeprefix('the ')
    for word in language.PHRASES.values():  # 'the star above the ring'
      named = named.split(f' {word} the ')[0]
    (k,) = _find(scene, named)
    x0, y0, x1, y1 = scene.objects[k].box
    assert e.box == (x0, y0, x1 - x0, y1 - y0), e


def test_manifest_readme_and_determinism(out, tmp_path):
  root, manifest = out
  with open(os.path.join(root, 'manifest.json')) as f:
    assert json.load(f) == json.loads(json.dumps(manifest))
  assert manifest['sets']['valse']['files']['relations.json'] == NUM
  assert manifest['sets']['vsr']['true_labels']['zeroshot/dev.jsonl'] == (
      NUM // 2)
  with open(os.path.join(root, 'README.md')) as f:
    readme = f.read()
  for name in sb.SETS:
    assert f'## {name}' in readme
  assert '16.7%' in readme and '| in front of | covers | Projective |' in (
      readme)
  again = str(tmp_path / 'again')
  sb.write_all(again, resolution=64, seed=0, num=NUM)
  files = sorted(os.path.relpath(os.path.join(d, n), root)
                 for d, _, names in os.walk(root) for n in names)
  assert files == sorted(os.path.relpath(os.path.join(d, n), again)
                         for d, _, names in os.walk(again) for n in names)
  for name in files:
    with open(os.path.join(root, name), 'rb') as a, open(
        os.path.join(again, name), 'rb') as b:
      assert a.read() == b.read(), name
  other = str(tmp_path / 'other')
  sb.write_all(other, resolution=64, seed=1, num=NUM, sets='winoground')
  with open(os.path.join(other, 'winoground', 'data', 'examples.jsonl')) as a:
    with open(os.path.join(root, 'winoground', 'data',
                           'examples.jsonl')) as b:
      assert a.read() != b.read()


def test_sets_argument_and_cli(tmp_path):
  assert sb.parse_sets('vsr, valse') == ('valse', 'vsr')
  assert sb.parse_sets(['all']) == sb.SETS
  with pytest.raises(ValueError, match='unknown set'):
    sb.parse_sets('valse,nope')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  run = subprocess.run([sys.executable, '-m', 'vlg.tools.synth', '--help'],
                       capture_output=True, text=True, env=env, check=False)
  assert run.returncode in (0, 1), run.stderr  # absl's --help exits 1.
  assert 'python -m vlg.tools.synth --out=' in run.stdout
  for flag in ('--out', '--resolution', '--seed', '--num', '--sets'):
    assert flag in run.stdout
  out_dir = str(tmp_path / 'cli')
  run = subprocess.run([sys.executable, '-m', 'vlg.tools.synth',
                        f'--out={out_dir}', '--num=2', '--resolution=48',
                        '--sets=winoground,svo_probes'],
                       capture_output=True, text=True, env=env, check=False)
  assert run.returncode == 0, run.stderr
  assert 'winoground: data/examples.jsonl 2' in run.stdout
  assert sorted(os.listdir(out_dir)) == [
      'README.md', 'manifest.json', 'svo_probes', 'winoground']
  assert len(bm.load_winoground(os.path.join(out_dir, 'winoground'))) == 2


def test_training_captions_use_every_word_of_the_sets(out):
  """A model can only read a benchmark text whose words it was trained on:
  every word of every set's texts (after the pipeline's normalisation)
  occurs in the default world's training captions."""
  root, _ = out
  texts = [t for e in bm.load_valse(os.path.join(root, 'valse'))
           for t in (e.caption, e.foil)]
  for split in vsr.SPLITS:
    texts += [e.caption for e in bm.load_vsr(
        os.path.join(root, 'vsr', f'{split}.jsonl'))]
  texts += [e.sentence for e in bm.load_svo_probes(
      os.path.join(root, 'svo_probes', 'svo_probes.jsonl'))]
  texts += [t for e in bm.load_winoground(os.path.join(root, 'winoground'))
            for t in (e.caption_0, e.caption_1)]
  texts += list(bm.load_retrieval(
      os.path.join(root, 'retrieval', 'test.json')).texts)
  trained = collections.Counter(
      w for index in range(3000)
      for caption in language.captions(
          sy.generate_scene('train', index, CFG),
          sy.world.scene_rng('train', index, CFG, 1), CFG)
      for w in ops.pre_caption(caption, 1000).split())
  unseen = collections.Counter(
      w for t in texts for w in ops.pre_caption(t, 1000).split()
      if w not in trained)
  assert not unseen, unseen.most_common(10)
  # And the statement and sentence forms are there in numbers.
  assert trained['there'] > 100 and trained['exactly'] > 20
  assert trained['is'] > 100 and trained['front'] > 0
