r"""Analytic model FLOPs of one ALBEF training step, and accelerator peaks.

  python -m vlg.tools.flops --config=configs/albef.py:base

Counts the matmul FLOPs (2·m·k·n per matmul, attention scores and the
attention-weighted sums included; LayerNorm, softmax, GELU and the optimizer
left out, as in the usual MFU convention) of exactly the passes that
``vlg.train.make_train_step`` runs for ALBEF captions
(``vlg/objectives/albef.py``):

- momentum (EMA) model, forward only: ViT on B images; text encoder on the
  B captions and on the B masked captions; fusion of the masked captions
  with their images; MLM head on every position;
- online model, forward and backward: ViT on B images; text encoder on the
  B captions; ITC similarities against the B + Q momentum features; fusion
  of the 3B ITM pairs (B positives and the 2B hard negatives; the last
  fusion layer for the [CLS] row only, ``Model.fuse_cls``; the
  cross-attention keys and values of each of the B images computed once
  where the batch is not split across devices, once per pair where it
  is, as ``albef_loss`` chooses); ITM head; text
  encoder on the B masked captions; their fusion; MLM head;
- ITC targets from the momentum features (forward only).

Backward costs two matmuls per forward matmul whose both operands depend on
the parameters (×3 in all); the patch embedding's first layer (pixels need
no gradient) and the online ITC similarities (the momentum side is
stop-gradiented) cost one (×2). A convolutional stem
(``model.vision_stem='conv'`` or ``'conv_image'``, whose convolutions over
the whole image have the same output sizes as over every patch) counts its
3×3 convolutions as matmuls of the same size. Images enter at ``input.resolution`` and texts at
``input.max_text_len``, as the pipeline produces them.

``PEAK_BF16_FLOPS`` holds dense (no sparsity) bfloat16 peaks per chip;
:func:`peak_bf16_flops` looks one up from ``jax.devices()[0].device_kind``.
"""

from __future__ import annotations

import ml_collections
from absl import app
from absl import flags
from ml_collections import config_flags

from vlg import config_lib

# Dense bfloat16 FLOP/s per chip (one TPU chip, one GPU).
PEAK_BF16_FLOPS: dict[str, float] = {
    # Cloud TPU docs, "TPU v4": 275 TFLOP/s peak bf16 per chip.
    'TPU v4': 275e12,
    # Cloud TPU docs, "TPU v5e": 197 TFLOP/s peak bf16 per chip.
    'TPU v5e': 197e12,
    # Cloud TPU docs, "TPU v5p": 459 TFLOP/s peak bf16 per chip.
    'TPU v5p': 459e12,
    # Cloud TPU docs, "TPU v6e" (Trillium): 918 TFLOP/s peak bf16 per chip.
    'TPU v6e': 918e12,
    # NVIDIA A100 datasheet: BF16 Tensor Core 312 TFLOPS dense (624 sparse);
    # the same for the SXM and PCIe boards.
    'A100': 312e12,
    # NVIDIA H100 datasheet, SXM: BF16 Tensor Core 1,979 TFLOPS "with
    # sparsity", i.e. 989 dense.
    'H100 SXM': 989e12,
    # NVIDIA H100 datasheet, PCIe: 1,513 TFLOPS with sparsity, 756 dense.
    'H100 PCIe': 756e12,
    # NVIDIA H200 datasheet (SXM): BF16 Tensor Core 1,979 TFLOPS with
    # sparsity, 989 dense — the H100 SXM's compute with more memory.
    'H200': 989e12,
}


def peak_key(device_kind: str) -> str | None:
  """The :data:`PEAK_BF16_FLOPS` key of a ``jax.Device.device_kind``.

  TPUs report e.g. ``'TPU v4'``, ``'TPU v5 lite'`` (v5e), ``'TPU v5'`` or
  ``'TPU v5p'`` (v5p), ``'TPU v6 lite'`` (v6e); GPUs their product name,
  e.g. ``'NVIDIA H100 80GB HBM3'`` (SXM) or ``'NVIDIA A100-SXM4-40GB'``.
  Returns None for anything else (CPUs included).
  """
  kind = device_kind.lower()
  if kind.startswith('tpu'):
    if 'v4' in kind:
      return 'TPU v4'
    if 'v5' in kind:
      return 'TPU v5e' if ('lite' in kind or 'v5e' in kind) else 'TPU v5p'
    if 'v6' in kind:
      return 'TPU v6e'
    return None
  if 'h200' in kind:
    return 'H200'
  if 'h100' in kind:
    return 'H100 PCIe' if 'pcie' in kind else 'H100 SXM'
  if 'a100' in kind:
    return 'A100'
  return None


def peak_bf16_flops(device_kind: str) -> float | None:
  """Dense bf16 peak FLOP/s of one device of ``device_kind``, or None."""
  key = peak_key(device_kind)
  return None if key is None else PEAK_BF16_FLOPS[key]


# Forward matmul FLOPs of the building blocks
# ---------------------------------------------------------------------------


