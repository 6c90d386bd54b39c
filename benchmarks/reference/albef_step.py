#!/usr/bin/env python3
r"""Times ALBEF's own PyTorch pretraining step at given shapes.

Runs with the Python of a PyTorch environment (not vlg's; set-up and
commands: benchmarks/reference/README.md)::

  /path/to/venv/bin/python benchmarks/reference/albef_step.py \
      --albef=/path/to/ALBEF --shapes=shapes.json --steps=10

``--albef`` is a clone of salesforce/ALBEF. Its ``models/model_pretrain.py``
(``ALBEF``), ``models/vit.py``, ``models/xbert.py`` and ``optim/`` are
imported from there, unchanged, so the timed step is ALBEF's code: ITC with
momentum features and queues, ITM with hard negatives drawn per example,
MLM with momentum distillation, then AdamW. Weights are random and nothing
is downloaded. Shapes come from ``--shapes`` (a JSON file, e.g. the one
``python -m vlg.tools.bench_reference`` writes for a vlg config) and from
flags, which take precedence.

What the script supplies around ALBEF's code, and why:

- ``ALBEF.__init__`` builds its two ViTs (online and momentum) at ViT-B/16
  (patch 16, width 768, depth 12, 12 heads, MLP ratio 4), whatever the
  config says. While the model is built, the name ``VisionTransformer`` in
  ``models.model_pretrain`` is ALBEF's own class from ``models/vit.py``
  with those five arguments set to the given shapes.
- ``BertForMaskedLM.from_pretrained('bert-base-uncased', config=...)``
  would download BERT; while the model is built it is
  ``BertForMaskedLM(config)`` (ALBEF's class, random weights). The config
  is read as ALBEF reads it, with ``BertConfig.from_json_file``, from a JSON
  written at the given shapes (``fusion_layer`` = text layers,
  ``encoder_width`` = vision width).
- ``init_deit=False``: no DeiT checkpoint.
- The tokenizer: ``ALBEF.mask`` reads only its pad, [CLS] and [MASK] ids;
  BERT's (0, 101, 103) are used. Texts are fixed random ids of
  ``max_text_len`` tokens, [CLS] first, no padding (ALBEF pads to the
  longest text of a batch, at most 25).
- ``concat_all_gather`` needs ``torch.distributed``: a one-process group
  (gloo on CPU, nccl on CUDA), as ALBEF's training always has one.

The step is ``Pretrain.py``'s ``train`` loop body: ``zero_grad``, the
forward at ``alpha``, the sum of the three losses, ``backward``,
``optimizer.step``, and ``.item()`` of each loss (its metric logger).
The optimizer is ALBEF's ``optim.create_optimizer`` (AdamW; no weight decay
on biases and 1-D parameters). Prints JSON lines on stdout: one
``{"kind": "model", ...}`` after building, one ``{"kind": "result", ...}``
with ``examples_per_s`` (batch over the median step time) at the end; it
also counts the trainable tensors that received a non-zero gradient and
reads the queue pointer, evidence that the backward pass and the queue
ran.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
import types
from unittest import mock

# Shapes without a default: the JSON or a flag must give each.
SHAPES = ('image_size', 'patch_size', 'vision_width', 'vision_depth',
          'vision_heads', 'vision_mlp', 'text_width', 'text_layers',
          'fusion_layers', 'text_heads', 'text_mlp', 'vocab_size',
          'max_positions', 'embed_dim', 'batch_size', 'queue_size')
# Settings with ALBEF's defaults (configs/Pretrain.yaml, configs/
# config_bert.json, Pretrain.py's 25 text tokens, torch's AdamW betas).
# The token ids ALBEF.mask reads are BERT's unless given (a vlg tokenizer's,
# for training on the synthetic world: albef_train.py).
DEFAULTS = dict(max_text_len=25, momentum=0.995, alpha=0.4,
                mlm_probability=0.15, temp=0.07, dropout=0.1,
                text_ln_eps=1e-12, lr=1e-4, weight_decay=0.02, b1=0.9,
                b2=0.999, eps=1e-8, pad_id=0, cls_id=101, mask_id=103)
FLOATS = {'momentum', 'alpha', 'mlm_probability', 'temp', 'dropout',
          'text_ln_eps', 'lr', 'weight_decay', 'b1', 'b2', 'eps'}
# Keys of a shapes JSON that describe it rather than the model.
META = ('notes', 'image_mean', 'image_std')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      description=__doc__.split('\n', 1)[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog='Set-up and commands: benchmarks/reference/README.md.')
  p.add_argument('--albef', required=True,
                 help='Clone of salesforce/ALBEF (holds models/, optim/).')
  p.add_argument('--shapes', default='',
                 help='JSON of shapes and settings (keys as the flags).')
  for name in SHAPES:
    p.add_argument(f'--{name}', type=int, default=None)
  for name, value in DEFAULTS.items():
    p.add_argument(f'--{name}', type=float if name in FLOATS else int,
                   default=None, help=f'default {value}')
  p.add_argument('--steps', type=int, default=10, help='Timed steps.')
  p.add_argument('--warmup', type=int, default=2, help='Untimed steps.')
  p.add_argument('--threads', type=int, default=2,
                 help='torch.set_num_threads (CPU).')
  p.add_argument('--device', default='cpu', help="'cpu' or 'cuda'.")
  p.add_argument('--autocast', default='none', choices=('none', 'bfloat16'),
                 help="'bfloat16': the forward under torch.autocast "
                      '(float32 parameters, AdamW and backward as torch '
                      'autocast does them), to compare with a vlg step at '
                      'model.dtype=bfloat16; ALBEF itself trains in float32.')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--matmul_size', type=int, default=2048,
                 help='Side of the float32 matmul timed as the machine '
                      'reading (0: none).')
  return p.parse_args(argv)


def settings(args: argparse.Namespace) -> dict:
  """Shapes and settings: defaults, then ``--shapes``, then flags.

  Raises ValueError for an unknown JSON key, a missing shape, or shapes
  ALBEF's code cannot run (see :func:`check`).
  """
  out = dict(DEFAULTS)
  if args.shapes:
    loaded = json.loads(pathlib.Path(args.shapes).read_text())
    unknown = sorted(set(loaded) - set(SHAPES) - set(DEFAULTS) - set(META))
    if unknown:
      raise ValueError(f'{args.shapes}: unknown keys {unknown}')
    out.update({k: v for k, v in loaded.items() if k not in META})
  for name in SHAPES + tuple(DEFAULTS):
    value = getattr(args, name)
    if value is not None:
      out[name] = value
  missing = [k for k in SHAPES if k not in out]
  if missing:
    raise ValueError(f'missing shapes {missing}: give --shapes=FILE.json '
                     'or a flag for each')
  check(out)
  return out


def check(s: dict) -> None:
  """Raises ValueError where ALBEF's code cannot run the shapes ``s``."""
  problems = []
  if s['image_size'] % s['patch_size']:
    problems.append('image_size must be a multiple of patch_size')
  ratio = s['vision_mlp'] / s['vision_width']
  if int(s['vision_width'] * ratio) != s['vision_mlp']:
    problems.append('vision_mlp must be vision_width × a ratio that ViT '
                    'rounds back to it (int(width * mlp_ratio))')
  for width, heads in (('vision_width', 'vision_heads'),
                       ('text_width', 'text_heads')):
    if s[width] % s[heads]:
      problems.append(f'{width} must be a multiple of {heads}')
  if s['queue_size'] % s['batch_size']:
    problems.append('queue_size must be a multiple of batch_size '
                    '(ALBEF._dequeue_and_enqueue asserts it)')
  if s['vocab_size'] <= s['mask_id'] + 1:
    problems.append(f'vocab_size must exceed {s["mask_id"] + 1} (the '
                    'special ids)')
  if s['max_text_len'] > s['max_positions']:
    problems.append('max_text_len must be at most max_positions')
  if problems:
    raise ValueError('; '.join(problems))


