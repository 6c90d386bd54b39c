r"""X-VLM: ALBEF's three losses in-batch (no momentum, no queue) on (image, caption)
and on (box concept, box text) pairs, plus box regression (L1 + GIoU).

Tiny, on the built-in synthetic world (minutes on 2 CPU cores):

  python -m vlg.main --config=configs/xvlm.py:tiny --workdir=workdirs/xvlm_tiny

Base (the paper's Table 4 batches, ratios and betas; point input.data at
prepared real data, see vlg/tools/prepare.py):

  python -m vlg.main --config=configs/xvlm.py:base --workdir=gs://.../xvlm

Base on ALBEF's 4M (``base_4m``: input.data at the prepared COCO, VG, SBU
and CC3M caption folders under ``data_dir`` and the entity part at the
prepared COCO/VG objects and VG regions; the folders and their prepare
commands: ``vlg/recipes.py:real_data``):

  python -m vlg.main --config=configs/xvlm.py:base_4m \
      --config.data_dir=/data/vlg --workdir=gs://.../xvlm_4m

Arguments after the colon: ``variant`` (tiny | small | base | base_4m) and
``runlocal``. Recipes, part ratios and one-override ablations:
``vlg/recipes.py``. Any field can be overridden (``--config.x=y``); an
unknown field is an error.
"""

from __future__ import annotations

import ml_collections

from vlg import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The X-VLM config for ``variant`` (tiny by default)."""
  return recipes.family_config('xvlm', arg)
