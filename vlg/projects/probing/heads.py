"""Probe heads: ``linear``, ``swiglu2``, ``swiglu4`` (docs/probing.md §2.2).

* ``linear``: y = W·x + b (4 outputs for boxes, 1 logit for binary tasks).
* ``swigluK``: (K − 1) SwiGLU blocks, then a linear output layer, vlg's
  counting of a "K-layer" probe. A block is
  g(x) = (SiLU(x W_g) ⊙ (x W_v)) W_o (Shazeer 2020), no biases, with an
  optional pre-LayerNorm and dropout on its output; the first block maps
  the input width to ``hidden``, the others map ``hidden → hidden`` with a
  residual (x + g(x)).

Parameter counts (``num_params``): linear (d + 1)·o; swigluK
2·d·h + h² + (K − 2)·3·h² + (h + 1)·o, plus 2·width per LayerNorm when
``pre_norm``. Heads are built by name with :func:`create_head`; parameters
carry logical axis names (``embed`` on the input/residual width, ``mlp`` on
the hidden width).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlg.models import layers

HEADS = ('linear', 'swiglu2', 'swiglu4')


class Linear(nnx.Module):
  """A linear probe: [B, d] → [B, out] float32."""

  def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs):
    self.out = layers.Dense(in_dim, out_dim, ('embed', None), rngs=rngs)

  def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None
               ) -> jax.Array:
    del rngs  # No dropout in a linear probe.
    return self.out(x, out_dtype=jnp.float32)


class SwiGluBlock(nnx.Module):
  """(SiLU(x W_g) ⊙ (x W_v)) W_o, optionally after a LayerNorm."""

  def __init__(self, in_dim: int, hidden: int, *, pre_norm: bool,
               dropout_rate: float, rngs: nnx.Rngs):
    self.dropout_rate = dropout_rate
    self.norm = (layers.LayerNorm(in_dim, eps=1e-6, rngs=rngs) if pre_norm
                 else nnx.data(None))
    kw = dict(use_bias=False, rngs=rngs)
    self.gate = layers.Dense(in_dim, hidden, ('embed', 'mlp'), **kw)
    self.value = layers.Dense(in_dim, hidden, ('embed', 'mlp'), **kw)
    self.out = layers.Dense(hidden, hidden, ('mlp', 'embed'), **kw)

  def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None
               ) -> jax.Array:
    h = x if self.norm is None else self.norm(x)
    h = jax.nn.silu(self.gate(h)) * self.value(h)
    return layers.dropout(self.out(h), self.dropout_rate, rngs)


class SwiGluMlp(nnx.Module):
  """``num_blocks`` SwiGLU blocks and a linear output: [B, d] → [B, out]."""

  def __init__(self, in_dim: int, out_dim: int, *, num_blocks: int,
               hidden: int, pre_norm: bool = False, dropout_rate: float = 0.0,
               rngs: nnx.Rngs):
    if num_blocks < 1:
      raise ValueError(f'SwiGluMlp needs at least one block, got {num_blocks}')
    kw = dict(pre_norm=pre_norm, dropout_rate=dropout_rate, rngs=rngs)
    self.blocks = nnx.List(
        [SwiGluBlock(in_dim if i == 0 else hidden, hidden, **kw)
         for i in range(num_blocks)])
    self.out = layers.Dense(hidden, out_dim, ('embed', None), rngs=rngs)

  def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None
               ) -> jax.Array:
    x = x.astype(jnp.float32)
    for i, block in enumerate(self.blocks):
      y = block(x, rngs=rngs)
      x = y if i == 0 else x + y
    return self.out(x, out_dtype=jnp.float32)


def create_head(name: str, in_dim: int, out_dim: int, *, hidden: int = 768,
                pre_norm: bool = False, dropout_rate: float = 0.0,
                rngs: nnx.Rngs) -> nnx.Module:
  """Builds head ``name`` (one of :data:`HEADS`).

  Args:
    name: ``linear``, ``swiglu2`` or ``swiglu4``.
    in_dim: the reduced tap's width.
    out_dim: 4 (boxes) or 1 (a binary logit).
    hidden: SwiGLU width h (unused by ``linear``).
    pre_norm: LayerNorm before each SwiGLU block.
    dropout_rate: dropout on each block's output (train only).
    rngs: parameter randomness.
  """
  if name == 'linear':
    return Linear(in_dim, out_dim, rngs=rngs)
  if name in ('swiglu2', 'swiglu4'):
    return SwiGluMlp(in_dim, out_dim, num_blocks=int(name[-1]) - 1,
                     hidden=hidden, pre_norm=pre_norm,
                     dropout_rate=dropout_rate, rngs=rngs)
  raise ValueError(f'Unknown probe head {name!r}; valid: {list(HEADS)}')


def num_params(name: str, in_dim: int, out_dim: int, *, hidden: int = 768,
               pre_norm: bool = False) -> int:
  """The parameter count of :func:`create_head` (module docstring)."""
  if name == 'linear':
    return (in_dim + 1) * out_dim
  if name not in HEADS:
    raise ValueError(f'Unknown probe head {name!r}; valid: {list(HEADS)}')
  blocks = int(name[-1]) - 1
  count = 2 * in_dim * hidden + hidden * hidden
  count += (blocks - 1) * 3 * hidden * hidden
  if pre_norm:
    count += 2 * in_dim + (blocks - 1) * 2 * hidden
  return count + (hidden + 1) * out_dim
