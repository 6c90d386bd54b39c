"""Image-text contrastive loss (ITC) and its queues (docs/objectives.md §2.1).

Pure functions of the model's L2-normalised [CLS] features; no parameters
live here. ALBEF's ITC compares each online feature with the batch's
momentum features plus a FIFO queue of past momentum features, and softens
its one-hot targets with the momentum model's own similarities. X-VLM's ITC
(docs/objectives.md §3) is the special case without momentum, queue or
distillation: :func:`itc_loss_in_batch`.

Also here: the temperature clamp, the distillation-weight ramp and the
feature queues, because the train step uses them together with the loss.

Numerics: similarities and softmaxes run in float32 (float64 stays float64,
which the tests use), and the similarity matmuls ask for full precision:
logits are scaled by 1/τ (up to 1000×), so a TF32 or bf16 matmul pass
(~1e-3 relative error) would visibly perturb them on GPUs and TPUs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TEMP_MIN = 0.001
TEMP_MAX = 0.5


def _compute_dtype(x: jax.Array) -> jnp.dtype:
  """float32 for half types, else the input's float type (e.g. float64)."""
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def _sim(a: jax.Array, b: jax.Array, temp: jax.Array) -> jax.Array:
  """``a @ b.T / temp`` at full matmul precision."""
  return jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST) / temp


def clamp_temp(temp: jax.Array) -> jax.Array:
  """Clips the temperature to [0.001, 0.5] with a straight-through gradient.

  ALBEF clamps ``temp`` in place under ``no_grad`` at the start of every
  forward (docs/objectives.md §1, "Temperature"), so the loss sees the
  clipped value but the gradient reaches the parameter unchanged.
  ``jnp.clip`` would instead zero the gradient outside the range (and
  halve it exactly at a bound, where the train step's own clamp leaves
  the parameter), which could pin τ to a bound for good. Here the value
  is clipped and d/dtemp is the identity, as in the reference.

  Args:
    temp: the temperature parameter (any shape, usually a scalar).

  Returns:
    ``temp`` clipped to ``[TEMP_MIN, TEMP_MAX]``.
  """
  temp = jnp.asarray(temp)
  return temp + jax.lax.stop_gradient(jnp.clip(temp, TEMP_MIN, TEMP_MAX) - temp)


def alpha_at(step: jax.Array | int, alpha: float = 0.4,
             warmup_steps: int = 0) -> jax.Array:
  """The distillation weight α at ``step``: ``alpha * min(1, step/warmup)``.

  ALBEF ramps α linearly from 0 over its first epoch (docs/objectives.md
  §2.1, step 5); vlg ramps it over ``warmup_steps`` steps. The same α
  weights the MLM distillation (§2.3). ``warmup_steps == 0`` means no
  ramp.

  Args:
    step: the current (0-based) step; a Python int or an int array.
    alpha: the final weight.
    warmup_steps: length of the linear ramp (a static Python int).

  Returns:
    float32 scalar α (0 at step 0 when there is a ramp).
  """
  if warmup_steps < 0:
    raise ValueError(f'warmup_steps must be >= 0, got {warmup_steps}.')
  alpha = jnp.asarray(alpha, jnp.float32)
  if warmup_steps == 0:
    return alpha
  frac = jnp.asarray(step, jnp.float32) / float(warmup_steps)
  return alpha * jnp.clip(frac, 0.0, 1.0)


def _soft_ce(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """``mean_b -Σ_j targets_bj log_softmax(logits)_bj``."""
  return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1),
                           axis=-1))


def _diag_acc(logits: jax.Array) -> jax.Array:
  """Fraction of rows whose argmax is their own (diagonal) column."""
  b = logits.shape[0]
  return jnp.mean((jnp.argmax(logits, axis=-1) == jnp.arange(b)).astype(
      jnp.float32))


