"""The synthetic world: determinism, held-out splits, and truth of every text.

The oracle below re-derives every relation from the documented definitions
(``vlg/synthetic/geometry.py`` docstring) using only the record's boxes
and rendered pixels: it parses the texts with its own grammar and never calls
the generator's predicates.
"""

import collections
import dataclasses
import hashlib
import itertools
import pathlib
import pickle
import re
import subprocess
import sys

import grain
import numpy as np
import pytest
from scipy import ndimage

from vlg import synthetic as sy

RICH = sy.WorldConfig(caption_relation_rate=0.5, action_rate=0.6,
                      touch_rate=0.4, inside_rate=0.3, count_rate=0.5)
NEAR, FAR = 0.6, 1.5
NUMBERS = {'one': 1, 'two': 2, 'three': 3, 'four': 4, 'five': 5, 'six': 6}
PLURAL = {c + ('es' if c.endswith('ss') else 's'): c for c in sy.CATEGORIES}
PHRASES = {
    'left of': 'left of', 'right of': 'right of', 'above': 'above',
    'below': 'below', 'near': 'near', 'far from': 'far from',
    'inside': 'inside', 'containing': 'contains', 'touching': 'touching',
    'bigger than': 'bigger than', 'smaller than': 'smaller than',
    'of the same colour as': 'same colour as', 'pointing at': 'points at',
    'connected to': 'is connected to', 'covering': 'covers',
    'in front of': 'covers'}
VERBS = {'is ' + k: v for k, v in PHRASES.items() if k == v}
VERBS.update({'contains': 'contains', 'is the same colour as': 'same colour as',
              'points at': 'points at', 'is connected to': 'is connected to',
              'covers': 'covers', 'is in front of': 'covers'})


def _alt(words):
  return '|'.join(sorted(map(re.escape, words), key=len, reverse=True))


NP = (rf'(?:({_alt(sy.SIZES)}) )?(?:({_alt(sy.COLOURS)}) )?'
      rf'({_alt(sy.CATEGORIES)})')
NPS = (rf'({_alt(NUMBERS)}) (?:({_alt(sy.SIZES)}) )?(?:({_alt(sy.COLOURS)}) )?'
       rf'({_alt(list(PLURAL) + ["objects"])})')
RELATION_RE = re.compile(rf'^(the|an?) {NP} ({_alt(PHRASES)}) (the|an?) {NP}$')
SENTENCE_RE = re.compile(rf'^the {NP} ({_alt(VERBS)}) the {NP}$')
SINGLE_RE = re.compile(rf'^(the|an?) {NP}$')
COUNT_RE = re.compile(rf'^{NPS}$')
PREFIX_RE = re.compile(r'^(a picture of |an image of |an image with )')
# A 'there' clause: how many objects match, then the noun phrase.
_PNP = (rf'(?:({_alt(sy.SIZES)}) )?(?:({_alt(sy.COLOURS)}) )?'
        rf'({_alt(list(PLURAL) + list(sy.CATEGORIES))})')
CLAUSE_RE = re.compile(
    rf'^there (?:is|are) (no|exactly \w+|\d|{_alt(NUMBERS)}|zero|a single|'
    rf'some|a number of|an?|) ?{_PNP}$')


def _gaps(a, b):
  return max(b[0] - a[2], a[0] - b[2]), max(b[1] - a[3], a[1] - b[3])


def _side(b):
  return max(b[2] - b[0], b[3] - b[1])


def _within(a, b):
  return b[0] <= a[0] and b[1] <= a[1] and a[2] <= b[2] and a[3] <= b[3]


