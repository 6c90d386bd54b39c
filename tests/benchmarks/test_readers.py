"""Benchmark readers: the real VALSE/VSR files and small files in each layout.

The real annotation files are the repository copies under
``tests/testdata/real_benchmarks`` (a clean clone has them). Layouts with no
shippable real file (SVO-Probes, Winoground, retrieval, paragraphs, RefCOCOg)
are tested on small files each test writes in the published layout.
"""

import collections
import csv
import dataclasses
import json
import os
import pickle

import pytest

from vlg import benchmarks as bm

REAL = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'testdata',
                    'real_benchmarks')
VALSE_DIR = os.path.join(REAL, 'valse')
VSR_DIR = os.path.join(REAL, 'vsr')

# (all, valid) per instrument, from one independent json pass over the files.
VALSE_COUNTS = {
    'actant-swap': (1042, 949), 'action-replacement': (779, 648),
    'coreference-hard': (141, 104), 'coreference-standard': (916, 708),
    'counting-adversarial': (756, 691), 'counting-hard': (1000, 868),
    'counting-small-quant': (1000, 900), 'existence': (534, 505),
    'foil-it': (1000, 943), 'plurals': (1000, 851), 'relations': (614, 535),
}


def _independent_valse_counts():
  counts = {}
  for name in sorted(os.listdir(VALSE_DIR)):
    if name.endswith('.json'):
      with open(os.path.join(VALSE_DIR, name)) as f:
        data = json.load(f)
      valid = sum(1 for r in data.values() if r['mturk']['caption'] >= 2)
      counts[name[:-len('.json')]] = (len(data), valid)
  return counts


@pytest.fixture(scope='module')
def valse_all():
  return bm.load_valse(VALSE_DIR, valid_only=False)


# ------------------------------------------------------------------- VALSE


def test_valse_real_counts_match_an_independent_pass(valse_all):
  independent = _independent_valse_counts()
  assert independent == VALSE_COUNTS
  total = collections.Counter(e.instrument for e in valse_all)
  valid = collections.Counter(e.instrument for e in valse_all if e.is_valid)
  for instrument, (n_all, n_valid) in sorted(independent.items()):
    print(f'{instrument:22s} {total[instrument]:5d} {valid[instrument]:5d}')
    assert (total[instrument], valid[instrument]) == (n_all, n_valid)
  assert len(valse_all) == valse_all.num_records == 8782
  valid_set = bm.load_valse(VALSE_DIR)
  assert len(valid_set) == 7702 and valid_set.num_filtered == 1080
  assert all(e.is_valid and e.mturk_caption >= 2 for e in valid_set)
  assert valid_set.num_skipped == 0 and len(valid_set.files) == 11


def test_valse_pieces_cover_every_instrument(valse_all):
  stems = {n[:-5] for n in os.listdir(VALSE_DIR) if n.endswith('.json')}
  assert stems == set(bm.VALSE_PIECES)
  assert set(bm.VALSE_PIECES.values()) == set(bm.VALSE_PIECE_ORDER)
  assert len(bm.VALSE_PIECE_ORDER) == 7
  assert bm.VALSE_PIECES['plurals'] == 'plurality'
  assert bm.VALSE_PIECES['actant-swap'] == 'actions'
  assert all(e.piece == bm.VALSE_PIECES[e.instrument] for e in valse_all)
  per_piece = collections.Counter(e.piece for e in valse_all)
  assert per_piece['counting'] == 1000 + 1000 + 756
  with pytest.raises(ValueError, match='unknown VALSE instrument'):
    bm.valse_piece('spatial')


