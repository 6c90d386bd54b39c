"""The pretraining objective of every vlg model: caption losses plus parts.

- captions: ALBEF's ITC (momentum distillation, queues) + ITM + MLM
  (``albef.albef_loss``) when ``loss.momentum_distill`` (ALBEF, ReALBEF),
  else X-VLM's in-batch versions (``pairs.image_text_losses``; X-VLM,
  ReX-VLM);
- each enabled typed part ``X`` of ``config.input.parts``: the ``PART`` of
  ``vlg/objectives/X.py`` (``part.PartObjective``) — ``entity`` (X-VLM box
  concepts and box regression, docs/objectives.md §3), ``vsg`` (verbalised
  scene graphs, §4), ``mrc`` (masked relation classification, §5).

``total = caption + Σ_part ratio_part · part``, each part's inner terms
weighted by ``config.loss``. Metrics are namespaced: ``itc_loss``
(captions), ``box_itc_loss``, ``bbox_loss``, ``giou_loss``,
``vsg_itm_loss``, ``mrc_loss``, ``mrc_acc``, ... Every part reads only its
own slots (``vlg/data/parts/``). :func:`make_loss_fn` binds a config's
weights, ratios and options once; the train step and ``vlg.tools.validate``
both call it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vlg.objectives import albef
from vlg.objectives import itc
from vlg.objectives import pairs
from vlg.objectives import part

Batch = dict[str, jax.Array]

# The caption losses' terms; each part adds those its PART names.
CAPTION_WEIGHTS = ('itc', 'itm', 'mlm')


def part_configs(config: ml_collections.ConfigDict
                  ) -> dict[str, ml_collections.ConfigDict]:
  """The enabled typed parts of ``config.input.parts``, sorted by name."""
  parts = config.input.get('parts') or {}
  return {k: v for k, v in sorted(parts.items()) if v.get('enabled', True)}


def part_ratios(config: ml_collections.ConfigDict) -> dict[str, float]:
  """``{part: ratio}`` of the enabled typed parts."""
  return {name: float(cfg.get('ratio', 1.0))
          for name, cfg in part_configs(config).items()}


def loss_weights(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Inner loss weights (``config.loss``) of the captions and of every
  enabled part; absent terms weigh 1."""
  keys = list(CAPTION_WEIGHTS)
  for name in part_configs(config):
    keys += part.part_objective(name).weights
  return {k: float(config.loss.get(k, 1.0)) for k in keys}


def progress_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Metrics the training progress line shows: the captions', then each
  enabled part's ``PART.progress``."""
  keys = ('loss', 'itc_loss', 'itm_loss', 'mlm_loss', 'itm_acc')
  for name in part_configs(config):
    keys += part.part_objective(name).progress
  return keys


def summation_order(objectives: dict[str, part.PartObjective]) -> list[str]:
  """The order in which the parts' losses are added: by ``rng_stream``,
  parts without one last, then by name (a fixed order keeps the total's
  float rounding, hence a run, reproducible)."""
  return sorted(objectives, key=lambda n: (
      objectives[n].rng_stream is None, objectives[n].rng_stream or 0, n))


LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def make_loss_fn(config: ml_collections.ConfigDict) -> LossFn:
  """``loss_fn(model, batch, *, momentum, queues, rng, alpha,
  dropout_rngs=None) -> (total, metrics)``: :func:`pretrain_loss` with
  ``config``'s weights, part ratios and ``config.loss`` options bound."""
  objectives = {name: part.part_objective(name)
                for name in part_configs(config)}
  streams = [o.rng_stream for o in objectives.values()
             if o.rng_stream is not None]
  if 0 in streams or len(set(streams)) != len(streams):
    raise ValueError(f'the parts {sorted(objectives)} need distinct '
                     f'rng_stream values > 0, got {streams}')
  weights = loss_weights(config)
  ratios = part_ratios(config)
  options = config.loss.to_dict()

  def loss_fn(model, batch, *, momentum, queues, rng, alpha,
              dropout_rngs=None):
    return pretrain_loss(model, batch, momentum=momentum, queues=queues,
                         rng=rng, alpha=alpha, weights=weights,
                         part_ratios=ratios, dropout_rngs=dropout_rngs,
                         options=options, objectives=objectives)

  return loss_fn


def pretrain_loss(model, batch: Batch, *, momentum: dict[str, Any] | None,
                  queues: dict[str, jax.Array], rng: jax.Array,
                  alpha: jax.Array, weights: dict[str, float],
                  part_ratios: dict[str, float],
                  options: dict[str, Any],
                  objectives: dict[str, part.PartObjective],
                  dropout_rngs=None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Caption losses (ALBEF or X-VLM style) plus the enabled parts.

  Args:
    model: the online model.
    batch: caption slots plus the enabled parts' slots.
    momentum: ``albef.momentum_outputs`` for ALBEF-style captions, or None
      for X-VLM-style (in-batch) captions.
    queues: the momentum queues (ALBEF style only).
    rng: the step's key; the captions draw their ITM negatives from
      ``split(rng, n)[0]``, part X from ``split(rng, n)[X.rng_stream]``.
    alpha: distillation weight (ALBEF style only).
    weights: ``itc``, ``itm``, ``mlm`` and the parts' terms.
    part_ratios: ``{part: ratio}`` of the enabled parts.
    dropout_rngs: dropout randomness (None: deterministic).
    options: ``config.loss`` as a dict (parts read their options there).
    objectives: ``{part: PartObjective}`` of the enabled parts.

  Returns:
    (total loss, metrics).
  """
  streams = [o.rng_stream or 0 for o in objectives.values()]
  # Key i of split(rng, n) does not depend on n, so a part's key is fixed
  # by its rng_stream alone.
  keys = jax.random.split(rng, max([0] + streams) + 1)
  temp = itc.clamp_temp(model.temp[...])
  if momentum is not None:
    total, metrics = albef.albef_loss(
        model, batch, momentum, queues, rng=keys[0], alpha=alpha,
        weights=weights, dropout_rngs=dropout_rngs)
  else:
    total, metrics = pairs.whole_image_losses(
        model, batch, '', rng=keys[0], temp=temp, weights=weights,
        dropout_rngs=dropout_rngs)
    metrics['temp'] = temp
  metrics['caption_loss'] = total
  for name in summation_order(objectives):
    objective, ratio = objectives[name], part_ratios[name]
    key = None if objective.rng_stream is None else keys[objective.rng_stream]
    loss, m = objective.loss(model, batch, rng=key, temp=temp,
                             weights=weights, dropout_rngs=dropout_rngs,
                             options=options)
    total = total + ratio * loss
    metrics.update(m)
  metrics['loss'] = total
  return total, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
