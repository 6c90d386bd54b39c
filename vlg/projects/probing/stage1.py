r"""Stage-1 training of a resampler on a frozen tower (docs/probing.md §6.3).

BLIP-2's first stage, on vlg's data, for either resampler
(``config.resampler_kind``, :mod:`vlg.projects.probing.stage1_models`):

* 'qformer' (``configs/qformer.py``): a :class:`vlg.models.resamplers.QFormer`
  learns ITC (max over queries), ITM (hard negatives) and ITG;
* 'perceiver' (``configs/perceiver.py``): a Perceiver Resampler and the
  small text decoder that cross-attends to its latents learn ITC (max over
  latents) and ITG (Flamingo-style LM loss).

Either reads a *frozen* image tower at one layer (``vision_layer``, -2 =
BLIP-2's penultimate layer). The tower comes from a trained vlg run
(``--config.vision_workdir``: its ViT, tokenizer and input resolution), or,
without one, is a freshly initialised tiny ViT (for smoke tests only: a
random tower carries no semantics). Synthetic world, 2 CPU cores::

  python -m vlg.main --config=configs/albef.py:tiny,evals=False \
      --workdir=workdirs/albef_tiny
  python -m vlg.projects.probing.stage1 --config=configs/qformer.py:tiny \
      --config.vision_workdir=workdirs/albef_tiny --workdir=workdirs/qformer

(or ``--config=configs/perceiver.py:tiny``) and then probe it (frozen and
unfrozen; a Perceiver has no text path, so its latents are probed without
the task text)::

  python -m vlg.projects.probing.run --config=configs/probe.py:tiny \
      --config.model_workdir=workdirs/albef_tiny \
      --config.resampler_workdir=workdirs/qformer \
      --config.taps='("tap=resampler_queries,reduce=flatten",)' \
      --workdir=workdirs/probe_qformer

The loop is the ALBEF loop's shape at a smaller scale: one jitted, donated
step (only the resampler's side is differentiated; the tower is an
argument under ``stop_gradient``), AdamW with warm-up and cosine decay,
orbax checkpoints of the trained modules, the tower and the data iterator
(a re-run resumes exactly), ``metrics.jsonl`` and a progress line with
steps/s and ETA. The vocabulary is the tokenizer's plus one [DEC] row for
ITG. The tower's tokenizer is kept in ``WORKDIR/tokenizer`` as it is: vlg's
SentencePiece ``tokenizer.model``, or BERT's ``vocab.txt`` for a run
converted by ``vlg.tools.convert`` or started from BERT (docs/weights.md
§2, *Probing a converted run*).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app
from absl import flags
from flax import nnx
from ml_collections import config_flags

from vlg import checkpointing
from vlg import config_lib
from vlg import optim
from vlg import recipes
from vlg import restore
from vlg import sharding
from vlg import writers
from vlg.data import pipeline
from vlg.data import tokenizer as tokenizer_lib
from vlg.models import create_model
from vlg.models import vit
from vlg.projects.probing import stage1_models
from vlg.projects.probing import taps

TOKENIZER_DIR = 'tokenizer'  # In a stage-1 workdir: the tower's tokenizer.


def base_config(kind: str, variant: str) -> ml_collections.ConfigDict:
  """What every stage-1 config shares (``configs/qformer.py``,
  ``configs/perceiver.py``): the tower, input, optimiser (BLIP-2's stage-1
  settings for ``base``), mesh and schedule of ``variant`` (tiny | base).
  The caller adds its resampler's sections and ``loss``."""
  if variant not in ('tiny', 'base'):
    raise ValueError(f"variant={variant!r}; valid: 'tiny', 'base'")
  tiny = variant == 'tiny'
  albef = recipes.albef_config(f'{variant},evals=False')
  c = ml_collections.ConfigDict()
  c.resampler_kind = kind  # vlg/projects/probing/stage1_models.py
  c.seed = 0
  c.vision_workdir = ''  # A trained vlg run; '' = a random tower (tests).
  c.vision_step = -1  # Its checkpoint step; -1 = the latest.
  c.vision_layer = -2  # Which ViT state the resampler reads (-2: BLIP-2's).
  # The tower used when vision_workdir is empty, and the input pipeline
  # then (with a vision_workdir, the run's own input config is used).
  c.random_tower = albef.model
  c.input = albef.input
  c.batch_size = 32 if tiny else 1024
  c.total_steps = 300 if tiny else 250_000
  c.optim = dict(lr=1e-3 if tiny else 1e-4, warmup_init_lr=1e-6,
                 min_lr=1e-5, warmup_steps=30 if tiny else 2_000,
                 weight_decay=0.05, b1=0.9, b2=0.98 if not tiny else 0.999,
                 eps=1e-8, grad_clip_norm=0.0)
  c.mesh = (-1, 1, 1)
  c.num_devices = 0  # The first N devices of jax.devices(); 0 = all.
  c.sharding_rules = (('batch', ('data', 'fsdp')),)
  c.ckpt_steps = 100 if tiny else 5_000
  c.log_training_steps = 10 if tiny else 100
  return c


