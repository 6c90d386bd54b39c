"""MLM loss with momentum distillation (docs/objectives.md §2.3).

The masking itself is NumPy and runs in the data workers:
``vlg/data/masking.py``. Labels use -100 for positions without a
target, as produced there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE_LABEL = -100


def mlm_loss(logits: jax.Array, logits_m: jax.Array | None,
             labels: jax.Array, alpha: jax.Array | float
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """ALBEF's distilled MLM loss (docs/objectives.md §2.3, step 3).

  ``L = (1−α)·CE(logits, labels) + α·D`` with both terms averaged over the
  masked positions (labels ≠ -100) of the whole batch, and
  ``D = −Σ_v softmax(logits_m)_v · log_softmax(logits)_v`` per position;
  ``logits_m`` is the stop-gradiented teacher. Without a teacher
  (``logits_m`` None, X-VLM) the loss is the plain cross-entropy and
  α is ignored. A batch without masked tokens gives loss 0 and zero
  gradient, not NaN. Computed in float32 (float64 stays float64).

  Args:
    logits: [B, L, V] online MLM logits.
    logits_m: [B, L, V] momentum MLM logits, or None.
    labels: [B, L] int target ids, -100 where nothing is predicted.
    alpha: scalar distillation weight.

  Returns:
    ``(loss, metrics)`` with ``mlm_loss``, ``mlm_acc`` (argmax accuracy on
    the masked positions, 0 if none) and ``mlm_num_masked``.
  """
  if logits.shape[:-1] != labels.shape:
    raise ValueError(f'mlm_loss: logits {logits.shape} do not match labels '
                     f'{labels.shape}.')
  if logits_m is not None and logits_m.shape != logits.shape:
    raise ValueError(f'mlm_loss: logits_m {logits_m.shape} differ from '
                     f'logits {logits.shape}.')
  dtype = jnp.promote_types(jnp.result_type(logits), jnp.float32)
  logp = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
  labels = labels.astype(jnp.int32)
  masked = labels != IGNORE_LABEL
  weight = masked.astype(dtype)
  num_masked = jnp.sum(weight)
  denom = jnp.maximum(num_masked, 1.0)

  safe_labels = jnp.where(masked, labels, 0)
  nll = -jnp.take_along_axis(logp, safe_labels[..., None], axis=-1)[..., 0]
  ce = jnp.sum(nll * weight) / denom
  if logits_m is None:
    loss = ce
  else:
    alpha = jnp.asarray(alpha).astype(dtype)
    teacher = jax.nn.softmax(
        jax.lax.stop_gradient(logits_m).astype(dtype), axis=-1)
    distill = -jnp.sum(teacher * logp, axis=-1)
    distill = jnp.sum(distill * weight) / denom
    loss = (1 - alpha) * ce + alpha * distill

  correct = (jnp.argmax(logp, axis=-1) == labels) & masked
  acc = jnp.sum(correct.astype(dtype)) / denom
  return loss, {'mlm_loss': loss, 'mlm_acc': acc,
                'mlm_num_masked': num_masked}