def test_valse_field_variants_of_the_real_files(valse_all):
  by_id = {(e.instrument, e.key): e for e in valse_all}
  assert len(by_id) == 8782  # keys repeat across files, not within one.
  first = by_id[('counting-adversarial', 'counting_visual7w_1')]
  assert (first.classes, first.classes_foil, first.mturk_caption) == (4, 0, 2)
  assert first.dataset == 'visual7w' and first.image_file == 'v7w_1.jpg'
  existence = [e for e in valse_all if e.instrument == 'existence']
  assert all(isinstance(e.classes_foil, tuple) for e in existence)
  assert by_id[('plurals', 'plurals:coco2017:215792')].classes_foil is False
  assert {type(e.classes) for e in valse_all} == {str, int}
  # 24 published foils equal their caption; annotators rejected all of them
  # (mturk.caption <= 1), so the valid set has none.
  same = [e for e in valse_all if e.caption == e.foil]
  assert len(same) == 24 and not any(e.is_valid for e in same)


def test_valse_instrument_selection_and_file_lists():
  chosen = bm.load_valse(VALSE_DIR, instruments=['existence', 'foil-it'],
                         valid_only=False)
  assert len(chosen) == 534 + 1000
  files = [os.path.join(VALSE_DIR, 'relations.json'),
           os.path.join(VALSE_DIR, 'plurals.json')]
  listed = bm.load_valse(files, instruments=['plurals'])
  assert len(listed) == 851 and {e.piece for e in listed} == {'plurality'}
  single = bm.load_valse(files[0])
  assert len(single) == 535
  with pytest.raises(FileNotFoundError, match='spatial'):
    bm.load_valse(VALSE_DIR, instruments=['spatial'])


def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(text)
  return str(path)


def _valse_record(**overrides):
  record = {'dataset': 'synthetic', 'image_file': 'img_0.png',
            'caption': 'There are exactly 2 circles.',
            'foil': 'There are exactly 3 circles.', 'classes': 2,
            'classes_foil': 3, 'linguistic_phenomena': 'counting',
            'mturk': {'foil': 0, 'caption': 3, 'other': 0}}
  record.update(overrides)
  return {k: v for k, v in record.items() if v is not None}


def test_valse_malformed_records_name_file_and_key(tmp_path):
  records = {'ok_0': _valse_record(), 'no_foil': _valse_record(foil=None),
             'bad_votes': _valse_record(mturk={'caption': 'three'}),
             'no_mturk': _valse_record(mturk=None)}
  path = _write(tmp_path / 'counting-hard.json', json.dumps(records))
  with pytest.raises(ValueError,
                     match=r"counting-hard\.json: key 'no_foil': missing "
                     r"required field 'foil'"):
    bm.load_valse(path)
  loaded = bm.load_valse(path, skip_bad=True)
  assert loaded.num_skipped == 2 and loaded.num_records == 4
  assert "key 'bad_votes'" in loaded.skipped[1]
  assert 'must be an integer' in loaded.skipped[1]
  # No mturk: read, but not valid, so the valid set leaves it out.
  assert [e.key for e in loaded] == ['ok_0'] and loaded.num_filtered == 1
  everything = bm.load_valse(path, skip_bad=True, valid_only=False)
  assert everything[1].mturk_caption is None and not everything[1].is_valid


def test_valse_broken_json_and_duplicate_keys_are_file_errors(tmp_path):
  path = _write(tmp_path / 'existence.json', '{\n "a": {"caption": 1},\n x}')
  with pytest.raises(ValueError, match=r'existence\.json: line 3 column 2'):
    bm.load_valse(path, skip_bad=True)
  path = _write(tmp_path / 'plurals.json',
                '{"a": %s, "a": %s}' % (json.dumps(_valse_record()),
                                        json.dumps(_valse_record())))
  with pytest.raises(ValueError, match=r"plurals\.json: duplicate key 'a'"):
    bm.load_valse(path)
  _write(tmp_path / 'extra' / 'notes.json', '{}')
  with pytest.raises(ValueError, match='not VALSE instruments'):
    bm.load_valse(tmp_path / 'extra')


# --------------------------------------------------------------------- VSR


@pytest.mark.parametrize('name,count,positives', [
    ('random/dev', 1012, 535), ('random/test', 2024, 1053),
    ('zeroshot/dev', 340, 167), ('zeroshot/test', 1222, 629)])
