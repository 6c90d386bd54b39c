"""Transformer building blocks shared by the vision and text encoders.

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
from vlg.models import attention_math

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


_QKV_NAMES = ('batch', 'length', 'heads', 'kv')


class Attention(nnx.Module):
  """Multi-head attention with a boolean key mask.

  Query, key and value kernels are ``(embed, heads, kv)``; the output kernel
  is ``(heads, kv, embed)``. Keys and values may come from a context of a
  different width (``kv_dim``), as in cross-attention from text to image
  tokens. Masked keys get the most negative float32 before a float32
  softmax, so a query whose keys are all masked attends uniformly instead of
  producing NaNs.
  """

  def __init__(self, dim: int, num_heads: int, *, kv_dim: int | None = None,
               use_bias: bool = True, dropout_rate: float = 0.0,
               dtype: jnp.dtype = jnp.float32,
               kernel_init: Initializer | None = None, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f'width {dim} is not divisible by {num_heads} heads')
    head_dim = dim // num_heads
    kv_dim = kv_dim or dim
    self.dropout_rate = dropout_rate
    self.head_dim = head_dim
    qkv = ('embed', 'heads', 'kv')
    kw = dict(use_bias=use_bias, dtype=dtype, kernel_init=kernel_init,
              rngs=rngs)
    self.query = Dense(dim, (num_heads, head_dim), qkv, **kw)
    self.key = Dense(kv_dim, (num_heads, head_dim), qkv, **kw)
    self.value = Dense(kv_dim, (num_heads, head_dim), qkv, **kw)
    self.out = Dense((num_heads, head_dim), dim, ('heads', 'kv', 'embed'),
                     **kw)

  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               mask: jax.Array | None = None, *,
               rngs: nnx.Rngs | None = None,
               context_index: jax.Array | None = None,
               fold: bool = False) -> jax.Array:
    """Attends from ``x`` [B, Lq, D] to ``context`` [B, Lk, Dkv] (or ``x``).

    Args:
      x: queries' input.
      context: keys' and values' input; None for self-attention.
      mask: [B, Lk] key mask, True (or nonzero) where a key is visible, or
        [B, Lq, Lk] per query row (e.g. causal); None for all visible.
      rngs: dropout randomness for the attention probabilities.
      context_index: int [B]: query row b attends to context row
        ``context_index[b]`` of a ``context`` [C, Lk, Dkv] with C distinct
        rows (and a 2-D ``mask`` [C, Lk] follows the context). Keys and
        values are projected once per distinct row and then gathered: the
        values equal attending to ``context[context_index]``, for fewer
        FLOPs when rows repeat (ITM's 3B rows hold B distinct images).
      fold: (static) never project the keys and values
        (``attention_math.folded_attention``: the same values, cheaper when
        the queries are fewer than ``head_dim``).

    Returns:
      [B, Lq, D] in the module's dtype.
    """
    if fold:
      return self._folded(x, x if context is None else context, mask, rngs,
                          context_index)
    context = x if context is None else context
    v = _gather_rows(sharding.constrain(self.value(context), _QKV_NAMES),
                     context_index)
    probs = self.probabilities(x, context, mask, context_index)
    probs = dropout(probs, self.dropout_rate, rngs).astype(v.dtype)
    y = jnp.einsum('bhqk,bhkd->bhqd', probs, _heads_first(v))
    return self.out(jnp.transpose(y, (0, 2, 1, 3)))

  def _folded(self, x: jax.Array, context: jax.Array,
              mask: jax.Array | None, rngs: nnx.Rngs | None,
              context_index: jax.Array | None) -> jax.Array:
    """:meth:`__call__` with ``fold`` (``attention_math.folded_attention``)."""
    q = sharding.constrain(self.query(x), _QKV_NAMES)
    q = q * jnp.asarray(self.head_dim ** -0.5, q.dtype)
    y = attention_math.folded_attention(
        q, _gather_rows(context, context_index), self.key.kernel[...],
        _bias(self.key), self.value.kernel[...], _bias(self.value),
        _context_mask(mask, context_index),
        lambda p: dropout(p, self.dropout_rate, rngs))
    return self.out(y)

  def probabilities(self, x: jax.Array, context: jax.Array | None = None,
                    mask: jax.Array | None = None,
                    context_index: jax.Array | None = None) -> jax.Array:
    """float32 [B, heads, Lq, Lk]: the attention probabilities of the
    queries of ``x`` over the keys of ``context`` (or ``x``), before
    dropout; ``mask`` and ``context_index`` as in :meth:`__call__`. Probes
    read them (where a fusion layer's text looks in the image)."""
    context = x if context is None else context
    q = sharding.constrain(self.query(x), _QKV_NAMES)
    k = _gather_rows(sharding.constrain(self.key(context), _QKV_NAMES),
                     context_index)
    q = q * jnp.asarray(self.head_dim ** -0.5, q.dtype)
    logits = jnp.einsum('bhqd,bhkd->bhqk', _heads_first(q), _heads_first(k),
                        preferred_element_type=jnp.float32)
    return attention_math.masked_softmax(
        logits, _context_mask(mask, context_index))


def _bias(dense: Dense) -> jax.Array | None:
  """A dense map's bias values, or None when it has none."""
  return None if dense.bias is None else dense.bias[...]


def _context_mask(mask: jax.Array | None, context_index: jax.Array | None
                  ) -> jax.Array | None:
  """The key mask of each query row: ``mask[context_index]`` when rows read
  context rows by index (the mask must then be [C, Lk])."""
  if mask is None or context_index is None:
    return mask
  if mask.ndim != 2:
    raise ValueError('With context_index the key mask must be [C, Lk], '
                     f'one row per context row; got {mask.shape}')
  return mask[context_index]


def _heads_first(x: jax.Array) -> jax.Array:
  """[B, L, heads, kv] → [B, heads, L, kv]: both attention products then
  contract with (batch, head) leading, which XLA's CPU backend runs as
  plain batched matmuls (the head-interleaved einsums were 1.3–1.9x slower
  forward at the tiny model's 65 tokens and 4 heads)."""
  return jnp.transpose(x, (0, 2, 1, 3))


def _group_rows(x: jax.Array, rows: int) -> jax.Array:
  """[G R, L, D] → [G, R L, D]: each group of ``rows`` consecutive rows as
  one sequence (``x`` itself for one row)."""
  if rows == 1:
    return x
  if rows < 1 or x.shape[0] % rows:
    raise ValueError(f'rows_per_context={rows} does not divide the '
                     f'{x.shape[0]} rows')
  return x.reshape((x.shape[0] // rows, rows * x.shape[1]) + x.shape[2:])


def _gather_rows(x: jax.Array, index: jax.Array | None) -> jax.Array:
  """``x[index]`` along the batch axis (``x`` itself when index is None)."""
  return x if index is None else x[index]


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


class ViTBlock(nnx.Module):
  """Pre-LN block (timm ``Block``): x += attn(LN(x)); x += mlp(LN(x))."""

  def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, eps: float,
               dropout_rate: float = 0.0, dtype: jnp.dtype = jnp.float32,
               rngs: nnx.Rngs):
    init = trunc_normal_init()
    self.dropout_rate = dropout_rate
    self.norm1 = LayerNorm(dim, eps=eps, dtype=dtype, rngs=rngs)
    self.attn = Attention(dim, num_heads, dtype=dtype, kernel_init=init,
                          rngs=rngs)
    self.norm2 = LayerNorm(dim, eps=eps, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(dim, mlp_dim, dtype=dtype, kernel_init=init,
                   dropout_rate=dropout_rate, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """x [B, N, D]; ``mask`` [B, N] restricts every token's keys (None: all)."""
    r = self.dropout_rate
    x = x + dropout(self.attn(self.norm1(x), mask=mask, rngs=rngs), r, rngs)
    x = x + dropout(self.mlp(self.norm2(x), rngs=rngs), r, rngs)
    return sharding.constrain(x, ('batch', 'length', 'embed'))


class BertLayer(nnx.Module):
  """Post-LN BERT layer, optionally with cross-attention (ALBEF fusion).

  x = LN(x + SelfAttn(x)); [x = LN(x + CrossAttn(x, image))];
  x = LN(x + FFN(x)). Dropout (BERT's hidden and attention-probability
  dropout) uses the same rate everywhere. Cross-attention keys and values
  are computed from the context width ``context_dim`` (the vision width).
  """

  def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, eps: float,
               context_dim: int | None = None, dropout_rate: float = 0.0,
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.dropout_rate = dropout_rate
    kw = dict(dropout_rate=dropout_rate, dtype=dtype, rngs=rngs)
    self.attn = Attention(dim, num_heads, **kw)
    self.attn_norm = LayerNorm(dim, eps=eps, dtype=dtype, rngs=rngs)
    if context_dim is not None:
      self.cross = Attention(dim, num_heads, kv_dim=context_dim, **kw)
      self.cross_norm = LayerNorm(dim, eps=eps, dtype=dtype, rngs=rngs)
    else:
      self.cross = nnx.data(None)
      self.cross_norm = nnx.data(None)
    self.mlp = Mlp(dim, mlp_dim, dtype=dtype, rngs=rngs)
    self.mlp_norm = LayerNorm(dim, eps=eps, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None,
               context: jax.Array | None = None,
               context_mask: jax.Array | None = None,
               context_index: jax.Array | None = None, *,
               rngs: nnx.Rngs | None = None,
               query_rows: int | None = None,
               rows_per_context: int = 1,
               self_attended: bool = False) -> jax.Array:
    """Self-attention over ``x`` with key ``mask``; cross-attends ``context``.

    Args:
      x: [B, L, D] hidden states.
      mask: [B, L] text key mask (None: all visible).
      context: [B, N, Dc] image tokens; required iff the layer has
        cross-attention.
      context_mask: [B, N] image key mask (None: all visible).
      context_index: int [B], row b reads image ``context_index[b]`` of a
        ``context`` [C, N, Dc] (and ``context_mask`` [C, N]); its keys and
        values are computed once per image (``Attention``'s argument).
      rngs: dropout randomness (None: deterministic).
      query_rows: (static) compute only the first ``query_rows`` positions'
        outputs, their self-attention still reading every key of ``x``.
        Every position's output depends on the others only through the
        self-attention's keys and values, so these rows equal the full
        layer's first rows; a last layer read only at [CLS] (ITM, boxes,
        MRC) needs ``query_rows=1`` and skips the rest of its work; its
        attentions then never form keys and values (``Attention``'s
        ``fold``).
      rows_per_context: (static) R: rows ``g R .. g R + R - 1`` of ``x``
        [G R, L, D] all read context row g of ``context`` [G, N, Dc] (and
        ``context_mask`` [G, N]). Cross-attention treats every query
        position alone, so it runs on the R rows' positions as one
        sequence of R L queries over the shared keys and values, which are
        projected once per context row; the values equal attending to each
        row's context repeated R times. Re-scoring many texts against one
        image (retrieval) then skips all but one of the image's key and
        value projections, without a gather.
      self_attended: (static) ``x`` is already :meth:`self_attend`'s output
        for this layer, whose self-attention is then skipped. In a first
        fusion layer that block reads the text alone, so a text fused with
        many images (retrieval's re-ranking) can run it once.

    Returns:
      [B, L, D] hidden states in the module's dtype ([B, query_rows, D]
      with ``query_rows``).
    """
    r = self.dropout_rate
    if self_attended:
      x = x if query_rows is None else x[:, :query_rows]
    else:
      x = self.self_attend(x, mask, rngs=rngs, query_rows=query_rows)
    if self.cross is not None:
      if context is None:
        raise ValueError('A fusion layer needs image tokens as context.')
      c = self.cross(_group_rows(x, rows_per_context), context,
                     context_mask, rngs=rngs, context_index=context_index,
                     fold=self._fold(query_rows, rows_per_context))
      x = self.cross_norm(x + dropout(c.reshape(x.shape), r, rngs))
    x = self.mlp_norm(x + dropout(self.mlp(x, rngs=rngs), r, rngs))
    return sharding.constrain(x, ('batch', 'length', 'embed'))

  def self_attend(self, x: jax.Array, mask: jax.Array | None = None, *,
                  rngs: nnx.Rngs | None = None,
                  query_rows: int | None = None) -> jax.Array:
    """The layer's first block, LN(q + SelfAttn(q over the keys of x)), q
    the first ``query_rows`` rows of ``x`` (all of them when None)."""
    q = x
    if query_rows is not None:
      q = x[:, :query_rows]
      if mask is not None and mask.ndim == 3:
        mask = mask[:, :query_rows]
    return self.attn_norm(q + dropout(
        self.attn(q, context=x, mask=mask, rngs=rngs,
                  fold=self._fold(query_rows)), self.dropout_rate, rngs))

  def _fold(self, query_rows: int | None, rows_per_context: int = 1
            ) -> bool:
    """Whether attention from ``query_rows`` positions of
    ``rows_per_context`` rows at a time skips forming keys and values
    (``Attention``'s ``fold``): when those queries are fewer than a
    head's width, as for a last layer read only at [CLS]."""
    return (query_rows is not None and
            query_rows * rows_per_context < self.attn.head_dim)

  def cross_attention_probs(self, x: jax.Array, mask: jax.Array | None,
                            context: jax.Array,
                            context_mask: jax.Array | None = None
                            ) -> jax.Array:
    """float32 [B, heads, L, N]: where this fusion layer's text, given the
    layer's input ``x``, attends in ``context`` (no dropout)."""
    if self.cross is None:
      raise ValueError('This layer has no cross-attention.')
    return self.cross.probabilities(self.self_attend(x, mask),
                                    context, context_mask)