class TowerLayer(nnx.Module):
  """A vlg ViT read at one layer: the frozen features a resampler reads."""

  def __init__(self, vision: nnx.Module, layer: int):
    self.vision = vision
    self.layer = int(layer)

  def __call__(self, image: jax.Array, *, rngs: nnx.Rngs | None = None
               ) -> jax.Array:
    """[B, H, W, 3] pixels → [B, 1 + N, Dv] tokens of block ``layer``."""
    _, stack = self.vision(image, rngs=rngs, return_layers=True)
    if not -stack.shape[0] <= self.layer < stack.shape[0]:
      raise ValueError(f'vision_layer={self.layer}: the tower has '
                       f'{stack.shape[0]} states (0..{stack.shape[0] - 1})')
    return stack[self.layer]


@dataclasses.dataclass
class Tower:
  """The frozen image tower, its tokenizer and input settings."""
  module: TowerLayer
  tokenizer: Any
  input_cfg: ml_collections.ConfigDict
  source: str  # The vision workdir and step, or 'random init (seed s)'.


def load_tower(config: ml_collections.ConfigDict, workdir: str) -> Tower:
  """The tower of ``config.vision_workdir`` (or a random tiny ViT)."""
  layer = int(config.vision_layer)
  if config.vision_workdir:
    run = restore.load_run(config.vision_workdir,
                           step=None if config.vision_step < 0
                           else int(config.vision_step))
    model = nnx.merge(run.graphdef, run.params)
    run.close()
    input_cfg = ml_collections.ConfigDict(run.config.input.to_dict())
    check_renderable(input_cfg, f'vision_workdir={config.vision_workdir}')
    return Tower(TowerLayer(model.vision, layer), run.tokenizer, input_cfg,
                 f'{os.path.abspath(run.workdir)}@{run.step}')
  input_cfg = config.input
  vision = stage1_models.jit_init(lambda: random_vision(config))
  tokenizer = pipeline.get_tokenizer(input_cfg, workdir)
  return Tower(TowerLayer(vision, layer), tokenizer, input_cfg,
               f'random init (seed {config.seed})')


def check_renderable(input_cfg: ml_collections.ConfigDict, what: str
                     ) -> None:
  """Fails, naming ``what`` and the fix, when ``input_cfg`` reads the
  synthetic world below the resolution the world renders at.

  A converted checkpoint keeps its own resolution (32 px for the ALBEF
  test fixture), which the world cannot draw recognisably; converting with
  ``vlg.tools.convert --resolution=48`` resizes the tower's position
  embeddings as ALBEF does, so the tower reads the world's images on its
  own grid.
  """
  from vlg.synthetic import world  # pylint: disable=g-import-not-at-top
  default = world.WorldConfig().resolution
  low = {name: int(dict(cfg.get('world', {})).get('resolution', default))
         for name, cfg in input_cfg.data.items()
         if cfg.get('source') == 'synthetic'}
  low = {k: v for k, v in low.items() if v < world.MIN_RESOLUTION}
  if low:
    name, res = sorted(low.items())[0]
    raise ValueError(
        f'{what}: its input reads the synthetic world at {res} px '
        f'(input.data.{name}.world.resolution), below the '
        f'{world.MIN_RESOLUTION} px the world renders at; for a converted '
        'checkpoint, convert it again with python -m vlg.tools.convert ... '
        f'--resolution={world.MIN_RESOLUTION}, which resizes the position '
        'embeddings as ALBEF does')