def test_vsr_real_counts_and_label_balance(name, count, positives):
  loaded = bm.load_vsr(os.path.join(VSR_DIR, f'{name}.jsonl'))
  assert len(loaded) == loaded.num_records == count
  labels = [e.label for e in loaded]
  assert set(labels) == {0, 1} and sum(labels) == positives
  assert 0.45 < sum(labels) / count < 0.55
  zeroshot = name.startswith('zeroshot')
  assert all((e.subj is not None) == zeroshot for e in loaded)
  assert all(e.image.endswith('.jpg') and e.image in e.image_link
             for e in loaded)
  assert all(e.relation in e.caption for e in loaded)


def test_vsr_categories_cover_the_real_relations():
  categories = bm.load_vsr_categories(
      os.path.join(VSR_DIR, 'rel_meta_category_dict.txt'))
  assert set(categories.values()) == set(bm.VSR_CATEGORIES)
  assert len(bm.VSR_CATEGORIES) == 7 and len(categories) == 70
  assert categories['among'] == 'Unallocated'  # later line wins.
  assert categories['left of'] == 'Projective'
  relations = set()
  for name in ('random/dev', 'random/test', 'zeroshot/dev', 'zeroshot/test'):
    relations |= {e.relation
                  for e in bm.load_vsr(os.path.join(VSR_DIR, f'{name}.jsonl'))}
  assert len(relations) == 63
  assert relations <= set(categories) and relations <= set(bm.vsr_relations())
  assert len(bm.vsr_relations()) == len(set(bm.VSR_RELATIONS)) == 65
  assert set(categories) - set(bm.VSR_RELATIONS) == {
      'up', 'after', 'deep down', 'from', 'to'}


def test_vsr_category_file_errors(tmp_path):
  path = _write(tmp_path / 'cats.txt', 'Projective: left of, above\n\nbroken\n')
  with pytest.raises(ValueError, match=r'cats\.txt: line 3'):
    bm.load_vsr_categories(path)


def _vsr_line(**overrides):
  record = {'image': '000000000001.jpg', 'caption': 'The cat is on the mat.',
            'label': 1, 'relation': 'on'}
  record.update(overrides)
  return json.dumps({k: v for k, v in record.items() if v is not None})


def test_vsr_malformed_lines_name_file_and_line(tmp_path):
  lines = [_vsr_line(), _vsr_line(label=None), '{"image": "x.jpg", ', '',
           _vsr_line(label='yes'), _vsr_line(label=False, subj='cat')]
  path = _write(tmp_path / 'dev.jsonl', '\n'.join(lines) + '\n')
  with pytest.raises(ValueError, match=r"dev\.jsonl: line 2: missing "
                     r"required field 'label'"):
    bm.load_vsr(path)
  loaded = bm.load_vsr(path, skip_bad=True)
  assert loaded.num_skipped == 3 and loaded.num_records == 5
  assert 'line 3: not valid JSON' in loaded.skipped[1]
  assert "line 5: field 'label' must be 0 or 1" in loaded.skipped[2]
  assert [(e.label, e.subj) for e in loaded] == [(1, None), (0, 'cat')]


# -------------------------------------------------------------- SVO-Probes

SVO_ROWS = [
    # sentence, pos, neg, subj, verb, obj, pos_id, neg_id
    ('A girl stands on grass.', 'girl,stand,grass', 'dog,stand,grass',
     True, False, False, '1001', '2002'),
    ('A man rides a horse.', 'man,ride,horse', 'man,feed,horse',
     False, True, False, '1003', '2004'),
    ('A child kicks a ball.', 'child,kick,ball', 'child,kick,bottle',
     False, False, True, '1005', '2006'),
    ('Two flags are set.', 'man,ride,horse', 'woman,walk,horse',
     True, True, False, '1007', '2008'),
]


