"""The caption truth function and the caption-specificity knobs of the world."""

import numpy as np
import pytest

from vlg.synthetic import language
from vlg.synthetic import layout
from vlg.synthetic import truth
from vlg.synthetic import world


def _scene(specs, relations=(), seed=0):
  return layout.scene_from_spec(specs, np.random.default_rng(seed),
                                world.WorldConfig(), relations)


@pytest.fixture(scope='module')
def scenes():
  """Hand-made: A = large red circle left of a small blue square;
  B = two small green stars; C = a large red circle alone."""
  a = _scene([('circle', 'red', 'large'), ('square', 'blue', 'small')],
             [(0, 'left of', 1)])
  b = _scene([('star', 'green', 'small'), ('star', 'green', 'small')])
  c = _scene([('circle', 'red', 'large')])
  return a, b, c


@pytest.mark.parametrize('text, expected', [
    # A: large red circle left of small blue square.
    ('a red circle', (True, False, True)),
    ('an image of a large red circle and a blue square', (True, False, False)),
    ('a circle', (True, False, True)),
    ('a small circle', (False, False, False)),
    ('two stars', (False, True, False)),
    ('two green stars', (False, True, False)),
    ('a star', (False, True, False)),
    ('one star', (False, False, False)),
    ('two objects: a red circle and a square', (True, False, False)),
    ('one object: a large red circle', (False, False, True)),
    ('a picture of two objects: two small green stars', (False, True, False)),
    ('a red circle left of a square', (True, False, False)),
    ('a square left of a red circle', (False, False, False)),
    ('a square right of a circle', (True, False, False)),
    ('the circle is left of the square', (True, False, False)),
    ('the star', (False, False, False)),  # two stars: not unique.
    ('the red circle', (True, False, True)),
    # Statements of 'there' clauses.
    ('there is a red circle in the picture', (True, False, True)),
    ('there is no star', (True, False, True)),
    ('there are no stars in the image', (True, False, True)),
    ('there are exactly 0 circles', (False, True, False)),
    ('there are exactly 2 stars', (False, True, False)),
    ('there are two green stars', (False, True, False)),
    ('there is exactly one circle', (True, False, True)),
    ('there is exactly 1 star', (False, False, False)),
    ('there is a single square', (True, False, False)),
    ('there are some stars', (False, True, False)),
    ('there are a number of green stars', (False, True, False)),
    ('there are circles', (False, False, False)),
    ('there is a circle and there is no star', (True, False, True)),
    ('there is a circle, there is a square and there is no star',
     (True, False, False)),
    # Relation sentences, VSR's 'in front of' among them.
    ('the square is right of the red circle', (True, False, False)),
    ('the square is inside the circle', (False, False, False)),
])
def test_is_true_on_hand_made_scenes(scenes, text, expected):
  assert tuple(truth.is_true(s, text) for s in scenes) == expected


@pytest.mark.parametrize('text, scene, kind', [
    ('a red circle', 0, 'true'),
    ('a star', 0, 'word'),  # No star at all.
    ('two stars', 2, 'word'),
    ('a blue circle', 0, 'binding'),  # Blue on the square, not the circle.
    ('a small circle', 0, 'binding'),
    ('an image of a large red circle and a large square', 0, 'binding'),
    ('a square left of a red circle', 0, 'relation'),
    ('the circle is right of the square', 0, 'relation'),
    ('one star', 1, 'count'),
    ('the star', 1, 'count'),  # Two stars: not unique.
    ('one object: a large red circle', 0, 'count'),
    ('there is no star', 1, 'count'),
    ('there is a red circle and there is no square', 0, 'count'),
])
def test_negative_kind_names_what_a_reader_must_get_right(scenes, text, scene,
                                                           kind):
  assert truth.negative_kind(scenes[scene], text) == kind


def test_kind_matrix_agrees_with_the_truth_matrix():
  cfg = world.WorldConfig(caption_relation_rate=0.5)
  scenes_, texts = [], []
  for i in range(24):
    scene = layout.generate_scene('train', i, cfg)
    scenes_.append(scene)
    texts.append(language.captions(
        scene, world.scene_rng('train', i, cfg, 1), cfg)[0])
  kinds = truth.kind_matrix(scenes_, texts)
  assert kinds.shape == (24, 24)
  true = truth.NEGATIVE_KINDS.index('true')
  np.testing.assert_array_equal(kinds == true,
                                truth.truth_matrix(scenes_, texts))
  assert (np.diag(kinds) == true).all()


