"""MLM token masking in the data workers (docs/objectives.md §2.3, step 1)."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from vlg.data import masking

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL = (PAD, UNK, CLS, SEP, MASK)
VOCAB = 50


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
  code = ('import sys; import vlg.data.masking; '
          'assert "jax" not in sys.modules, "jax imported"')
  root = pathlib.Path(__file__).resolve().parents[2]
  subprocess.run([sys.executable, '-c', code], check=True, cwd=root)
