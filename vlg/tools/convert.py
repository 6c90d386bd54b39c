r"""Converts a released model into a vlg checkpoint directory.

  python -m vlg.tools.convert --format=albef --src=ALBEF_4M.pth \
      --tokenizer=/models/bert-base-uncased --out=workdirs/albef_4m_released \
      [--resolution=384] [--config=configs/albef.py:base] \
      [--config.model.text_heads=12]

Reads ALBEF's pretraining checkpoint with the restricted reader (no code
from the file runs; vlg/weights/torch_reader.py), converts online and
momentum weights and the ITC queues (vlg/weights/albef.py), and writes OUT
as a vlg run directory: ``OUT/checkpoints/0/`` (orbax: ``params`` =
{params, ema}, ``train_state`` = {queues, step}, ``config`` = the run
config + metadata) and ``OUT/tokenizer/`` (BERT's ``vocab.txt``, which
ALBEF tokenises with). ``vlg.tools.eval --workdir=OUT``,
``restore.load_run(OUT)``, the Colab (``colabs/evaluate.ipynb``) and
probing then load it like any vlg run.

The model config is ``--config`` (ALBEF base by default) with the sizes the
checkpoint's shapes determine (widths, depths, vocabulary, resolution,
embedding size) taken from the file; head counts, which shapes do not
determine, come from the config (12 for base, as ALBEF). ``--tokenizer``
is BERT's ``vocab.txt`` or a Hugging Face BERT folder holding one: ALBEF's
``bert-base-uncased`` vocabulary (30,522 pieces), without which token ids
would be meaningless. A summary of what was loaded and skipped is printed;
a key that does not fit is an error naming it.

``--resolution`` converts for another input size than the checkpoint's (a
multiple of its patch size): the ViT's position embeddings (online and
momentum) are resized to the new patch grid as ALBEF's own
``interpolate_pos_embed`` does when it fine-tunes at 384 px ([CLS] kept,
the grid resized by torch's bicubic; ``vlg/weights/common.py``), once, so
the run holds a table of its own grid rather than resizing one on every
forward. The synthetic world renders at >= 48 px, so a small checkpoint
(the 32 px test fixture) is converted at ``--resolution=48`` to train a
resampler or probe on that world (docs/weights.md §2).

The directory is for evaluation and probing: it has no data-iterator
state, so ``vlg.main`` cannot resume training from it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from vlg import checkpointing
from vlg import config_lib
from vlg import train_state
from vlg.data import tokenizer as tokenizer_lib
from vlg.weights import albef
from vlg.weights import files

FORMATS = ('albef',)
DEFAULT_CONFIG = 'configs/albef.py:base'
_FLAGS = {}


def define_flags() -> None:
  """Defines the flags (only when run as a program)."""
  _FLAGS['format'] = flags.DEFINE_enum(
      'format', 'albef', FORMATS, 'Source format: albef (ALBEF_4M.pth, '
      'ALBEF.pth pretraining checkpoints).')
  _FLAGS['src'] = flags.DEFINE_string('src', None, 'The released checkpoint.')
  _FLAGS['out'] = flags.DEFINE_string('out', None, 'Output run directory '
                                      '(must not hold checkpoints yet).')
  _FLAGS['tokenizer'] = flags.DEFINE_string(
      'tokenizer', None, "The model's tokenizer: BERT's vocab.txt or a "
      'Hugging Face BERT folder with one.')
  _FLAGS['resolution'] = flags.DEFINE_integer(
      'resolution', 0, 'Input image side in pixels; 0 = the checkpoint\'s. '
      'Another size (a multiple of the patch size) resizes the position '
      'embeddings as ALBEF does.')
  _FLAGS['config'] = config_flags.DEFINE_config_file(
      'config', None, f'Run config to convert into (default '
      f'{DEFAULT_CONFIG}); model sizes are taken from the checkpoint.',
      lock_config=False)


def _config_for(config: ml_collections.ConfigDict,
                sizes: dict[str, int]) -> ml_collections.ConfigDict:
  """``config`` with the checkpoint's sizes, nothing pretrained to load."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.update(sizes)
  config.model.init = dict(vision='', text='')
  # ALBEF's ViT embeds patches linearly and its fusion reads the tower's
  # tokens without a position table, whatever the recipe trains with; a
  # converted run is not trained, so no vision stage either.
  config.model.vision_stem = 'patch'
  config.model.fusion_posemb = 'none'
  if 'vision_pretrain' in config:
    config.vision_pretrain.steps = 0
  config.input.resolution = sizes['image_size']
  if 'world' in config.input.data.get('synthetic', {}):
    config.input.data.synthetic.world.resolution = sizes['image_size']
  config.input.tokenizer.path = ''  # The copy in OUT/tokenizer is used.
  # Texts longer than the position table cannot be encoded.
  limit = sizes['max_positions']
  config.input.max_text_len = min(int(config.input.max_text_len), limit)
  config.eval_max_text_len = min(int(config.get('eval_max_text_len', 30)),
                                 limit)
  return config


