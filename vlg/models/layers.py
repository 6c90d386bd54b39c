"""The primitives every model is built from: initialisers, dense maps,
LayerNorm, dropout, GELU, the MLPs and rematerialisation.

``attention`` builds multi-head attention and ``blocks`` the ViT and BERT
layers on these.

Every parameter is created float32 and carries logical axis names in its
``out_sharding`` metadata (``nnx.with_partitioning``), which
``vlg.sharding.param_specs`` maps to mesh axes. Computation runs in the
module's ``dtype`` (float32 or bfloat16); matmuls accumulate in float32 and
softmax and LayerNorm always run in float32.

The modules are written to be used functionally (``nnx.split`` once,
``nnx.merge`` inside ``jax.jit``): no shared submodules, no state other than
``nnx.Param``, and dropout randomness is passed at call time as
``rngs: nnx.Rngs | None`` (None means deterministic).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vlg import sharding

Initializer = Callable[..., jax.Array]
Names = tuple[str | None, ...]

INIT_STD = 0.02  # BERT's initializer_range and timm's ViT trunc_normal std.
_DEFAULT_STD = contextvars.ContextVar('vlg_init_std', default=INIT_STD)


@contextlib.contextmanager
def default_init_std(std: float) -> Iterator[None]:
  """Within the block, :func:`normal_init` and :func:`trunc_normal_init`
  without an explicit ``std`` draw with ``std`` instead of ``INIT_STD``.

  Models wrap their construction in it with ``config.init_std``. 0.02 suits
  BERT-/ViT-base widths; at width 128, trained from scratch, it leaves the
  [CLS] outputs of different inputs nearly identical (cosine 0.9997 for
  the tiny text encoder), so ITC starts with almost no signal.
  """
  if not std > 0:
    raise ValueError(f'init_std must be > 0, got {std}')
  token = _DEFAULT_STD.set(float(std))
  try:
    yield
  finally:
    _DEFAULT_STD.reset(token)


def normal_init(std: float | None = None) -> Initializer:
  """N(0, std²); std None: ``INIT_STD`` or :func:`default_init_std`'s."""
  return nnx.initializers.normal(_DEFAULT_STD.get() if std is None else std)


def trunc_normal_init(std: float | None = None) -> Initializer:
  """N(0, std²) truncated at ±2 std; std None as in :func:`normal_init`."""
  return nnx.initializers.truncated_normal(
      _DEFAULT_STD.get() if std is None else std, lower=-2.0, upper=2.0)


def make_param(rngs: nnx.Rngs, init: Initializer, shape: Sequence[int],
               names: Names) -> nnx.Param:
  """A float32 ``nnx.Param`` annotated with logical axis ``names``."""
  if len(names) != len(shape):
    raise ValueError(f'{len(names)} axis names {names} for shape {shape}')
  init = nnx.with_partitioning(init, tuple(names))
  return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32))


def dropout(x: jax.Array, rate: float, rngs: nnx.Rngs | None) -> jax.Array:
  """Inverted dropout; the identity when ``rngs`` is None or ``rate`` is 0."""
  if rngs is None or rate <= 0.0:
    return x
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rngs.dropout(), keep, x.shape)
  return jnp.where(mask, x / keep, 0).astype(x.dtype)


