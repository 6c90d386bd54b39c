"""ViT weights in timm's PyTorch layout (DeiT-B/16, ALBEF's ``visual_encoder``)
→ vlg's ``vision`` subtree.

timm names (``models/vision_transformer.py``) and their vlg places:

  cls_token [1, 1, D]                → vision/cls_token (D,)
  pos_embed [1, 1 + N, D]            → vision/pos_embed (1 + N', D), resized
                                        to the model's grid as ALBEF's
                                        ``interpolate_pos_embed``
  patch_embed.proj.weight [D, 3, p, p] → vision/patch_embed/kernel (p, p, 3, D)
  blocks.i.norm1 / norm2             → vision/blocks/i/norm1 / norm2
  blocks.i.attn.qkv [3D, D]          → vision/blocks/i/attn/{query,key,value}
  blocks.i.attn.proj                 → vision/blocks/i/attn/out
  blocks.i.mlp.fc1 / fc2             → vision/blocks/i/mlp/fc1 / fc2
  norm                               → vision/norm

The classifier (``head``, DeiT's ``head_dist``/``dist_token``) is skipped:
vlg's ViT has no classifier. LayerNorm eps (1e-6) and the exact-erf GELU
are vlg's defaults for the vision tower (``vlg/models/sizes.py``).

Note the pixel normalisation: DeiT was trained on ImageNet mean/std, but
ALBEF fine-tunes it with CLIP's (vlg's default), so the config's
``image_mean``/``image_std`` are left to the recipe (docs/weights.md).
"""

from __future__ import annotations

import numpy as np

from vlg.weights import common

# Source keys that exist in timm/DeiT checkpoints but have no place in vlg.
SKIPPED = ('head.weight', 'head.bias', 'head_dist.weight', 'head_dist.bias',
           'dist_token', 'pre_logits.fc.weight', 'pre_logits.fc.bias')


def _ln(src: common.Source, name: str, out: str) -> common.Flat:
  return {f'{out}/scale': src.get(f'{name}.weight'),
          f'{out}/bias': src.get(f'{name}.bias')}


def _dense(src: common.Source, name: str, out: str) -> common.Flat:
  return {f'{out}/kernel': common.linear(src.get(f'{name}.weight')),
          f'{out}/bias': src.get(f'{name}.bias')}


def depth_of(src: common.Source, prefix: str = '') -> int:
  """Number of blocks in the checkpoint (``blocks.<i>.`` indices)."""
  return common.count_indexed(src, prefix + 'blocks.', 'block')


def convert(src: common.Source, grid: int, *, prefix: str = '',
            out: str = 'vision') -> common.Flat:
  """The timm-layout ViT under ``prefix`` → ``{out/...: array}``.

  Args:
    src: the checkpoint.
    grid: the model's patch grid (``image_size // patch_size``); the
      position embeddings are resized to it.
    prefix: the ViT's key prefix ('' for DeiT, 'visual_encoder.' in ALBEF).
    out: the vlg subtree.
  """
  p = prefix
  flat: common.Flat = {
      f'{out}/cls_token': src.get(p + 'cls_token').reshape(-1),
      f'{out}/pos_embed': common.resize_pos_embed(
          src.get(p + 'pos_embed').reshape(
              -1, src.arrays[p + 'pos_embed'].shape[-1]), grid),
      f'{out}/patch_embed/kernel': common.conv_patch(
          src.get(p + 'patch_embed.proj.weight')),
      f'{out}/patch_embed/bias': src.get(p + 'patch_embed.proj.bias'),
  }
  flat.update(_ln(src, p + 'norm', f'{out}/norm'))
  for i in range(depth_of(src, p)):
    b, o = f'{p}blocks.{i}.', f'{out}/blocks/{i}'
    flat.update(_ln(src, b + 'norm1', f'{o}/norm1'))
    flat.update(_ln(src, b + 'norm2', f'{o}/norm2'))
    qkv_w, qkv_b = src.get(b + 'attn.qkv.weight'), src.get(b + 'attn.qkv.bias')
    for j, name in enumerate(('query', 'key', 'value')):
      d = qkv_w.shape[0] // 3
      flat[f'{o}/attn/{name}/kernel'] = common.linear(qkv_w[j * d:(j + 1) * d])
      flat[f'{o}/attn/{name}/bias'] = qkv_b[j * d:(j + 1) * d]
    flat.update(_dense(src, b + 'attn.proj', f'{o}/attn/out'))
    flat.update(_dense(src, b + 'mlp.fc1', f'{o}/mlp/fc1'))
    flat.update(_dense(src, b + 'mlp.fc2', f'{o}/mlp/fc2'))
  return flat


def load_tower(arrays: dict[str, np.ndarray], target: dict, grid: int, *,
               what: str = 'ViT checkpoint'
               ) -> tuple[dict, common.Summary]:
  """A DeiT/timm ViT state dict into the ``vision`` subtree of ``target``
  (a whole-model parameter tree); everything else stays as it is."""
  src = common.Source(arrays, what)
  flat = convert(src, grid)
  skipped = [n for n in SKIPPED if n in src]
  src.check_all_used(skipped)
  return common.merge(target, flat, under='vision/', what=what,
                      skipped=skipped)