def random_vision(config: ml_collections.ConfigDict) -> nnx.Module:
  """The random tower: the ViT of ``config.random_tower`` (an ALBEF-style
  model config), drawn from ``config.seed`` (the ALBEF model builds its ViT
  first, so the values are those of ``create_model(...).vision``)."""
  return vit.VisionTransformer(config.random_tower,
                               rngs=nnx.Rngs(config.seed))


def model_configs(config, tower: Tower
                  ) -> dict[str, ml_collections.ConfigDict]:
  """The configs of the trained modules (``stage1_models.model_configs``),
  sized to the tower's width and the tokenizer's vocabulary plus [DEC]."""
  return stage1_models.model_configs(
      config, vision_width=int(tower.module.vision.pos_embed.shape[-1]),
      vocab_size=tower.tokenizer.vocab_size,
      max_text_len=int(tower.input_cfg.max_text_len))


def make_step(config, graphdefs, tower_graphdef, tx, bos_id: int):
  """``step(state, tower_params, batch) -> (state, metrics)``; the state's
  ``params`` are those of the modules of ``graphdefs``, laid out by
  ``stage1_models.state_params``."""
  kind = stage1_models.resampler_kind(config)
  weights = {k: float(config.loss[k])
             for k in stage1_models.LOSS_NAMES[kind]}
  smoothing = float(config.loss.label_smoothing)

  def step(state, tower_params, batch):
    rng = jax.random.fold_in(state['rng'], state['step'])
    tower = nnx.merge(tower_graphdef, tower_params)
    image_embeds = jax.lax.stop_gradient(tower(batch['image']))

    def loss_fn(params):
      by_name = stage1_models.params_by_name(kind, params)
      models = {k: nnx.merge(g, by_name[k]) for k, g in graphdefs.items()}
      return stage1_models.stage1_loss(
          kind, models, image_embeds, batch, rng=rng, bos_id=bos_id,
          weights=weights, label_smoothing=smoothing)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state['params'])
    updates, opt = tx.update(grads, state['opt'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    grad_norm = optax.tree.norm(grads)
    metrics.update(grad_norm=grad_norm, finite=(
        jnp.isfinite(loss) & jnp.isfinite(grad_norm)).astype(jnp.float32))
    return {'params': params, 'opt': opt, 'step': state['step'] + 1,
            'rng': state['rng']}, metrics

  return step


def train_resampler(config: ml_collections.ConfigDict,
                    workdir: str) -> dict[str, float]:
  """Trains (or resumes) the resampler of ``config`` in ``workdir``.

  Returns:
    The last logged training metrics.
  """
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh, devices=sharding.mesh_devices(
      int(config.get('num_devices', 0))))
  rules = [tuple(r) for r in config.sharding_rules]
  with jax.set_mesh(mesh), sharding.rules_context(rules):
    kind = stage1_models.resampler_kind(config)
    tower = load_tower(config, workdir)
    cfgs = model_configs(config, tower)
    models = stage1_models.jit_init(
        lambda: stage1_models.build_models(kind, cfgs, config.seed + 1))
    split = {k: nnx.split(m, nnx.Param) for k, m in models.items()}
    graphdefs = {k: g for k, (g, _) in split.items()}
    t_graphdef, t_state = nnx.split(tower.module, nnx.Param)
    rep = sharding.replicated(mesh)
    tower_params = jax.device_put(nnx.to_pure_dict(t_state), rep)
    tx, schedule = optim.make_optimizer(config.optim, config.total_steps)
    params = jax.device_put(stage1_models.state_params(
        kind, {k: nnx.to_pure_dict(st) for k, (_, st) in split.items()}), rep)
    state = {'params': params, 'opt': tx.init(params),
             'step': jnp.zeros((), jnp.int32),
             'rng': jax.random.PRNGKey(config.seed)}
    state = jax.device_put(state, rep)
    step_fn = jax.jit(
        make_step(config, graphdefs, t_graphdef, tx,
                  bos_id=tower.tokenizer.vocab_size),
        out_shardings=(rep, rep), donate_argnums=0)

    data_iter = iter(pipeline.make_dataset(
        tower.input_cfg, tower.tokenizer, global_batch=config.batch_size,
        seed=config.seed))
    ckpt = checkpointing.Checkpointer(workdir, ckpt_steps=config.ckpt_steps,
                                      keep_latest=2)
    latest = ckpt.latest_step()
    if latest is not None:
      restored, rest, _ = ckpt.restore(
          latest, abstract_params=checkpointing.abstract_like(
              {**stage1_models.params_by_name(kind, state['params']),
               'tower': tower_params}),
          abstract_train_state=checkpointing.abstract_like(
              {k: v for k, v in state.items() if k != 'params'}),
          data_iter=data_iter)
      tower_params = restored.pop('tower')
      state = {'params': stage1_models.state_params(kind, restored), **rest}
      logging.info('Resumed the %s from step %d', kind, latest)
    meta = {'config': json.loads(config.to_json_best_effort()),
            'resampler_kind': kind, 'tower': tower.source,
            'tokenizer_kind': tower.tokenizer.kind,
            'tokenizer_fingerprint': tower.tokenizer.fingerprint,
            'input': tower.input_cfg.to_dict(),
            **{k: c.to_dict() for k, c in cfgs.items()}}
    with open(os.path.join(workdir, 'stage1.json'), 'w') as f:
      json.dump(meta, f, indent=1, default=str)
    # The tower's own kind: tokenizer.model (SentencePiece) or vocab.txt
    # (BERT's WordPiece, converted and BERT-initialised runs).
    tower.tokenizer.save(os.path.join(workdir, TOKENIZER_DIR))

    writer = writers.create_writer(workdir, jax.process_index())
    step, total = int(jax.device_get(state['step'])), int(config.total_steps)
    start, start_step, last = time.time(), step, {}
    try:
      while step < total:
        batch = pipeline.to_global(next(data_iter), mesh, rules)
        state, metrics = step_fn(state, tower_params, batch)
        step += 1
        if config_lib.itstime(step, config.log_training_steps, total,
                              first=True):
          host = {k: float(v) for k, v in jax.device_get(metrics).items()}
          if not host.pop('finite'):
            raise FloatingPointError(
                f'Non-finite {kind} loss at or before step {step}; last '
                f'checkpoint: step {ckpt.latest_step()} in {ckpt.directory}')
          host['lr'] = float(schedule(step - 1))
          writer.write_scalars(step, {f'train/{k}': v
                                      for k, v in host.items()})
          rate = (step - start_step) / max(time.time() - start, 1e-9)
          eta = time.strftime('%H:%M:%S', time.gmtime((total - step) /
                                                      max(rate, 1e-9)))
          losses = ' | '.join(
              f'{k} {host.get(k + "_loss", np.nan):.4f}'
              for k in stage1_models.LOSS_NAMES[kind])
          logging.info('%s step %d/%d | loss %.4f | %s | %.2f steps/s | '
                       'ETA %s', kind, step, total, host['loss'], losses,
                       rate, eta)
          last = host
        if ckpt.should_save(step) or step == total:
          ckpt.save(step, params={
              **stage1_models.params_by_name(kind, state['params']),
              'tower': tower_params},
                    train_state={k: v for k, v in state.items()
                                 if k != 'params'},
                    data_iter=data_iter, config=meta, force=step == total)
    finally:
      ckpt.close()
      writer.flush()
  return last


@dataclasses.dataclass
class TrainedResampler:
  """A stage-1 checkpoint, ready to probe (``taps.VisionResampler``)."""
  module: taps.VisionResampler
  tokenizer: Any
  resolution: int
  step: int
  cache_id: str


def load_resampler(workdir: str, step: int | None = None,
                   mode: str | None = 'multimodal') -> TrainedResampler:
  """The tower + resampler of a :func:`train_resampler` workdir, to probe.

  Args:
    workdir: a stage-1 workdir (``stage1.json``, ``checkpoints/``,
      ``tokenizer/``).
    step: the checkpoint step; None: the latest.
    mode: the Q-Former pass the probe reads (``taps.VisionResampler``);
      ignored for a Perceiver, which has no text path (its latents are read
      without the task text; its text decoder is not part of the probe).

  Returns:
    A :class:`TrainedResampler` whose module gives the resampler taps.
  """
  meta_path = os.path.join(workdir, 'stage1.json')
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f'{meta_path} not found: {workdir} is not a '
                            'vlg.projects.probing.stage1 workdir')
  with open(meta_path) as f:
    meta = json.load(f)
  config = ml_collections.ConfigDict(meta['config'])
  kind = meta.get('resampler_kind', 'qformer')  # Older runs: Q-Former only.
  if kind not in stage1_models.MODEL_NAMES:
    raise ValueError(f'{meta_path}: unknown resampler_kind {kind!r}')
  missing = [n for n in stage1_models.MODEL_NAMES[kind] if n not in meta]
  if missing:
    raise KeyError(f'{meta_path}: no config for the {kind} modules '
                   f'{missing}')
  cfgs = {n: ml_collections.ConfigDict(meta[n])
          for n in stage1_models.MODEL_NAMES[kind]}
  tokenizer = load_tokenizer(workdir, meta)
  if config.vision_workdir:
    vision_cfg = restore.load_config(config.vision_workdir).model
    make_vision = lambda: create_model(vision_cfg, nnx.Rngs(0)).vision
  else:
    make_vision = lambda: random_vision(config)
  # Shapes only: the values are restored.
  models = stage1_models.jit_init(
      lambda: stage1_models.build_models(kind, cfgs, 0), abstract=True)
  tower = stage1_models.jit_init(
      lambda: TowerLayer(make_vision(), config.vision_layer), abstract=True)
  states = {k: nnx.split(m, nnx.Param) for k, m in models.items()}
  states['tower'] = nnx.split(tower, nnx.Param)
  ckpt = checkpointing.Checkpointer(workdir, ckpt_steps=1)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {ckpt.directory}')
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
        {k: nnx.to_pure_dict(st) for k, (_, st) in states.items()})
    params, _ = checkpointing.restore_params_item(
        ckpt.manager, step, abstract, with_config=False)
  finally:
    ckpt.close()
  merged = {}
  for k, (graphdef, state) in states.items():
    nnx.replace_by_pure_dict(state, params[k])
    merged[k] = nnx.merge(graphdef, state)
  resampler, mode = stage1_models.probed_resampler(kind, merged, mode)
  module = taps.VisionResampler(merged['tower'], resampler, mode=mode)
  resolution = int(meta['input']['resolution'])
  return TrainedResampler(module, tokenizer, resolution, step,
                          f'{os.path.abspath(workdir)}@{step}')


