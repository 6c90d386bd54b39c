"""The trainable side of stage 1, per resampler kind (docs/probing.md §6.3).

``vlg.projects.probing.stage1`` trains either resampler with one loop; this
module holds what differs between them. ``config.resampler_kind`` picks:

* ``'qformer'``: one module, ``qformer`` (``resamplers.QFormer``), trained
  with BLIP-2's ITC + ITM + ITG (``vlg.objectives.qformer``);
* ``'perceiver'``: two modules, ``perceiver``
  (``perceiver.PerceiverResampler``, as wide as the tower) and ``decoder``
  (``text_decoder.TextDecoder``, the text path it lacks), trained with ITC
  + ITG (``vlg.objectives.perceiver``).

Each module's config is ``config.<name>``: ``size`` plus any field of
``resamplers.resampler_config`` / ``text_decoder.decoder_config``. The
trainable parameters are ``{name: params}`` over the kind's
:data:`MODEL_NAMES`, and a checkpoint's ``params`` item is that dict plus
``tower``. The train state holds them as :func:`state_params` lays them
out (the Q-Former's own tree, as before the Perceiver was added, so older
Q-Former runs resume).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from flax import nnx

from vlg.models import perceiver as perceiver_lib
from vlg.models import resamplers
from vlg.models import text_decoder
from vlg.objectives import perceiver as perceiver_objectives
from vlg.objectives import qformer as qformer_objectives

MODEL_NAMES = {'qformer': ('qformer',), 'perceiver': ('perceiver', 'decoder')}
LOSS_NAMES = {'qformer': ('itc', 'itm', 'itg'),
              'perceiver': perceiver_objectives.LOSSES}


def resampler_kind(config: ml_collections.ConfigDict) -> str:
  """``config.resampler_kind`` ('qformer' when absent), checked."""
  kind = str(config.get('resampler_kind', 'qformer'))
  if kind not in MODEL_NAMES:
    raise ValueError(f'resampler_kind={kind!r}; valid: {sorted(MODEL_NAMES)}')
  return kind


def model_configs(config: ml_collections.ConfigDict, *, vision_width: int,
                  vocab_size: int, max_text_len: int
                  ) -> dict[str, ml_collections.ConfigDict]:
  """The configs of the kind's modules, sized to the tower and tokenizer.

  Args:
    config: the stage-1 config (``resampler_kind`` and ``config.<name>``).
    vision_width: width of the frozen tower's tokens.
    vocab_size: the tokenizer's vocabulary; the text tables get one more
      row, the [DEC] token (id ``vocab_size``).
    max_text_len: the training captions' length; position tables get at
      least the size's rows (room for longer probe texts, e.g. RCM).

  Returns:
    ``{name: config}`` over ``MODEL_NAMES[kind]``.
  """
  kind = resampler_kind(config)
  for name in MODEL_NAMES[kind]:
    if name not in config or 'size' not in config[name]:
      raise KeyError(f'resampler_kind={kind!r} needs config.{name} with a '
                     "'size' (and optional overrides)")
  overrides = {n: dict(config[n].to_dict()) for n in MODEL_NAMES[kind]}
  sizes = {n: overrides[n].pop('size') for n in overrides}
  if kind == 'qformer':
    cfg = resamplers.resampler_config(
        'qformer', sizes['qformer'], vision_width=vision_width,
        **dict(overrides['qformer'], vocab_size=vocab_size + 1))
    cfg.max_positions = max(int(cfg.max_positions), int(max_text_len))
    return {'qformer': cfg}
  res = resamplers.resampler_config('perceiver', sizes['perceiver'],
                                    vision_width=vision_width,
                                    **overrides['perceiver'])
  dec = text_decoder.decoder_config(sizes['decoder'],
                                    latent_width=int(res.width),
                                    vocab_size=vocab_size + 1,
                                    **overrides['decoder'])
  dec.max_positions = max(int(dec.max_positions), int(max_text_len))
  return {'perceiver': res, 'decoder': dec}


def build_models(kind: str, configs: dict[str, ml_collections.ConfigDict],
                 seed: int) -> dict[str, nnx.Module]:
  """The kind's freshly initialised modules (create them under a mesh or
  with ``nnx.use_eager_sharding(False)``, or through :func:`jit_init` /
  ``nnx.eval_shape``)."""
  rngs = nnx.Rngs(seed)
  if kind == 'qformer':
    return {'qformer': resamplers.QFormer(configs['qformer'], rngs=rngs)}
  if kind == 'perceiver':
    return {'perceiver': perceiver_lib.PerceiverResampler(
                configs['perceiver'], rngs=rngs),
            'decoder': text_decoder.TextDecoder(configs['decoder'],
                                                rngs=rngs)}
  raise ValueError(f'resampler_kind={kind!r}; valid: {sorted(MODEL_NAMES)}')


def state_params(kind: str, by_name: dict[str, Any]) -> Any:
  """The train state's ``params`` from ``{name: params}``: the bare
  Q-Former tree for 'qformer' (the layout of earlier runs), else the dict."""
  return by_name['qformer'] if kind == 'qformer' else by_name


def params_by_name(kind: str, params: Any) -> dict[str, Any]:
  """The inverse of :func:`state_params`."""
  return {'qformer': params} if kind == 'qformer' else params


def jit_init(make: Callable[[], Any], *, abstract: bool = False) -> Any:
  """``make()`` (a module or a dict of modules) initialised in one jitted
  call: eager initialisation compiles one XLA program per parameter shape,
  which dominates start-up on CPU. Same values as an eager ``make()``;
  with ``abstract`` only shapes (``jax.eval_shape``), e.g. to restore into.
  Works inside and outside a mesh context (logical axis names are kept as
  metadata, not resolved)."""
  graphdefs = []

  def init():
    graphdef, state = nnx.split(make())
    graphdefs.append(graphdef)  # Static: the same on every trace.
    return state

  with nnx.use_eager_sharding(False):
    state = jax.eval_shape(init) if abstract else jax.jit(init)()
  return nnx.merge(graphdefs[-1], state)


def stage1_loss(kind: str, models: dict[str, nnx.Module],
                image_embeds: jax.Array, batch: dict[str, jax.Array], *,
                rng: jax.Array, bos_id: int, weights: dict[str, float],
                label_smoothing: float) -> tuple[jax.Array, dict[str, Any]]:
  """The kind's stage-1 objective on one batch (``rng``: ITM negatives)."""
  if kind == 'qformer':
    return qformer_objectives.stage1_loss(
        models['qformer'], image_embeds, batch, rng=rng, bos_id=bos_id,
        weights=weights, label_smoothing=label_smoothing)
  return perceiver_objectives.stage1_loss(
      models['perceiver'], models['decoder'], image_embeds, batch,
      bos_id=bos_id, weights=weights, label_smoothing=label_smoothing)


def probed_resampler(kind: str, models: dict[str, nnx.Module],
                     mode: str | None) -> tuple[nnx.Module, str | None]:
  """What a probe reads, as ``(resampler, mode)`` for
  ``taps.VisionResampler``: the Q-Former in ``mode``, or the Perceiver
  alone with mode None (it has no text path; its decoder is not probed)."""
  if kind == 'qformer':
    return models['qformer'], mode
  return models['perceiver'], None