# Gradient checkpointing per block (config ``model.remat``): what the backward
# pass may keep from the forward pass of a block; the rest is recomputed.
REMAT_POLICIES = {
    'none': None,  # Keep everything (no rematerialisation).
    'full': jax.checkpoint_policies.nothing_saveable,  # Keep only inputs.
    # Keep matmul outputs, recompute elementwise ops (softmax, GELU, LN).
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat(name: str) -> str:
  """Returns ``name`` if it is a key of :data:`REMAT_POLICIES`, else fails."""
  if name not in REMAT_POLICIES:
    raise ValueError(f'model.remat={name!r} is not one of '
                     f'{sorted(REMAT_POLICIES)}')
  return name


def call_block(block: nnx.Module, *args, remat: str = 'none',
               rngs: nnx.Rngs | None = None, **static) -> jax.Array:
  """``block(*args, rngs=rngs, **static)``, rematerialised under ``remat``.

  With a policy other than 'none' the block's activations are recomputed in
  the backward pass (``nnx.remat``), trading compute for memory; the
  forward values and gradients are unchanged. ``static`` keyword arguments
  (e.g. ``query_rows``) are Python values, not traced.
  """
  if check_remat(remat) == 'none':
    return block(*args, rngs=rngs, **static)
  fn = nnx.remat(lambda blk, r, *a: blk(*a, rngs=r, **static),
                 policy=REMAT_POLICIES[remat])
  return fn(block, rngs, *args)


def gelu(x: jax.Array) -> jax.Array:
  """The exact (erf) GELU of BERT and timm's ViT: ``x (1/2 + erf(x/sqrt 2)/2)``,
  PyTorch's and HuggingFace BERT's formula.

  ``jax.nn.gelu(approximate=False)`` evaluates ``erfc`` instead, which is
  more accurate far in the left tail (values differ by < 1e-6) but on XLA's
  CPU backend 3x slower forward and 1.7x slower backward; written this way
  the GELUs' share of the tiny ViT's forward fell from a sixth.
  """
  half = jnp.asarray(0.5, x.dtype)
  return x * (half + half * jax.lax.erf(
      x * jnp.asarray(0.7071067811865476, x.dtype)))


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """``x / max(|x|, eps)`` in float32, as torch's ``F.normalize``."""
  x = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


def _tuple(x: int | Sequence[int]) -> tuple[int, ...]:
  return (int(x),) if isinstance(x, int) else tuple(int(d) for d in x)


class Dense(nnx.Module):
  """A linear map contracting the trailing ``in_shape`` dims of its input.

  The kernel has shape ``in_shape + out_shape`` with one logical name per
  dimension (``names``), so attention projections can keep a separate
  ``heads`` axis: ``Dense(768, (12, 64), ('embed', 'heads', 'kv'))``.
  """

  def __init__(self, in_shape: int | Sequence[int],
               out_shape: int | Sequence[int], names: Names, *,
               use_bias: bool = True, dtype: jnp.dtype = jnp.float32,
               kernel_init: Initializer | None = None, rngs: nnx.Rngs):
    self.in_shape = _tuple(in_shape)
    self.out_shape = _tuple(out_shape)
    self.dtype = dtype
    self.kernel = make_param(rngs, kernel_init or normal_init(),
                             self.in_shape + self.out_shape, names)
    if use_bias:
      self.bias = make_param(rngs, nnx.initializers.zeros, self.out_shape,
                             names[len(self.in_shape):])
    else:
      self.bias = nnx.data(None)

  def __call__(self, x: jax.Array, out_dtype: jnp.dtype | None = None
               ) -> jax.Array:
    n = len(self.in_shape)
    lhs = tuple(range(x.ndim - n, x.ndim))
    y = jax.lax.dot_general(
        x.astype(self.dtype), self.kernel[...].astype(self.dtype),
        ((lhs, tuple(range(n))), ((), ())),
        preferred_element_type=jnp.float32)
    if self.bias is not None:
      y = y + self.bias[...]
    return y.astype(out_dtype or self.dtype)


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis, computed in float32."""

  def __init__(self, dim: int, *, eps: float, dtype: jnp.dtype = jnp.float32,
               name: str = 'embed', rngs: nnx.Rngs):
    self.eps = eps
    self.dtype = dtype
    self.scale = make_param(rngs, nnx.initializers.ones, (dim,), (name,))
    self.bias = make_param(rngs, nnx.initializers.zeros, (dim,), (name,))

  def __call__(self, x: jax.Array, out_dtype: jnp.dtype | None = None
               ) -> jax.Array:
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * self.scale[...] + self.bias[...]
    return y.astype(out_dtype or self.dtype)


class Mlp(nnx.Module):
  """Dense → GELU → (dropout) → Dense; kernels (embed, mlp) and (mlp, embed)."""

  def __init__(self, dim: int, hidden: int, *, dropout_rate: float = 0.0,
               dtype: jnp.dtype = jnp.float32,
               kernel_init: Initializer | None = None, rngs: nnx.Rngs):
    self.dropout_rate = dropout_rate
    kw = dict(dtype=dtype, kernel_init=kernel_init, rngs=rngs)
    self.fc1 = Dense(dim, hidden, ('embed', 'mlp'), **kw)
    self.fc2 = Dense(hidden, dim, ('mlp', 'embed'), **kw)

  def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None
               ) -> jax.Array:
    h = gelu(self.fc1(x))
    h = sharding.constrain(h, ('batch', 'length', 'mlp'))
    h = dropout(h, self.dropout_rate, rngs)
    return self.fc2(h)


class MlpHead(nnx.Module):
  """X-VLM's ``build_mlp``: Dense(d→2d) → LayerNorm → GELU → Dense(2d→out).

  Used as X-VLM's ITM head (out 2) and box head (out 4); the output is
  float32 by default (logits or box coordinates).
  """

  def __init__(self, dim: int, out_dim: int, *, eps: float = 1e-5,
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.fc1 = Dense(dim, 2 * dim, ('embed', 'mlp'), dtype=dtype, rngs=rngs)
    self.norm = LayerNorm(2 * dim, eps=eps, dtype=dtype, name='mlp',
                          rngs=rngs)
    self.fc2 = Dense(2 * dim, out_dim, ('mlp', None), dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, out_dtype: jnp.dtype = jnp.float32
               ) -> jax.Array:
    return self.fc2(gelu(self.norm(self.fc1(x))), out_dtype=out_dtype)
