r"""ReALBEF: ALBEF + verbalised scene graphs (VSG) + masked relation classification
(MRC).

Tiny, on the built-in synthetic world (minutes on 2 CPU cores):

  python -m vlg.main --config=configs/realbef.py:tiny --workdir=workdirs/realbef_tiny

Base (the paper's Table 4 batches, ratios and betas; point input.data at
prepared real data, see vlg/tools/prepare.py):

  python -m vlg.main --config=configs/realbef.py:base --workdir=gs://.../realbef

Arguments after the colon: ``variant`` (tiny | small | base) and
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
