"""ITM negatives, pairs, labels, loss vs reference (docs/objectives.md §2.2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import reference as ref  # tests/objectives/reference.py, on sys.path via pytest
from vlg.objectives import itm

NUM_DRAWS = 20_000
B = 6  # every sampling test uses this batch size: one compilation
# Jitted once: eager op-by-op dispatch would compile every primitive.
_weights = jax.jit(itm.hard_negative_weights)
_sample_many = jax.jit(jax.vmap(itm.sample_hard_negatives,
                                in_axes=(0, None, None, None)))
_KEYS = []


def _draw(s_i2t, s_t2i, ids):
  """NUM_DRAWS independent draws: (neg_image, neg_text, metrics), numpy."""
  if not _KEYS:
    _KEYS.append(jax.random.split(jax.random.PRNGKey(0), NUM_DRAWS))
  out = _sample_many(_KEYS[0], jnp.asarray(s_i2t), jnp.asarray(s_t2i),
                     jnp.asarray(ids))
  return jax.tree.map(np.asarray, out)


def _sims(seed, b, scale=2.0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(b, b)) * scale).astype(np.float32)


@pytest.mark.parametrize('ids', [[0, 1, 2, 3, 4], [0, 1, 1, 2, 3, 3],
                                 [7, 7, 7, 8]])
def test_weights_match_reference(ids):
  b = len(ids)
  s_i2t, s_t2i = _sims(1, b), _sims(2, b)
  w_i2t, w_t2i = _weights(s_i2t, s_t2i, jnp.asarray(ids))
  assert w_i2t.dtype == jnp.float32
  for got, sim in ((w_i2t, s_i2t), (w_t2i, s_t2i)):
    want = ref.hard_negative_probs(sim, ids)
    np.testing.assert_allclose(np.exp(got), want, rtol=1e-5, atol=1e-7)
    # Excluded entries are exactly -inf, never a small number.
    assert np.all(np.isneginf(np.asarray(got)[want == 0]))


def test_sampling_distribution_matches_reference():
  """Empirical frequencies of 20k draws per row vs the reference, by a
  chi-square goodness-of-fit test; excluded entries never drawn."""
  ids = np.array([0, 1, 1, 2, 3, 3])  # duplicate image ids
  s_i2t, s_t2i = _sims(3, B, scale=1.5), _sims(4, B, scale=1.5)
  neg_image, neg_text, metrics = _draw(s_i2t, s_t2i, ids)
  assert neg_image.shape == (NUM_DRAWS, B) and neg_image.dtype == np.int32
  assert np.all(metrics['itm_no_negative'] == 0)
  # Each text b draws an image from t2i weights; each image a text (i2t).
  for draws, sim in ((neg_image, s_t2i), (neg_text, s_i2t)):
    probs = ref.hard_negative_probs(sim, ids)
    for row in range(B):
      counts = np.bincount(draws[:, row], minlength=B)
      excluded = probs[row] == 0
      assert excluded[row] and excluded.sum() == np.sum(ids == ids[row])
      assert counts[excluded].sum() == 0, (row, counts, ids)
      expected = probs[row][~excluded] * NUM_DRAWS
      chi2 = np.sum((counts[~excluded] - expected) ** 2 / expected)
      dof = int((~excluded).sum()) - 1
      # Bonferroni-corrected 1e-4 false-alarm rate over the 2B rows.
      assert chi2 < stats.chi2.ppf(1 - 1e-4 / (2 * B), dof), (
          row, counts, expected)


def test_sampling_prefers_hard_negatives():
  # One very similar wrong caption per image: it should dominate the draws.
  s = np.zeros((B, B), np.float32)
  hard = (np.arange(B) + 1) % B
  s[np.arange(B), hard] = 6.0
  _, neg_text, _ = _draw(s, s, np.arange(B))
  # Reference: e^6 / (e^6 + 4) = 0.990.
  np.testing.assert_allclose(np.mean(neg_text == hard),
                             np.exp(6) / (np.exp(6) + B - 2), atol=0.005)


def test_no_valid_negative_gives_fallback_and_no_nan():
  ids = np.full(B, 5)
  s = _sims(5, B)
  w_i2t, w_t2i = _weights(s, s, jnp.asarray(ids))
  assert not np.any(np.isnan(np.asarray(w_i2t)))
  assert not np.any(np.isnan(np.asarray(w_t2i)))
  neg_image, neg_text, metrics = _draw(s, s, ids)
  fallback = (np.arange(B) + 1) % B
  assert np.all(neg_image == fallback) and np.all(neg_text == fallback)
  assert np.all(metrics['itm_no_negative'] == B)
  # Batch of one: the only choice is itself, still no NaN.
  neg_image, neg_text, metrics = itm.sample_hard_negatives(
      jax.random.PRNGKey(0), s[:1, :1], s[:1, :1], jnp.asarray(ids[:1]))
  assert int(neg_image[0]) == 0 and int(neg_text[0]) == 0
  assert float(metrics['itm_no_negative']) == 1.0


def test_one_other_image_is_always_drawn():
  ids = np.array([3, 3, 3, 3, 3, 4])  # rows 0-4: image 4 is the only negative
  s = _sims(6, B)
  neg_image, neg_text, metrics = _draw(s, s, ids)
  assert np.all(neg_image[:, :5] == 5) and np.all(neg_text[:, :5] == 5)
  assert set(np.unique(neg_image[:, 5])) == {0, 1, 2, 3, 4}
  assert np.all(metrics['itm_no_negative'] == 0)


def test_no_image_ids_excludes_only_diagonal():
  s = _sims(7, 5)
  w_i2t, _ = _weights(s, s, None)
  np.testing.assert_allclose(np.exp(w_i2t), ref.hard_negative_probs(
      s, list(range(5))), rtol=1e-5, atol=1e-7)


def test_weights_carry_no_gradient():
  s = jnp.asarray(_sims(8, 4))
  def f(x):
    w = itm.hard_negative_weights(x, x, None)[0]
    return jnp.sum(jnp.where(jnp.isfinite(w), w, 0.0))

  g = jax.jit(jax.grad(f))(s)
  np.testing.assert_array_equal(g, 0.0)


def test_pairs_and_labels():
  neg_image = jnp.asarray([2, 0, 1])
  neg_text = jnp.asarray([1, 2, 0])
  image_index, text_index = itm.itm_pairs(neg_image, neg_text)
  np.testing.assert_array_equal(image_index, [0, 1, 2, 2, 0, 1, 0, 1, 2])
  np.testing.assert_array_equal(text_index, [0, 1, 2, 0, 1, 2, 1, 2, 0])
  labels = itm.itm_labels(3)
  np.testing.assert_array_equal(labels, [1, 1, 1, 0, 0, 0, 0, 0, 0])
  assert labels.dtype == jnp.int32
  # A row is a positive exactly when it pairs text b with image b.
  np.testing.assert_array_equal(
      np.asarray(image_index == text_index)[:3], np.asarray(labels)[:3] == 1)


@pytest.mark.parametrize('b', [1, 4, 16])
def test_itm_loss_matches_reference(b):
  rng = np.random.default_rng(b)
  logits = (rng.normal(size=(3 * b, 2)) * 3).astype(np.float32)
  labels = itm.itm_labels(b)
  loss, metrics = jax.jit(itm.itm_loss)(logits, labels)
  want_loss, want_acc = ref.itm_loss(logits, np.asarray(labels))
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  assert metrics['itm_loss'] == loss
  np.testing.assert_allclose(metrics['itm_acc'], want_acc, rtol=1e-6)
  # Gradient vs finite differences of the reference.
  g = jax.jit(jax.grad(lambda x, y: itm.itm_loss(x, y)[0]))(
      jnp.asarray(logits), labels)
  want_g = ref.numerical_grad(
      lambda x: ref.itm_loss(x, np.asarray(labels))[0], logits)
  np.testing.assert_allclose(g, want_g, rtol=1e-4, atol=1e-6)


def test_itm_loss_bf16_logits_computed_in_float32():
  logits = jnp.asarray([[2.0, -1.0], [0.5, 0.25]], jnp.bfloat16)
  loss, metrics = jax.jit(itm.itm_loss)(logits, jnp.asarray([0, 1]))
  assert loss.dtype == jnp.float32
  want, acc = ref.itm_loss(np.asarray(logits, np.float64), [0, 1])
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  assert float(metrics['itm_acc']) == acc == 0.5