class Oracle:
  """Judges statements about one record from its boxes and pixels alone."""

  def __init__(self, scene, record, cfg, flip=False):
    # ``scene`` (or a function making it) is only used to render objects
    # alone; every judgement reads the record's boxes and the pixels.
    self._scene, self.flip, self.cfg = scene, flip, cfg
    self.objs = record['objects']
    r = self.res = record['image'].shape[0]
    self.boxes, self._cache = [], {}
    for o in self.objs:
      cx, cy, w, h = (np.asarray(o['box'], np.float64) * r).tolist()
      x0, y0, x1, y1 = (round(v) for v in (cx - w / 2, cy - h / 2,
                                           cx + w / 2, cy + h / 2))
      self.boxes.append((r - x1, y0, r - x0, y1) if flip else (x0, y0, x1, y1))

  @property
  def scene(self):
    if callable(self._scene):
      self._scene = self._scene()
    return self._scene

  def _render(self, key, objects, actions):
    if key not in self._cache:
      img = sy.render_scene(dataclasses.replace(
          self.scene, objects=tuple(objects), actions=tuple(actions)),
                            self.cfg).astype(np.int32)
      self._cache[key] = img[:, ::-1] if self.flip else img
    return self._cache[key]

  def iso(self, k):
    return self._render(('iso', k), [self.scene.objects[k]], [])

  def mask(self, k):
    empty = self._render('empty', [], [])
    return np.abs(self.iso(k) - empty).max(-1) > 0

  def full(self):
    return self._render('full', self.scene.objects, self.scene.actions)

  def colour(self, k):
    """An object's fill: its pixel least blended with the background."""
    contrast = np.abs(self.iso(k) - self._render('empty', [], [])).sum(-1)
    y, x = np.unravel_index(contrast.argmax(), contrast.shape)
    return self.iso(k)[y, x]

  def components(self):
    if 'comp' not in self._cache:
      bare = self._render('bare', self.scene.objects, [])
      ink = np.abs(self.full() - bare).max(-1)
      labels, n = ndimage.label(ink > 0, structure=np.ones((3, 3)))
      self._cache['comp'] = [np.where(labels == k, ink, 0)
                             for k in range(1, n + 1)]
    return self._cache['comp']

  def find(self, size, colour, category):
    return [k for k, o in enumerate(self.objs)
            if o['category'] == category and size in (None, o['size']) and
            colour in (None, o['color'])]

  def _drawn_ends(self, s, o):
    """(ink near the s end, near the o end) of drawn marks joining them."""
    reach = max(1.5, 0.03 * self.res) + 2.5
    radius = max(4.5, 0.09 * self.res) + 1
    for comp in self.components():
      ys, xs = np.nonzero(comp)
      pts = np.stack([xs + 0.5, ys + 0.5], 1)

      def dist(b):
        dx = np.maximum(np.maximum(b[0] - pts[:, 0], pts[:, 0] - b[2]), 0)
        dy = np.maximum(np.maximum(b[1] - pts[:, 1], pts[:, 1] - b[3]), 0)
        return np.hypot(dx, dy)

      d_s, d_o = dist(self.boxes[s]), dist(self.boxes[o])
      if d_s.min() > reach or d_o.min() > reach:
        continue
      for k, b in enumerate(self.boxes):  # Drawn marks never cross objects.
        assert k in (s, o) or dist(b).min() > 0, (s, o, k)
      end_s, end_o = pts[d_s.argmin()], pts[d_o.argmin()]
      ink = comp[ys, xs]
      yield (ink[np.hypot(*(pts - end_s).T) <= radius].sum(),
             ink[np.hypot(*(pts - end_o).T) <= radius].sum())

  def holds(self, s, pred, o):
    a, b = self.boxes[s], self.boxes[o]
    dx, dy = _gaps(a, b)
    mean, dist = (_side(a) + _side(b)) / 2, np.hypot(max(dx, 0), max(dy, 0))
    so, oo = self.objs[s], self.objs[o]
    simple = {'left of': a[2] <= b[0], 'right of': a[0] >= b[2],
              'above': a[3] <= b[1], 'below': a[1] >= b[3],
              'near': max(dx, dy) >= 0 and dist <= NEAR * mean,
              'far from': dist >= FAR * mean}
    if pred in simple:
      return simple[pred]
    if pred == 'contains':
      return self.holds(o, 'inside', s)
    if pred == 'inside':
      ring = self.mask(o)
      cy, cx = (a[1] + a[3]) // 2, (a[0] + a[2]) // 2
      return (oo['category'] == 'ring' and _within(a, b) and
              not (self.mask(s) & ring).any() and ring[cy, :a[0]].any() and
              ring[cy, a[2]:].any() and ring[:a[1], cx].any() and
              ring[a[3]:, cx].any())
    if pred == 'touching':
      ms, mo = self.mask(s), self.mask(o)
      return (((dx == 0 and dy < 0) or (dy == 0 and dx < 0)) and
              not (ms & mo).any() and
              (ndimage.binary_dilation(ms, np.ones((3, 3))) & mo).any())
    if pred == 'bigger than':
      return (so['size'], oo['size']) == ('large', 'small') and (
          _side(a) >= 1.5 * _side(b))
    if pred == 'smaller than':
      return self.holds(o, 'bigger than', s)
    if pred == 'same colour as':
      return so['color'] == oo['color'] and np.abs(
          self.colour(s) - self.colour(o)).max() <= 2 * 12
    if pred == 'points at':
      return any(n_o > 2 * n_s for n_s, n_o in self._drawn_ends(s, o))
    if pred == 'is connected to':
      return any(max(n_s, n_o) < 1.5 * min(n_s, n_o)
                 for n_s, n_o in self._drawn_ends(s, o))
    if pred == 'covers':
      ms, mo = self.mask(s), self.mask(o)
      # Where s alone is fully drawn over o, the image shows s, not o.
      solid = (self.iso(s) == self.colour(s)).all(-1) & mo
      return (dx < 0 and dy < 0 and not _within(a, b) and
              not _within(b, a) and solid.sum() >= 1 and
              (self.full()[solid] == self.colour(s)).all() and
              (mo & ~ms).sum() >= 0.5 * mo.sum())
    raise AssertionError(f'unknown predicate {pred!r}')

  def unique(self, groups, text):
    found = self.find(*groups)
    assert len(found) == 1, f'{text!r}: {groups} matches {found}'
    return found[0]

  def count(self, number, size, colour, noun):
    if noun == 'objects':
      assert size is None and colour is None
      return NUMBERS[number] == len(self.objs)
    return NUMBERS[number] == len(self.find(size, colour, PLURAL[noun]))