def target_resolution(sizes: dict[str, int], resolution: int | None) -> int:
  """The image side to convert for: ``resolution``, or the checkpoint's
  (``sizes['image_size']``) when it is None or 0.

  Raises:
    ValueError: ``resolution`` is not a positive multiple of the patch size.
  """
  if not resolution:
    return int(sizes['image_size'])
  patch = int(sizes['patch_size'])
  if resolution < patch or resolution % patch:
    raise ValueError(
        f'--resolution={resolution} is not a positive multiple of the '
        f'checkpoint\'s patch size {patch}; e.g. '
        f'{max(patch, -(-resolution // patch) * patch)}')
  return int(resolution)


def _world_note(config: ml_collections.ConfigDict) -> str:
  """A hint when ``config`` reads the synthetic world below the resolution
  it renders at (a converted run can still be evaluated on real data)."""
  from vlg.synthetic import world  # pylint: disable=g-import-not-at-top
  res = int(config.input.resolution)
  if ('world' not in config.input.data.get('synthetic', {}) or
      res >= world.MIN_RESOLUTION):
    return ''
  return (f'Note: the run reads {res} px images, below the '
          f'{world.MIN_RESOLUTION} px the synthetic world renders at; to '
          'train a resampler or probe on that world, convert with '
          f'--resolution={world.MIN_RESOLUTION} (or more).')


def convert_albef(src: str, out: str, tokenizer_path: str,
                  config: ml_collections.ConfigDict,
                  resolution: int | None = None) -> dict:
  """Writes OUT from ALBEF's checkpoint ``src``; returns the metadata.

  ``resolution``: the run's image side (None or 0: the checkpoint's); the
  position embeddings are resized to its patch grid (module docstring).
  """
  ckpt_dir = checkpointing.checkpoint_dir(out)
  if os.path.exists(ckpt_dir) and os.listdir(ckpt_dir):
    raise FileExistsError(f'{ckpt_dir} already holds checkpoints')
  tokenizer = tokenizer_lib.load(tokenizer_path)
  if getattr(tokenizer, 'kind', '') != 'wordpiece':
    raise ValueError(f'--tokenizer={tokenizer_path} is not a BERT WordPiece '
                     'vocabulary; ALBEF tokenises with bert-base-uncased')
  arrays = files.read(src)
  sizes = albef.model_sizes(arrays)
  source_resolution = sizes['image_size']
  sizes['image_size'] = target_resolution(sizes, resolution)
  if tokenizer.vocab_size != sizes['vocab_size']:
    raise ValueError(f'--tokenizer has {tokenizer.vocab_size} pieces, the '
                     f'checkpoint {sizes["vocab_size"]} word embeddings')
  config = _config_for(config, sizes)
  rules = [tuple(r) for r in config.sharding_rules]
  _, target, _ = train_state.abstract_model(config.model, rules)
  conv = albef.convert(arrays, target,
                       grid=sizes['image_size'] // sizes['patch_size'],
                       text_layers=sizes['text_layers'], what=src)
  print(f'{src}: {conv.summary}')
  if sizes['image_size'] != source_resolution:
    grids = [r // sizes['patch_size'] for r in (source_resolution,
                                                sizes['image_size'])]
    print(f'Position embeddings resized from {grids[0]}x{grids[0]} to '
          f'{grids[1]}x{grids[1]} patches ({source_resolution} -> '
          f'{sizes["image_size"]} px), as ALBEF\'s interpolate_pos_embed')
  note = _world_note(config)
  if note:
    print(note)
  ema = conv.ema if conv.ema is not None else conv.params
  queues = conv.queues
  if queues is None:
    dim = int(config.model.embed_dim)
    queues = {'image': np.zeros((0, dim), np.float32),
              'text': np.zeros((0, dim), np.float32), 'ptr': 0}
  config.queue_size = int(queues['image'].shape[0])
  tokenizer.save(os.path.join(out, 'tokenizer'))
  meta = {
      'source_resolution': int(source_resolution),
      'converted_from': os.path.abspath(src), 'format': 'albef',
      'loaded': len(conv.summary.loaded),
      'skipped': conv.summary.skipped,
  }
  return save_step(out, 0, config, conv.params, ema, queues, tokenizer, meta)


