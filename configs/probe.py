r"""Probes of a trained model: RefCOCOg boxes, VSR, RCM (docs/probing.md §6).

Tiny, on the synthetic RefCOCOg-/VSR-style sets, probing a trained tiny
ALBEF or X-VLM workdir (``python -m vlg.main --config=configs/albef.py:tiny
--workdir=workdirs/albef_tiny`` first; minutes on 2 CPU cores)::

  python -m vlg.projects.probing.run --config=configs/probe.py:tiny \
      --config.model_workdir=workdirs/albef_tiny --workdir=workdirs/probe_tiny

It probes ``fused_cls`` (the fusion encoder's [CLS], text-conditioned like
the paper's Q-Former queries) with a linear head, frozen and unfrozen, 3
seeds, and writes ``results.md`` (Tables 1–3 layout, chance and mean-box
baselines first) and ``results.json``. Expected direction on the synthetic
world: unfrozen above frozen on RCM and on box Acc@0.5.

The paper's protocol (``paper``): HPO on (≥ 10 TPE trials per cell, Table 4
ranges, best re-run over 3 seeds), linear + SwiGLU heads, real data::

  python -m vlg.projects.probing.run --config=configs/probe.py:paper \
      --config.model_workdir=... --config.data.synthetic=False \
      --config.data.refcocog.root=.../refcocog \
      --config.data.refcocog.image_root=.../train2014 \
      --config.data.vsr.train=.../random/train.jsonl ... --workdir=...

Arguments after the colon: ``variant`` (tiny | paper), ``hpo`` (search
instead of fixed settings) and ``grid`` (all of linear/swiglu2/swiglu4 and
the cls/mean taps). Any field can be overridden, e.g.
``--config.taps='("tap=fused_tokens,reduce=attn_pool",)'``.
"""

from __future__ import annotations

import ml_collections

from vlg import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The probe config for ``variant`` (tiny by default)."""
  arg = config_lib.parse_arg(arg, variant='tiny', hpo=False, grid=False)
  if arg.variant not in ('tiny', 'paper'):
    raise ValueError(f"variant={arg.variant!r}; valid: 'tiny', 'paper'")
  tiny = arg.variant == 'tiny'
  c = ml_collections.ConfigDict()
  c.model_workdir = ''  # A trained vlg run (checkpoints/ + tokenizer/).
  # A vlg.projects.probing.stage1 workdir: probe its Q-Former (on its frozen
  # tower) instead of the model; taps resampler_queries / resampler_layer:k.
  c.resampler_workdir = ''
  # Text enters the queries. Ignored for a Perceiver workdir,
  # which has no text path (taps: resampler_queries, resampler_layer:k).
  c.resampler_mode = 'multimodal'
  c.model_name = ''  # Row label; '' = the workdir's base name.
  c.step = -1  # Checkpoint step; -1 = the latest kept.
  c.taps = ('tap=fused_cls,reduce=cls',)
  if arg.grid:
    c.taps = ('tap=fused_cls,reduce=cls', 'tap=fused_tokens,reduce=mean',
              'tap=fused_tokens,reduce=attn_pool')
  c.tasks = ('refcocog_box', 'vsr', 'rcm')
  c.regimes = ('frozen', 'unfrozen')
  c.heads = ('linear', 'swiglu2', 'swiglu4') if (
      arg.grid or not tiny) else ('linear',)
  c.seeds = (0, 1, 2)
  c.max_text_len = 64  # 64 avoids truncating RCM phrases.
  c.cache_dir = ''  # Frozen feature cache; '' = WORKDIR/features.
  # Keep the cells already in WORKDIR/results.json (same settings) instead
  # of training them again (vlg/projects/probing/run.py).
  c.resume = True

  # train.HParams fields; the HPO searches lr, epochs, loss
  # weights and lr_mult.
  c.hparams = dict(
      hidden=256 if tiny else 768, pre_norm=False, dropout=0.0,
      lr=1e-3 if tiny else 1e-4, lr_mult=0.1, epochs=30 if tiny else 20,
      batch_size=128, eval_batch_size=256, weight_decay=0.01,
      warmup_fraction=0.1, schedule='linear', patience=10,
      l1_weight=5.0, giou_weight=2.0, seed=0)
  c.hpo = dict(enabled=bool(arg.hpo or not tiny), n_trials=10,
               startup_trials=5,
               epochs=(10, 20, 30) if tiny else ())  # () = Table 4's.

  c.data = dict(
      synthetic=True,
      # Expressions per synthetic split; at 600 the smallest RCM cell of the
      # probe-val part held 4 (< 8), so RCM could not be balanced.
      synthetic_num=1200 if tiny else 200,
      synthetic_seed=0,
      resolution=0,  # 0 = the model's input resolution.
      val_fraction=0.25,  # Of the synthetic 'val' images, for probe val.
      split_seed=0,
      refcocog=dict(root='', image_root=''),
      vsr=dict(train='', val='', test='', image_root='', categories=''),
      rcm=dict(seed=0, max_per_cell=0),  # 0 = no cap.
  )
  return c
