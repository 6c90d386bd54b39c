"""Relation vocab, VSG texts, MRC sampling (docs/objectives.md §4, §5)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from vlg import synthetic as sy
from vlg.data import ops
from vlg.data import relations as rl
from vlg.data import tokenizer as tok_lib


def _rel(subject, predicate, obj, cx, cy, obj_box=(0.5, 0.5, 0.2, 0.2)):
  return {'subject_label': subject, 'predicate': predicate,
          'object_label': obj,
          'subject_box': np.array([cx, cy, 0.1, 0.1], np.float32),
          'object_box': np.array(obj_box, np.float32)}


# Subject centres → raster order with bands of 0.1: band 1 (y 0.12, 0.15)
# left to right, then band 5 (y 0.55, 0.52: same band) by x, then band 9.
GRAPH = [
    _rel('red circle', 'left of', 'blue square', 0.8, 0.12),
    _rel('green star', 'above', 'red circle', 0.2, 0.15),
    _rel('small ring', 'near', 'big star', 0.5, 0.55),
    _rel('white cross', 'below', 'green star', 0.1, 0.9),
    _rel('blue square', 'touching', 'small ring', 0.3, 0.52),
]
RASTER = [1, 0, 4, 2, 3]


def _triplet(r):
  return f"{r['subject_label']} {r['predicate']} {r['object_label']}"


# ---------------------------------------------------------------------------
# Vocabulary.


def test_vocab_counts_order_and_normalisation():
  raw = ['on', 'Left of', ' left   of ', 'near', 'on', 'ON', 'near', 'above']
  vocab = rl.RelationVocab.build(raw)
  # Counts: on 3, left of 2, near 2, above 1; ties alphabetical.
  assert vocab.relations == ('on', 'left of', 'near', 'above')
  assert vocab.counts == {'on': 3, 'left of': 2, 'near': 2, 'above': 1}
  assert len(vocab) == 4
  for i, rel in enumerate(vocab.relations):
    assert vocab.encode(rel) == i and vocab.decode(i) == rel
  assert vocab.encode('  LEFT of') == 1
  assert 'Near' in vocab and 'below' not in vocab


def test_vocab_min_count_and_unknown():
  raw = ['on'] * 3 + ['near'] * 2 + ['above']
  vocab = rl.RelationVocab.build(raw, min_count=2)
  assert vocab.relations == ('on', 'near') and vocab.min_count == 2
  with pytest.raises(KeyError, match="'above'"):
    vocab.encode('above')
  assert vocab.encode('above', allow_unknown=True) == -1
  with pytest.raises(IndexError):
    vocab.decode(2)
  with pytest.raises(IndexError):
    vocab.decode(-1)
  with pytest.raises(ValueError, match='min_count=4'):
    rl.RelationVocab.build(raw, min_count=4)
  with pytest.raises(ValueError, match='#1'):
    rl.RelationVocab.build(['on', '   '])


def test_vocab_save_load_round_trip(tmp_path):
  vocab = rl.RelationVocab.build(
      ['on'] * 5 + ['in front of'] * 2 + ['près de'] * 2 + ['under'],
      min_count=2)
  path = vocab.save(str(tmp_path / 'sub' / 'relations.json'))
  again = rl.RelationVocab.load(path)
  assert again == vocab
  assert again.relations == vocab.relations and again.counts == vocab.counts
  assert again.min_count == 2
  for i in range(len(vocab)):
    assert again.encode(vocab.decode(i)) == i
  payload = json.load(open(path, encoding='utf-8'))
  assert payload['relations'][0] == {'relation': 'on', 'count': 5}


@pytest.mark.parametrize('payload,match', [
    ({'relations': []}, 'format'),
    ({'format': 'vlg_relation_vocab', 'relations': [{'relation': 'On',
                                                     'count': 2}]},
     r'relation #0 .*not normalised'),
    ({'format': 'vlg_relation_vocab', 'relations': [{'relation': 'on'}]},
     r'relations\[0\]'),
    ({'format': 'vlg_relation_vocab', 'relations': [
        {'relation': 'on', 'count': 2}, {'relation': 'on', 'count': 1}]},
     'duplicate'),
    ({'format': 'vlg_relation_vocab', 'min_count': 3,
      'relations': [{'relation': 'on', 'count': 2}]}, 'min_count 3'),
])
def test_vocab_load_errors_name_the_file(tmp_path, payload, match):
  path = tmp_path / 'bad.json'
  path.write_text(json.dumps(payload))
  with pytest.raises(ValueError, match=match) as err:
    rl.RelationVocab.load(str(path))
  assert 'bad.json' in str(err.value)


# ---------------------------------------------------------------------------
# VSG verbalisation.


def test_verbalise_sorted_raster_order_exact_text():
  graph = rl.verbalise_scene_graph(GRAPH, 8, np.random.default_rng(0))
  assert graph.text == (
      'green star above red circle [SEP] red circle left of blue square '
      '[SEP] blue square touching small ring [SEP] small ring near big star '
      '[SEP] white cross below green star')
  assert graph.triplets == tuple(_triplet(GRAPH[i]) for i in RASTER)
  assert [id(r) for r in graph.relations] == [id(GRAPH[i]) for i in RASTER]


def test_verbalise_band_height_changes_order():
  graph = rl.verbalise_scene_graph(GRAPH, 8, np.random.default_rng(0),
                                   band=0.5)
  # Bands: [0, 0.5): subjects 0, 1; [0.5, 1): 2, 3, 4 — each by x.
  want = [1, 0, 3, 4, 2]
  assert graph.triplets == tuple(_triplet(GRAPH[i]) for i in want)
  # A centre on a band line belongs to the band below the line, despite
  # float noise (float32 0.7 / 0.1 = 6.9999998...): both are in band 7.
  on_line = [_rel('a', 'near', 'b', 0.9, 0.7), _rel('c', 'near', 'd', 0.1,
                                                    0.75)]
  graph = rl.verbalise_scene_graph(on_line, 2, np.random.default_rng(0))
  assert graph.triplets == ('c near d', 'a near b')


def test_verbalise_normalises_parts():
  rels = [_rel('Red  Circle!', 'Left-of', "duck's hat", 0.5, 0.5)]
  graph = rl.verbalise_scene_graph(rels, 3, np.random.default_rng(0))
  assert graph.text == 'red circle left of ducks hat'


def test_verbalise_unsorted_keeps_sampled_order_without_replacement():
  n, k = len(GRAPH), 3
  seen_orders = set()
  for seed in range(40):
    graph = rl.verbalise_scene_graph(GRAPH, k, np.random.default_rng(seed),
                                     sort=False)
    idx = [GRAPH.index(r) for r in graph.relations]
    assert len(idx) == k and len(set(idx)) == k  # without replacement
    # The sampled order: a uniform draw of k of n without replacement.
    want = np.random.default_rng(seed).choice(n, size=k, replace=False)
    assert idx == list(want)
    assert graph.triplets == tuple(_triplet(GRAPH[i]) for i in idx)
    sorted_graph = rl.verbalise_scene_graph(GRAPH, k,
                                            np.random.default_rng(seed))
    # Same sample, raster order.
    assert sorted([GRAPH.index(r) for r in sorted_graph.relations]) == sorted(
        idx)
    assert [GRAPH.index(r) for r in sorted_graph.relations] == [
        i for i in RASTER if i in idx]
    seen_orders.add(tuple(idx))
  assert len(seen_orders) > 10  # different seeds, different draws


def test_verbalise_sampling_is_seeded_and_uniform():
  draws = [rl.verbalise_scene_graph(GRAPH, 2, np.random.default_rng(s))
           for s in range(3000)]
  again = rl.verbalise_scene_graph(GRAPH, 2, np.random.default_rng(17))
  assert again == draws[17]
  counts = np.zeros(len(GRAPH))
  for g in draws:
    for r in g.relations:
      counts[GRAPH.index(r)] += 1
  # Each triplet is in a draw with probability k/n = 0.4: 1200 ± 4.3σ.
  sigma = np.sqrt(3000 * 0.4 * 0.6)
  np.testing.assert_array_less(np.abs(counts - 1200), 4.3 * sigma)


def test_verbalise_k_at_least_n_takes_all():
  graph = rl.verbalise_scene_graph(GRAPH, 100, np.random.default_rng(3))
  assert len(graph.triplets) == len(GRAPH)
  assert graph.text.count(' [SEP] ') == len(GRAPH) - 1


def test_verbalise_bad_input():
  with pytest.raises(ops.BadExampleError, match='no relation'):
    rl.verbalise_scene_graph([], 8, np.random.default_rng(0))
  bad = [dict(GRAPH[0])]
  del bad[0]['predicate']
  with pytest.raises(ValueError, match="'predicate'"):
    rl.verbalise_scene_graph(bad, 8, np.random.default_rng(0))
  with pytest.raises(ops.BadExampleError, match='subject_label'):
    rl.verbalise_scene_graph([_rel('!!', 'on', 'x', 0.5, 0.5)], 1,
                             np.random.default_rng(0))
  with pytest.raises(ValueError, match='k must be'):
    rl.verbalise_scene_graph(GRAPH, 0, np.random.default_rng(0))


# ---------------------------------------------------------------------------
# VSG encoding.


@pytest.fixture(scope='module')
def tok():
  texts = [_triplet(r) for r in GRAPH] + [
      'a large red circle left of a small blue square',
      'the white cross is below the green star'] * 10
  return tok_lib.train_tokenizer(texts, 120)


def _segments(ids, mask):
  """Token lists between [CLS] and each [SEP]."""
  real = list(ids[:int(mask.sum())])
  assert real[0] == tok_lib.CLS_ID and real[-1] == tok_lib.SEP_ID
  segs, cur = [], []
  for t in real[1:]:
    if t == tok_lib.SEP_ID:
      segs.append(cur)
      cur = []
    else:
      cur.append(t)
  return segs


def test_encode_vsg_layout(tok):
  graph = rl.verbalise_scene_graph(GRAPH, 8, np.random.default_rng(0))
  ids, mask = rl.encode_vsg(tok, graph, 112)
  assert ids.shape == mask.shape == (112,) and ids.dtype == np.int32
  n = int(mask.sum())
  np.testing.assert_array_equal(mask[:n], 1)
  np.testing.assert_array_equal(ids[n:], tok_lib.PAD_ID)
  segs = _segments(ids, mask)
  assert [tok.decode(s) for s in segs] == list(graph.triplets)
  # No lone '▁' piece before a [SEP], unlike tokenising the joined text.
  for s, t in zip(segs, graph.triplets):
    want, want_mask = tok.encode(t, 64)
    assert s == list(want[1:int(want_mask.sum()) - 1])
  # Same ids from the list of triplet strings.
  ids2, _ = rl.encode_vsg(tok, list(graph.triplets), 112)
  np.testing.assert_array_equal(ids2, ids)


def test_encode_vsg_truncates_at_a_triplet_boundary(tok):
  triplets = [_triplet(GRAPH[i]) for i in RASTER]
  full, full_mask = rl.encode_vsg(tok, triplets, 200)
  lengths = [len(s) for s in _segments(full, full_mask)]
  # Room for exactly two triplets, and one token short of a third.
  max_len = 1 + lengths[0] + 1 + lengths[1] + 1 + lengths[2]
  ids, mask = rl.encode_vsg(tok, triplets, max_len)
  segs = _segments(ids, mask)
  assert [tok.decode(s) for s in segs] == triplets[:2]
  assert int(mask.sum()) == max_len - lengths[2]
  # A first triplet that alone is too long is cut, [CLS] ... [SEP].
  ids, mask = rl.encode_vsg(tok, triplets, 4)
  assert ids[0] == tok_lib.CLS_ID and ids[3] == tok_lib.SEP_ID
  assert mask.sum() == 4 and list(ids[1:3]) == list(full[1:3])
  with pytest.raises(ValueError, match='non-empty'):
    rl.encode_vsg(tok, [], 16)


def test_synthetic_records_verbalise_without_unknown_pieces():
  records = [sy.make_record('train', i) for i in range(12)]
  records = [r for r in records if r['relations']]
  assert records
  texts = [ops.pre_caption(t, 10_000) for r in records
           for t in r['captions'] + [o['label'] for o in r['objects']]
           + [x['predicate'] for x in r['relations']]]
  tok = tok_lib.train_tokenizer(texts, 300)
  rng = np.random.default_rng(0)
  for r in records:
    graph = rl.verbalise_scene_graph(r['relations'], 8, rng)
    ids, mask = rl.encode_vsg(tok, graph, 112)
    assert tok_lib.UNK_ID not in ids[:int(mask.sum())]
    segs = _segments(ids, mask)
    assert [tok.decode(s) for s in segs] == list(
        graph.triplets[:len(segs)])
    ys = [float(x['subject_box'][1]) for x in graph.relations]
    bands = [int(y / 0.1 + 1e-6) for y in ys]
    assert bands == sorted(bands)


# ---------------------------------------------------------------------------
# MRC sampling.


def test_sample_mrc_pairs_padding_and_fields():
  out = rl.sample_mrc_pairs(GRAPH[:1], 3, rng=np.random.default_rng(0))
  np.testing.assert_array_equal(out['mask'], [1, 0, 0])
  assert out['relation'] == ['left of', '', '']
  assert out['subject_label'] == ['red circle', '', '']
  assert out['object_label'] == ['blue square', '', '']
  np.testing.assert_array_equal(out['subject_box'][0],
                                GRAPH[0]['subject_box'])
  np.testing.assert_array_equal(out['object_box'][0], GRAPH[0]['object_box'])
  np.testing.assert_array_equal(out['subject_box'][1:], [[0.5, 0.5, 1, 1]] * 2)
  assert out['subject_box'].dtype == np.float32
  assert 'label' not in out


def test_sample_mrc_pairs_without_replacement_and_vocab():
  vocab = rl.RelationVocab.build(['left of', 'above', 'near', 'below'])
  graph = GRAPH + [_rel('x', 'Touching', 'y', 0.5, 0.5)]  # not in the vocab
  seen = set()
  for seed in range(30):
    out = rl.sample_mrc_pairs(graph, 2, rng=np.random.default_rng(seed),
                              vocab=vocab)
    assert out['mask'].tolist() == [1, 1]
    assert out['relation'][0] != out['relation'][1]
    assert 'touching' not in out['relation']
    assert out['num_skipped'] == 2
    assert out['label'].tolist() == [vocab.encode(r) for r in out['relation']]
    seen.update(out['relation'])
  assert seen == {'left of', 'above', 'near', 'below'}
  empty = rl.sample_mrc_pairs([], 2, rng=np.random.default_rng(0),
                              vocab=vocab)
  assert empty['mask'].tolist() == [0, 0] and empty['label'].tolist() == [0, 0]


def test_numpy_modules_do_not_import_jax():
  code = ('import sys; import vlg.data.relations, vlg.data.box_masks; '
          'assert "jax" not in sys.modules, "jax imported"')
  subprocess.run([sys.executable, '-c', code], check=True)
