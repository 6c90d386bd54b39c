"""The optimizer: AdamW with linear warm-up and cosine decay (optax).

Weight decay applies to weight matrices only: biases, LayerNorm parameters,
the temperature, the [CLS] token and position embeddings are not decayed
(ALBEF decays temp, pos_embed and cls_token; vlg does not; see
docs/objectives.md §2.4).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax


def make_schedule(cfg: ml_collections.ConfigDict,
                  total_steps: int) -> optax.Schedule:
  """Linear warm-up from ``warmup_init_lr`` to ``lr``, cosine to ``min_lr``."""
  warmup = min(int(cfg.warmup_steps), max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=float(cfg.warmup_init_lr), peak_value=float(cfg.lr),
      warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
      end_value=float(cfg.min_lr))


NO_DECAY_NAMES = ('pos_embed', 'position', 'cls_token', 'temp')


def decay_mask(params: Any) -> Any:
  """True for parameters that get weight decay (matrices, not embeddings of
  positions or the [CLS] token)."""
  def decays(path, p):
    names = [str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path]
    # Attention biases are 2-D (heads, kv): the name decides, not the rank.
    return p.ndim >= 2 and names[-1] not in ('bias', 'scale') and not any(
        n.startswith(NO_DECAY_NAMES) for n in names)
  return jax.tree_util.tree_map_with_path(decays, params)


def scale_temp_updates(scale: float) -> optax.GradientTransformation:
  """Multiplies the update of the top-level ``temp`` parameter by ``scale``.

  Placed after AdamW (which does not decay ``temp``), it runs the
  temperature at ``scale`` times the learning rate and leaves every other
  parameter's update unchanged. Stateless.
  """
  def update(updates, state, params=None):
    del params

    def scaled(path, u):
      first = path[0] if path else None
      return u * scale if getattr(first, 'key', None) == 'temp' else u
    return jax.tree_util.tree_map_with_path(scaled, updates), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(cfg: ml_collections.ConfigDict,
                   total_steps: int) -> tuple[optax.GradientTransformation,
                                              optax.Schedule]:
  """AdamW (+ optional global-norm clipping) and its learning-rate schedule.

  ``cfg.temp_lr_scale`` (default 1) runs the ITC temperature at that
  fraction of the schedule. Adam moves a parameter by about the learning
  rate per step whatever its gradient's scale, so at the tiny recipes'
  1e-3 the temperature travels from 0.07 to its floor within a couple of
  hundred steps; ALBEF's 1e-4 moves it ten times slower. A scale other
  than 1 appends a stateless step to the chain (so the optimizer state of
  a run with scale 1 has one element fewer).
  """
  schedule = make_schedule(cfg, total_steps)
  parts = []
  if cfg.get('grad_clip_norm'):
    parts.append(optax.clip_by_global_norm(float(cfg.grad_clip_norm)))
  parts.append(optax.adamw(
      schedule, b1=float(cfg.b1), b2=float(cfg.b2), eps=float(cfg.eps),
      weight_decay=float(cfg.weight_decay), mask=decay_mask))
  scale = float(cfg.get('temp_lr_scale', 1.0))
  if scale <= 0:
    raise ValueError(f'optim.temp_lr_scale={scale}; need > 0')
  if scale != 1.0:
    parts.append(scale_temp_updates(scale))
  return optax.chain(*parts), schedule