def _write_svo_csv(path, rows, columns=bm.svo_probes.CSV_COLUMNS):
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(('',) + tuple(columns))  # a pandas index column too.
    for i, (sent, pos, neg, s, v, o, pid, nid) in enumerate(rows):
      cells = dict(sentence=sent, pos_triplet=pos, neg_triplet=neg,
                   subj_neg=str(s), verb_neg=str(v), obj_neg=str(o),
                   pos_url=f'http://x.org/p/{pid}.jpg',
                   neg_url=f'http://x.org/n/{nid}.jpg', pos_image_id=pid,
                   neg_image_id=nid)
      writer.writerow([i] + [cells[c] for c in columns])
  return str(path)


def _write_svo_jsonl(path, rows):
  with open(path, 'w') as f:
    for i, (sent, pos, neg, s, v, o, pid, nid) in enumerate(rows):
      f.write(json.dumps(dict(
          caption=sent, pos_image=f'{pid}.jpg', neg_image=f'{nid}.jpg',
          svo_index=i, pos_triplet=pos, neg_triplet=neg, subj_neg=s,
          verb_neg=v, obj_neg=o)) + '\n')
  return str(path)


def test_svo_csv_and_jsonl_give_equal_examples(tmp_path):
  from_csv = bm.load_svo_probes(_write_svo_csv(tmp_path / 'svo_probes.csv',
                                               SVO_ROWS))
  from_jsonl = bm.load_svo_probes(_write_svo_jsonl(tmp_path / 'test.jsonl',
                                                   SVO_ROWS))
  assert len(from_csv) == len(from_jsonl) == 4
  for a, b in zip(from_csv, from_jsonl):
    assert dataclasses.asdict(a) == dataclasses.asdict(b)
  first = from_csv[0]
  assert first.caption == first.sentence == 'A girl stands on grass.'
  assert first.pos_triplet == ('girl', 'stand', 'grass')
  assert first.image_files() == ('1001.jpg', '2002.jpg')
  assert first.subj_neg is True and first.verb_neg is False
  assert [e.neg_type for e in from_csv] == ['subject', 'verb', 'object', None]
  by_url = bm.load_svo_probes(tmp_path / 'svo_probes.csv',
                              image_template='{url_name}')
  assert by_url[1].pos_image == '1003.jpg'


def test_svo_malformed_rows_name_file_and_line(tmp_path):
  rows = list(SVO_ROWS)
  rows[1] = rows[1][:3] + ('maybe',) + rows[1][4:]
  rows[2] = rows[2][:1] + ('child,kick',) + rows[2][2:]
  path = _write_svo_csv(tmp_path / 'svo_probes.csv', rows)
  with pytest.raises(ValueError, match=r"svo_probes\.csv: line 3: field "
                     r"'subj_neg' must be a boolean"):
    bm.load_svo_probes(path)
  loaded = bm.load_svo_probes(path, skip_bad=True)
  assert loaded.num_skipped == 2 and [e.index for e in loaded] == [0, 3]
  assert 'line 4' in loaded.skipped[1] and 'pos_triplet' in loaded.skipped[1]
  no_url = _write_svo_csv(tmp_path / 'short.csv', SVO_ROWS,
                          bm.svo_probes.CSV_COLUMNS[:-1])
  with pytest.raises(ValueError, match=r"short\.csv: line 1: .*'neg_image_id'"):
    bm.load_svo_probes(no_url, skip_bad=True)  # a header error is never skipped
  path = _write(tmp_path / 'svo.jsonl',
                '{"caption": "A dog runs.", "svo_index": 0}\n')
  with pytest.raises(ValueError, match=r"svo\.jsonl: line 1: missing required "
                     r"field 'pos_image'"):
    bm.load_svo_probes(path)


# -------------------------------------------------------------- Winoground


def _winoground_lines():
  return [dict(id=i, caption_0=f'a red circle above a blue square {i}',
               caption_1=f'a blue circle above a red square {i}',
               image_0=f'ex_{i}_img_0', image_1=f'ex_{i}_img_1',
               tag='Adjective-Color', secondary_tag='' if i else 'Symbolic',
               num_main_preds=1, collapsed_tag='Object') for i in range(3)]


