r"""Stage-1 training of a Q-Former on a frozen vlg image tower (spec-probing §6.3).

BLIP-2's first stage, on vlg's data: a :class:`vlg.models.resamplers.QFormer`
learns ITC (max over queries), ITM (hard negatives) and ITG from image-text
pairs, reading a *frozen* image tower at one layer (``vision_layer``, -2 =
BLIP-2's penultimate layer). The tower comes from a trained vlg run
(``--config.vision_workdir``: its ViT, tokenizer and input resolution), or,
without one, is a freshly initialised tiny ViT (for smoke tests only: a
random tower carries no semantics). Synthetic world, 2 CPU cores::

  python -m vlg.main --config=configs/albef.py:tiny,evals=False \
      --workdir=workdirs/albef_tiny
  python -m vlg.probing.stage1 --config=configs/qformer.py:tiny \
      --config.vision_workdir=workdirs/albef_tiny --workdir=workdirs/qformer

and then probe it (frozen and unfrozen)::

  python -m vlg.probing.run --config=configs/probe.py:tiny \
      --config.model_workdir=workdirs/albef_tiny \
      --config.resampler_workdir=workdirs/qformer \
      --config.taps='("tap=resampler_queries,reduce=flatten",)' \
      --workdir=workdirs/probe_qformer

The loop is the ALBEF loop's shape at a smaller scale: one jitted, donated
step (only the Q-Former's parameters are differentiated; the tower is an
argument under ``stop_gradient``), AdamW with warm-up and cosine decay,
orbax checkpoints of the Q-Former, the tower and the data iterator (a
re-run resumes exactly), ``metrics.jsonl`` and a progress line with steps/s
and ETA. The vocabulary is the tokenizer's plus one [DEC] row for ITG.
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
from vlg import restore
from vlg import sharding
from vlg import writers
from vlg.data import pipeline
from vlg.models import create_model
from vlg.models import resamplers
from vlg.objectives import qformer as qformer_objectives
from vlg.probing import taps


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
    return Tower(TowerLayer(model.vision, layer), run.tokenizer, input_cfg,
                 f'{os.path.abspath(run.workdir)}@{run.step}')
  input_cfg = config.input
  with nnx.use_eager_sharding(False):
    model = create_model(config.random_tower, nnx.Rngs(config.seed))
  tokenizer = pipeline.get_tokenizer(input_cfg, workdir)
  return Tower(TowerLayer(model.vision, layer), tokenizer, input_cfg,
               f'random init (seed {config.seed})')


def qformer_config(config, tower: Tower) -> ml_collections.ConfigDict:
  """The Q-Former's config: ``config.qformer`` sized to the tower's width
  and the tokenizer's vocabulary plus [DEC]."""
  width = int(tower.module.vision.pos_embed.shape[-1])
  overrides = dict(config.qformer.to_dict())
  size = overrides.pop('size')
  overrides['vocab_size'] = tower.tokenizer.vocab_size + 1
  cfg = resamplers.resampler_config('qformer', size, vision_width=width,
                                    **overrides)
  # Room for the training captions and for longer probe texts (RCM).
  cfg.max_positions = max(int(cfg.max_positions),
                          int(tower.input_cfg.max_text_len))
  return cfg


