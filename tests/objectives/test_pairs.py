"""Masked in-batch ITC/ITM (padding pairs) against float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref  # tests/objectives/reference.py, on sys.path via pytest
from vlg.objectives import entity
from vlg.objectives import itc
from vlg.objectives import itm
from vlg.objectives import pairs


def _feats(n, e, seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, e))
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _ref_masked_itc(v, w, temp, valid):
  """½(CE_i2t + CE_t2i) over valid rows, softmax over valid columns only."""
  ok = np.flatnonzero(valid)
  v, w = np.asarray(v, np.float64)[ok], np.asarray(w, np.float64)[ok]
  s = v @ w.T / temp
  losses = []
  for i in range(len(ok)):
    losses.append(0.5 * (-ref.log_softmax_row(s[i])[i]
                         - ref.log_softmax_row(s.T[i])[i]))
  return float(np.mean(losses))


def test_masked_itc_matches_reference_with_padding():
  v, w = _feats(6, 8, 0), _feats(6, 8, 1)
  valid = np.array([1, 1, 0, 1, 0, 1])
  loss, metrics, sims = pairs.masked_itc(jnp.asarray(v, jnp.float32),
                                         jnp.asarray(w, jnp.float32),
                                         jnp.float32(0.07), jnp.asarray(valid))
  assert float(loss) == pytest.approx(_ref_masked_itc(v, w, 0.07, valid),
                                      rel=1e-5)
  assert float(metrics['itc_loss']) == float(loss)
  assert np.all(np.asarray(sims['sim_i2t'])[:, valid == 0] <= -1e3)
  # Changing a padding pair's features changes nothing.
  v2 = v.copy()
  v2[2] = _feats(1, 8, 5)[0]
  loss2, _, _ = pairs.masked_itc(jnp.asarray(v2, jnp.float32),
                                 jnp.asarray(w, jnp.float32),
                                 jnp.float32(0.07), jnp.asarray(valid))
  assert float(loss2) == pytest.approx(float(loss), rel=1e-6)


def test_masked_itc_all_valid_equals_in_batch_itc():
  v, w = _feats(5, 8, 2), _feats(5, 8, 3)
  loss, _, _ = pairs.masked_itc(jnp.asarray(v, jnp.float32),
                                jnp.asarray(w, jnp.float32), jnp.float32(0.1),
                                jnp.ones(5, jnp.int32))
  want, _, _ = itc.itc_loss_in_batch(jnp.asarray(v, jnp.float32),
                                     jnp.asarray(w, jnp.float32),
                                     jnp.float32(0.1))
  assert float(loss) == pytest.approx(float(want), rel=1e-5)
  assert float(loss) == pytest.approx(ref.itc_loss_in_batch(v, w, 0.1),
                                      rel=1e-5)


def test_masked_itm_never_picks_padding_or_same_group_and_weights_rows():
  p, d = 6, 4
  rng = np.random.default_rng(4)
  v, w = _feats(p, 8, 6), _feats(p, 8, 7)
  valid = jnp.asarray([1, 1, 1, 0, 1, 0])
  groups = jnp.asarray([7, 7, 8, 9, 10, 11])  # Pairs 0 and 1: same text.
  _, _, sims = pairs.masked_itc(jnp.asarray(v, jnp.float32),
                                jnp.asarray(w, jnp.float32),
                                jnp.float32(0.07), valid)
  img = jnp.asarray(rng.normal(size=(p, 3, d)), jnp.float32)
  txt = jnp.asarray(rng.normal(size=(p, 2, d)), jnp.float32)
  seen = []

  def fuse_fn(t, tm, i, im):
    del tm, im
    seen.append((i, t))
    # Logits from the (image, text) rows: [match score, 0].
    s = jnp.sum(i[:, 0] * t[:, 0], -1)
    return jnp.stack([jnp.zeros_like(s), s], -1)

  for seed in range(20):
    loss, metrics = pairs.masked_itm(
        fuse_fn, img, None, txt, jnp.ones((p, 2), jnp.int32), sims, groups,
        valid, jax.random.PRNGKey(seed))
    i_rows, t_rows = seen[-1]
    # Recover the chosen negatives by matching rows to the inputs.
    neg_img = [int(np.argmin(np.abs(np.asarray(img[:, 0]) -
                                    np.asarray(i_rows[p + b, 0])).sum(-1)))
               for b in range(p)]
    neg_txt = [int(np.argmin(np.abs(np.asarray(txt[:, 0]) -
                                    np.asarray(t_rows[2 * p + b, 0])).sum(-1)))
               for b in range(p)]
    for b in (0, 1, 2, 4):
      assert valid[neg_img[b]] and valid[neg_txt[b]]
      assert groups[neg_img[b]] != groups[b]
      assert groups[neg_txt[b]] != groups[b]
  # The loss is the weighted mean CE over the 3·(valid) rows.
  s = np.asarray(jnp.sum(i_rows[:, 0] * t_rows[:, 0], -1), np.float64)
  labels = np.r_[np.ones(p), np.zeros(2 * p)]
  ce = np.logaddexp(0, s) - labels * s
  weight = np.tile(np.asarray(valid, np.float64), 3)
  assert float(loss) == pytest.approx((ce * weight).sum() / weight.sum(),
                                      rel=1e-5)
  assert 0 <= float(metrics['itm_acc']) <= 1


# Box pairs of two image rows. Row 0: the whole-image caption (box id 2),
# an object label and a region text of the same box (id 0), another box
# (id 1). Row 1: a box (id 0) with two texts, one of them identical to row
# 0's object label, and a padding pair.
_TEXT = np.array([11, 12, 13, 14, 12, 15, 0])
_ROW = np.array([0, 0, 0, 0, 1, 1, 1])
_BOX = np.array([2, 0, 0, 1, 0, 0, -1])
_VALID = np.array([1, 1, 1, 1, 1, 1, 0])


def test_box_pair_groups_same_text_or_same_row_and_box():
  positives, not_neg = pairs.box_pair_groups(
      jnp.asarray(_TEXT), jnp.asarray(_ROW), jnp.asarray(_BOX))
  positives, not_neg = np.asarray(positives), np.asarray(not_neg)
  want = np.eye(7, dtype=bool)
  for p, q in ((1, 2), (4, 5), (1, 4)):  # Same box; same box; same text.
    want[p, q] = want[q, p] = True
  np.testing.assert_array_equal(positives, want)
  np.testing.assert_array_equal(not_neg, want)
  # Box ids are per row: row 0's box 0 and row 1's box 0 are different
  # boxes (pairs 2 and 5 share neither text nor row).
  assert not positives[2, 5]


def test_box_pair_groups_without_box_ids_is_text_only():
  """ent_box_group = -1 (group_by_box=False): ITM excludes identical texts
  only, as itm's image_ids rule did, and ITC targets the diagonal."""
  text = jnp.asarray(_TEXT)
  positives, not_neg = pairs.box_pair_groups(
      text, jnp.asarray(_ROW), -jnp.ones(7, jnp.int32))
  np.testing.assert_array_equal(np.asarray(positives), np.eye(7, dtype=bool))
  np.testing.assert_array_equal(
      np.asarray(not_neg), np.asarray(itm._exclusion_mask(7, text)))


