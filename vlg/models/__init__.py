"""Models: ``create_model(config, rngs)`` builds ``vlg.models.<config.name>``.

Each model module exports a ``Model(config, *, rngs)`` (a ``flax.nnx``
module) whose methods return dicts of named arrays. Parameters carry logical
axis names (``out_sharding`` metadata), so create models with
``nnx.use_eager_sharding(False)`` (e.g. inside ``nnx.eval_shape`` or a
jitted init with ``out_shardings``) or under ``jax.set_mesh``; outside both
Flax refuses to place annotated parameters.
"""

from __future__ import annotations

import importlib

import ml_collections
from flax import nnx


def create_model(config: ml_collections.ConfigDict,
                 rngs: nnx.Rngs) -> nnx.Module:
  """Imports ``vlg.models.<config.name>`` and returns its ``Model``."""
  module = importlib.import_module(f'vlg.models.{config.name}')
  return module.Model(config, rngs=rngs)