def itc_loss(image_feat: jax.Array, text_feat: jax.Array,
             image_feat_m: jax.Array, text_feat_m: jax.Array,
             image_queue: jax.Array, text_queue: jax.Array,
             temp: jax.Array, alpha: jax.Array | float,
             queue_filled: jax.Array | int | None = None
             ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
  """ALBEF's ITC: momentum queue, distilled targets (docs/objectives.md §2.1).

  With ``V_all = [v_m; image_queue]`` and ``W_all = [w_m; text_queue]``
  (steps 3–7): online logits ``s_i2t = v W_allᵀ/τ``, ``s_t2i = w V_allᵀ/τ``;
  targets ``y = α softmax(s_m) + (1−α)[I_B | 0]`` from the momentum logits
  ``s_m_i2t = v_m W_allᵀ/τ``, ``s_m_t2i = w_m V_allᵀ/τ``; loss
  ``½(CE_i2t + CE_t2i)``, each averaged over the batch. The targets are
  constants (ALBEF computes them under ``no_grad``), so τ gets gradient
  only through the online logits. Duplicate images or captions inside a
  batch are negatives, as in ALBEF's pretraining.

  Args:
    image_feat: [B, E] online image features, L2-normalised.
    text_feat: [B, E] online text features, L2-normalised.
    image_feat_m: [B, E] momentum image features (stop-gradient applied).
    text_feat_m: [B, E] momentum text features (stop-gradient applied).
    image_queue: [Q, E] queued momentum image features; Q may be 0.
    text_queue: [Q, E] queued momentum text features.
    temp: scalar temperature, already clamped (see :func:`clamp_temp`).
    alpha: scalar distillation weight (see :func:`alpha_at`).
    queue_filled: how many queue rows (from row 0) hold enqueued features;
      the others are left out of both softmaxes (online logits and
      distillation targets). None uses every row, as ALBEF does with its
      randomly initialised queue. The queue is written from row 0 in FIFO
      order, so after ``s`` steps of global batch B the first
      ``min(s·B, Q)`` rows are filled (:func:`queue_filled`). Why: trained
      from scratch, the random rows are near-orthogonal to every feature
      while the barely trained features of the batch all point one way, so
      collapsing every feature onto that direction drops the loss from
      log(B+Q) towards log(B) without telling any pair apart. Measured on
      the tiny model: ITC with the random queue collapses image features to
      cosine 0.99 and stays at chance for 100 steps; without those rows it
      reaches 16% in-batch accuracy.

  Returns:
    ``(loss, metrics, aux)``: metrics ``itc_loss``, ``itc_acc`` (fraction
    of images whose top i2t logit is their own caption, over all B+Q
    columns), ``temp`` and ``alpha``; aux ``sim_i2t`` and ``sim_t2i``, the
    [B, B+Q] online logits, whose first B columns drive the ITM hard
    negatives (docs/objectives.md §2.2).
  """
  b = image_feat.shape[0]
  if text_feat.shape[0] != b or image_feat_m.shape[0] != b or (
      text_feat_m.shape[0] != b):
    raise ValueError('itc_loss: online and momentum features need the same '
                     f'batch size, got {image_feat.shape}, {text_feat.shape}, '
                     f'{image_feat_m.shape}, {text_feat_m.shape}.')
  if image_queue.shape[0] != text_queue.shape[0]:
    raise ValueError(f'itc_loss: queue sizes differ: {image_queue.shape} vs '
                     f'{text_queue.shape}.')
  dtype = _compute_dtype(image_feat)
  sg = jax.lax.stop_gradient
  v, w = image_feat.astype(dtype), text_feat.astype(dtype)
  temp = jnp.asarray(temp).astype(dtype)
  alpha = jnp.asarray(alpha).astype(dtype)
  v_all = sg(jnp.concatenate([image_feat_m, image_queue]).astype(dtype))
  w_all = sg(jnp.concatenate([text_feat_m, text_queue]).astype(dtype))

  if queue_filled is None:
    keep = lambda sim: sim
  else:
    # A large finite negative, not -inf: the targets of left-out columns are
    # 0, and 0 * -inf would be NaN in the cross-entropy.
    rows = jnp.arange(v_all.shape[0]) - b
    valid = (rows < 0) | (rows < jnp.asarray(queue_filled))
    keep = lambda sim: jnp.where(valid[None, :], sim, jnp.asarray(-1e9, dtype))

  # Targets are constants (ALBEF: no_grad), also with respect to τ.
  eye = jnp.eye(b, v_all.shape[0], dtype=dtype)
  y_i2t = sg(alpha * jax.nn.softmax(keep(_sim(v_all[:b], w_all, temp))) +
             (1 - alpha) * eye)
  y_t2i = sg(alpha * jax.nn.softmax(keep(_sim(w_all[:b], v_all, temp))) +
             (1 - alpha) * eye)

  sim_i2t = keep(_sim(v, w_all, temp))
  sim_t2i = keep(_sim(w, v_all, temp))
  loss = 0.5 * (_soft_ce(sim_i2t, y_i2t) + _soft_ce(sim_t2i, y_t2i))
  metrics = {'itc_loss': loss, 'itc_acc': _diag_acc(sim_i2t),
             'temp': temp, 'alpha': alpha}
  return loss, metrics, {'sim_i2t': sim_i2t, 'sim_t2i': sim_t2i}


def itc_loss_in_batch(image_feat: jax.Array, text_feat: jax.Array,
                      temp: jax.Array
                      ) -> tuple[jax.Array, dict[str, jax.Array],
                                 dict[str, jax.Array]]:
  """In-batch ITC, arange labels, no momentum or queue (docs/objectives.md §3).

  X-VLM's contrastive loss: ``s_i2t = v wᵀ/τ``, ``s_t2i = w vᵀ/τ`` and
  ``½(CE(s_i2t, arange) + CE(s_t2i, arange))``. The gradient flows into
  both sides of each similarity (X-VLM has no momentum encoder). It equals
  :func:`itc_loss` with α = 0 and an empty queue in value.

  Args:
    image_feat: [B, E] L2-normalised image (or box-concept) features.
    text_feat: [B, E] L2-normalised text features.
    temp: scalar temperature, already clamped.

  Returns:
    ``(loss, metrics, aux)`` as :func:`itc_loss` (``alpha`` is 0), with
    aux logits of shape [B, B].
  """
  if image_feat.shape[0] != text_feat.shape[0]:
    raise ValueError(f'itc_loss_in_batch: batch sizes differ: '
                     f'{image_feat.shape} vs {text_feat.shape}.')
  dtype = _compute_dtype(image_feat)
  v, w = image_feat.astype(dtype), text_feat.astype(dtype)
  temp = jnp.asarray(temp).astype(dtype)
  eye = jnp.eye(v.shape[0], dtype=dtype)
  sim_i2t = _sim(v, w, temp)
  sim_t2i = _sim(w, v, temp)
  loss = 0.5 * (_soft_ce(sim_i2t, eye) + _soft_ce(sim_t2i, eye))
  metrics = {'itc_loss': loss, 'itc_acc': _diag_acc(sim_i2t), 'temp': temp,
             'alpha': jnp.zeros((), dtype)}
  return loss, metrics, {'sim_i2t': sim_i2t, 'sim_t2i': sim_t2i}


def queue_filled(step: jax.Array | int, batch_size: int,
                 queue_size: int) -> jax.Array:
  """Queue rows written before ``step``: ``min(step · B, Q)`` (int32).

  :func:`update_queue` writes B rows a step from row 0, so this many rows
  from the top hold real momentum features at the start of ``step``.
  """
  return jnp.minimum(jnp.asarray(step, jnp.int32) * batch_size,
                     queue_size).astype(jnp.int32)


def init_queue(rng: jax.Array, size: int, dim: int) -> jax.Array:
  """A float32 [size, dim] queue of random unit rows (docs/objectives.md §1)."""
  q = jax.random.normal(rng, (size, dim), jnp.float32)
  return q / jnp.linalg.norm(q, axis=-1, keepdims=True)


def update_queue(queue: jax.Array, feats: jax.Array, ptr: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
  """FIFO-writes ``feats`` at rows ``ptr .. ptr+B`` of ``queue`` (§2.1 step 8).

  The oldest B rows are overwritten and the pointer advances by B modulo
  Q. As in ALBEF, Q must be a multiple of B so a write never wraps; this
  is checked at trace time. The caller passes the *momentum* features of
  the global batch. An empty queue (Q = 0) is returned unchanged.

  Args:
    queue: [Q, E] queue.
    feats: [B, E] features to enqueue (stop-gradient applied).
    ptr: int32 scalar array, the next row to write; works under ``jit``.

  Returns:
    ``(new_queue, new_ptr)`` with ``new_ptr = (ptr + B) % Q``.

  Raises:
    ValueError: when Q is not a multiple of B or the widths differ.
  """
  q, b = queue.shape[0], feats.shape[0]
  if feats.ndim != 2 or queue.ndim != 2 or feats.shape[1] != queue.shape[1]:
    raise ValueError(f'update_queue: queue {queue.shape} and features '
                     f'{feats.shape} must be [Q, E] and [B, E].')
  if q == 0:
    return queue, jnp.asarray(ptr)
  if b == 0 or q % b:
    raise ValueError(f'update_queue: the queue size ({q}) must be a multiple '
                     f'of the global batch size ({b}).')
  ptr = jnp.asarray(ptr)
  feats = jax.lax.stop_gradient(feats).astype(queue.dtype)
  new_queue = jax.lax.dynamic_update_slice(
      queue, feats, (ptr.astype(jnp.int32), jnp.zeros((), jnp.int32)))
  return new_queue, ((ptr + b) % q).astype(ptr.dtype)
