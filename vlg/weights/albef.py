"""ALBEF's released pretraining checkpoints (``ALBEF_4M.pth``, ``ALBEF.pth``)
→ vlg parameters, EMA (momentum) parameters and ITC queues.

An ALBEF pretraining checkpoint is ``{'model': state_dict, 'optimizer',
'lr_scheduler', 'config', 'epoch'}`` (read with the restricted reader,
``vlg/weights/torch_reader.py``). Its state dict holds:

  visual_encoder.*  (timm ViT)       → vision/*       (``timm_vit.py``)
  text_encoder.bert.*, .cls.*  (xbert) → text/*       (``bert.py``; layers
                                        < fusion_layer → text/layers, the
                                        rest, with cross-attention, →
                                        text/fusion)
  vision_proj, text_proj, itm_head   → vision_proj, text_proj, itm_head
  temp                               → temp
  *_m (momentum copies of the four encoders/projections) → the EMA tree;
                                        the EMA of itm_head and temp, which
                                        ALBEF has no momentum copy of, is
                                        the online value
  image_queue, text_queue [E, Q]     → queues/image, queues/text [Q, E]
  queue_ptr                          → queues/ptr

Fine-tuning checkpoints (retrieval, VQA, ...) have other heads and no
queues; this module refuses their extra keys by name rather than guess.
The equivalence with ALBEF's own PyTorch model at the same weights is
tested on a small random model (``tests/weights/test_albef.py``, fixtures
from ``tests/testdata/weights/make_fixtures.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vlg.weights import bert
from vlg.weights import common
from vlg.weights import timm_vit

_ONLINE = ('visual_encoder.', 'text_encoder.', 'vision_proj.', 'text_proj.')
_MOMENTUM = ('visual_encoder_m.', 'text_encoder_m.', 'vision_proj_m.',
             'text_proj_m.')


@dataclasses.dataclass
class Converted:
  """An ALBEF checkpoint in vlg's trees.

  ``params`` and ``ema`` have the target model's pure-dict structure;
  ``queues`` is ``{'image': [Q, E], 'text': [Q, E], 'ptr': int}`` or None
  when the checkpoint has no queues; ``summary`` says what was loaded.
  """
  params: dict
  ema: dict | None
  queues: dict[str, Any] | None
  summary: common.Summary


def _dense(src: common.Source, name: str, out: str) -> common.Flat:
  return {f'{out}/kernel': common.linear(src.get(f'{name}.weight')),
          f'{out}/bias': src.get(f'{name}.bias')}


def model_sizes(arrays: dict[str, np.ndarray]) -> dict[str, int]:
  """Sizes readable from the state dict's shapes (not the head counts),
  for checking a config against a checkpoint before building the model."""
  src = common.Source(arrays, 'ALBEF checkpoint')
  pos = arrays['visual_encoder.pos_embed']
  patch = arrays['visual_encoder.patch_embed.proj.weight']
  word = arrays['text_encoder.bert.embeddings.word_embeddings.weight']
  n_text = bert.num_layers(src, 'text_encoder.bert.')
  fusion = sum(
      1 for i in range(n_text)
      if f'text_encoder.bert.encoder.layer.{i}.crossattention.self.query.weight'
      in arrays)
  return dict(
      vision_width=int(pos.shape[-1]), patch_size=int(patch.shape[-1]),
      image_size=int(round((pos.shape[-2] - 1) ** 0.5)) * int(patch.shape[-1]),
      vision_depth=timm_vit.depth_of(src, 'visual_encoder.'),
      vision_mlp=int(arrays['visual_encoder.blocks.0.mlp.fc1.weight'].shape[0]),
      text_width=int(word.shape[1]), vocab_size=int(word.shape[0]),
      text_layers=n_text - fusion, fusion_layers=fusion,
      text_mlp=int(arrays['text_encoder.bert.encoder.layer.0.intermediate.'
                          'dense.weight'].shape[0]),
      max_positions=int(arrays['text_encoder.bert.embeddings.'
                               'position_embeddings.weight'].shape[0]),
      embed_dim=int(arrays['vision_proj.weight'].shape[0]))


def _encoders(src: common.Source, suffix: str, grid: int, text_layers: int
              ) -> common.Flat:
  flat = timm_vit.convert(src, grid, prefix=f'visual_encoder{suffix}.')
  flat.update(bert.convert(src, text_layers,
                           prefix=f'text_encoder{suffix}.bert.',
                           head_prefix=f'text_encoder{suffix}.cls.'))
  flat.update(_dense(src, f'vision_proj{suffix}', 'vision_proj'))
  flat.update(_dense(src, f'text_proj{suffix}', 'text_proj'))
  return flat


def convert(arrays: dict[str, np.ndarray], target: dict, *, grid: int,
            text_layers: int, what: str = 'ALBEF checkpoint') -> Converted:
  """An ALBEF pretraining state dict into vlg trees shaped like ``target``.

  Args:
    arrays: the flat state dict (``torch_reader.state_dict(load(path))``).
    target: the vlg model's pure-dict parameters (arrays or
      ShapeDtypeStructs), e.g. ``train_state.abstract_model(...)[1]``.
    grid: the model's patch grid; position embeddings are resized to it.
    text_layers: the model's text-only layers (ALBEF's ``fusion_layer``).
    what: the checkpoint's name, for messages.

  Raises:
    common.WeightsError: unexpected, missing or mismatched keys, named.
  """
  src = common.Source(arrays, what)
  flat = _encoders(src, '', grid, text_layers)
  flat.update(_dense(src, 'itm_head', 'itm_head'))
  flat['temp'] = src.get('temp').reshape(())
  has_m = any(n.startswith(_MOMENTUM) for n in arrays)
  flat_m = _encoders(src, '_m', grid, text_layers) if has_m else None
  queues = None
  if 'image_queue' in src:
    queues = {'image': np.ascontiguousarray(src.get('image_queue').T),
              'text': np.ascontiguousarray(src.get('text_queue').T),
              'ptr': int(src.get('queue_ptr').reshape(-1)[0])
                     if 'queue_ptr' in src else 0}
  skipped = bert.skipped_keys(src)
  src.check_all_used(skipped)
  params, summary = common.merge(target, flat, what=what, skipped=skipped)
  ema = None
  if flat_m is not None:
    # ALBEF keeps no momentum copy of the ITM head and the temperature.
    for k in ('itm_head/kernel', 'itm_head/bias', 'temp'):
      flat_m[k] = flat[k]
    ema, _ = common.merge(target, flat_m, what=what + ' (momentum)')
  return Converted(params=params, ema=ema, queues=queues, summary=summary)
