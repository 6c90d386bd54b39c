"""What the loss needs to know of a typed part's objective (a plug-in).

A typed part ``X`` (``config.input.parts.X``) is two modules found by its
name: its data, ``vlg/data/parts/X.py`` (``Transform``), and its objective,
``vlg/objectives/X.py``, which defines ``PART = PartObjective(...)``.
``pretrain.make_loss_fn`` adds ``ratio_X · PART.loss(...)`` to the caption
losses; the train step, ``vlg.tools.validate`` and the progress line read
the same ``PART``. Adding an objective therefore touches its objective
module, its data part, a config and a test (docs/architecture.md, "Adding
an objective").
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class PartObjective:
  """A typed part's loss and what the loop reads beside it.

  Attributes:
    loss: ``loss(model, batch, *, rng, temp, weights, dropout_rngs,
      options) -> (loss, metrics)``: the part's weighted loss (its inner
      terms weighted by ``weights``) and its metrics, each named with the
      part's prefix; ``rng`` is the part's key (None when ``rng_stream`` is
      None), ``temp`` the clamped ITC temperature, ``options`` the
      ``config.loss`` fields as a dict.
    rng_stream: index of the part's key among ``jax.random.split(rng, n)``
      of the step (0 is the captions'); unique per part, so adding a part
      changes no other part's randomness. None: the loss draws nothing.
    weights: the ``config.loss`` terms the loss weighs (absent ones weigh 1).
    progress: metrics the training progress line shows.
    heldout: optional ``heldout(model, batch) -> per-example outputs`` that
      ``vlg.tools.validate`` pools over its batches.
  """

  loss: Callable[..., tuple[jax.Array, Metrics]]
  rng_stream: int | None = None
  weights: tuple[str, ...] = ()
  progress: tuple[str, ...] = ()
  heldout: Callable[[Any, dict[str, jax.Array]], Metrics] | None = None


def part_objective(name: str) -> PartObjective:
  """``PART`` of ``vlg/objectives/{name}.py``; a clear error otherwise."""
  module_name = f'vlg.objectives.{name}'
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name != module_name:
      raise
    raise ValueError(f'input.parts.{name}: no objective module {module_name} '
                     '(a part X needs vlg/objectives/X.py defining PART)'
                     ) from None
  part = getattr(module, 'PART', None)
  if not isinstance(part, PartObjective):
    raise ValueError(f'input.parts.{name}: {module_name} defines no '
                     'PART = part.PartObjective(...)')
  return part


def flat(x: jax.Array) -> jax.Array:
  """[B, M, ...] → [B·M, ...]: a part's per-image pairs as one batch."""
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def pair_index(valid: jax.Array) -> jax.Array:
  """Image index of each flattened pair of a [B, M] layout."""
  b, m = valid.shape
  return jnp.repeat(jnp.arange(b, dtype=jnp.int32), m)