def test_winoground_released_and_flat_layouts(tmp_path):
  lines = _winoground_lines()
  text = ''.join(json.dumps(r) + '\n' for r in lines)
  _write(tmp_path / 'wg' / 'data' / 'examples.jsonl', text)
  for stem in ('ex_0_img_0', 'ex_0_img_1', 'ex_1_img_0'):
    _write(tmp_path / 'wg' / 'data' / 'images' / f'{stem}.png', '')
  loaded = bm.load_winoground(tmp_path / 'wg')
  assert [dataclasses.asdict(e) for e in loaded] == lines
  assert bm.winoground_image_path(tmp_path / 'wg', 'ex_0_img_1') == str(
      tmp_path / 'wg' / 'data' / 'images' / 'ex_0_img_1.png')
  present, missing = bm.check_images(
      loaded, bm.winoground_images_dir(tmp_path / 'wg'))
  assert [e.id for e in present] == [0]
  assert missing == ['ex_1_img_1.png', 'ex_2_img_0.png', 'ex_2_img_1.png']
  _write(tmp_path / 'flat' / 'examples.jsonl', text)
  os.makedirs(tmp_path / 'flat' / 'images')
  assert len(bm.load_winoground(tmp_path / 'flat')) == 3
  assert bm.winoground_image_path(tmp_path / 'flat', 'x').endswith(
      os.path.join('flat', 'images', 'x.png'))


def test_winoground_malformed_lines(tmp_path):
  lines = _winoground_lines()
  del lines[1]['caption_1']
  lines[2]['id'] = 0
  path = _write(tmp_path / 'examples.jsonl',
                ''.join(json.dumps(r) + '\n' for r in lines))
  with pytest.raises(ValueError, match=r"examples\.jsonl: line 2: missing "
                     r"required field 'caption_1'"):
    bm.load_winoground(path)
  with pytest.raises(ValueError, match=r'line 3: duplicate id 0'):
    bm.load_winoground(path, skip_bad=True)
  with pytest.raises(FileNotFoundError, match='examples.jsonl'):
    bm.load_winoground(tmp_path / 'nowhere')


# --------------------------------------------------------------- retrieval


def test_retrieval_index_maps_as_albef(tmp_path):
  entries = [{'image': 'val2014/a.jpg', 'caption': ['a one', 'a two']},
             {'image': 'val2014/b.jpg', 'caption': 'b only'},
             {'image': 'val2014/c.jpg', 'caption': ['c1', 'c2', 'c3']}]
  path = _write(tmp_path / 'coco_test.json', json.dumps(entries))
  data = bm.load_retrieval(path)
  assert data.images == ('val2014/a.jpg', 'val2014/b.jpg', 'val2014/c.jpg')
  assert data.texts == ('a one', 'a two', 'b only', 'c1', 'c2', 'c3')
  assert data.img2txt == ((0, 1), (2,), (3, 4, 5))
  assert data.txt2img == (0, 0, 1, 2, 2, 2)
  for img, txts in enumerate(data.img2txt):
    assert all(data.txt2img[t] == img for t in txts)
  assert data.num_records == 3 and data.num_skipped == 0


def test_retrieval_malformed_entries(tmp_path):
  entries = [{'image': 'a.jpg', 'caption': ['x']}, {'caption': ['y']},
             {'image': 'c.jpg', 'caption': []}, {'image': 'd.jpg',
                                                 'caption': ['z', 3]}]
  path = _write(tmp_path / 'flickr30k_test.json', json.dumps(entries))
  with pytest.raises(ValueError, match=r"flickr30k_test\.json: entry 1: "
                     r"missing required field 'image'"):
    bm.load_retrieval(path)
  data = bm.load_retrieval(path, skip_bad=True)
  assert data.num_skipped == 3 and data.images == ('a.jpg',)
  assert 'entry 3' in data.skipped[2] and 'item 1' in data.skipped[2]
  with pytest.raises(ValueError, match='expected a JSON list'):
    bm.load_retrieval(_write(tmp_path / 'd.json', '{}'), skip_bad=True)


