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

:func:`to_state_dict` goes the other way, vlg trees → ALBEF's state dict
(to start ALBEF's own code from a vlg model's weights, as
``benchmarks/reference/albef_world.py`` does); it is :func:`convert` run
backwards, traced element by element, so the two can never disagree.
The equivalence with ALBEF's own PyTorch model at the same weights is
tested on a small random model (``tests/weights/test_albef.py``, fixtures
from ``tests/testdata/weights/make_fixtures.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
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


# BERT's MLM decoder is tied to the word embeddings (and its bias to the
# head's): a state dict lists both names for one tensor.
_TIED = (('cls.predictions.decoder.weight',
          'bert.embeddings.word_embeddings.weight'),
         ('cls.predictions.decoder.bias', 'cls.predictions.bias'))
_QUEUES = ('image_queue', 'text_queue', 'queue_ptr')
# vlg folds row 0 of BERT's token-type table into the position table
# (bert.py); going back, the positions carry it and row 0 is zero.
_TOKEN_TYPES = 'embeddings.token_type_embeddings.weight'


def _tied_source(name: str) -> str | None:
  for suffix, source in _TIED:
    if name.endswith(suffix):
      return name[:-len(suffix)] + source
  return None


def to_state_dict(params: dict, ema: dict | None,
                  template: dict[str, np.ndarray], *, text_layers: int,
                  queues: dict[str, Any] | None = None
                  ) -> dict[str, np.ndarray]:
  """vlg's ``params`` (and ``ema``) → an ALBEF state dict like ``template``.

  The inverse of :func:`convert`, found by running it: every element of
  ``template`` (ALBEF's own state dict at the model's sizes, e.g. a freshly
  built ``models.model_pretrain.ALBEF``'s) gets a distinct float64 id,
  :func:`convert` places the ids into vlg's trees, and each vlg value is
  then written back to the element whose id landed at its place. Online
  names take ``params``; the momentum copies (``*_m.``) take ``ema``.

  Keys :func:`convert` deliberately skips (BERT's ``position_ids``, the
  pooler) keep the template's values; so do the queues unless ``queues``
  (``{'image': [Q, E], 'text': [Q, E], 'ptr'}``, vlg's layout) is given.
  The tied MLM decoder gets the word embeddings (and the head's bias); the
  token-type table's row 0, which :func:`convert` adds to the positions,
  is zero. The result is checked by converting it again: it must give
  ``params`` and ``ema`` back exactly.

  Raises:
    common.WeightsError: the template does not fit the trees (named by
      :func:`convert`), an element of it received no value, or the check
      failed.
  """
  names = list(template)
  ids, offset = {}, 0
  for name in names:
    if name.endswith(_TOKEN_TYPES):
      ids[name] = np.zeros(np.shape(template[name]), np.float64)
      continue
    if _tied_source(name) is not None:
      continue
    size = int(np.size(template[name]))
    ids[name] = (offset + np.arange(size, dtype=np.float64)).reshape(
        np.shape(template[name]))
    offset += size
  for name in names:
    source = _tied_source(name)
    if source is not None:
      ids[name] = ids[source]
  # float64 stand-ins for the leaves (merge reads shape and dtype only; a
  # jax.ShapeDtypeStruct would turn float64 into float32 without x64).
  target = jax.tree.map(
      lambda x: np.broadcast_to(np.zeros((), np.float64), np.shape(x)),
      params)
  grid_rows = ids['visual_encoder.pos_embed'].shape[-2] - 1
  traced = convert(ids, target, grid=int(round(grid_rows ** 0.5)),
                   text_layers=text_layers, what='ALBEF state-dict template')
  values = np.full(offset, np.nan)
  trees = [(traced.params, params)]
  if ema is not None and traced.ema is not None:
    # The EMA first: ALBEF's online ITM head and temperature, which vlg's
    # EMA tree repeats, then take the online values.
    trees.insert(0, (traced.ema, ema))
  for id_tree, value_tree in trees:
    flat_values = common.flatten(value_tree)
    for path, where in common.flatten(id_tree).items():
      where = np.asarray(where).ravel()
      index = where.astype(np.int64)
      if not np.array_equal(index, where):  # convert() only moves values.
        raise common.WeightsError(f'{path}: convert() computes this array '
                                  'from several elements; it has no inverse')
      values[index] = np.asarray(flat_values[path], np.float64).ravel()
  skipped = set(bert.skipped_keys(common.Source(template, 'template')))
  out = {}
  for name in names:
    if name in skipped or name in _QUEUES:
      out[name] = np.array(template[name])
      continue
    if name.endswith(_TOKEN_TYPES):
      out[name] = np.array(template[name])
      out[name][0] = 0
      continue
    got = values[ids[name].astype(np.int64)]
    if np.isnan(got).any():
      raise common.WeightsError(
          f'{name}: {int(np.isnan(got).sum())} elements got no value from '
          'the vlg trees (is a momentum copy asked for without ema?)')
    out[name] = got.astype(np.asarray(template[name]).dtype)
  if queues is not None:
    out['image_queue'] = np.ascontiguousarray(
        np.asarray(queues['image'], np.float32).T)
    out['text_queue'] = np.ascontiguousarray(
        np.asarray(queues['text'], np.float32).T)
    ptr = np.asarray(template.get('queue_ptr', np.zeros(1, np.int64)))
    out['queue_ptr'] = np.full_like(ptr, int(np.asarray(queues['ptr'])))
  _check_inverse(out, params, ema, text_layers)
  return out


def _check_inverse(state_dict: dict[str, np.ndarray], params: dict,
                   ema: dict | None, text_layers: int) -> None:
  """Raises WeightsError unless :func:`convert` maps ``state_dict`` back
  onto ``params`` (and ``ema``, whose ITM head and temperature ALBEF does
  not keep) exactly."""
  grid = int(round((state_dict['visual_encoder.pos_embed'].shape[-2] - 1)
                   ** 0.5))
  again = convert(state_dict, params, grid=grid, text_layers=text_layers,
                  what='the exported state dict')
  pairs = [('', again.params, params)]
  if ema is not None and again.ema is not None:
    ema = {**ema, 'itm_head': params['itm_head'], 'temp': params['temp']}
    pairs.append(('momentum ', again.ema, ema))
  for kind, got, want in pairs:
    want = common.flatten(want)
    for path, value in common.flatten(got).items():
      if not np.array_equal(np.asarray(value),
                            np.asarray(want[path], np.asarray(value).dtype)):
        raise common.WeightsError(
            f'{kind}{path}: the exported state dict does not convert back '
            'to the given value')
