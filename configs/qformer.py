r"""Q-Former stage 1 (BLIP-2: ITC max over queries, ITM, ITG) on a frozen tower.

Tiny, on the synthetic world (train a tiny ALBEF first; its ViT is the
frozen tower, read at its penultimate layer, and its tokenizer is reused)::

  python -m vlg.main --config=configs/albef.py:tiny,evals=False \
      --workdir=workdirs/albef_tiny
  python -m vlg.projects.probing.stage1 --config=configs/qformer.py:tiny \
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
from vlg.projects.probing import stage1


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The stage-1 config of ``variant`` (tiny by default)."""
  arg = config_lib.parse_arg(arg, variant='tiny')
  c = stage1.base_config('qformer', arg.variant)
  c.qformer = dict(size=arg.variant)  # + any resampler_config field.
  c.loss = dict(itc=1.0, itm=1.0, itg=1.0, label_smoothing=0.1)
  return c