# -------------------------------------------------------------- paragraphs


def test_paragraphs_with_split(tmp_path):
  paragraphs = [
      {'image_id': 7 + i, 'paragraph': f'Paragraph {i}. Two sentences.',
       'url': f'https://cs.stanford.edu/VG_100K/{7 + i}.jpg'}
      for i in range(4)]
  path = _write(tmp_path / 'paragraphs_v1.json', json.dumps(paragraphs))
  split = _write(tmp_path / 'test_split.json', json.dumps([9, 7]))
  loaded = bm.load_paragraphs(path, split)
  assert [(e.image_id, e.image_file) for e in loaded] == [(9, '9.jpg'),
                                                          (7, '7.jpg')]
  assert loaded[0].paragraph == 'Paragraph 2. Two sentences.'
  assert loaded.num_records == 4 and loaded.num_filtered == 2
  assert len(bm.load_paragraphs(path)) == 4
  retrieval = bm.paragraph_retrieval_set(loaded)
  assert retrieval.images == ('9.jpg', '7.jpg')
  assert retrieval.img2txt == ((0,), (1,)) and retrieval.txt2img == (0, 1)


def test_paragraphs_malformed(tmp_path):
  paragraphs = [{'image_id': 1, 'paragraph': 'One.'},
                {'image_id': 1, 'paragraph': 'Again.'},
                {'image_id': 'x2', 'paragraph': 'Two.'}]
  path = _write(tmp_path / 'paragraphs_v1.json', json.dumps(paragraphs))
  with pytest.raises(ValueError, match=r'paragraphs_v1\.json: entry 1: '
                     r'image_id 1 already has a paragraph'):
    bm.load_paragraphs(path)
  split = _write(tmp_path / 'test_split.json', '[1, 5]')
  only_first = _write(tmp_path / 'p.json', json.dumps(paragraphs[:1]))
  with pytest.raises(ValueError, match=r'test_split\.json: entry 1: image id '
                     r'5 has no paragraph'):
    bm.load_paragraphs(only_first, split)
  loaded = bm.load_paragraphs(path, split, skip_bad=True)
  assert [e.image_id for e in loaded] == [1] and loaded.num_skipped == 3


# ---------------------------------------------------------------- RefCOCOg


def _write_refer(root, refs):
  instances = {
      'images': [{'id': 10, 'file_name': 'COCO_train2014_000000000010.jpg',
                  'width': 640, 'height': 480},
                 {'id': 11, 'file_name': 'COCO_train2014_000000000011.jpg',
                  'width': 500, 'height': 375}],
      'annotations': [{'id': 100, 'image_id': 10, 'category_id': 1,
                       'bbox': [10.5, 20.0, 100.0, 50.25]},
                      {'id': 101, 'image_id': 11, 'category_id': 18,
                       'bbox': [0, 0, 30, 40]}],
      'categories': [{'id': 1, 'name': 'person'}, {'id': 18, 'name': 'dog'}]}
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, 'instances.json'), 'w') as f:
    json.dump(instances, f)
  with open(os.path.join(root, 'refs(umd).p'), 'wb') as f:
    pickle.dump(refs, f, protocol=2)


def _ref(ref_id, ann_id, image_id, split, sents):
  return {'ref_id': ref_id, 'ann_id': ann_id, 'image_id': image_id,
          'split': split, 'category_id': 1, 'sent_ids': [s[0] for s in sents],
          'file_name': f'COCO_train2014_{image_id:012d}_{ann_id}.jpg',
          'sentences': [{'sent': s, 'raw': s.capitalize() + '.',
                         'tokens': s.split(), 'sent_id': i}
                        for i, s in sents]}


