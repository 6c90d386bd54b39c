"""AugReg ViT checkpoints (``.npz``, google-research/vision_transformer and
big_vision's ViT-B/16 ImageNet-21k releases) → vlg's ``vision`` subtree.

The layout is Flax's, so kernels already are vlg's (``in + out`` shapes,
attention (D, H, Dh) and (H, Dh, D)):

  cls [1, 1, D]                               → vision/cls_token
  embedding/kernel (p, p, 3, D), /bias        → vision/patch_embed
  Transformer/posembed_input/pos_embedding    → vision/pos_embed (resized
                                                 to the model's grid, torch
                                                 bicubic as ALBEF)
  Transformer/encoderblock_i/LayerNorm_0, _2  → vision/blocks/i/norm1, norm2
  …/MultiHeadDotProductAttention_1/{query,key,value,out}
                                              → vision/blocks/i/attn/…
  …/MlpBlock_3/Dense_0, Dense_1               → vision/blocks/i/mlp/fc1, fc2
  Transformer/encoder_norm                    → vision/norm

``head``/``pre_logits`` (the classifier) are skipped. Keys may carry an
``opt/target/`` or ``params/`` prefix. big_vision's own later layout
(``pos_embedding`` without a [CLS], MAP heads) is refused by name.

AugReg models were trained on pixels scaled to [-1, 1], i.e. mean = std =
0.5, not CLIP's statistics: a run that starts from them should set
``model.image_mean = model.image_std = (0.5, 0.5, 0.5)``
(docs/weights.md).
"""

from __future__ import annotations

import numpy as np

from vlg.weights import common

AUGREG_MEAN = AUGREG_STD = (0.5, 0.5, 0.5)
SKIPPED = ('head/kernel', 'head/bias', 'pre_logits/kernel', 'pre_logits/bias')


def _prefix(src: common.Source) -> str:
  for p in ('', 'opt/target/', 'params/'):
    if f'{p}Transformer/posembed_input/pos_embedding' in src:
      return p
  raise common.WeightsError(
      f'{src.what}: not an AugReg ViT (no '
      "'Transformer/posembed_input/pos_embedding'); big_vision's "
      "'img/pos_embedding' layout without [CLS] is not supported")


def _ln(src, name, out):
  return {f'{out}/scale': src.get(f'{name}/scale'),
          f'{out}/bias': src.get(f'{name}/bias')}


def _dense(src, name, out):
  return {f'{out}/kernel': src.get(f'{name}/kernel'),
          f'{out}/bias': src.get(f'{name}/bias')}


def convert(src: common.Source, grid: int, out: str = 'vision'
            ) -> tuple[common.Flat, list[str]]:
  """The AugReg ViT → ``({out/...: array}, skipped source keys)``."""
  p = _prefix(src)
  pos = src.get(p + 'Transformer/posembed_input/pos_embedding')
  flat: common.Flat = {
      f'{out}/cls_token': src.get(p + 'cls').reshape(-1),
      f'{out}/pos_embed': common.resize_pos_embed(
          pos.reshape(-1, pos.shape[-1]), grid),
  }
  flat.update(_dense(src, p + 'embedding', f'{out}/patch_embed'))
  flat.update(_ln(src, p + 'Transformer/encoder_norm', f'{out}/norm'))
  blocks = sorted({int(n.split('encoderblock_')[1].split('/')[0])
                   for n in src.names_under(p + 'Transformer/encoderblock_')})
  if blocks != list(range(len(blocks))):
    raise common.WeightsError(f'{src.what}: encoder blocks {blocks} are not '
                              '0..n-1')
  for i in blocks:
    b, o = f'{p}Transformer/encoderblock_{i}/', f'{out}/blocks/{i}'
    flat.update(_ln(src, b + 'LayerNorm_0', f'{o}/norm1'))
    flat.update(_ln(src, b + 'LayerNorm_2', f'{o}/norm2'))
    for n in ('query', 'key', 'value', 'out'):
      flat.update(_dense(src, f'{b}MultiHeadDotProductAttention_1/{n}',
                         f'{o}/attn/{n}'))
    flat.update(_dense(src, b + 'MlpBlock_3/Dense_0', f'{o}/mlp/fc1'))
    flat.update(_dense(src, b + 'MlpBlock_3/Dense_1', f'{o}/mlp/fc2'))
  skipped = [p + n for n in SKIPPED if p + n in src]
  return flat, skipped


def load_tower(arrays: dict[str, np.ndarray], target: dict, grid: int, *,
               what: str = 'AugReg checkpoint'
               ) -> tuple[dict, common.Summary]:
  """An AugReg ``.npz`` into the ``vision`` subtree of ``target``."""
  src = common.Source(arrays, what)
  flat, skipped = convert(src, grid)
  src.check_all_used(skipped)
  return common.merge(target, flat, under='vision/', what=what,
                      skipped=skipped)
