"""Masked in-batch ITC/ITM (padding pairs) against float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref  # tests/objectives/reference.py, on sys.path via pytest
from vlg.objectives import itc
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
