r"""Perceiver "stage 1" (ITC max over latents + ITG) on a frozen tower.

The Perceiver Resampler has no text path, so it trains with a small text
decoder beside it (``vlg.models.text_decoder``): ITC between the projected
latents (max over latents) and the decoder's text-only [CLS] feature, and a
Flamingo-style LM loss of the caption through the decoder cross-attending to
the latents (docs/probing.md §6.3 item 3). Same loop, tower and checkpoints as
``configs/qformer.py``.

Tiny, on the synthetic world (train a tiny ALBEF first; its ViT is the
frozen tower, read at its penultimate layer, and its tokenizer is reused)::

  python -m vlg.main --config=configs/albef.py:tiny,evals=False \
      --workdir=workdirs/albef_tiny
  python -m vlg.projects.probing.stage1 --config=configs/perceiver.py:tiny \
      --config.vision_workdir=workdirs/albef_tiny --workdir=workdirs/perceiver

then probe its latents (no text enters a Perceiver; ``resampler_mode`` is
ignored)::

  python -m vlg.projects.probing.run --config=configs/probe.py:tiny \
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
from vlg.projects.probing import stage1


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The Perceiver stage-1 config of ``variant`` (tiny by default)."""
  arg = config_lib.parse_arg(arg, variant='tiny')
  c = stage1.base_config('perceiver', arg.variant)
  # + any field of vlg.models.resamplers.resampler_config('perceiver', ...)
  # (its width is the tower's) and of text_decoder.decoder_config.
  c.perceiver = dict(size=arg.variant)
  c.decoder = dict(size=arg.variant)
  c.loss = dict(itc=1.0, itg=1.0, label_smoothing=0.1)
  return c
