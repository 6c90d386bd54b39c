r"""Perceiver "stage 1" (ITC max over latents + ITG) on a frozen tower.

The Perceiver Resampler has no text path, so it trains with a small text
decoder beside it (``vlg.models.text_decoder``): ITC between the projected
latents (max over latents) and the decoder's text-only [CLS] feature, and a
Flamingo-style LM loss of the caption through the decoder cross-attending to
the latents (spec-probing §6.3 item 3). Same loop, tower and checkpoints as
``configs/qformer.py``.

Tiny, on the synthetic world (train a tiny ALBEF first; its ViT is the
frozen tower, read at its penultimate layer, and its tokenizer is reused)::

  python -m vlg.main --config=configs/albef.py:tiny,evals=False \
      --workdir=workdirs/albef_tiny
  python -m vlg.probing.stage1 --config=configs/perceiver.py:tiny \
      --config.vision_workdir=workdirs/albef_tiny --workdir=workdirs/perceiver

then probe its latents (no text enters a Perceiver; ``resampler_mode`` is
ignored)::

  python -m vlg.probing.run --config=configs/probe.py:tiny \
      --config.resampler_workdir=workdirs/perceiver \
      --config.taps='("tap=resampler_queries,reduce=flatten",)' \
      --workdir=workdirs/probe_perceiver

Expected on the synthetic world: ITC starts near log(batch) (≈3.47 at
batch 32) and, as for the Q-Former, hardly moves in the first hundred steps
(the tiny Q-Former's: 3.47 → 3.30 after 300); ITG starts near
log(vocabulary) and falls fast. Measured (40 steps of this config with
``--config.optim.warmup_steps=4``, the tower of a 150-step tiny ALBEF, 2 CPU
cores, ≈2.5 minutes): ITC 3.65 at step 1, then 3.466 from step 10 to 40;
ITG 4.56 → 3.63 (step 10) → 2.89 (20) → 2.52 (40). The full 300 steps were
not run. There is no ITM.

``base`` is a Flamingo-sized resampler (6 blocks, 64 latents, 16 × 96
heads, squared-ReLU FFN) as wide as the tower, with a 6-layer 768-wide
decoder and BLIP-2's stage-1 optimiser settings; it needs a tower trained
at base size and real data, like ``configs/albef.py:base``.

Arguments after the colon: ``variant`` (tiny | base). Any field can be
overridden: ``--config.perceiver.num_queries=16 --config.decoder.layers=1
--config.perceiver.activation=gelu``.
"""

from __future__ import annotations

import ml_collections

from vlg import config_lib
from vlg import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The Perceiver stage-1 config of ``variant`` (tiny by default)."""
  arg = config_lib.parse_arg(arg, variant='tiny')
  if arg.variant not in ('tiny', 'base'):
    raise ValueError(f"variant={arg.variant!r}; valid: 'tiny', 'base'")
  tiny = arg.variant == 'tiny'
  albef = recipes.albef_config(f'{arg.variant},evals=False')
  c = ml_collections.ConfigDict()
  c.resampler_kind = 'perceiver'
  c.seed = 0
  c.vision_workdir = ''  # A trained vlg run; '' = a random tower (tests).
  c.vision_step = -1  # Its checkpoint step; -1 = the latest.
  c.vision_layer = -2  # Which ViT state the latents read (-2: BLIP-2's).
  # The tower used when vision_workdir is empty, and the input pipeline
  # then (with a vision_workdir, the run's own input config is used).
  c.random_tower = albef.model
  c.input = albef.input
  # + any field of vlg.models.resamplers.resampler_config('perceiver', ...)
  # (its width is the tower's) and of text_decoder.decoder_config.
  c.perceiver = dict(size=arg.variant)
  c.decoder = dict(size=arg.variant)
  c.batch_size = 32 if tiny else 1024
  c.total_steps = 300 if tiny else 250_000
  c.optim = dict(lr=1e-3 if tiny else 1e-4, warmup_init_lr=1e-6,
                 min_lr=1e-5, warmup_steps=30 if tiny else 2_000,
                 weight_decay=0.05, b1=0.9, b2=0.98 if not tiny else 0.999,
                 eps=1e-8, grad_clip_norm=0.0)
  c.loss = dict(itc=1.0, itg=1.0, label_smoothing=0.1)
  c.mesh = (-1, 1, 1)
  c.num_devices = 0  # The first N devices of jax.devices(); 0 = all.
  c.sharding_rules = (('batch', ('data', 'fsdp')),)
  c.ckpt_steps = 100 if tiny else 5_000
  c.log_training_steps = 10 if tiny else 100
  return c