def load_tokenizer(workdir: str, meta: dict[str, Any]) -> Any:
  """The tower's tokenizer saved in ``workdir/tokenizer``, of whichever
  kind the folder holds (``vlg.data.tokenizer.load``), checked against the
  fingerprint in ``stage1.json`` (``meta``) when it has one."""
  folder = os.path.join(workdir, TOKENIZER_DIR)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f'{folder} not found: the stage-1 run\'s '
                            'tokenizer is missing')
  tokenizer = tokenizer_lib.load(folder)
  saved = meta.get('tokenizer_fingerprint')
  if saved and saved != tokenizer.fingerprint:
    raise ValueError(
        f'{folder} holds tokenizer {tokenizer.fingerprint} '
        f'({tokenizer.kind}), but {workdir} was trained with {saved} '
        f'({meta.get("tokenizer_kind", "?")})')
  return tokenizer


_CONFIG = None
_WORKDIR = None


def define_flags():
  """Registers this tool's flags (only when run as a program)."""
  global _CONFIG, _WORKDIR
  _CONFIG = config_flags.DEFINE_config_file(
      'config', None, 'A configs/qformer.py or configs/perceiver.py config, '
      'e.g. configs/perceiver.py:tiny; override fields with --config.x=y.',
      lock_config=True)
  _WORKDIR = flags.DEFINE_string(
      'workdir', None, 'Directory for checkpoints and metrics; re-running '
      'with the same workdir resumes.', required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  train_resampler(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=config_lib.parse_flags)
