r"""ALBEF's own PyTorch code trained on the built-in world, side by side with
vlg, from the same weights on the same batches.

  python -m vlg.tools.train_reference \
      --config=configs/albef.py:tiny --config.model.vision_stem=patch \
      --config.model.fusion_posemb=none \
      --against_reference=/path/to/ALBEF \
      --reference_python=/path/to/venv/bin/python --out=DIR

then train vlg on the same run and evaluate both with vlg's evaluators::

  python -m vlg.main --config=<the same config and overrides> \
      --workdir=DIR/vlg
  python -m vlg.tools.eval --workdir=DIR/reference
  python -m vlg.tools.validate --workdir=DIR/reference

What it does:

1. In ``DIR/vlg`` (the vlg run's own workdir, so ``vlg.main`` reuses
   both), trains the config's labelled vision stage and its tokenizer.
2. Initialises vlg's model and optimizer state exactly as ``vlg.main``
   will (same seed, same pretrained tower), draws the run's
   ``total_steps`` training batches from its input pipeline (same seed:
   the batches ``vlg.main`` trains on), and evaluates its learning-rate
   schedule and distillation ramp at every step, into ``DIR/reference_data``.
3. Has ``benchmarks/reference/albef_train.py`` (run by
   ``--reference_python``) build ALBEF's model at the config's shapes and
   save its state dict; writes vlg's initial weights into it
   (``vlg.weights.albef.to_state_dict``, checked to convert back exactly);
   then trains ALBEF's code on those batches: its losses, queues
   (random initial rows unless ``--queues=vlg``), masking, negatives and
   AdamW, at the recipe's schedule.
4. Converts the saved states (``--save_steps``, default 0, the config's
   evaluation steps and the last) into ``DIR/reference``, a vlg run
   directory that ``vlg.tools.eval``, ``vlg.tools.validate`` and the Colab
   read like any other.

So the two runs differ only in the training code: a gap between them is
vlg's to explain. The config must be one ALBEF's model can express
(``vlg.tools.bench_reference.reference_shapes``; also no fusion position
table). Set-up of the PyTorch environment: benchmarks/reference/README.md.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from vlg import config_lib

DEFAULT_SCRIPT = str(pathlib.Path(__file__).resolve().parents[2] /
                     'benchmarks' / 'reference' / 'albef_train.py')
_F = {}


def define_flags() -> None:
  _F['config'] = config_flags.DEFINE_config_file(
      'config', None, 'A vlg ALBEF config ALBEF\'s model can express.',
      lock_config=True)
  _F['out'] = flags.DEFINE_string('out', None, 'Output directory.')
  _F['albef'] = flags.DEFINE_string(
      'against_reference', None, 'Clone of salesforce/ALBEF.')
  _F['python'] = flags.DEFINE_string(
      'reference_python', None, 'Python of the PyTorch environment.')
  _F['script'] = flags.DEFINE_string(
      'reference_script', DEFAULT_SCRIPT, 'albef_train.py to run.')
  _F['save_steps'] = flags.DEFINE_list(
      'save_steps', [], 'Steps whose weights to keep (default: 0, the '
      'config\'s evaluation steps, and the last).')
  _F['queues'] = flags.DEFINE_enum(
      'queues', 'albef', ['albef', 'vlg'], 'Initial ITC queues of the '
      'reference: ALBEF\'s random rows, or vlg\'s initial rows.')
  _F['threads'] = flags.DEFINE_integer('threads', 2, 'torch threads.')
  _F['device'] = flags.DEFINE_string('device', 'cpu', 'torch device.')
  _F['torch_seed'] = flags.DEFINE_integer(
      'torch_seed', 0, 'Seed of ALBEF\'s own draws (masks, negatives).')


def check_config(config: ml_collections.ConfigDict) -> dict:
  """The reference's shapes for ``config`` (``albef_step.py``'s keys).

  Raises:
    ValueError: ALBEF's model cannot express the config (every reason).
  """
  from vlg.tools import bench_reference  # pylint: disable=g-import-not-at-top
  problems = []
  try:
    shapes = bench_reference.reference_shapes(config)
  except ValueError as e:
    problems.append(str(e))
    shapes = {}
  if config.model.get('fusion_posemb', 'none') != 'none':
    problems.append(f'model.fusion_posemb={config.model.fusion_posemb!r} '
                    '(ALBEF\'s fusion reads the tower\'s tokens as they '
                    'are): set --config.model.fusion_posemb=none')
  if int(config.get('grad_accum_steps', 1)) != 1:
    problems.append('grad_accum_steps > 1 (ALBEF takes the batch at once)')
  if float(config.optim.get('grad_clip_norm', 0.0)):
    problems.append('optim.grad_clip_norm > 0 (ALBEF does not clip)')
  if problems:
    raise ValueError('; '.join(problems))
  shapes.pop('notes', None)
  return shapes


def default_save_steps(config: ml_collections.ConfigDict) -> list[int]:
  """0, the steps the config evaluates at (every evaluator's), the last."""
  total = int(config.total_steps)
  steps = {0, total}
  for spec in (config.get('evals') or {}).values():
    every = int(spec.get('log_steps', 0) or 0)
    if every > 0:
      steps.update(range(every, total + 1, every))
  return sorted(steps)


def export(config: ml_collections.ConfigDict, out: str) -> dict:
  """Steps 1–2 of the module docstring; returns the vlg side's state
  (``params``, ``ema``, ``queues`` as numpy), the config (with the stage's
  tower) and the tokenizer."""
  # pylint: disable=g-import-not-at-top
  from vlg import sharding
  from vlg import train
  from vlg import vision_pretrain
  from vlg.data import pipeline
  from vlg.objectives import itc
  # pylint: enable=g-import-not-at-top
  vlg_dir = os.path.join(out, 'vlg')
  data_dir = os.path.join(out, 'reference_data')
  os.makedirs(data_dir, exist_ok=True)
  if os.path.exists(os.path.join(vlg_dir, 'checkpoints')):
    raise FileExistsError(
        f'{vlg_dir} already holds a vlg run; its initial weights are gone. '
        'Use a new --out.')
  config = vision_pretrain.prepare(config, vlg_dir)
  tokenizer = pipeline.get_tokenizer(config.input, vlg_dir)
  mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
  rules = [tuple(r) for r in config.sharding_rules]
  with jax.set_mesh(mesh), sharding.rules_context(rules):
    built = train.build_step(config, mesh, rules)
    state = jax.device_get(built['init_fn']())
  total = int(config.total_steps)
  steps = np.arange(total)
  np.savez(os.path.join(data_dir, 'schedule.npz'),
           lr=np.asarray([float(built['schedule'](i)) for i in steps]),
           alpha=np.asarray([float(itc.alpha_at(
               int(i), float(config.loss.alpha),
               int(config.alpha_warmup_steps))) for i in steps]))
  dataset = pipeline.make_dataset(config.input, tokenizer,
                                  global_batch=int(config.batch_size),
                                  seed=int(config.seed))
  images, ids, masks = [], [], []
  for _, batch in zip(range(total), iter(dataset)):
    image = np.asarray(batch['image'])
    if image.dtype != np.uint8:
      raise ValueError(f'the pipeline gave {image.dtype} images; the '
                       'reference reads 0..255 uint8 pixels')
    images.append(image)
    ids.append(np.asarray(batch['text_ids'], np.int32))
    masks.append(np.asarray(batch['text_mask'], np.int8))
  np.savez(os.path.join(data_dir, 'batches.npz'), images=np.stack(images),
           text_ids=np.stack(ids), text_mask=np.stack(masks))
  return dict(config=config, tokenizer=tokenizer, params=state['params'],
              ema=state['ema'], queues=state['queues'])


def _run(cmd: list[str]) -> None:
  print('$ ' + ' '.join(cmd), flush=True)
  proc = subprocess.run(cmd, check=False)
  if proc.returncode:
    raise RuntimeError(f'the reference exited {proc.returncode}: '
                       f'{" ".join(cmd)}')


def run(config: ml_collections.ConfigDict, out: str, albef_dir: str,
        python: str, script: str, save_steps: list[int], queues: str,
        threads: int, device: str, torch_seed: int) -> list[int]:
  """The whole of the module docstring; returns the converted steps."""
  # pylint: disable=g-import-not-at-top
  from vlg.tools import bench_reference
  from vlg.tools import convert
  from vlg import train_state
  from vlg.weights import albef
  # pylint: enable=g-import-not-at-top
  shapes = check_config(config)
  bench_reference.check_reference(albef_dir, python, script)
  side = export(config, out)
  config, tokenizer = side['config'], side['tokenizer']
  data_dir = os.path.join(out, 'reference_data')
  shapes.update(pad_id=int(tokenizer.pad_id), cls_id=int(tokenizer.cls_id),
                mask_id=int(tokenizer.mask_id),
                image_mean=list(config.model.image_mean),
                image_std=list(config.model.image_std))
  shapes_path = os.path.join(data_dir, 'shapes.json')
  with open(shapes_path, 'w') as f:
    json.dump(shapes, f, indent=1)
  common = [f'--albef={os.path.abspath(albef_dir)}',
            f'--shapes={shapes_path}', f'--threads={threads}',
            f'--device={device}', f'--seed={torch_seed}']
  template_path = os.path.join(data_dir, 'template.npz')
  _run([python, script, 'template', f'--out={template_path}'] + common)
  template = dict(np.load(template_path))
  text_layers = int(config.model.text_layers)
  init = albef.to_state_dict(
      side['params'], side['ema'], template, text_layers=text_layers,
      queues=side['queues'] if queues == 'vlg' else None)
  np.savez(os.path.join(data_dir, 'init.npz'), **init)
  total = int(config.total_steps)
  save_steps = sorted(set(save_steps or default_save_steps(config)) |
                      {total})
  _run([python, script, 'train', f'--data={data_dir}',
        '--save_steps=' + ','.join(map(str, save_steps)),
        f'--temp_lr_scale={float(config.optim.get("temp_lr_scale", 1.0))}']
       + common)

  # The converted run evaluates like any vlg run; it trains no more.
  run_config = ml_collections.ConfigDict(config.to_dict())
  run_config.model.init = dict(vision='', text='')
  run_config.vision_pretrain.steps = 0
  _, target, _ = train_state.abstract_model(
      run_config.model, [tuple(r) for r in run_config.sharding_rules])
  ref_dir = os.path.join(out, 'reference')
  tokenizer.save(os.path.join(ref_dir, 'tokenizer'))
  grid = int(config.model.image_size) // int(config.model.patch_size)
  for step in save_steps:
    path = os.path.join(data_dir, f'state_{step}.npz')
    conv = albef.convert(dict(np.load(path)), target, grid=grid,
                         text_layers=text_layers, what=path)
    convert.save_step(ref_dir, step, run_config, conv.params, conv.ema,
                      conv.queues, tokenizer,
                      {'converted_from': os.path.abspath(path),
                       'format': 'albef', 'trained_by': 'ALBEF (PyTorch)'})
  shutil.copy(os.path.join(data_dir, 'metrics.jsonl'),
              os.path.join(ref_dir, 'reference_metrics.jsonl'))
  return save_steps


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  for name, flag in (('out', 'out'), ('albef', 'against_reference'),
                     ('python', 'reference_python'), ('config', 'config')):
    if not _F[name].value:
      raise app.UsageError(f'--{flag} is required')
  try:
    steps = run(_F['config'].value, _F['out'].value, _F['albef'].value,
                _F['python'].value, _F['script'].value,
                [int(s) for s in _F['save_steps'].value], _F['queues'].value,
                _F['threads'].value, _F['device'].value,
                _F['torch_seed'].value)
  except (ValueError, RuntimeError, FileExistsError) as e:
    sys.exit(f'train_reference: {e}')
  out = _F['out'].value
  print(f'Reference trained; vlg checkpoints of steps {steps} in '
        f'{out}/reference. Next: train vlg on the same run, '
        f'python -m vlg.main --config=... --workdir={out}/vlg, and '
        f'evaluate both (vlg.tools.eval, vlg.tools.validate).')


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=config_lib.parse_flags)