def dense(rows: int, fan_in: int, fan_out: int) -> int:
  """A [rows, fan_in] × [fan_in, fan_out] matmul."""
  return 2 * rows * fan_in * fan_out


def attention(q_len: int, kv_len: int, width: int, kv_width: int) -> int:
  """Multi-head attention of ``q_len`` queries over ``kv_len`` keys.

  Query and output projections at ``width``, key and value projections from
  ``kv_width`` to ``width``, scores and weighted sum over all heads (heads ×
  head dim = ``width``). Per example.
  """
  projections = (2 * dense(q_len, width, width) +
                 2 * dense(kv_len, kv_width, width))
  scores_and_sum = 2 * (2 * q_len * kv_len * width)
  return projections + scores_and_sum


def folded_attention(q_len: int, kv_len: int, width: int, kv_width: int,
                     heads: int) -> int:
  """:func:`attention` as ``Attention(..., fold=True)`` runs it
  (``vlg.models.attention_math``): no key or value projections; each
  query mapped to ``kv_width`` and back through the value kernel, the
  scores and weighted sum at ``kv_width`` per head. Per example."""
  return (2 * dense(q_len, width, width) + 2 * dense(q_len, width, kv_width)
          + 2 * (2 * heads * q_len * kv_len * kv_width))


def mlp(length: int, width: int, hidden: int) -> int:
  """Dense → GELU → Dense. Per example."""
  return dense(length, width, hidden) + dense(length, hidden, width)


def conv_stem(m: ml_collections.ConfigDict) -> tuple[int, int]:
  """One patch through ``ConvPatchStem``: (all its FLOPs, its first
  convolution's), 'SAME' 3×3 convolutions at their output sizes."""
  side, cin, total, first = int(m.patch_size), 3, 0, 0
  for i, cout in enumerate(int(c) for c in m.vision_stem_channels):
    if i:
      side //= 2
    layer = dense(side * side, 9 * cin, cout)
    first = first or layer
    total += layer
    cin = cout
  return total + dense(1, side * side * cin, int(m.vision_width)), first


