"""numpy-drawn parameters for tests of a model's forward and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def random_params(make, seed=0):
  """(graphdef, params) of ``make()`` with numpy-drawn parameter values.

  Initialising through XLA costs a compilation per parameter shape (tens of
  seconds for the tiny model on a busy 2-core CPU); tests of the forward
  pass only need some parameters. The real initialisers are exercised by
  ``test_sharded_init_and_forward_match_unsharded`` in
  tests/models/test_albef.py.
  """
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(make)
  graphdef, state = nnx.split(abstract, nnx.Param)
  rng = np.random.RandomState(seed)

  def draw(path, x):
    name = path[-1].key
    if name == 'temp':
      return jnp.full(x.shape, 0.07, x.dtype)
    v = rng.randn(*x.shape) * (0.1 if name == 'scale' else 0.05)
    return jnp.asarray(v + (name == 'scale'), x.dtype)

  pure = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state))
  return graphdef, pure
