r"""ALBEF: ITC (momentum distillation, queues) + ITM (hard negatives) + MLM.

Tiny, on the built-in synthetic world (the default; minutes on 2 CPU cores):

  python -m vlg.main --config=configs/albef.py:tiny --workdir=workdirs/albef_tiny

It first trains the vision tower for 1,500 steps on the world's object
labels (``config.vision_pretrain``), then ALBEF for 1,460 steps: ~40 TFLOP
of training compute, ~11 minutes on a 2-core CPU whose float32 matmul
reads ~200 GFLOP/s. Expected (measured runs in docs/results.md): held-out
ITM accuracy / AUROC on uniform negatives ~0.85 / ~0.97 at the end
(prior 0.667; ``python -m vlg.tools.validate``); synthetic retrieval R@1
25-40x its 0.02 chance level, SVO-style accuracy 5-7 binomial SDs above
chance and VALSE-style 2-6 (runs on different CPUs differ: XLA's float
rounding differs between instruction sets); VSR-style at chance and
Winoground-style below it (the ITM head reads captions as bags of
words), as for the papers' own
models (``python -m vlg.tools.skills --workdir=...``). ITC's logged loss
rises while the queue fills (its softmax gains B columns a step) before it
falls. ``train/fn_itm_neg_share`` logs how many drawn ITM negatives are in
fact true captions (about 1%).

Base (ALBEF 4M hyperparameters; point input.data at prepared real
data — the synthetic world at 256 px is the default so the config runs):

  python -m vlg.main --config=configs/albef.py:base --workdir=gs://.../albef

Base on ALBEF's 4M (``base_4m``: input.data at the prepared COCO, VG, SBU
and CC3M caption folders under ``data_dir``; the folders and their prepare
commands: ``vlg/recipes.py:real_data``):

  python -m vlg.main --config=configs/albef.py:base_4m \
      --config.data_dir=/data/vlg --workdir=gs://.../albef_4m

Arguments after the colon: ``variant`` (tiny | small | base | base_4m) and
``runlocal`` (shrinks batch, steps and queue to run anywhere). Any field can
be overridden: ``--config.total_steps=300 --config.optim.lr=3e-4``; an
unknown field is an error.
"""

from __future__ import annotations

import ml_collections

from vlg import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The ALBEF config for ``variant`` (tiny by default)."""
  return recipes.albef_config(arg)
