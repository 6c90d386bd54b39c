"""Model sizes (docs/objectives.md §1) and the model config built from them.

``model_config('tiny', name='albef')`` returns an unlocked ConfigDict with
every field the models read; experiment configs override fields afterwards
(e.g. ``vocab_size`` to fit the tokenizer). ``tiny`` runs on CPU in tests and
minutes-long smoke runs; ``small`` is a one-GPU model; ``base`` has the
published ALBEF shapes (ViT-B/16 at 256 px + BERT-base split 6 + 6).
"""

from __future__ import annotations

from typing import Any

import ml_collections

# CLIP's normalisation (docs/objectives.md §1); the ViT applies it to
# 0..255 pixels.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

SIZES: dict[str, dict[str, Any]] = {
    'tiny': dict(
        image_size=64, patch_size=8, vision_width=128, vision_depth=4,
        vision_heads=4, vision_mlp=512,
        text_width=128, text_layers=2, fusion_layers=2, text_heads=4,
        text_mlp=512, vocab_size=1024, max_positions=128, embed_dim=64,
        dropout=0.0,
        # Trained from scratch (see _COMMON): ~1/sqrt(width) normals and
        # sine-cosine position embeddings; on the synthetic world they let
        # ITC, MRC and box regression learn within the tiny schedule.
        init_std=0.088, vision_posemb_init='sincos2d'),
    'small': dict(
        image_size=128, patch_size=16, vision_width=384, vision_depth=6,
        vision_heads=6, vision_mlp=1536,
        text_width=384, text_layers=4, fusion_layers=4, text_heads=6,
        text_mlp=1536, vocab_size=32_000, max_positions=256, embed_dim=128,
        dropout=0.1),
    'base': dict(
        image_size=256, patch_size=16, vision_width=768, vision_depth=12,
        vision_heads=12, vision_mlp=3072,
        text_width=768, text_layers=6, fusion_layers=6, text_heads=12,
        text_mlp=3072, vocab_size=30_522, max_positions=512, embed_dim=256,
        dropout=0.1),
}

_COMMON = dict(
    name='albef',
    itm_head='linear',  # 'linear' (ALBEF) | 'mlp' (X-VLM: d→2d→LN→GELU→2).
    temp_init=0.07,
    dtype='float32',  # Compute dtype; parameters are always float32.
    remat='none',  # Gradient checkpointing per block: 'none'|'full'|'dots'.
    image_mean=IMAGE_MEAN,
    image_std=IMAGE_STD,
    vision_ln_eps=1e-6,
    text_ln_eps=1e-12,
    vision_dropout=0.0,  # ALBEF's ViT has no dropout; `dropout` is BERT's.
    box_head=False,  # X-VLM's box head (d→2d→LN→GELU→4, sigmoid).
    mrc_classes=0,  # > 0: the MRC head over this many relations.
    mrc_hidden=0,  # MRC head hidden width; 0 means 4 × text_width.
    # Std of the normal inits (BERT's initializer_range, timm's ViT): 0.02
    # is the published models'. Trained from scratch at tiny width it leaves
    # every text's [CLS] almost the same (``layers.default_init_std``);
    # ~1/sqrt(width) (0.088 at 128) breaks that symmetry.
    init_std=0.02,
    # Initial ViT position embeddings: 'trunc_normal' (DeiT, ALBEF) or
    # 'sincos2d' (MAE/big_vision; box position readable from the start).
    vision_posemb_init='trunc_normal',
    # Patch embedding: 'patch' (a linear map of each patch's pixels, ViT's),
    # 'conv' (per-patch convolutions, vlg/models/vit.py:ConvPatchStem,
    # with these channels: 3x3 at stride 1, then 3x3 at stride 2 each) or
    # 'conv_image' (the same convolutions over the whole image, so tokens
    # see across patch borders: ConvPatchStem.embed_image).
    vision_stem='patch',
    vision_stem_channels=(16, 32, 64),
    # Position added to the image tokens the fusion's cross-attention reads
    # (keys and values; vlg/models/albef.py:Model.fuse): 'none' (ALBEF's:
    # the tower's own tokens) or 'sincos2d' (a fixed 2-D sine-cosine table,
    # [CLS] row zero, as DETR adds to the keys of its cross-attention), so
    # what the fusion pools from a named object's patches says where they
    # are (docs/objectives.md §1).
    fusion_posemb='none',
    # Pretrained towers for a fresh run (vlg/weights/init.py,
    # docs/weights.md): paths to a ViT (.pth/.npz) and a BERT; '' = none.
    init=dict(vision='', text=''),
)


def model_config(size: str, **overrides: Any) -> ml_collections.ConfigDict:
  """The model config of ``size`` ('tiny' | 'small' | 'base') plus overrides.

  Args:
    size: a key of :data:`SIZES`.
    **overrides: values for existing fields (a misspelt field is an error;
      add genuinely new fields to the returned ConfigDict).

  Returns:
    An unlocked ConfigDict.
  """
  if size not in SIZES:
    raise ValueError(f'Unknown model size {size!r}; valid: {sorted(SIZES)}')
  fields = dict(_COMMON, **SIZES[size])
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise KeyError(f'Unknown model config fields {unknown}')
  fields.update(overrides)
  if fields['itm_head'] not in ('linear', 'mlp'):
    raise ValueError(f"itm_head must be 'linear' or 'mlp', got "
                     f"{fields['itm_head']!r}")
  return ml_collections.ConfigDict(fields)
