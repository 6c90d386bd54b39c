r"""Q-Former stage 1 (BLIP-2: ITC max over queries, ITM, ITG) on a frozen tower.

Tiny, on the synthetic world (train a tiny ALBEF first; its ViT is the
frozen tower, read at its penultimate layer, and its tokenizer is reused)::

  python -m vlg.main --config=configs/albef.py:tiny,evals=False \
      --workdir=workdirs/albef_tiny
  python -m vlg.probing.stage1 --config=configs/qformer.py:tiny \
      --config.vision_workdir=workdirs/albef_tiny --workdir=workdirs/qformer

Expected on the synthetic world: ITC starts near log(batch) (≈3.5 at batch
32) and falls; ITG falls from ≈log(vocab) within the first hundred steps; ITM
starts near log 2.

``base`` is BLIP-2's Q-Former exactly (12 layers, 768 wide, 32 queries,
cross-attention every 2nd layer) over any tower width, with BLIP-2's
stage-1 optimiser settings; it needs a tower trained at base size and real
data, like ``configs/albef.py:base``.

Arguments after the colon: ``variant`` (tiny | base). Any field can be
overridden: ``--config.total_steps=600 --config.vision_layer=-1``.
"""

from __future__ import annotations

import ml_collections

from vlg import config_lib
from vlg import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The stage-1 config of ``variant`` (tiny by default)."""
  arg = config_lib.parse_arg(arg, variant='tiny')
  if arg.variant not in ('tiny', 'base'):
    raise ValueError(f"variant={arg.variant!r}; valid: 'tiny', 'base'")
  tiny = arg.variant == 'tiny'
  albef = recipes.albef_config(f'{arg.variant},evals=False')
  c = ml_collections.ConfigDict()
  c.resampler_kind = 'qformer'  # vlg/probing/stage1_models.py
  c.seed = 0
  c.vision_workdir = ''  # A trained vlg run; '' = a random tower (tests).
  c.vision_step = -1  # Its checkpoint step; -1 = the latest.
  c.vision_layer = -2  # Which ViT state the queries read (-2: BLIP-2's).
  # The tower used when vision_workdir is empty, and the input pipeline
  # then (with a vision_workdir, the run's own input config is used).
  c.random_tower = albef.model
  c.input = albef.input
  c.qformer = dict(size=arg.variant)  # + any resampler_config field.
  c.batch_size = 32 if tiny else 1024
  c.total_steps = 300 if tiny else 250_000
  c.optim = dict(lr=1e-3 if tiny else 1e-4, warmup_init_lr=1e-6,
                 min_lr=1e-5, warmup_steps=30 if tiny else 2_000,
                 weight_decay=0.05, b1=0.9, b2=0.98 if not tiny else 0.999,
                 eps=1e-8, grad_clip_norm=0.0)
  c.loss = dict(itc=1.0, itm=1.0, itg=1.0, label_smoothing=0.1)
  c.mesh = (-1, 1, 1)
  c.num_devices = 0  # The first N devices of jax.devices(); 0 = all.
  c.sharding_rules = (('batch', ('data', 'fsdp')),)
  c.ckpt_steps = 100 if tiny else 5_000
  c.log_training_steps = 10 if tiny else 100
  return c