def _check_statement(oracle, text, body):
  """Every 'there' clause of a statement caption holds."""
  body = re.sub(r' in the (image|picture)$', '', body)
  for clause in re.split(r', | and ', body):
    m = CLAUSE_RE.match(clause)
    assert m, (text, clause)
    quantity, size, colour, noun = m.groups()
    plural = noun in PLURAL
    n = len(oracle.find(size, colour, PLURAL.get(noun, noun)))
    words = {**NUMBERS, 'zero': 0, 'no': 0, 'a single': 1,
             **{str(k): k for k in range(7)}}
    quantity = quantity.removeprefix('exactly ')
    if quantity == 'no':
      assert n == 0, (text, clause, n)
    elif quantity in words:
      assert n == words[quantity] and plural == (n != 1), (text, clause, n)
    elif quantity in ('a', 'an'):
      assert n >= 1 and not plural, (text, clause)
    else:  # 'some', 'a number of' or a bare plural: two or more.
      assert n >= 2 and plural, (text, clause, n)


def _check_items(oracle, text, items):
  for item in re.split(r', | and ', items):
    if m := SINGLE_RE.match(item):
      assert m.group(1) in ('a', 'an') and oracle.find(*m.groups()[1:]), text
    else:
      m = COUNT_RE.match(item)
      assert m and oracle.count(*m.groups()), (text, item)