def bert_config(s: dict) -> dict:
  """ALBEF's configs/config_bert.json at the shapes ``s``."""
  return dict(
      architectures=['BertForMaskedLM'], model_type='bert',
      attention_probs_dropout_prob=s['dropout'], hidden_act='gelu',
      hidden_dropout_prob=s['dropout'], hidden_size=s['text_width'],
      initializer_range=0.02, intermediate_size=s['text_mlp'],
      layer_norm_eps=s['text_ln_eps'],
      max_position_embeddings=s['max_positions'],
      num_attention_heads=s['text_heads'],
      num_hidden_layers=s['text_layers'] + s['fusion_layers'],
      pad_token_id=s['pad_id'], type_vocab_size=2, vocab_size=s['vocab_size'],
      fusion_layer=s['text_layers'], encoder_width=s['vision_width'])


def _make_torchvision_importable(torch) -> None:
  """Lets ``import torchvision`` (which timm does) succeed where its
  compiled ops do not load, as with a CUDA-linked torchvision beside a
  CPU-only torch. torchvision then registers fake kernels for ``nms`` and
  ``qnms`` unconditionally and fails on the missing operators; declaring
  their schemas first lets it import (ALBEF uses none of its ops).
  Nothing happens where the ops load."""
  spec = importlib.util.find_spec('torchvision')
  if spec is None or not spec.origin:
    return
  libs = sorted(pathlib.Path(spec.origin).parent.glob('_C.*'))
  try:
    for lib in libs:
      torch.ops.load_library(str(lib))
    return
  except OSError:
    pass
  lib = torch.library.Library('torchvision', 'DEF')
  for op in ('nms', 'qnms'):
    lib.define(f'{op}(Tensor dets, Tensor scores, float iou_threshold) '
               '-> Tensor')
  _make_torchvision_importable.library = lib  # Kept alive.


