"""The train state: model construction, parameter and state shardings.

The train state is a plain pytree::

  {'params', 'ema', 'opt', 'queues': {'image', 'text', 'ptr'}, 'step', 'rng',
   'nonfinite': {'count', 'first_step'}, 'num_bad_examples'}

built without allocating anything twice: the model is traced abstractly
(:func:`abstract_model`), its parameters are created directly in their
shardings (:func:`init_params`), and the optimizer state follows the
parameters' shardings (:func:`state_shardings`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from vlg import sharding
from vlg.models import create_model
from vlg.objectives import itc
from vlg.weights import init as weights_init

PyTree = Any


def abstract_model(model_cfg: ml_collections.ConfigDict, rules):
  """(graphdef, abstract params, PartitionSpecs) without allocating weights.

  Uses ``jax.eval_shape`` (not ``nnx.eval_shape``, which would try to turn
  the logical names into shardings of the current mesh) and keeps the
  variables' ``out_sharding`` metadata for :func:`vlg.sharding.param_specs`.
  """
  graphdefs = []

  def build():
    with nnx.use_eager_sharding(False):
      model = create_model(model_cfg, nnx.Rngs(0))
    graphdef, state = nnx.split(model, nnx.Param)
    graphdefs.append(graphdef)
    return state

  state = jax.eval_shape(build)
  specs = sharding.param_specs(state, rules)
  return graphdefs[0], nnx.to_pure_dict(state), specs


def init_params(model_cfg, seed: int, shardings) -> PyTree:
  """Creates the parameters directly in their shardings.

  The seed enters the jitted initialiser as a traced key, not as a
  constant, so every seed runs the same program: a later seed reuses the
  first one's compilation (through JAX's persistent compilation cache,
  when it is on) instead of compiling anew. ``nnx.Rngs(jax.random.key(s))``
  draws exactly what ``nnx.Rngs(s)`` draws, so a seed's parameters are
  those it always gave.
  """
  def init(key):
    with nnx.use_eager_sharding(False):
      model = create_model(model_cfg, nnx.Rngs(key))
    return nnx.to_pure_dict(nnx.split(model, nnx.Param)[1])
  return jax.jit(init, out_shardings=shardings)(jax.random.key(seed))


def start_params(model_cfg, seed: int, shardings) -> PyTree:
  """A run's parameters before its first step: :func:`init_params`, with
  the pretrained towers ``model.init`` names (docs/weights.md; the
  labelled stage's tower) in place of the fresh ones."""
  params = init_params(model_cfg, seed, shardings)
  if weights_init.requested(model_cfg):
    params = weights_init.to_shardings(
        weights_init.load(model_cfg, params)[0], shardings)
  return params


def state_shardings(mesh, param_shardings, abstract_state, tx) -> PyTree:
  """Shardings of the whole train state (optimizer state follows params).

  Nothing runs on the mesh's devices: optax finds which parts of the
  optimizer state mirror the parameters by calling ``tx.init`` on a
  placeholder, and that call is traced with ``jax.eval_shape``. Run
  eagerly, its step counters (``jnp.zeros``) would execute on the mesh in
  force, which compile-only devices cannot do (``vlg.tools.aot``).
  """
  rep = sharding.replicated(mesh)
  opt = optax.tree_map_params(
      lambda placeholder: jax.eval_shape(tx.init, placeholder),
      lambda _, s: s, abstract_state['opt'], param_shardings,
      transform_non_params=lambda _: rep)
  out = jax.tree.map(lambda _: rep, abstract_state)
  out['params'] = param_shardings
  out['ema'] = param_shardings
  out['opt'] = opt
  return out


def with_shardings(abstract_state: PyTree, shardings: PyTree) -> PyTree:
  """``jax.ShapeDtypeStruct``s of the state with their shardings: what
  ``train_step.lower`` compiles for, and what a restore reads into."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state, shardings)


def init_state(config, params, tx) -> PyTree:
  """The train state around freshly initialised ``params`` (jittable)."""
  rng = jax.random.PRNGKey(config.seed)
  dim = config.model.embed_dim
  image_q = itc.init_queue(jax.random.fold_in(rng, 1), config.queue_size, dim)
  text_q = itc.init_queue(jax.random.fold_in(rng, 2), config.queue_size, dim)
  return {
      'params': params,
      'ema': jax.tree.map(jnp.copy, params),
      'opt': tx.init(params),
      'queues': {'image': image_q, 'text': text_q,
                 'ptr': jnp.zeros((), jnp.int32)},
      'step': jnp.zeros((), jnp.int32),
      'rng': jax.random.fold_in(rng, 3),
      'nonfinite': {'count': jnp.zeros((), jnp.int32),
                    'first_step': jnp.full((), -1, jnp.int32)},
      'num_bad_examples': jnp.zeros((), jnp.int32),
  }