def _ref_group_itc(v, w, temp, valid, positives):
  """Multi-positive ITC in float64: row p's target is uniform over its valid
  positives; ½(CE_i2t + CE_t2i) averaged over the valid rows."""
  ok = np.flatnonzero(valid)
  v, w = np.asarray(v, np.float64)[ok], np.asarray(w, np.float64)[ok]
  pos = np.asarray(positives, bool)[np.ix_(ok, ok)] | np.eye(len(ok), dtype=bool)
  s = v @ w.T / temp
  losses = []
  for i in range(len(ok)):
    t = pos[i] / pos[i].sum()
    losses.append(0.5 * (-(t * ref.log_softmax_row(s[i])).sum()
                         - (t * ref.log_softmax_row(s.T[i])).sum()))
  return float(np.mean(losses))


def test_masked_itc_multi_positive_matches_reference():
  v, w = _feats(5, 8, 10), _feats(5, 8, 11)
  valid = np.array([1, 1, 1, 1, 0])
  positives = np.eye(5, dtype=bool)
  positives[0, 1] = positives[1, 0] = True  # A 2-member group.
  positives[2, 4] = positives[4, 2] = True  # A mate that is padding.
  loss, metrics, _ = pairs.masked_itc(
      jnp.asarray(v, jnp.float32), jnp.asarray(w, jnp.float32),
      jnp.float32(0.1), jnp.asarray(valid), jnp.asarray(positives))
  want = _ref_group_itc(v, w, 0.1, valid, positives)
  assert float(loss) == pytest.approx(want, rel=1e-5)
  # Not the diagonal loss: the group changes the targets.
  diag = _ref_masked_itc(v, w, 0.1, valid)
  assert abs(want - diag) > 1e-3
  assert float(metrics['itc_loss']) == float(loss)