def check_record(oracle, record, seen):
  """Asserts that every statement of ``record`` holds per ``oracle``."""
  meeting = {frozenset((r['subject'], r['object'])) for r in record[
      'relations'] if r['predicate'] in ('touching', 'covers', 'inside',
                                         'contains')}
  for i, j in itertools.combinations(range(len(oracle.boxes)), 2):
    # Objects the scene graph does not say meet are clearly apart.
    assert frozenset((i, j)) in meeting or max(
        _gaps(oracle.boxes[i], oracle.boxes[j])) >= 2, (i, j)
  for rel in record['relations']:
    s, p, o = rel['subject'], rel['predicate'], rel['object']
    assert p in sy.RELATIONS
    assert rel['subject_label'] == record['objects'][s]['label']
    assert rel['subject_box'].tolist() == record['objects'][s]['box'].tolist()
    assert rel['object_box'].tolist() == record['objects'][o]['box'].tolist()
    assert oracle.holds(s, p, o), ('graph', s, p, o)
    seen['graph', p] += 1
  for text in record['captions']:
    body = PREFIX_RE.sub('', text)
    if m := RELATION_RE.match(body):
      g = m.groups()
      s, o = oracle.unique(g[1:4], text), oracle.unique(g[6:9], text)
      assert g[0] in ('a', 'an') and oracle.holds(s, PHRASES[g[4]], o), text
      seen['caption', PHRASES[g[4]]] += 1
    elif m := SENTENCE_RE.match(text):
      g = m.groups()
      s, o = oracle.unique(g[0:3], text), oracle.unique(g[4:7], text)
      assert oracle.holds(s, VERBS[g[3]], o), text
      seen['caption', VERBS[g[3]]] += 1
    elif text.startswith('there '):
      _check_statement(oracle, text, text)
      seen['statement', 'caption'] += 1
    else:
      if m := re.match(rf'^({_alt(NUMBERS)}) objects?: (.*)$', body):
        assert NUMBERS[m.group(1)] == len(oracle.objs), text
        body = m.group(2)
      _check_items(oracle, text, body)
  for region in record['regions']:
    text = region['text']
    if m := SINGLE_RE.match(text):
      target = oracle.unique(m.groups()[1:], text)
      if m.group(1) != 'the':
        assert m.group(2) and m.group(3), f'{text!r} is not a full label'
    else:
      m = RELATION_RE.match(text)
      assert m and m.group(1) == 'the' and m.group(6) == 'the', text
      g = m.groups()
      target, o = oracle.unique(g[1:4], text), oracle.unique(g[6:9], text)
      assert oracle.holds(target, PHRASES[g[4]], o), text
      seen['region', PHRASES[g[4]]] += 1
    assert region['box'].tolist() == record['objects'][target]['box'].tolist()
  head, *sentences = record['paragraph'].split('. ')
  m = re.match(rf'^there (?:is|are) ({_alt(NUMBERS)}) objects?: (.*)$', head)
  assert m and NUMBERS[m.group(1)] == len(oracle.objs), head
  _check_items(oracle, head, m.group(2))
  for text in sentences:
    assert (m := SENTENCE_RE.match(text)), text
    g = m.groups()
    s, o = oracle.unique(g[0:3], text), oracle.unique(g[4:7], text)
    assert oracle.holds(s, VERBS[g[3]], o), text
    seen['paragraph', VERBS[g[3]]] += 1
  for text in record['captions'] + [r['text'] for r in record['regions']] + [
      record['paragraph']]:
    assert text == text.lower()
    stripped = re.sub(r'\b(left|right) of\b', '', text)
    assert 'left' not in stripped and 'right' not in stripped, text


def _flip_texts(record):
  def swap(t):
    return re.sub(r'\b(left|right)\b',
                  lambda m: 'right' if m[1] == 'left' else 'left', t)
  return dict(
      record, captions=[swap(t) for t in record['captions']],
      paragraph=swap(record['paragraph']),
      regions=[dict(r, text=swap(r['text'])) for r in record['regions']],
      relations=[dict(r, predicate=swap(r['predicate']))
                 for r in record['relations']])


def test_every_statement_is_true_of_the_pixels_over_2000_scenes():
  seen = collections.Counter()
  for index in range(2000):
    split = ('train', 'val', 'test')[index % 3]
    record = sy.make_record(split, index, RICH)
    scene = lambda: sy.generate_scene(split, index, RICH)  # noqa: E731
    check_record(Oracle(scene, record, RICH), record, seen)
    if index % 10 == 0:  # After a mirror flip every text is still true.
      check_record(Oracle(scene, record, RICH, flip=True),
                   _flip_texts(record), collections.Counter())
    if index % 50 == 0:  # And all holds at 224 px.
      big = dataclasses.replace(RICH, resolution=224)
      record = sy.make_record(split, index, big)
      assert record['image'].shape == (224, 224, 3)
      check_record(Oracle(sy.generate_scene(split, index, big), record, big),
                   record, collections.Counter())
  for kind in ('graph', 'paragraph', 'region'):
    missing = [p for p in sy.RELATIONS if seen[kind, p] < 5]
    assert not missing, f'{kind}: too few {missing}'
  assert sum(v for (k, _), v in seen.items() if k == 'caption') > 1000


def test_default_world_statements_true_and_regime_as_configured():
  cfg = sy.WorldConfig()
  seen, relational, graphs, boxes = collections.Counter(), 0, 0, 0
  statements = 0
  for index in range(300):
    record = sy.make_record('train', index, cfg)
    check_record(Oracle(sy.generate_scene('train', index, cfg), record, cfg),
                 record, seen)
    assert len(record['captions']) == cfg.num_captions
    relational += sum(bool(RELATION_RE.match(PREFIX_RE.sub('', t)) or
                           SENTENCE_RE.match(t)) for t in record['captions'])
    statements += sum(t.startswith('there ') for t in record['captions'])
    graphs += record['has_graph']
    boxes += record['has_boxes']
  assert 0.03 < relational / 1500 < 0.15
  assert 0.12 < statements / 1500 < 0.28
  assert 0.08 < graphs / 300 < 0.25 and 0.08 < boxes / 300 < 0.25