def make_step(config, qformer_graphdef, tower_graphdef, tx, bos_id: int):
  """``step(state, tower_params, batch) -> (state, metrics)``."""
  weights = {k: float(config.loss[k]) for k in ('itc', 'itm', 'itg')}
  smoothing = float(config.loss.label_smoothing)

  def step(state, tower_params, batch):
    rng = jax.random.fold_in(state['rng'], state['step'])
    tower = nnx.merge(tower_graphdef, tower_params)
    image_embeds = jax.lax.stop_gradient(tower(batch['image']))

    def loss_fn(params):
      model = nnx.merge(qformer_graphdef, params)
      return qformer_objectives.stage1_loss(
          model, image_embeds, batch, rng=rng, bos_id=bos_id,
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
  """Trains (or resumes) the Q-Former of ``config`` in ``workdir``.

  Returns:
    The last logged training metrics.
  """
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh)
  rules = [tuple(r) for r in config.sharding_rules]
  sharding.set_rules(rules)
  with jax.set_mesh(mesh):
    tower = load_tower(config, workdir)
    q_cfg = qformer_config(config, tower)
    with nnx.use_eager_sharding(False):
      qformer = resamplers.QFormer(q_cfg, rngs=nnx.Rngs(config.seed + 1))
    q_graphdef, q_state = nnx.split(qformer, nnx.Param)
    t_graphdef, t_state = nnx.split(tower.module, nnx.Param)
    rep = sharding.replicated(mesh)
    tower_params = jax.device_put(nnx.to_pure_dict(t_state), rep)
    tx, schedule = optim.make_optimizer(config.optim, config.total_steps)
    params = jax.device_put(nnx.to_pure_dict(q_state), rep)
    state = {'params': params, 'opt': tx.init(params),
             'step': jnp.zeros((), jnp.int32),
             'rng': jax.random.PRNGKey(config.seed)}
    state = jax.device_put(state, rep)
    step_fn = jax.jit(
        make_step(config, q_graphdef, t_graphdef, tx,
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
          latest, abstract_params={'qformer': checkpointing.abstract_like(
              state['params']), 'tower': checkpointing.abstract_like(
                  tower_params)},
          abstract_train_state=checkpointing.abstract_like(
              {k: v for k, v in state.items() if k != 'params'}),
          data_iter=data_iter)
      state = {'params': restored['qformer'], **rest}
      tower_params = restored['tower']
      logging.info('Resumed the Q-Former from step %d', latest)
    meta = {'config': json.loads(config.to_json_best_effort()),
            'qformer': q_cfg.to_dict(), 'tower': tower.source,
            'input': tower.input_cfg.to_dict()}
    with open(os.path.join(workdir, 'stage1.json'), 'w') as f:
      json.dump(meta, f, indent=1, default=str)
    tower.tokenizer.save(os.path.join(workdir, 'tokenizer',
                                      'tokenizer.model'))

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
                f'Non-finite Q-Former loss at or before step {step}; last '
                f'checkpoint: step {ckpt.latest_step()} in {ckpt.directory}')
          host['lr'] = float(schedule(step - 1))
          writer.write_scalars(step, {f'train/{k}': v
                                      for k, v in host.items()})
          rate = (step - start_step) / max(time.time() - start, 1e-9)
          eta = time.strftime('%H:%M:%S', time.gmtime((total - step) /
                                                      max(rate, 1e-9)))
          logging.info('qformer step %d/%d | loss %.4f | itc %.4f | itm %.4f'
                       ' | itg %.4f | %.2f steps/s | ETA %s', step, total,
                       host['loss'], host.get('itc_loss', np.nan),
                       host.get('itm_loss', np.nan),
                       host.get('itg_loss', np.nan), rate, eta)
          last = host
        if ckpt.should_save(step) or step == total:
          ckpt.save(step, params={'qformer': state['params'],
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
                   mode: str = 'multimodal') -> TrainedResampler:
  """The tower + Q-Former of a :func:`train_resampler` workdir."""
  meta_path = os.path.join(workdir, 'stage1.json')
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f'{meta_path} not found: {workdir} is not a '
                            'vlg.probing.stage1 workdir')
  with open(meta_path) as f:
    meta = json.load(f)
  config = ml_collections.ConfigDict(meta['config'])
  q_cfg = ml_collections.ConfigDict(meta['qformer'])
  from vlg.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  tokenizer = tokenizer_lib.Tokenizer.load(
      os.path.join(workdir, 'tokenizer', 'tokenizer.model'))
  with nnx.use_eager_sharding(False):
    qformer = resamplers.QFormer(q_cfg, rngs=nnx.Rngs(0))
    vision_cfg = (restore.load_config(config.vision_workdir).model
                  if config.vision_workdir else config.random_tower)
    tower = TowerLayer(create_model(vision_cfg, nnx.Rngs(0)).vision,
                       config.vision_layer)
  q_graphdef, q_state = nnx.split(qformer, nnx.Param)
  t_graphdef, t_state = nnx.split(tower, nnx.Param)
  ckpt = checkpointing.Checkpointer(workdir, ckpt_steps=1)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {ckpt.directory}')
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
        {'qformer': nnx.to_pure_dict(q_state),
         'tower': nnx.to_pure_dict(t_state)})
    params = ckpt.manager.restore(step, args=ocp_params(abstract))['params']
  finally:
    ckpt.close()
  nnx.replace_by_pure_dict(q_state, params['qformer'])
  nnx.replace_by_pure_dict(t_state, params['tower'])
  module = taps.VisionResampler(nnx.merge(t_graphdef, t_state),
                                nnx.merge(q_graphdef, q_state), mode=mode)
  resolution = int(meta['input']['resolution'])
  return TrainedResampler(module, tokenizer, resolution, step,
                          f'{os.path.abspath(workdir)}@{step}')


def ocp_params(abstract):
  """Orbax restore args for the ``params`` item only."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp.args.Composite(params=ocp.args.StandardRestore(abstract))


_CONFIG = None
_WORKDIR = None


def define_flags():
  """Registers this tool's flags (only when run as a program)."""
  global _CONFIG, _WORKDIR
  _CONFIG = config_flags.DEFINE_config_file(
      'config', None, 'A configs/qformer.py config, e.g. '
      'configs/qformer.py:tiny; override fields with --config.x=y.',
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
  app.run(main)
