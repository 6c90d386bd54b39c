"""``model.init``: start a run's towers from pretrained weights.

  --config.model.init.vision=PATH   # DeiT/timm .pth, ALBEF-style ViT, or
                                    # an AugReg .npz
  --config.model.init.text=PATH     # a Hugging Face BERT: model.safetensors,
                                    # pytorch_model.bin, flax_model.msgpack,
                                    # or their folder

The papers never train from random weights: ALBEF and X-VLM start from
DeiT-B/16 and BERT-base, the relation paper's JAX models from an AugReg
ViT-B/16 (ImageNet-21k) and BERT-base (docs/weights.md). A fresh run builds
its parameters as usual (``train_state.init_params``) and then
:func:`apply` replaces the vision tower and/or the text tower (BERT's
layers → text and fusion layers, its MLM head → the MLM head; the fusion
layers' cross-attention stays freshly initialised) and logs what it
loaded, skipped and left fresh. Only a fresh run does this: a resumed run
restores its own checkpoint. The EMA copy starts equal to the result
(``train_state.init_state``).

A text tower from BERT only makes sense with BERT's own vocabulary:
:func:`check_tokenizer` refuses any other tokenizer, and the vocabulary
size must equal the checkpoint's (``model.vocab_size``, checked by shape).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from vlg.weights import augreg
from vlg.weights import bert
from vlg.weights import common
from vlg.weights import files
from vlg.weights import timm_vit

# Keys of a vision tower saved by vlg itself (vlg/vision_pretrain.py):
# the model's own parameter paths, any vision_stem.
VLG_PREFIX = 'vision/'

# Tried in this order inside a Hugging Face model folder.
HF_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin',
                   'flax_model.msgpack')


def init_config() -> ml_collections.ConfigDict:
  """The default ``model.init``: nothing pretrained (train from scratch)."""
  return ml_collections.ConfigDict({'vision': '', 'text': ''})


def _paths(model_cfg: ml_collections.ConfigDict) -> tuple[str, str]:
  init = model_cfg.get('init') or {}
  return str(init.get('vision', '') or ''), str(init.get('text', '') or '')


def requested(model_cfg: ml_collections.ConfigDict) -> bool:
  """Whether ``model.init`` names any pretrained weights."""
  return any(_paths(model_cfg))


def text_weights_file(path: str) -> str:
  """A BERT weights file, or the weights file inside a HF model folder."""
  if os.path.isdir(path):
    for name in HF_WEIGHT_FILES:
      if os.path.exists(os.path.join(path, name)):
        return os.path.join(path, name)
    raise FileNotFoundError(f'model.init.text={path}: a folder without '
                            f'{" or ".join(HF_WEIGHT_FILES)}')
  return path


def vision_format(arrays: dict[str, np.ndarray]) -> str:
  """'vlg', 'augreg' or 'timm', from the checkpoint's key names."""
  if arrays and all(k.startswith(VLG_PREFIX) for k in arrays):
    return 'vlg'
  if any(k.endswith('Transformer/posembed_input/pos_embedding')
         for k in arrays):
    return 'augreg'
  if 'pos_embed' in arrays and 'patch_embed.proj.weight' in arrays:
    return 'timm'
  raise common.WeightsError(
      'model.init.vision: neither a timm/DeiT ViT (pos_embed, '
      'patch_embed.proj.weight) nor an AugReg .npz '
      '(Transformer/posembed_input/pos_embedding); keys start with '
      f'{sorted(arrays)[:6]}')


def load(model_cfg: ml_collections.ConfigDict, params: dict[str, Any]
         ) -> tuple[dict[str, Any], dict[str, common.Summary]]:
  """``params`` with the towers ``model.init`` names replaced.

  Args:
    model_cfg: the model config (``image_size``, ``patch_size``,
      ``text_layers``, ``init``).
    params: the freshly initialised pure-dict parameters (any leaves:
      numpy, jax arrays or ShapeDtypeStructs); leaves that are loaded come
      back as numpy arrays of the leaf's dtype, the others unchanged.

  Returns:
    (params, {'vision': Summary, 'text': Summary} for what was loaded).

  Raises:
    common.WeightsError: the file does not fit the model (culprits named).
    FileNotFoundError: a path does not exist.
  """
  vision, text = _paths(model_cfg)
  summaries = {}
  if vision:
    arrays = files.read(vision)
    what = f'model.init.vision={vision}'
    kind = vision_format(arrays)
    stem = str(model_cfg.get('vision_stem', 'patch'))
    if kind == 'vlg':
      # The model's own paths: every vision parameter must be there, with
      # its shape (a different stem or size is refused by name).
      params, summaries['vision'] = common.merge(
          params, arrays, under=VLG_PREFIX, what=what)
    else:
      if stem != 'patch':
        raise common.WeightsError(
            f'model.init.vision needs the linear patch embedding of the '
            f"pretrained ViT, but model.vision_stem={stem!r}")
      grid = int(model_cfg.image_size) // int(model_cfg.patch_size)
      loader = (augreg.load_tower if kind == 'augreg'
                else timm_vit.load_tower)
      params, summaries['vision'] = loader(arrays, params, grid, what=what)
  if text:
    path = text_weights_file(text)
    params, summaries['text'] = bert.load_tower(
        files.read(path), params, int(model_cfg.text_layers),
        what=f'model.init.text={path}')
  for name, s in summaries.items():
    logging.info('model.init.%s: %s', name, s)
  return params, summaries


def to_shardings(params: dict[str, Any], shardings: Any) -> dict[str, Any]:
  """Places the numpy leaves :func:`load` produced into their shardings
  (each process reads the shards it holds from its host copy); the leaves
  it left as jax arrays are kept."""
  def place(leaf, s):
    if isinstance(leaf, np.ndarray):
      return jax.make_array_from_callback(leaf.shape, s,
                                          lambda idx: leaf[idx])
    return leaf
  return jax.tree.map(place, params, shardings)


def check_tokenizer(model_cfg: ml_collections.ConfigDict, tokenizer) -> None:
  """Refuses a text tower from BERT with a tokenizer that is not BERT's.

  BERT's word embeddings are indexed by its WordPiece vocabulary; token ids
  of another tokenizer would silently pick unrelated rows. Set
  ``input.tokenizer.path`` to the BERT folder (or its ``vocab.txt``).
  """
  _, text = _paths(model_cfg)
  if not text:
    return
  if getattr(tokenizer, 'kind', 'sentencepiece') != 'wordpiece':
    raise ValueError(
        f'model.init.text={text} starts the text tower from BERT, whose '
        'embeddings follow its WordPiece vocabulary, but the run tokenises '
        'with a SentencePiece model; set --config.input.tokenizer.path to '
        "the BERT folder or its vocab.txt (docs/weights.md)")