def test_refcocog_refer_layout(tmp_path):
  refs = [_ref(1, 100, 10, 'val', [(5, 'the man on the left'),
                                   (6, 'a man in a red shirt')]),
          _ref(2, 101, 11, 'test', [(7, 'the small dog')]),
          _ref(3, 101, 11, 'val', [(8, 'brown dog on grass')])]
  _write_refer(tmp_path / 'refcocog', refs)
  val = bm.load_refcocog(tmp_path / 'refcocog', split='val')
  assert [(e.ref_id, e.sent_id) for e in val] == [(1, 5), (1, 6), (3, 8)]
  first = val[0]
  assert first.expression == 'the man on the left'
  assert first.raw == 'The man on the left.'
  assert first.image_file == 'COCO_train2014_000000000010.jpg'  # not ref's.
  assert first.box == (10.5, 20.0, 100.0, 50.25)
  assert (first.width, first.height, first.ann_id) == (640, 480, 100)
  assert val.num_records == 3 and val.num_filtered == 1
  test = bm.load_refcocog(tmp_path / 'refcocog', split='test')
  assert [e.expression for e in test] == ['the small dog']
  assert test[0].box == (0.0, 0.0, 30.0, 40.0)
  # The flat JSON-lines layout holds the same examples.
  flat = _write(tmp_path / 'refcocog_val.jsonl', ''.join(
      json.dumps(dataclasses.asdict(e)) + '\n' for e in list(val) + list(test)))
  assert list(bm.load_refcocog(flat, split='val')) == list(val)


def test_refcocog_malformed_refs(tmp_path):
  refs = [_ref(1, 100, 10, 'val', [(5, 'the man')]),
          _ref(2, 999, 10, 'val', [(6, 'nobody')])]
  refs.append(dict(_ref(3, 101, 11, 'val', [(7, 'a dog')]),
                   sentences=[{'sent_id': 7}]))
  _write_refer(tmp_path, refs)
  with pytest.raises(ValueError, match=r'refs\(umd\)\.p: ref 1 \(ref_id 2\): '
                     r'ann_id 999 is not in instances\.json'):
    bm.load_refcocog(tmp_path)
  loaded = bm.load_refcocog(tmp_path, skip_bad=True)
  assert [e.sent_id for e in loaded] == [5] and loaded.num_skipped == 2
  assert "sentences[0]: missing required field 'sent'" in loaded.skipped[1]
  with open(tmp_path / 'refs(umd).p', 'wb') as f:
    pickle.dump([collections.OrderedDict(a=1)], f)
  with pytest.raises(ValueError, match='refusing to load'):
    bm.load_refcocog(tmp_path)


# ------------------------------------------------------------------ images


def test_check_images_reports_present_and_missing(tmp_path):
  _write(tmp_path / 'val2014' / 'a.jpg', '')
  vsr = [bm.VsrExample('val2014/a.jpg', 'c', 1, 'on'),
         bm.VsrExample('val2014/b.jpg', 'c', 0, 'on'),
         bm.VsrExample('val2014/a.jpg', 'd', 0, 'under')]
  present, missing = bm.check_images(vsr, str(tmp_path))
  assert present == [vsr[0], vsr[2]] and missing == ['val2014/b.jpg']
  present, missing = bm.check_images(['val2014/a.jpg', 'x.jpg'], tmp_path)
  assert present == ['val2014/a.jpg'] and missing == ['x.jpg']
  assert bm.image_path('/data/coco', 'val2014/a.jpg') == (
      '/data/coco/val2014/a.jpg')


def test_check_images_with_decode_counts_a_corrupt_image_as_missing(
    tmp_path, caplog):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.new('RGB', (4, 4), (200, 10, 10)).save(tmp_path / 'good.png')
  _write(tmp_path / 'bad.png', 'not a png')
  names = ['good.png', 'bad.png', 'gone.png']
  # Without decode the corrupt file counts as present (it exists).
  assert bm.check_images(names, str(tmp_path)) == (
      ['good.png', 'bad.png'], ['gone.png'])
  present, missing = bm.check_images(names, str(tmp_path), decode=True)
  assert present == ['good.png'] and missing == ['bad.png', 'gone.png']
  assert 'do not decode' in caplog.text and 'bad.png' in caplog.text