def _digest(record):
  return hashlib.sha1(record['image'].tobytes() + repr(
      (record['captions'], record['regions'], record['paragraph'],
       record['relations'])).encode()).hexdigest()


def test_deterministic_from_split_index_and_seed_and_splits_disjoint():
  for index in (0, 7, 123):
    assert _digest(sy.make_record('train', index, RICH)) == _digest(
        sy.make_record('train', index, RICH))
  other_seed = dataclasses.replace(RICH, seed=1)
  assert all(sy.make_record('train', i, RICH)['image'].tobytes() !=
             sy.make_record('train', i, other_seed)['image'].tobytes()
             for i in range(10))
  hashes, ids = {}, {}
  for split in ('train', 'val', 'test'):
    records = [sy.make_record(split, i) for i in range(300)]
    hashes[split] = {hashlib.sha1(r['image'].tobytes()).hexdigest()
                     for r in records}
    ids[split] = {r['image_id'] for r in records}
    assert len(ids[split]) == 300
  for a, b in (('train', 'val'), ('train', 'test'), ('val', 'test')):
    assert not hashes[a] & hashes[b] and not ids[a] & ids[b]


def test_heldout_compositions_never_in_train():
  heldout = set(RICH.heldout)
  shown = {split: {(o.colour, o.category) for i in range(1500)
                   for o in sy.generate_scene(split, i, RICH).objects}
           for split in ('train', 'val')}
  assert not heldout & shown['train']
  assert heldout <= shown['val']  # Other splits do show them.


def test_boxes_are_tight_and_labels_match_pixels():
  palette = np.array([sy.PALETTE[c] for c in sy.COLOURS])
  for res in (64, 224):
    cfg = dataclasses.replace(RICH, resolution=res)
    sides = collections.defaultdict(list)
    for index in range(60 if res == 64 else 10):
      scene = sy.generate_scene('test', index, cfg)
      record = sy.make_record('test', index, cfg)
      oracle = Oracle(scene, record, cfg)
      for k, obj in enumerate(record['objects']):
        x0, y0, x1, y1 = oracle.boxes[k]
        assert (x0, y0, x1, y1) == scene.objects[k].box
        ys, xs = np.nonzero(oracle.mask(k))
        assert x0 <= xs.min() <= x0 + 1 and x1 - 2 <= xs.max() <= x1 - 1
        assert y0 <= ys.min() <= y0 + 1 and y1 - 2 <= ys.max() <= y1 - 1
        nearest = np.abs(palette - oracle.colour(k)).max(1).argmin()
        assert sy.COLOURS[nearest] == obj['color']
        assert obj['label'] == f"{obj['size']} {obj['color']} {obj['category']}"
        sides[obj['size']].append(max(x1 - x0, y1 - y0))
    assert min(sides['large']) >= 1.6 * max(sides['small'])
  # Shade jitter (±12) and brightness jitter (±10%) never merge two colours.
  for a, b in itertools.combinations(sy.PALETTE.values(), 2):
    a, b = np.array(a), np.array(b)
    assert (((a + 12) * 1.1 < (b - 12) * 0.9) |
            ((b + 12) * 1.1 < (a - 12) * 0.9)).any(), (a, b)


def test_scene_from_spec_builds_requested_relations():
  rng = np.random.default_rng(0)
  cfg = sy.WorldConfig()
  cases = [
      ([('circle', 'red', 'large'), ('square', 'blue', 'small')],
       [(0, 'above', 1)]),
      ([('circle', 'blue', 'large'), ('square', 'red', 'small')],
       [(0, 'above', 1), (0, 'bigger than', 1)]),
      ([('star', 'green', 'small'), ('ring', 'red', 'large')],
       [(1, 'contains', 0)]),
      ([('circle', 'cyan', 'small'), ('square', 'yellow', 'large')],
       [(0, 'touching', 1), (0, 'smaller than', 1)]),
      ([('hexagon', 'orange', 'large'), ('cross', 'purple', 'small')],
       [(1, 'covers', 0)]),
      ([('star', 'red', 'small'), ('triangle', 'blue', 'small'),
        ('diamond', 'red', 'large')],
       [(0, 'points at', 1), (2, 'is connected to', 1), (0, 'left of', 2)]),
  ]
  for specs, relations in cases:
    scene = sy.scene_from_spec(specs, rng, cfg, relations)
    record = dict(sy.scene_record(scene, cfg, rng),
                  image=sy.render_scene(scene, cfg))
    oracle = Oracle(scene, record, cfg)
    assert [o['label'] for o in record['objects']] == [
        f'{s} {c} {k}' for k, c, s in specs]
    for s, p, o in relations:
      assert oracle.holds(s, p, o), (specs, s, p, o)
      assert (s, p, o) in scene.relations
    check_record(oracle, record, collections.Counter())
  with pytest.raises(ValueError, match='contradict'):
    sy.scene_from_spec(cases[0][0], rng, cfg, [(1, 'bigger than', 0)])
  with pytest.raises(ValueError, match='ring'):
    sy.scene_from_spec(cases[0][0], rng, cfg, [(1, 'inside', 0)])


