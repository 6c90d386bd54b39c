"""Tests of the probe heads: shapes, parameter counts, the SwiGLU formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlg.projects.probing import heads


def _build(name, d, o, **kw):
  with nnx.use_eager_sharding(False):
    head = heads.create_head(name, d, o, rngs=nnx.Rngs(0), **kw)
  return head, nnx.to_pure_dict(nnx.split(head, nnx.Param)[1])


@pytest.mark.parametrize('name', heads.HEADS)
@pytest.mark.parametrize('pre_norm', [False, True])
def test_shapes_and_param_counts(name, pre_norm):
  d, o, h = 24, 4, 8
  head, params = _build(name, d, o, hidden=h, pre_norm=pre_norm)
  y = head(jnp.ones((3, d)))
  assert y.shape == (3, o) and y.dtype == jnp.float32
  count = sum(x.size for x in jax.tree.leaves(params))
  assert count == heads.num_params(name, d, o, hidden=h, pre_norm=pre_norm)
  # Hand counts (docs/probing.md §2.2): linear (d+1)·o; swiglu2
  # 2dh + h² + (h+1)o.
  hand = {'linear': (d + 1) * o,
          'swiglu2': 2 * d * h + h * h + (h + 1) * o,
          'swiglu4': 2 * d * h + h * h + 2 * 3 * h * h + (h + 1) * o}[name]
  if pre_norm and name != 'linear':
    hand += 2 * d + (2 * 2 * h if name == 'swiglu4' else 0)
  assert count == hand


def test_paper_sized_first_block():
  # 32 queries × 768 flattened into h = 768: 37.7 M in gate + value.
  assert 2 * 24_576 * 768 == 37_748_736
  assert heads.num_params('linear', 24_576, 4) == 24_576 * 4 + 4


def test_swiglu_matches_numpy():
  d, o, h = 5, 1, 3
  head, params = _build('swiglu4', d, o, hidden=h)
  rng = np.random.RandomState(0)
  params = jax.tree.map(
      lambda p: jnp.asarray(rng.randn(*p.shape), jnp.float32), params)
  x = rng.randn(2, d)
  graphdef = nnx.split(head, nnx.Param)[0]
  got = nnx.merge(graphdef, params)(jnp.asarray(x, jnp.float32))

  def silu(z):
    return z / (1 + np.exp(-z))

  def block(b, v):
    p = {k: np.asarray(w['kernel'], np.float64) for k, w in b.items()}
    return (silu(v @ p['gate']) * (v @ p['value'])) @ p['out']

  blocks = params['blocks']
  v = block(blocks[0], x)
  v = v + block(blocks[1], v)
  v = v + block(blocks[2], v)
  want = v @ np.asarray(params['out']['kernel'], np.float64) + np.asarray(
      params['out']['bias'], np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_logical_axis_names_and_unknown_head():
  head, _ = _build('swiglu2', 6, 4, hidden=8)
  state = nnx.split(head, nnx.Param)[1]
  names = {'/'.join(map(str, p)): v.get_metadata().get('out_sharding')
           for p, v in nnx.to_flat_state(state)}
  assert names['blocks/0/gate/kernel'] == ('embed', 'mlp')
  assert names['blocks/0/out/kernel'] == ('mlp', 'embed')
  assert names['out/kernel'] == ('embed', None)
  with pytest.raises(ValueError, match='swiglu4'):
    heads.create_head('mlp3', 4, 1, rngs=nnx.Rngs(0))


def test_dropout_only_with_rngs():
  head, _ = _build('swiglu2', 6, 2, hidden=16, dropout_rate=0.5)
  x = jnp.ones((4, 6))
  np.testing.assert_array_equal(head(x), head(x))
  assert not np.allclose(head(x, rngs=nnx.Rngs(dropout=1)), head(x))