@contextlib.contextmanager
def _process_group(torch, backend: str):
  """A one-process ``torch.distributed`` group for the duration."""
  dist = torch.distributed
  if dist.is_initialized():
    yield
    return
  with tempfile.TemporaryDirectory(prefix='albef_step_') as tmp:
    store = dist.FileStore(os.path.join(tmp, 'store'), 1)
    dist.init_process_group(backend, store=store, rank=0, world_size=1)
    try:
      yield
    finally:
      dist.destroy_process_group()


def build(albef_dir: str, s: dict, torch):
  """ALBEF's pretraining model and optimizer at the shapes ``s``."""
  sys.path.insert(0, albef_dir)
  _make_torchvision_importable(torch)
  from models import model_pretrain, vit, xbert  # ALBEF's, unchanged.
  import optim as albef_optim  # ALBEF's optim/.

  def vision_transformer(**kwargs):
    kwargs.update(patch_size=s['patch_size'], embed_dim=s['vision_width'],
                  depth=s['vision_depth'], num_heads=s['vision_heads'],
                  mlp_ratio=s['vision_mlp'] / s['vision_width'])
    return vit.VisionTransformer(**kwargs)

  random_bert = types.SimpleNamespace(
      from_pretrained=lambda name, config: xbert.BertForMaskedLM(config))
  tokenizer = types.SimpleNamespace(pad_token_id=s['pad_id'],
                                    cls_token_id=s['cls_id'],
                                    mask_token_id=s['mask_id'])
  with tempfile.TemporaryDirectory(prefix='albef_step_') as tmp:
    path = os.path.join(tmp, 'config_bert.json')
    with open(path, 'w') as f:
      json.dump(bert_config(s), f)
    config = dict(image_res=s['image_size'], vision_width=s['vision_width'],
                  embed_dim=s['embed_dim'], queue_size=s['queue_size'],
                  momentum=s['momentum'], temp=s['temp'],
                  mlm_probability=s['mlm_probability'], bert_config=path)
    with mock.patch.object(model_pretrain, 'VisionTransformer',
                           vision_transformer), \
        mock.patch.object(model_pretrain, 'BertForMaskedLM', random_bert):
      model = model_pretrain.ALBEF(text_encoder='random-init',
                                   tokenizer=tokenizer, config=config,
                                   init_deit=False)
  opt = types.SimpleNamespace(opt='adamW', lr=s['lr'],
                              weight_decay=s['weight_decay'],
                              opt_betas=(s['b1'], s['b2']), opt_eps=s['eps'])
  return model, albef_optim.create_optimizer(opt, model)


