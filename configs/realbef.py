r"""ReALBEF: ALBEF + verbalised scene graphs (VSG) + masked relation classification
(MRC).

Tiny, on the built-in synthetic world (minutes on 2 CPU cores):

  python -m vlg.main --config=configs/realbef.py:tiny --workdir=workdirs/realbef_tiny

Base (the paper's Table 4 batches, ratios and betas; point input.data at
prepared real data, see vlg/tools/prepare.py):

  python -m vlg.main --config=configs/realbef.py:base --workdir=gs://.../realbef

Base on ALBEF's 4M (``base_4m``: input.data at the prepared COCO, VG, SBU
and CC3M caption folders under ``data_dir`` and MRC/VSG at prepared GQA
scene graphs; the folders and their prepare commands:
``vlg/recipes.py:real_data``):

  python -m vlg.main --config=configs/realbef.py:base_4m \
      --config.data_dir=/data/vlg --workdir=gs://.../realbef_4m

``model.mrc_classes`` is 310 (GQA's relations); pass
``--config.model.mrc_classes=N`` if prepare printed another vocabulary size
(training checks it).

Arguments after the colon: ``variant`` (tiny | small | base | base_4m) and
``runlocal``. Recipes, part ratios and one-override ablations:
``vlg/recipes.py``. Any field can be overridden (``--config.x=y``); an
unknown field is an error.
"""

from __future__ import annotations

import ml_collections

from vlg import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The ReALBEF config for ``variant`` (tiny by default)."""
  return recipes.family_config('realbef', arg)