def test_masked_itc_singleton_groups_equal_the_diagonal_loss():
  v, w = _feats(6, 8, 12), _feats(6, 8, 13)
  valid = jnp.asarray([1, 1, 0, 1, 1, 1])
  args = (jnp.asarray(v, jnp.float32), jnp.asarray(w, jnp.float32),
          jnp.float32(0.07), valid)
  base, base_m, _ = pairs.masked_itc(*args)
  # Distinct texts and boxes: every group is a singleton.
  positives, _ = pairs.box_pair_groups(jnp.arange(6), jnp.zeros(6, jnp.int32),
                                       jnp.arange(6))
  loss, m, _ = pairs.masked_itc(*args, positives)
  assert float(loss) == float(base)
  assert float(m['itc_acc']) == float(base_m['itc_acc'])
  assert float(loss) == pytest.approx(
      _ref_masked_itc(v, w, 0.07, np.asarray(valid)), rel=1e-5)


def test_masked_itc_acc_counts_an_argmax_inside_the_group():
  # Image 0 is closest to text 1, its group mate; image 1 to text 1.
  e = np.eye(3)
  v = np.stack([e[1], e[1], e[2]])
  w = np.stack([e[0], e[1], e[2]])
  args = (jnp.asarray(v, jnp.float32), jnp.asarray(w, jnp.float32),
          jnp.float32(0.1), jnp.ones(3, jnp.int32))
  _, m, _ = pairs.masked_itc(*args)
  assert float(m['itc_acc']) == pytest.approx(2 / 3)
  positives = jnp.asarray([[1, 1, 0], [1, 1, 0], [0, 0, 1]], bool)
  _, m, _ = pairs.masked_itc(*args, positives)
  assert float(m['itc_acc']) == pytest.approx(1.0)


def _index_embeds(p):
  """[P, 1, 1] embeddings holding their own index, so a fuse_fn can read
  which pairs it was given."""
  return jnp.arange(p, dtype=jnp.float32).reshape(p, 1, 1)


def _draw_negatives(groups, sims, valid, seeds):
  """The (negative image, negative text) indices masked_itm fuses."""
  p = valid.shape[0]
  seen = []

  def fuse_fn(t, tm, i, im):
    del tm, im
    seen.append((np.asarray(i[:, 0, 0]).astype(int),
                 np.asarray(t[:, 0, 0]).astype(int)))
    return jnp.zeros((3 * p, 2), jnp.float32)

  out = []
  for seed in seeds:
    _, metrics = pairs.masked_itm(
        fuse_fn, _index_embeds(p), None, _index_embeds(p),
        jnp.ones((p, 1), jnp.int32), sims, groups, valid,
        jax.random.PRNGKey(seed))
    i_rows, t_rows = seen[-1]
    out.append((i_rows[p:2 * p], t_rows[2 * p:], metrics))
  return out


def test_masked_itm_never_draws_a_box_duplicate_as_negative():
  """Pairs 1 and 2 (one box, two texts) are copies of each other's box
  concept; similarities that strongly favour each as the other's negative
  never make it one once the box groups are given."""
  p = len(_TEXT)
  sim = np.zeros((p, p), np.float32)
  sim[1, 2] = sim[2, 1] = sim[4, 5] = sim[5, 4] = 30.0
  sim[:, _VALID == 0] = pairs._NEG
  sims = {'sim_i2t': jnp.asarray(sim), 'sim_t2i': jnp.asarray(sim)}
  valid = jnp.asarray(_VALID)
  _, not_neg = pairs.box_pair_groups(jnp.asarray(_TEXT), jnp.asarray(_ROW),
                                     jnp.asarray(_BOX))
  for neg_img, neg_txt, metrics in _draw_negatives(not_neg, sims, valid,
                                                   range(50)):
    for b in np.flatnonzero(_VALID):
      for neg in (neg_img[b], neg_txt[b]):
        assert _VALID[neg] and not np.asarray(not_neg)[b, neg], (b, neg)
    assert float(metrics['itm_no_negative']) == 0
  # Text-only groups (the rule without box ids) do draw the duplicate: the
  # check above can fail.
  drawn = _draw_negatives(jnp.asarray(_TEXT), sims, valid, range(5))
  assert all(neg_txt[1] == 2 and neg_img[1] == 2 for neg_img, neg_txt, _
             in drawn)


def test_masked_itm_text_ids_draw_as_itm_sample_hard_negatives():
  """Ids as groups (captions, VSG, group_by_box=False) draw exactly the
  negatives of itm.sample_hard_negatives with those ids."""
  p = 6
  valid = jnp.ones(p, jnp.int32)
  ids = jnp.asarray([3, 3, 4, 5, 6, 6])
  _, _, sims = pairs.masked_itc(jnp.asarray(_feats(p, 8, 20), jnp.float32),
                                jnp.asarray(_feats(p, 8, 21), jnp.float32),
                                jnp.float32(0.07), valid)
  as_matrix = pairs.group_matrix(ids)
  for seed in range(10):
    key = jax.random.PRNGKey(seed)
    want_img, want_txt, want_m = itm.sample_hard_negatives(
        key, sims['sim_i2t'], sims['sim_t2i'], ids)
    for groups in (ids, as_matrix):
      [(neg_img, neg_txt, m)] = _draw_negatives(groups, sims, valid, [seed])
      np.testing.assert_array_equal(neg_img, np.asarray(want_img))
      np.testing.assert_array_equal(neg_txt, np.asarray(want_txt))
      assert float(m['itm_no_negative']) == float(want_m['itm_no_negative'])


