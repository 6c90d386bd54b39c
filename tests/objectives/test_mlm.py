"""MLM masking and distilled loss vs the reference (docs/objectives.md §2.3)."""

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref  # tests/objectives/reference.py, on sys.path via pytest
from vlg.objectives import masking
from vlg.objectives import mlm

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL = (PAD, UNK, CLS, SEP, MASK)
VOCAB = 50
# Jitted once: eager op-by-op dispatch would compile every primitive.
_mlm_loss = jax.jit(mlm.mlm_loss)
_mlm_grad = jax.jit(jax.grad(mlm.mlm_loss, argnums=(0, 1), has_aux=True))
_mlm_grad_no_teacher = jax.jit(jax.grad(mlm.mlm_loss, has_aux=True))


def _texts(rng, n, length):
  """[n, length] ids: [CLS] words [SEP] [PAD]..., some [UNK] inside."""
  ids = rng.integers(len(SPECIAL), VOCAB, size=(n, length))
  lens = rng.integers(3, length + 1, size=n)
  for i, n_tok in enumerate(lens):
    ids[i, 0] = CLS
    ids[i, n_tok - 1] = SEP
    ids[i, n_tok:] = PAD
  ids[rng.random(ids.shape) < 0.02] = UNK
  return ids


def _mask(ids, seed, p=0.15):
  return masking.mask_tokens(ids, np.random.default_rng(seed),
                             vocab_size=VOCAB, mask_id=MASK,
                             special_ids=SPECIAL, pad_id=PAD, p=p)


def _binomial_ok(k, n, p, sigmas=5.0):
  return abs(k - n * p) <= sigmas * np.sqrt(n * p * (1 - p))


def test_masking_rates_within_binomial_tolerance():
  ids = _texts(np.random.default_rng(0), 4000, 32)
  masked, labels = _mask(ids, 1)
  eligible = ~np.isin(ids, SPECIAL)
  selected = labels != -100
  n_elig, n_sel = int(eligible.sum()), int(selected.sum())
  assert n_elig > 50_000
  assert _binomial_ok(n_sel, n_elig, 0.15), n_sel / n_elig
  # Of the selected: 80% [MASK], 10% random, 10% unchanged. A random token
  # equals the original with probability 1/(VOCAB - 5).
  n_allowed = VOCAB - len(SPECIAL)
  is_mask = selected & (masked == MASK)
  is_same = selected & (masked == ids)
  is_random = selected & ~is_mask & ~is_same
  assert _binomial_ok(is_mask.sum(), n_sel, 0.8)
  assert _binomial_ok(is_same.sum(), n_sel, 0.1 + 0.1 / n_allowed)
  assert _binomial_ok(is_random.sum(), n_sel, 0.1 * (1 - 1 / n_allowed))
  # Random replacements: never special, uniform over the other ids.
  replaced = masked[is_random]
  assert not np.isin(replaced, SPECIAL).any()
  counts = np.bincount(replaced, minlength=VOCAB)[len(SPECIAL):]
  expected = len(replaced) / n_allowed
  chi2 = np.sum((counts - expected) ** 2 / expected)
  from scipy import stats  # pylint: disable=g-import-not-at-top
  assert chi2 < stats.chi2.ppf(1 - 1e-4, n_allowed - 1)


def test_masking_never_touches_special_tokens_and_labels_elsewhere():
  ids = _texts(np.random.default_rng(2), 500, 20)
  masked, labels = _mask(ids, 3, p=0.9)
  special = np.isin(ids, SPECIAL)
  assert special.sum() > 1000
  np.testing.assert_array_equal(masked[special], ids[special])
  assert np.all(labels[special] == -100)
  selected = labels != -100
  np.testing.assert_array_equal(labels[selected], ids[selected])
  # Unselected positions keep their id; labels are -100 there.
  np.testing.assert_array_equal(masked[~selected], ids[~selected])
  assert masked.dtype == np.int32 and labels.dtype == np.int32
  assert masked.shape == ids.shape


def test_masking_1d_determinism_and_p_zero():
  ids = _texts(np.random.default_rng(4), 1, 40)[0]
  a = _mask(ids, 7, p=0.5)
  b = _mask(ids, 7, p=0.5)
  c = _mask(ids, 8, p=0.5)
  assert a[0].shape == (40,)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[1], c[1])
  masked, labels = _mask(ids, 7, p=0.0)
  np.testing.assert_array_equal(masked, ids)
  assert np.all(labels == -100)
  with pytest.raises(ValueError):
    _mask(ids, 7, p=1.5)