def matmul_flops_per_sec(torch, n: int, device, repeats: int = 10) -> float:
  """Measured float32 n×n matmul FLOP/s (median of ``repeats``)."""
  a = torch.randn(n, n, device=device)
  b = torch.randn(n, n, device=device)
  times = []
  for i in range(repeats + 1):
    _sync(torch, device)
    t = time.perf_counter()
    a @ b
    _sync(torch, device)
    if i:  # The first is a warm-up.
      times.append(time.perf_counter() - t)
  return 2 * n**3 / statistics.median(times)


def _sync(torch, device) -> None:
  if device.type == 'cuda':
    torch.cuda.synchronize(device)


def _versions() -> dict:
  out = {}
  for name in ('torch', 'transformers', 'timm'):
    module = sys.modules.get(name)
    out[name] = getattr(module, '__version__', None)
  return out


def run(args: argparse.Namespace, s: dict) -> dict:
  """Builds ALBEF at ``s``, times its step; returns the result line."""
  if args.steps < 1 or args.warmup < 0:
    raise ValueError('--steps must be >= 1 and --warmup >= 0')
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  device = torch.device(args.device)
  with _process_group(torch, 'nccl' if device.type == 'cuda' else 'gloo'):
    t = time.perf_counter()
    model, optimizer = build(os.path.abspath(args.albef), s, torch)
    model.to(device).train()
    build_s = time.perf_counter() - t
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(json.dumps(dict(kind='model', params_m=trainable / 1e6,
                          build_s=build_s, **_versions())), flush=True)

    b, length = s['batch_size'], s['max_text_len']
    g = torch.Generator().manual_seed(args.seed)
    image = torch.randn(b, 3, s['image_size'], s['image_size'],
                        generator=g).to(device)
    ids = torch.randint(s['mask_id'] + 1, s['vocab_size'], (b, length),
                        generator=g)
    ids[:, 0] = s['cls_id']
    text = types.SimpleNamespace(
        input_ids=ids.to(device),
        attention_mask=torch.ones(b, length, dtype=torch.long,
                                  device=device))

    autocast = args.autocast == 'bfloat16'

    def step():
      optimizer.zero_grad()
      with torch.autocast(device.type, dtype=torch.bfloat16,
                          enabled=autocast):
        loss_mlm, loss_ita, loss_itm = model(image, text, alpha=s['alpha'])
        loss = loss_mlm + loss_ita + loss_itm
      loss.backward()
      optimizer.step()
      return dict(mlm=loss_mlm.item(), itc=loss_ita.item(),
                  itm=loss_itm.item())

    for _ in range(args.warmup):
      step()
    times = []
    for _ in range(args.steps):
      _sync(torch, device)
      t = time.perf_counter()
      losses = step()
      _sync(torch, device)
      times.append(time.perf_counter() - t)
    trained = [p for p in model.parameters() if p.requires_grad]
    with_grad = sum(int(p.grad is not None and bool(p.grad.any()))
                    for p in trained)
    queue_ptr = int(model.queue_ptr)
  step_s = statistics.median(times)
  matmul = (matmul_flops_per_sec(torch, args.matmul_size, device)
            if args.matmul_size else None)
  return dict(kind='result', examples_per_s=b / step_s, step_s=step_s,
              params_m=trainable / 1e6,
              step_s_min=min(times), step_s_max=max(times),
              steps=args.steps, warmup=args.warmup, batch=b,
              threads=torch.get_num_threads(), device=str(device),
              autocast=args.autocast,
              losses=losses, tensors_with_grad=with_grad,
              trainable_tensors=len(trained), queue_ptr=queue_ptr,
              matmul_size=args.matmul_size,
              matmul_flops=matmul)


def clone_problem(albef_dir: str) -> str:
  """What is wrong with ``--albef`` as a clone of ALBEF ('' if nothing)."""
  if os.path.isfile(os.path.join(albef_dir, 'models', 'model_pretrain.py')):
    return ''
  return (f'--albef={albef_dir}: no models/model_pretrain.py there; clone '
          'salesforce/ALBEF (benchmarks/reference/README.md)')


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  problem = clone_problem(args.albef)
  if problem:
    print(problem, file=sys.stderr)
    return 2
  try:
    s = settings(args)
  except ValueError as e:
    print(f'albef_step.py: {e}', file=sys.stderr)
    return 2
  print(json.dumps(run(args, s)), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