def test_edits_make_minimal_pairs():
  rng = np.random.default_rng(1)
  cfg = sy.WorldConfig()
  specs = [('circle', 'red', 'small'), ('square', 'blue', 'small'),
           ('star', 'yellow', 'large')]
  for _ in range(50):  # An edit may break the layout: then take another.
    scene = sy.scene_from_spec(specs, rng, cfg, [(0, 'left of', 1),
                                                 (2, 'points at', 0)])
    try:
      swapped = sy.swap_positions(scene, 0, 1)
      reversed_ = sy.reverse_action(scene, 0)
      break
    except sy.PlacementError:
      continue
  else:
    pytest.fail('no scene could be edited')
  assert sy.relation_truth(swapped, 0, 'left of', 1) is False
  assert sy.relation_truth(swapped, 1, 'left of', 0) is True
  assert sy.relation_truth(reversed_, 0, 'points at', 2) is True
  assert sy.relation_truth(reversed_, 2, 'points at', 0) is False
  for variant, (s, p, o) in ((reversed_, (0, 'points at', 2)),
                             (sy.with_actions(scene, [sy.Action(
                                 'is connected to', 2, 0)]),
                              (2, 'is connected to', 0))):
    record = dict(sy.scene_record(variant, cfg, rng),
                  image=sy.render_scene(variant, cfg))
    oracle = Oracle(variant, record, cfg)
    assert oracle.holds(s, p, o) and not oracle.holds(o, 'points at', s)
  recoloured = sy.edit_object(scene, 0, colour='green')
  assert recoloured.objects[0].label == 'small green circle'
  assert sy.referring_expression(recoloured, 0) == 'circle'
  assert not sy.check_scene(recoloured)


def test_objects_without_a_unique_description_get_no_referring_text():
  rng = np.random.default_rng(2)
  scene = sy.scene_from_spec([('circle', 'red', 'small')] * 2 + [
      ('star', 'blue', 'large')], rng, sy.WorldConfig())
  assert sy.referring_expression(scene, 0) is None
  assert sy.referring_expression(scene, 2) == 'star'
  record = sy.scene_record(scene, sy.WorldConfig(), rng)
  texts = [r['text'] for r in record['regions']] + record['paragraph'].split(
      '. ')[1:]
  assert texts and not any('circle' in t for t in texts)
  assert 'two small red circles' in record['paragraph']


def test_source_protocol_pickling_no_jax_and_config_checks():
  src = sy.SyntheticSource('val', sy.WorldConfig(), num_examples=50)
  clone = pickle.loads(pickle.dumps(src))
  assert len(clone) == 50 and 'val' in clone.describe()
  assert _digest(clone[np.int64(3)]) == _digest(src[3])
  dataset = grain.MapDataset.source(src).map(lambda r: r['image_id'])
  assert len(dataset) == 50 and dataset[7] == 10**9 + 7
  assert src[49]['image_id'] == 10**9 + 49
  with pytest.raises(IndexError):
    src[50]
  with pytest.raises(ValueError, match='split'):
    sy.SyntheticSource('bogus')
  code = ('import sys; from vlg import synthetic as s; '
          's.make_record("train", 0); assert "jax" not in sys.modules')
  subprocess.run([sys.executable, '-c', code], check=True,
                 cwd=pathlib.Path(__file__).resolve().parents[2])
  cfg = sy.WorldConfig(heldout=[['red', 'star']])  # As ml_collections gives.
  assert cfg.heldout == (('red', 'star'),) and hash(cfg)
  with pytest.raises(ValueError, match='heldout'):
    sy.WorldConfig(heldout=[('pink', 'star')])
  with pytest.raises(ValueError, match='resolution'):
    sy.WorldConfig(resolution=16)
  with pytest.raises(ValueError, match='graph_rate'):
    sy.WorldConfig(graph_rate=1.5)