def test_masked_itm_weights_out_pairs_without_a_negative():
  """Two valid pairs of one box and a padding pair: no allowed negative, so
  only the positives are trained and both are counted."""
  valid = jnp.asarray([1, 1, 0])
  not_neg = jnp.asarray([[1, 1, 0], [1, 1, 0], [0, 0, 1]], bool)
  sims = {'sim_i2t': jnp.zeros((3, 3)), 'sim_t2i': jnp.zeros((3, 3))}
  scores = jnp.asarray([2.0, -1.0, 0.5, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0])

  def fuse_fn(t, tm, i, im):
    del t, tm, i, im
    return jnp.stack([jnp.zeros_like(scores), scores], -1)

  loss, metrics = pairs.masked_itm(fuse_fn, _index_embeds(3), None,
                                   _index_embeds(3), jnp.ones((3, 1)), sims,
                                   not_neg, valid, jax.random.PRNGKey(0))
  want = np.mean([np.logaddexp(0, 2.0) - 2.0, np.logaddexp(0, -1.0) + 1.0])
  assert float(loss) == pytest.approx(want, rel=1e-6)
  assert float(metrics['itm_no_negative']) == 2
  assert float(metrics['itm_acc']) == pytest.approx(0.5)


def test_entity_loss_passes_box_groups(monkeypatch):
  """entity_loss hands image_text_losses the (row, box) and text groups of
  the batch slots."""
  b, m, d = 2, 4, 3
  # _TEXT, _ROW, _BOX's pairs laid out as two rows of four.
  rows = lambda x: jnp.asarray(x).reshape(b, m)
  batch = {
      'ent_image': jnp.zeros((b, 4, 4, 3), jnp.uint8),
      'ent_valid': rows([1, 1, 1, 1, 1, 1, 0, 0]),
      'ent_text_group': rows([11, 12, 13, 14, 12, 15, 0, 0]),
      'ent_box_group': rows([2, 0, 0, 1, 0, 0, -1, -1]),
      'ent_patch_mask': jnp.ones((b, m, 5), jnp.int32),
      'ent_text_ids': jnp.ones((b, m, 2), jnp.int32),
      'ent_text_mask': jnp.ones((b, m, 2), jnp.int32),
      'ent_mlm_ids': jnp.ones((b, m, 2), jnp.int32),
      'ent_mlm_labels': jnp.ones((b, m, 2), jnp.int32),
      'ent_box': jnp.full((b, m, 4), 0.5, jnp.float32),
      'ent_is_box': jnp.ones((b, m), jnp.int32),
  }

  class Fake:

    def embed_image(self, image, rngs=None):
      return {'image_embeds': jnp.zeros((image.shape[0], 5, d))}

    def embed_concept(self, embeds, index, mask):
      return {'concept_embeds': embeds[index], 'concept_mask': mask,
              'concept_feat': jnp.zeros((index.shape[0], d))}

    def embed_text(self, ids, mask, rngs=None):
      return {'text_embeds': jnp.zeros(ids.shape + (d,))}

    def fuse_cls(self, t, tm, i, im=None, rngs=None):
      return t[:, 0]

    def predict_box(self, cls):
      return jnp.full((cls.shape[0], 4), 0.5)

  got = {}

  def fake_losses(model, **kw):
    got.update(kw)
    return jnp.float32(0.0), {}

  monkeypatch.setattr(pairs, 'image_text_losses', fake_losses)
  weights = {'itc': 1.0, 'itm': 1.0, 'mlm': 1.0, 'bbox': 1.0, 'giou': 1.0}
  entity.entity_loss(Fake(), batch, rng=jax.random.PRNGKey(0),
                     temp=jnp.float32(0.07), weights=weights,
                     dropout_rngs=None)
  want = np.eye(8, dtype=bool)
  for p, q in ((1, 2), (4, 5), (1, 4), (6, 7)):  # (6, 7): padding, text 0.
    want[p, q] = want[q, p] = True
  np.testing.assert_array_equal(np.asarray(got['groups']), want)
  want[6, 7] = want[7, 6] = False  # Padding has no box group.
  np.testing.assert_array_equal(np.asarray(got['positives']), want)