def save_step(out: str, step: int, config: ml_collections.ConfigDict,
              params: dict, ema: dict, queues: dict,
              tokenizer, extra_meta: dict) -> dict:
  """Writes ``OUT/checkpoints/<step>/`` (orbax, the layout ``vlg.train``
  saves, without data-iterator state) and ``OUT/config.json``; returns the
  metadata. ``queues``: ``{'image': [Q, E], 'text': [Q, E], 'ptr'}``."""
  rest = {'queues': {'image': np.asarray(queues['image'], np.float32),
                     'text': np.asarray(queues['text'], np.float32),
                     'ptr': np.asarray(queues['ptr'], np.int32)},
          'step': np.asarray(step, np.int32)}
  meta = {
      'step': int(step), 'workdir': os.path.abspath(out),
      'tokenizer_fingerprint': tokenizer.fingerprint,
      'tokenizer_vocab_size': tokenizer.vocab_size,
      'image_resolution': int(config.input.resolution),
      'image_mean': list(config.model.image_mean),
      'image_std': list(config.model.image_std),
      'jax_version': jax.__version__, 'process_count': 1,
      **extra_meta,
  }
  manager = ocp.CheckpointManager(
      checkpointing.checkpoint_dir(out),
      options=ocp.CheckpointManagerOptions(
          enable_async_checkpointing=False, max_to_keep=None),
      item_names=checkpointing.ITEMS)
  try:
    manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave({'params': params, 'ema': ema}),
        train_state=ocp.args.StandardSave(rest),
        config=ocp.args.JsonSave({
            'config': json.loads(config.to_json_best_effort()),
            'meta': meta})))
    manager.wait_until_finished()
  finally:
    manager.close()
  with open(os.path.join(out, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
  return meta


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  for name in ('src', 'out', 'tokenizer'):
    if not _FLAGS[name].value:
      raise app.UsageError(f'--{name} is required')
  config = _FLAGS['config'].value
  if config is None:
    from vlg import recipes  # pylint: disable=g-import-not-at-top
    config = recipes.albef_config('base')
  meta = convert_albef(_FLAGS['src'].value, _FLAGS['out'].value,
                       _FLAGS['tokenizer'].value, config,
                       resolution=_FLAGS['resolution'].value)
  logging.info('Wrote %s: %s', _FLAGS['out'].value, meta)
  print(f'Wrote {_FLAGS["out"].value} (evaluate with python -m '
        f'vlg.tools.eval --workdir={_FLAGS["out"].value})')


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=config_lib.parse_flags)
