"""BERT-style MLM token masking in NumPy (docs/objectives.md §2.3, step 1).

Runs inside grain data-worker processes, so this module imports NumPy only
(never jax). The loss lives in ``vlg/objectives/mlm.py``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

IGNORE_LABEL = -100


def _allowed_random_ids(r: np.ndarray, excluded: np.ndarray) -> np.ndarray:
  """Maps r, uniform on [0, V - len(excluded)), onto the ids not excluded.

  ``excluded`` is sorted and unique, all within [0, V); stepping r past
  every excluded id at or below it is a bijection onto the complement, so
  the result is uniform over the allowed ids.
  """
  for s in excluded:
    r = r + (r >= s)
  return r


def mask_tokens(ids: np.ndarray, rng: np.random.Generator, *,
                vocab_size: int, mask_id: int, special_ids: Iterable[int],
                pad_id: int, p: float = 0.15
                ) -> tuple[np.ndarray, np.ndarray]:
  """Masks 15% of tokens, then 80/10/10 (docs/objectives.md §2.3, step 1).

  Each token that is neither a special token nor padding is selected
  independently with probability ``p`` (ALBEF never masks [PAD] or [CLS]
  but can mask [SEP]; vlg never masks any special token). A selected
  token becomes ``mask_id`` with probability 0.8, a random token with
  probability 0.1, and stays unchanged with probability 0.1. The random
  token is uniform over the vocabulary *minus* the special ids and
  ``pad_id`` (ALBEF draws over the whole vocabulary; vlg keeps special
  tokens out of text positions, a difference of 5 ids in ~32k). The
  number of random numbers drawn depends only on ``ids.shape``, so a
  seeded Generator gives the same result for the same input shape.

  Args:
    ids: int token ids, [L] or [B, L].
    rng: NumPy Generator (the grain ``random_map`` one).
    vocab_size: size of the vocabulary, V.
    mask_id: id of [MASK].
    special_ids: ids never selected nor drawn as random tokens.
    pad_id: id of [PAD] (also never selected nor drawn).
    p: selection probability.

  Returns:
    ``(masked_ids, labels)``, int32 arrays of ``ids.shape``: the corrupted
    ids, and the original id at selected positions, -100 elsewhere.
  """
  if not 0.0 <= p <= 1.0:
    raise ValueError(f'mask_tokens: p must be in [0, 1], got {p}.')
  ids = np.asarray(ids)
  if not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f'mask_tokens: ids must be integers, got {ids.dtype}.')
  excluded = np.unique(np.array([*special_ids, pad_id], np.int64))
  excluded = excluded[(excluded >= 0) & (excluded < vocab_size)]
  n_allowed = vocab_size - excluded.size
  if n_allowed <= 0:
    raise ValueError('mask_tokens: no non-special token left in a vocabulary '
                     f'of {vocab_size}.')
  if not 0 <= mask_id < vocab_size:
    raise ValueError(f'mask_tokens: mask_id {mask_id} outside the vocabulary.')

  eligible = ~np.isin(ids, excluded)
  selected = eligible & (rng.random(ids.shape) < p)
  u = rng.random(ids.shape)
  random_ids = _allowed_random_ids(
      rng.integers(0, n_allowed, size=ids.shape, dtype=np.int64), excluded)

  masked = ids.astype(np.int32, copy=True)
  to_mask = selected & (u < 0.8)
  to_random = selected & (u >= 0.8) & (u < 0.9)
  masked[to_mask] = mask_id
  masked[to_random] = random_ids[to_random]
  labels = np.where(selected, ids, IGNORE_LABEL).astype(np.int32)
  return masked, labels
