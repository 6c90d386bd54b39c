r"""ALBEF: ITC (momentum distillation, queues) + ITM (hard negatives) + MLM.

Tiny, on the built-in synthetic world (the default; minutes on 2 CPU cores):

  python -m vlg.main --config=configs/albef.py:tiny --workdir=workdirs/albef_tiny

Expected: over the first 150 steps train/loss falls below 0.8x its first
value and each of train/itc_loss, train/itm_loss and train/mlm_loss falls.

Base (ALBEF 4M hyperparameters, spec §2.4; point input.data at prepared real
data — the synthetic world at 256 px is the default so the config runs):

  python -m vlg.main --config=configs/albef.py:base --workdir=gs://.../albef

Arguments after the colon: ``variant`` (tiny | small | base) and ``runlocal``
(shrinks batch, steps and queue to run anywhere). Any field can be
overridden: ``--config.total_steps=300 --config.optim.lr=3e-4``; an unknown
field is an error.
"""

from __future__ import annotations

import ml_collections

from vlg import config_lib
from vlg.models import sizes


def _input(resolution: int, max_text_len: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      kind='caption',
      data=dict(
          synthetic=dict(source='synthetic', weight=1.0, split='train',
                         num_examples=100_000,
                         world=dict(resolution=resolution)),
      ),
      resolution=resolution,
      max_text_len=max_text_len,
      max_words=30,
      augment=('crop', 'flip', 'brightness'),
      crop_scale=(0.5, 1.0),
      mlm_probability=0.15,
      skip_bad_examples=False,
      num_workers=0,
      num_threads=2,
      prefetch=2,
      tokenizer=dict(path='', vocab_size=1024, num_texts=5000),
  ))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The ALBEF config for ``variant`` (tiny by default)."""
  arg = config_lib.parse_arg(arg, variant='tiny', runlocal=False)
  if arg.variant not in sizes.SIZES:
    raise ValueError(f'variant={arg.variant!r}; valid: {sorted(sizes.SIZES)}')
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = sizes.model_config(arg.variant, name='albef', itm_head='linear')
  res = int(c.model.image_size)

  if arg.variant == 'base':
    c.batch_size = 512
    c.total_steps = 30 * 7_800  # 30 epochs of the 4M set at batch 512.
    c.input = _input(res, max_text_len=25)
    c.input.tokenizer.vocab_size = 32_000
    c.optim = dict(lr=1e-4, warmup_init_lr=1e-5, min_lr=1e-5,
                   warmup_steps=2_000, weight_decay=0.02, b1=0.9, b2=0.999,
                   eps=1e-8, grad_clip_norm=0.0)
    c.queue_size = 65_536
    c.alpha_warmup_steps = 7_800
    c.ckpt_steps = 2_000
    c.keep_every_steps = 10_000
    c.log_training_steps = 50
  else:
    c.batch_size = 32
    c.total_steps = 600 if arg.variant == 'tiny' else 2_000
    c.input = _input(res, max_text_len=25)
    c.optim = dict(lr=1e-3, warmup_init_lr=1e-5, min_lr=1e-5,
                   warmup_steps=20, weight_decay=0.02, b1=0.9, b2=0.999,
                   eps=1e-8, grad_clip_norm=0.0)
    c.queue_size = 256
    c.alpha_warmup_steps = 100
    c.ckpt_steps = 50
    c.keep_every_steps = 100
    c.log_training_steps = 10
  c.model.vocab_size = max(int(c.model.vocab_size),
                           int(c.input.tokenizer.vocab_size))

  c.loss = dict(itc=1.0, itm=1.0, mlm=1.0, alpha=0.4, momentum=0.995)
  c.mesh = (-1, 1, 1)  # ('data', 'fsdp', 'tensor'); -1 fills.
  c.sharding_rules = (
      ('batch', ('data', 'fsdp')),
      ('embed', 'fsdp'),
      ('mlp', 'tensor'),
      ('heads', 'tensor'),
      ('vocab', 'tensor'),
  )
  c.keep_latest = 2
  c.evals = ml_collections.ConfigDict()
  if arg.runlocal:
    c.batch_size = 8
    c.total_steps = 20
    c.queue_size = 64
    c.ckpt_steps = 10
    c.log_training_steps = 5
  return c
