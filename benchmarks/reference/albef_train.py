#!/usr/bin/env python3
r"""Trains ALBEF's own PyTorch model on batches and weights given by vlg.

Runs with the Python of a PyTorch environment (not vlg's), driven by
``python -m vlg.tools.train_reference`` (benchmarks/reference/README.md)::

  /path/to/venv/bin/python benchmarks/reference/albef_train.py template \
      --albef=/path/to/ALBEF --shapes=DIR/shapes.json --out=DIR/template.npz
  /path/to/venv/bin/python benchmarks/reference/albef_train.py train \
      --albef=/path/to/ALBEF --shapes=DIR/shapes.json --data=DIR

``template`` builds ALBEF's pretraining model at the shapes (as
``albef_step.py`` does: ALBEF's ``models/model_pretrain.py``, ``vit.py``,
``xbert.py`` imported unchanged) and saves its state dict, so that vlg can
write its own initial weights in ALBEF's names (``vlg.weights.albef.
to_state_dict``).

``train`` loads ``DIR/init.npz`` (that state dict, strict) and runs
``Pretrain.py``'s loop body over the steps of ``DIR/batches.npz``: the
forward at the step's ``alpha``, the sum of the three losses, backward,
``optimizer.step``. ALBEF's code makes every choice inside the step: its
random initial queues (kept from the template unless vlg wrote them), its
MLM masking, its hard-negative draws, its temperature clamp. What the
harness supplies is the schedule, which is the recipe's and not ALBEF's
code: the learning rate of each step and the distillation weight
``alpha`` (``DIR/schedule.npz``, from vlg's optax schedule and ramp), and
the temperature's learning rate at ``temp_lr_scale`` times the others
(the recipe's ``optim.temp_lr_scale``; 1 is ALBEF's). The optimizer is
ALBEF's ``optim.create_optimizer`` (AdamW, no weight decay on biases and
1-D parameters), with the temperature moved into a group of its own.

Writes ``DIR/state_<step>.npz`` at each ``--save_steps`` step (and the
last) and one JSON line a logged step to stdout and ``DIR/metrics.jsonl``
(losses, ``temp``, examples/s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import albef_step  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      description=__doc__.split('\n', 1)[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog='Set-up and commands: benchmarks/reference/README.md.')
  p.add_argument('command', choices=('template', 'train'))
  p.add_argument('--albef', required=True,
                 help='Clone of salesforce/ALBEF (holds models/, optim/).')
  p.add_argument('--shapes', required=True,
                 help='JSON of shapes and settings (albef_step.py keys).')
  p.add_argument('--out', default='', help='template: the .npz to write.')
  p.add_argument('--data', default='',
                 help='train: the directory with init.npz, batches.npz and '
                      'schedule.npz; states and metrics go there too.')
  p.add_argument('--save_steps', default='',
                 help='train: comma-separated steps to save (the last '
                      'always is).')
  p.add_argument('--temp_lr_scale', type=float, default=1.0)
  p.add_argument('--log_every', type=int, default=10)
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--device', default='cpu')
  p.add_argument('--seed', type=int, default=0,
                 help='torch seed: ALBEF\'s masks, negatives, dropout.')
  return p.parse_args(argv)


def _settings(path: str) -> dict:
  args = argparse.Namespace(shapes=path, **{
      k: None for k in albef_step.SHAPES + tuple(albef_step.DEFAULTS)})
  return albef_step.settings(args)


def _param_groups(model, optimizer, temp_lr_scale: float) -> None:
  """Moves ``model.temp`` into a group of its own at ``temp_lr_scale`` × lr
  (keeping the weight decay of the group it was in)."""
  for group in optimizer.param_groups:
    kept = [p for p in group['params'] if p is not model.temp]
    if len(kept) != len(group['params']):
      group['params'] = kept
      optimizer.add_param_group(dict(
          params=[model.temp], weight_decay=group['weight_decay'],
          lr_scale=temp_lr_scale))
      return
  raise ValueError('model.temp is in no parameter group')


def template(args, s: dict, torch) -> None:
  model, _ = albef_step.build(os.path.abspath(args.albef), s, torch)
  state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
  np.savez(args.out, **state)
  print(json.dumps(dict(kind='template', keys=len(state),
                        params=sum(int(v.size) for v in state.values()))),
        flush=True)


def train(args, s: dict, torch) -> None:
  device = torch.device(args.device)
  model, optimizer = albef_step.build(os.path.abspath(args.albef), s, torch)
  init = np.load(os.path.join(args.data, 'init.npz'))
  model.load_state_dict({k: torch.from_numpy(np.array(init[k]))
                         for k in init.files}, strict=True)
  model.to(device).train()
  _param_groups(model, optimizer, args.temp_lr_scale)
  batches = np.load(os.path.join(args.data, 'batches.npz'))
  schedule = np.load(os.path.join(args.data, 'schedule.npz'))
  images, ids, masks = batches['images'], batches['text_ids'], batches[
      'text_mask']
  steps = images.shape[0]
  if len(schedule['lr']) < steps or len(schedule['alpha']) < steps:
    raise ValueError('schedule.npz is shorter than batches.npz')
  mean = np.asarray(s['image_mean'], np.float32).reshape(1, 3, 1, 1)
  std = np.asarray(s['image_std'], np.float32).reshape(1, 3, 1, 1)
  save = {int(x) for x in args.save_steps.split(',') if x} | {steps}
  log = open(os.path.join(args.data, 'metrics.jsonl'), 'a')
  if 0 in save:  # The initial weights, as loaded (checks the round trip).
    _save(model, args.data, 0)
  t0, done = time.perf_counter(), 0
  for i in range(steps):
    # Pixels 0..255 [B, H, W, 3] → ALBEF's normalised [B, 3, H, W], as
    # its transforms (ToTensor, Normalize) give it.
    x = images[i].astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    image = torch.from_numpy((x - mean) / std).to(device)
    text = argparse.Namespace(
        input_ids=torch.from_numpy(ids[i].astype(np.int64)).to(device),
        attention_mask=torch.from_numpy(masks[i].astype(np.int64)).to(
            device))
    for group in optimizer.param_groups:
      group['lr'] = float(schedule['lr'][i]) * group.get('lr_scale', 1.0)
    optimizer.zero_grad()
    loss_mlm, loss_ita, loss_itm = model(image, text,
                                         alpha=float(schedule['alpha'][i]))
    loss = loss_mlm + loss_ita + loss_itm
    loss.backward()
    optimizer.step()
    done += 1
    step = i + 1
    if step % args.log_every == 0 or step == steps:
      row = dict(step=step, loss=loss.item(), mlm_loss=loss_mlm.item(),
                 itc_loss=loss_ita.item(), itm_loss=loss_itm.item(),
                 temp=float(model.temp.item()),
                 lr=float(schedule['lr'][i]),
                 examples_per_s=done * images.shape[1] /
                 (time.perf_counter() - t0))
      print(json.dumps(row), flush=True)
      log.write(json.dumps(row) + '\n')
      log.flush()
      t0, done = time.perf_counter(), 0
    if step in save:
      _save(model, args.data, step)
  log.close()


def _save(model, directory: str, step: int) -> None:
  """``DIR/state_<step>.npz``, written whole or not at all."""
  state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
  path = os.path.join(directory, f'state_{step}.npz')
  np.savez(path + '.tmp.npz', **state)
  os.replace(path + '.tmp.npz', path)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  problem = albef_step.clone_problem(args.albef)
  if problem:
    print(problem, file=sys.stderr)
    return 2
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  s = _settings(args.shapes)
  with open(args.shapes) as f:
    extra = json.load(f)
  s.update(image_mean=extra.get('image_mean', (0.0, 0.0, 0.0)),
           image_std=extra.get('image_std', (1.0, 1.0, 1.0)))
  backend = 'nccl' if args.device.startswith('cuda') else 'gloo'
  with albef_step._process_group(torch, backend):  # pylint: disable=protected-access
    if args.command == 'template':
      if not args.out:
        print('template needs --out', file=sys.stderr)
        return 2
      template(args, s, torch)
    else:
      if not args.data:
        print('train needs --data', file=sys.stderr)
        return 2
      train(args, s, torch)
  return 0


if __name__ == '__main__':
  sys.exit(main())