def test_parse_reads_the_grammar():
  claims = truth.parse('an image with three objects: a red circle, two stars '
                       'and a large blue hexagon')
  assert [c.kind for c in claims] == ['total', 'exists', 'count', 'exists']
  assert claims[0].n == 3 and claims[2].n == 2
  assert claims[3].np == truth.NounPhrase('hexagon', 'blue', 'large')
  rel = truth.parse('a star of the same colour as a ring')
  assert len(rel) == 1 and rel[0].predicate == 'same colour as'
  claims = truth.parse('there are exactly 3 red stars, there is a single '
                       'ring and there are no squares in the image')
  assert [(c.kind, c.n) for c in claims] == [('count', 3), ('count', 1),
                                              ('count', 0)]
  assert claims[0].np == truth.NounPhrase('star', 'red')
  assert truth.parse('there are a number of rings')[0].kind == 'several'
  cover = truth.parse('the star is in front of the ring')
  assert cover[0].predicate == 'covers' and cover[0].definite
  assert truth.parse('a star in front of a ring')[0].predicate == 'covers'
  for bad in ('a purple unicorn', 'a circle beside a square', '',
              'there are exactly many stars', 'there is a unicorn'):
    with pytest.raises(truth.ParseError):
      truth.parse(bad)


@pytest.mark.parametrize('kw', [
    {}, world.LOOSE_CAPTIONS,
    dict(caption_relation_rate=0.5, caption_statement_rate=0.5,
         caption_sentence_rate=0.5, statement_min_clauses=1)])
def test_every_generated_text_is_true_of_its_own_scene(kw):
  cfg = world.WorldConfig(**kw)
  for index in range(60):
    scene = layout.generate_scene('train', index, cfg)
    rng = world.scene_rng('train', index, cfg, 1)
    texts = language.captions(scene, rng, cfg)
    texts += [t for t, _ in language.regions(scene, rng)]
    for text in texts:
      assert truth.is_true(scene, text) is True, (index, text)


def test_truth_matrix_shape_and_diagonal():
  cfg = world.WorldConfig()
  scenes = [layout.generate_scene('val', i, cfg) for i in range(5)]
  texts = [language.captions(s, world.scene_rng('val', i, cfg, 1), cfg)[0]
           for i, s in enumerate(scenes)]
  m = truth.truth_matrix(scenes, texts)
  assert m.shape == (5, 5) and m.dtype == bool and m.diagonal().all()


def test_default_captions_are_specific_and_relations_rare():
  """The world's default: under 1% of in-batch pairs are true, relations
  are stated by about a tenth of captions; the loose captions are not."""
  stats = truth.caption_stats(world.WorldConfig(), num_scenes=640)
  assert stats['pair_false_negative_rate'] <= 0.01
  assert 0.03 <= stats['relation_caption_rate'] <= 0.15
  loose = truth.caption_stats(world.WorldConfig(**world.LOOSE_CAPTIONS),
                              num_scenes=640)
  assert loose['pair_false_negative_rate'] > 0.03
  assert loose['images_with_true_other'] > 0.5


def test_caption_knobs_are_checked_and_named():
  with pytest.raises(ValueError, match='caption_detail_weights'):
    world.WorldConfig(caption_detail_weights=(0, 0, 0, 0))
  with pytest.raises(ValueError, match='caption_min_named'):
    world.WorldConfig(caption_min_named=4, caption_max_named=2)
  with pytest.raises(ValueError, match='statement_min_clauses'):
    world.WorldConfig(statement_min_clauses=3, statement_max_clauses=2)
  with pytest.raises(ValueError, match='caption_statement_rate'):
    world.WorldConfig(caption_relation_rate=0.6, caption_statement_rate=0.5)
  # Bare categories only: every single-object item is 'a circle'-like.
  cfg = world.WorldConfig(caption_detail_weights=(1, 0, 0, 0),
                          caption_relation_rate=0.0, caption_total_rate=0.0,
                          caption_statement_rate=0.0,
                          count_rate=0.0)
  scene = _scene([('circle', 'red', 'large'), ('square', 'blue', 'small')])
  caps = language.captions(scene, np.random.default_rng(0), cfg)
  for cap in caps:
    for claim in truth.parse(cap):
      assert claim.np.colour is None and claim.np.size is None
