"""Tests of vlg.objectives.qformer against float64 NumPy re-derivations.

The references follow docs/probing.md §1.3 literally (explicit loops over
rows, explicit exponentials, torch's label-smoothing convention
``(1 − ε)·onehot + ε/C``) and share no code with the module.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlg.models import resamplers
from vlg.objectives import itc
from vlg.objectives import qformer


@pytest.fixture
def x64():
  """float64 JAX, so the losses can be held to ~1e-10 of the references."""
  with jax.enable_x64(True):
    yield


def _log_softmax(row):
  m = np.max(row)
  return row - m - np.log(np.sum(np.exp(row - m)))


def _smoothed_ce(row, label, eps):
  """−Σ_c target_c log p_c with target = (1 − ε)·onehot + ε/C."""
  target = np.full(len(row), eps / len(row))
  target[label] += 1 - eps
  return -np.sum(target * _log_softmax(row))


def _ref_itc(query_feat, text_feat, temp, eps):
  b, nq, _ = query_feat.shape
  sim = np.zeros((b, b))
  for i in range(b):
    for j in range(b):
      sim[i, j] = max(query_feat[i, q] @ text_feat[j] for q in range(nq))
  sim /= temp
  loss = 0.0
  for i in range(b):
    loss += 0.5 * (_smoothed_ce(sim[i], i, eps) +
                   _smoothed_ce(sim[:, i], i, eps)) / b
  return loss, sim


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_smoothed_cross_entropy_hand_example(x64):
  # p = (3/4, 1/4); ε = 0.1 puts 0.95 on class 0 and 0.05 on class 1.
  logits = jnp.array([np.log(3.0), 0.0], jnp.float64)
  got = qformer.smoothed_cross_entropy(logits, jnp.array(0), 0.1)
  want = -(0.95 * np.log(0.75) + 0.05 * np.log(0.25))
  np.testing.assert_allclose(got, want, rtol=1e-12)
  got = qformer.smoothed_cross_entropy(logits, jnp.array(0), 0.0)
  np.testing.assert_allclose(got, -np.log(0.75), rtol=1e-12)


@pytest.mark.parametrize('eps', [0.1, 0.0])
def test_itc_max_over_queries_matches_reference(eps, x64):
  rng = np.random.RandomState(0)
  query_feat = _unit(rng.randn(5, 4, 8))
  text_feat = _unit(rng.randn(5, 8))
  text_feat[2] = _unit(query_feat[2, 3] + 0.1 * rng.randn(8))
  temp = 0.2
  loss, metrics, aux = qformer.itc_max_over_queries(
      jnp.asarray(query_feat), jnp.asarray(text_feat), temp,
      label_smoothing=eps)
  want, sim = _ref_itc(query_feat, text_feat, temp, eps)
  np.testing.assert_allclose(loss, want, rtol=1e-10)
  np.testing.assert_allclose(aux['sim_i2t'], sim, rtol=1e-10)
  np.testing.assert_allclose(aux['sim_t2i'], sim.T, rtol=1e-10)
  np.testing.assert_allclose(metrics['itc_acc'],
                             np.mean(np.argmax(sim, 1) == np.arange(5)))
  assert metrics['itc_loss'] == loss


def test_itc_with_one_query_and_no_smoothing_is_in_batch_itc(x64):
  rng = np.random.RandomState(1)
  v, w = _unit(rng.randn(6, 8)), _unit(rng.randn(6, 8))
  loss, _, _ = qformer.itc_max_over_queries(
      jnp.asarray(v[:, None]), jnp.asarray(w), 0.07, label_smoothing=0.0)
  want, _, _ = itc.itc_loss_in_batch(jnp.asarray(v), jnp.asarray(w), 0.07)
  np.testing.assert_allclose(loss, want, rtol=1e-10)


def test_itc_gradient_reaches_only_the_best_query():
  rng = np.random.RandomState(2)
  query_feat = jnp.asarray(_unit(rng.randn(3, 4, 8)))
  text_feat = jnp.asarray(_unit(rng.randn(3, 8)))
  grad = jax.jit(jax.grad(lambda q: qformer.itc_max_over_queries(
      q, text_feat, 0.1)[0]))(query_feat)
  # Image i's query q gets gradient iff it is the max for some text j.
  best = np.argmax(np.einsum('iqe,je->ijq', query_feat, text_feat), -1)
  for i in range(3):
    used = set(best[i])
    for q in range(4):
      assert (np.abs(grad[i, q]).max() > 0) == (q in used), (i, q)


def test_itc_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match='expected'):
    qformer.itc_max_over_queries(jnp.zeros((2, 3, 4)), jnp.zeros((2, 5)),
                                 0.1)


def test_itm_mean_over_queries_matches_reference(x64):
  rng = np.random.RandomState(3)
  logits = rng.randn(6, 4, 2) * 2
  loss, metrics = qformer.itm_mean_over_queries(jnp.asarray(logits))
  labels = [1, 1, 0, 0, 0, 0]
  mean = logits.mean(axis=1)
  want = np.mean([-_log_softmax(mean[n])[labels[n]] for n in range(6)])
  np.testing.assert_allclose(loss, want, rtol=1e-10)
  np.testing.assert_allclose(metrics['itm_acc'],
                             np.mean(np.argmax(mean, 1) == labels))
  # Explicit labels; and N = 3B is required without them.
  loss, _ = qformer.itm_mean_over_queries(jnp.asarray(logits[:2]),
                                          jnp.array([0, 1]))
  mean = logits[:2].mean(axis=1)
  np.testing.assert_allclose(
      loss, -(_log_softmax(mean[0])[0] + _log_softmax(mean[1])[1]) / 2,
      rtol=1e-10)
  with pytest.raises(ValueError, match='not 3B'):
    qformer.itm_mean_over_queries(jnp.asarray(logits[:4]))


def test_itm_pairs_take_the_hardest_allowed_negatives():
  b = 4
  sim = np.zeros((b, b))
  hardest = [2, 0, 3, 1]  # Off-diagonal and never a same-image pair.
  for i, j in enumerate(hardest):
    sim[i, j] = 60.0  # A near-certain draw.
  sim[0, 0] = sim[1, 1] = 100.0  # Positives are never drawn.
  pairs = jax.jit(qformer.itm_hard_negative_pairs)
  image_index, text_index, metrics = pairs(jax.random.key(0),
                                           jnp.asarray(sim), jnp.asarray(sim))
  np.testing.assert_array_equal(image_index, [0, 1, 2, 3] + hardest +
                                [0, 1, 2, 3])
  np.testing.assert_array_equal(text_index, [0, 1, 2, 3] * 2 + hardest)
  assert metrics['itm_no_negative'] == 0

  # Pairs of the same image are never negatives, however similar.
  image_ids = jnp.array([7, 7, 8, 8])
  for seed in range(5):
    image_index, text_index, _ = pairs(jax.random.key(seed), jnp.asarray(sim),
                                       jnp.asarray(sim), image_ids)
    ids = np.asarray(image_ids)
    assert (ids[image_index[b:]] != ids[text_index[b:]]).all()


def _ref_itg(logits, ids, mask, eps):
  total, count = 0.0, 0
  for b in range(ids.shape[0]):
    for i in range(ids.shape[1] - 1):
      if mask[b, i + 1]:
        total += _smoothed_ce(logits[b, i], ids[b, i + 1], eps)
        count += 1
  return total / count, count


@pytest.mark.parametrize('eps', [0.1, 0.0])
def test_itg_prefix_lm_matches_reference_with_padding(eps, x64):
  rng = np.random.RandomState(4)
  logits = rng.randn(3, 5, 11) * 2
  ids = rng.randint(0, 11, (3, 5))
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
  loss, metrics = qformer.itg_prefix_lm(
      jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(mask),
      label_smoothing=eps)
  want, count = _ref_itg(logits, ids, mask, eps)
  np.testing.assert_allclose(loss, want, rtol=1e-10)
  assert metrics['itg_num_tokens'] == count == 7

  # Logits that predict padding, the last position and the first token's
  # own id are never scored.
  noisy = logits.copy()
  noisy[:, -1] += 50 * rng.randn(3, 11)
  noisy[0, 2:] += 50 * rng.randn(3, 11)
  noisy[2, 1:] += 50 * rng.randn(4, 11)
  other_ids = ids.copy()
  other_ids[:, 0] = (ids[:, 0] + 3) % 11
  other_ids[mask == 0] = (ids[mask == 0] + 1) % 11
  again, _ = qformer.itg_prefix_lm(jnp.asarray(noisy), jnp.asarray(other_ids),
                                   jnp.asarray(mask), label_smoothing=eps)
  np.testing.assert_allclose(again, loss, rtol=1e-12)


def test_itg_without_targets_is_zero_with_zero_gradient():
  logits = jnp.ones((2, 3, 5))
  mask = jnp.array([[1, 0, 0], [1, 0, 0]])
  ids = jnp.zeros((2, 3), jnp.int32)
  fn = lambda x: qformer.itg_prefix_lm(x, ids, mask)[0]
  loss, grad = jax.jit(jax.value_and_grad(fn))(logits)
  assert loss == 0
  assert np.abs(grad).max() == 0


def test_decoder_input_ids_replace_only_the_first_token():
  ids = np.array([[101, 5, 6], [101, 7, 0]])
  np.testing.assert_array_equal(qformer.decoder_input_ids(ids, 30522),
                                [[30522, 5, 6], [30522, 7, 0]])


# ------------------------------------------------------ composed stage 1


@functools.cache
def _micro_qformer():
  cfg = resamplers.resampler_config(
      'qformer', 'tiny', vision_width=6, layers=1, width=8, heads=2, mlp=16,
      num_queries=2, vocab_size=13, max_positions=6, embed_dim=4)
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: resamplers.QFormer(cfg,
                                                         rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract, nnx.Param)
  rng = np.random.RandomState(0)

  def draw(path, x):
    name = path[-1].key
    if name == 'temp':
      return jnp.full(x.shape, 0.07, x.dtype)
    return jnp.asarray(rng.randn(*x.shape) * 0.3 + (name == 'scale'),
                       x.dtype)

  params = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state))
  return graphdef, params


def test_stage1_loss_sums_the_three_objectives_and_trains_the_qformer(
    fast_compile):
  graphdef, params = _micro_qformer()
  rng = np.random.RandomState(5)
  image = jnp.asarray(rng.randn(3, 4, 6), jnp.float32)
  batch = {'text_ids': jnp.asarray(rng.randint(2, 13, (3, 5)), jnp.int32),
           'text_mask': jnp.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1],
                                   [1, 1, 1, 0, 0]], jnp.int32)}
  weights = {'itc': 1.0, 'itm': 0.5, 'itg': 2.0}

  def fn(params, image):
    model = nnx.merge(graphdef, params)
    return qformer.stage1_loss(model, image, batch, rng=jax.random.key(0),
                               bos_id=1, weights=weights)

  (total, metrics), (grads, image_grad) = jax.jit(jax.value_and_grad(
      fn, argnums=(0, 1), has_aux=True))(params, image)
  np.testing.assert_allclose(
      total, metrics['itc_loss'] + 0.5 * metrics['itm_loss'] +
      2.0 * metrics['itg_loss'], rtol=1e-6)
  assert metrics['loss'] == total
  assert metrics['itg_num_tokens'] == 9
  for k in ('itc_loss', 'itm_loss', 'itg_loss'):
    assert np.isfinite(metrics[k]) and metrics[k] > 0, k
  # The frozen image tokens get no gradient; every head and the Q-Former do.
  assert np.abs(image_grad).max() == 0
  for path in (('ln_vision', 'scale'), ('query_tokens',), ('temp',),
               ('itm_head', 'kernel'), ('lm_head', 'bias'),
               ('vision_proj', 'kernel'), ('text_proj', 'kernel'),
               ('layers', 0, 'cross', 'key', 'kernel'),
               ('layers', 0, 'query_mlp', 'fc1', 'kernel'),
               ('layers', 0, 'mlp', 'fc1', 'kernel')):
    g = functools.reduce(lambda d, k: d[k], path, grads)
    assert np.abs(np.asarray(g)).max() > 0, path