def vit(m: ml_collections.ConfigDict, resolution: int) -> dict[str, int]:
  """One image through the ViT: ``patch_embed`` and ``blocks``, and
  ``patch_embed_first``, the FLOPs of the patch embedding's first layer
  (whose input, the pixels, needs no gradient)."""
  p, dv = int(m.patch_size), int(m.vision_width)
  patches = (resolution // p) ** 2
  tokens = 1 + patches
  block = attention(tokens, tokens, dv, dv) + mlp(tokens, dv,
                                                  int(m.vision_mlp))
  if m.get('vision_stem', 'patch') in ('conv', 'conv_image'):
    stem, first = conv_stem(m)
    embed, embed_first = patches * stem, patches * first
  else:
    embed = embed_first = dense(patches, p * p * 3, dv)
  return {'patch_embed': embed, 'patch_embed_first': embed_first,
          'blocks': int(m.vision_depth) * block}


def text_layers(m: ml_collections.ConfigDict, length: int) -> int:
  """One text through the text-only BERT layers."""
  dt = int(m.text_width)
  layer = attention(length, length, dt, dt) + mlp(length, dt, int(m.text_mlp))
  return int(m.text_layers) * layer


def folds(m: ml_collections.ConfigDict, queries: int | None) -> bool:
  """Whether a fusion layer computing ``queries`` rows folds its
  attentions: fewer queries than a head's width (``BertLayer._fold``)."""
  return (queries is not None and
          queries < int(m.text_width) // int(m.text_heads))


def fusion_layer(m: ml_collections.ConfigDict, length: int,
                 image_tokens: int, queries: int | None = None) -> int:
  """One fusion layer for one (text, image) pair: self-attention of
  ``queries`` rows (all ``length`` when None) over the text's ``length``
  keys, cross-attention over the image tokens (keys and values computed
  from that pair's tokens), MLP on the query rows. Fewer queries than a
  head's width fold both attentions (``BertLayer``: no keys or values)."""
  dt, dv = int(m.text_width), int(m.vision_width)
  rows = length if queries is None else queries
  if folds(m, queries):
    heads = int(m.text_heads)
    return (folded_attention(rows, length, dt, dt, heads) +
            folded_attention(rows, image_tokens, dt, dv, heads) +
            mlp(rows, dt, int(m.text_mlp)))
  return (attention(rows, length, dt, dt) +
          attention(rows, image_tokens, dt, dv) +
          mlp(rows, dt, int(m.text_mlp)))


def fusion_layers(m: ml_collections.ConfigDict, length: int,
                  image_tokens: int) -> int:
  """One (text, image) pair through the fusion layers."""
  return int(m.fusion_layers) * fusion_layer(m, length, image_tokens)


def fusion_layers_cls(m: ml_collections.ConfigDict, length: int,
                      image_tokens: int) -> int:
  """One pair through the fusion layers as ``Model.fuse_cls`` runs them:
  all but the last in full; the last for the [CLS] query only, its
  attentions folded (:func:`fusion_layer`)."""
  n = int(m.fusion_layers)
  if n < 1:
    return 0
  return ((n - 1) * fusion_layer(m, length, image_tokens) +
          fusion_layer(m, length, image_tokens, queries=1))


def mlm_head(m: ml_collections.ConfigDict, length: int) -> int:
  """Dense transform plus the tied vocabulary decoder, every position."""
  dt = int(m.text_width)
  return dense(length, dt, dt) + dense(length, dt, int(m.vocab_size))


def itm_head(m: ml_collections.ConfigDict) -> int:
  """ITM head on one fused [CLS]: linear (ALBEF) or X-VLM's MLP."""
  dt = int(m.text_width)
  if m.itm_head == 'mlp':
    return dense(1, dt, 2 * dt) + dense(1, 2 * dt, 2)
  return dense(1, dt, 2)


# One training step
# ---------------------------------------------------------------------------


def check_supported(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError unless ``config`` trains ALBEF captions only."""
  parts = [k for k, v in (config.input.get('parts') or {}).items()
           if v.get('enabled', True)]
  if parts:
    raise ValueError(f'Analytic FLOPs cover ALBEF captions only; this config '
                     f'also trains input.parts {sorted(parts)}')
  if not config.loss.get('momentum_distill', True):
    raise ValueError('Analytic FLOPs cover ALBEF captions (momentum '
                     'distillation) only; loss.momentum_distill is False')


def train_step_flops(config: ml_collections.ConfigDict,
                     batch_shards: int = 1) -> dict[str, float]:
  """Model FLOPs of one training step of an ALBEF ``config`` (global batch).

  Args:
    config: an ALBEF-captions config.
    batch_shards: into how many shards the mesh splits the batch
      (``sharding.batch_shards()``); at 1 ITM's fusion computes each
      image's cross-attention keys and values once, else once per pair.

  Returns:
    ``{'vit', 'text', 'fusion', 'heads', 'itc', 'total'}``: each stack's
    FLOPs summed over the momentum forward and the online forward and
    backward passes listed in the module docstring.
  """
  check_supported(config)
  m = config.model
  b, q = int(config.batch_size), int(config.queue_size)
  length = int(config.input.max_text_len)
  resolution = int(config.input.resolution)
  image_tokens = 1 + (resolution // int(m.patch_size)) ** 2
  dv, dt, e = int(m.vision_width), int(m.text_width), int(m.embed_dim)

  image = vit(m, resolution)
  vision_fwd = image['patch_embed'] + image['blocks'] + dense(1, dv, e)
  vision_train = (3 * image['patch_embed'] - image['patch_embed_first'] +
                  3 * (image['blocks'] + dense(1, dv, e)))
  text_fwd = text_layers(m, length) + dense(1, dt, e)
  mlm_text_fwd = text_layers(m, length)
  fuse = fusion_layers(m, length, image_tokens)
  fuse_cls = fusion_layers_cls(m, length, image_tokens)
  # ITM's 3B pairs: with the keys and values once per image, 2B of them
  # skip the image's key and value projections of every fusion layer but
  # the folded last, which has none.
  itm_fuse = 3 * b * fuse_cls
  if batch_shards == 1:
    projected = int(m.fusion_layers) - folds(m, 1)
    itm_fuse -= 2 * b * max(projected, 0) * 2 * dense(image_tokens, dv, dt)
  mlm = mlm_head(m, length)
  sims = dense(b, e, b + q)  # One [B, E] × [E, B + Q] similarity matrix.

  out = {
      # momentum forward + online forward/backward, per example × B.
      'vit': b * (vision_fwd + vision_train),
      'text': b * (text_fwd + mlm_text_fwd + 3 * (text_fwd + mlm_text_fwd)),
      # momentum MLM fusion; online ITM (3B pairs) and MLM (B) fusion.
      'fusion': b * fuse + 3 * (itm_fuse + b * fuse),
      'heads': b * mlm + 3 * (3 * b * itm_head(m) + b * mlm),
      # two momentum target matrices (forward), two online ones (×2).
      'itc': 2 * sims + 2 * 2 * sims,
  }
  out['total'] = sum(out.values())
  return {k: float(v) for k, v in out.items()}


def main(argv):
  del argv
  config = flags.FLAGS.config
  flops = train_step_flops(config, flags.FLAGS.batch_shards)
  batch = int(config.batch_size)
  for name, value in flops.items():
    print(f'{name:>6}: {value / 1e12:10.3f} TFLOP per step '
          f'({value / batch / 1e9:.2f} GFLOP per example)')


if __name__ == '__main__':
  # Defined here, not at import, so vlg.tools.bench can import this module
  # next to its own --config.
  config_flags.DEFINE_config_file(
      'config', None, 'Config file, e.g. configs/albef.py:base.',
      lock_config=True)
  flags.DEFINE_integer(
      'batch_shards', 1, 'Into how many shards the mesh splits the batch '
      '(data x fsdp devices); at 1 ITM computes each image\'s keys and '
      'values once.')
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=config_lib.parse_flags)