def test_allowed_random_ids_is_a_bijection():
  excluded = np.array([0, 3, 4, 9])
  r = np.arange(10 - len(excluded))
  # pylint: disable-next=protected-access
  out = masking._allowed_random_ids(r, excluded)
  np.testing.assert_array_equal(out, [1, 2, 5, 6, 7, 8])


def test_masking_module_does_not_import_jax():
  code = ('import sys; import vlg.objectives.masking; '
          'assert "jax" not in sys.modules, "jax imported"')
  root = pathlib.Path(__file__).resolve().parents[2]
  subprocess.run([sys.executable, '-c', code], check=True, cwd=root)


def _logits(seed, b, length, v, masked_frac=0.3):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=(b, length, v)) * 2).astype(np.float32)
  logits_m = (rng.normal(size=(b, length, v)) * 2).astype(np.float32)
  labels = rng.integers(0, v, size=(b, length))
  labels[rng.random((b, length)) > masked_frac] = -100
  return logits, logits_m, labels.astype(np.int32)


@pytest.mark.parametrize('alpha', [0.0, 0.4, 1.0])
@pytest.mark.parametrize('teacher', [True, False])
def test_mlm_loss_and_grad_match_reference(alpha, teacher):
  logits, logits_m, labels = _logits(int(alpha * 10) + teacher, 3, 7, 11)
  logits_m = logits_m if teacher else None
  loss, metrics = _mlm_loss(logits, logits_m, labels, alpha)
  want, acc, n = ref.mlm_loss(logits, logits_m, labels, alpha)
  assert n > 0
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert metrics['mlm_loss'] == loss
  np.testing.assert_allclose(metrics['mlm_acc'], acc, rtol=1e-6)
  assert float(metrics['mlm_num_masked']) == n
  grad_fn = _mlm_grad if teacher else _mlm_grad_no_teacher
  grads, _ = grad_fn(logits, logits_m, labels, alpha)
  g = grads[0] if teacher else grads
  np.testing.assert_allclose(
      g, ref.mlm_grad(logits, logits_m, labels, alpha), rtol=1e-4, atol=1e-7)
  if teacher:  # the teacher is stop-gradiented
    np.testing.assert_array_equal(grads[1], 0.0)


def test_mlm_alpha_changes_the_loss():
  logits, logits_m, labels = _logits(9, 3, 7, 11)
  l0 = _mlm_loss(logits, logits_m, labels, 0.0)[0]
  l4 = _mlm_loss(logits, logits_m, labels, 0.4)[0]
  ce = ref.mlm_loss(logits, None, labels, 0.0)[0]
  np.testing.assert_allclose(l0, ce, rtol=1e-5)
  assert abs(float(l4) - float(l0)) > 1e-3


def test_mlm_zero_masked_batch_is_zero_not_nan():
  logits, logits_m, _ = _logits(10, 3, 7, 11)
  labels = np.full((3, 7), -100, np.int32)
  loss, metrics = _mlm_loss(logits, logits_m, labels, 0.4)
  (g, _), _ = _mlm_grad(logits, logits_m, labels, 0.4)
  assert float(loss) == 0.0
  assert float(metrics['mlm_acc']) == 0.0
  assert float(metrics['mlm_num_masked']) == 0.0
  assert np.all(np.isfinite(np.asarray(g))) and not np.any(np.asarray(g))


def test_mlm_bf16_inputs_computed_in_float32():
  logits, logits_m, labels = _logits(11, 2, 6, 9)
  loss, _ = _mlm_loss(jnp.asarray(logits, jnp.bfloat16),
                      jnp.asarray(logits_m, jnp.bfloat16), labels, 0.4)
  assert loss.dtype == jnp.float32
  rounded = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32),
                       np.float64)
  rounded_m = np.asarray(
      jnp.asarray(logits_m, jnp.bfloat16).astype(jnp.float32), np.float64)
  want = ref.mlm_loss(rounded, rounded_m, labels, 0.4)[0]
  np.testing.assert_allclose(loss, want, rtol=1e-5)
