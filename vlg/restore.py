"""Load a trained run's checkpoint for evaluation, on whatever devices exist.

  run = restore.load_run('workdirs/albef_tiny')          # latest kept step
  run = restore.load_run(workdir, step=300, mesh=mesh)   # a given step/mesh
  run = run.at_step(200)                                 # another kept step

A :class:`Run` holds what evaluation needs and nothing of training: the
run's config (from the checkpoint itself), the model graphdef, the online
params sharded on the target mesh (the EMA copy is read and dropped), the
tokenizer (checked against the fingerprint stored with the checkpoint), the
logical-axis rules, the step and the predict functions handed to evaluators.

A run trained on one mesh restores onto another: the target shardings come
from the config's logical rules applied to a mesh over the devices that
exist here (the run's mesh sizes when they fit, otherwise every device on
the ``data`` axis), and orbax re-shards while reading. The checkpoints are
opened read-only, so evaluating while the run is still training never
removes the trainer's in-progress saves.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import ml_collections

from vlg import checkpointing
from vlg import predict
from vlg import sharding
from vlg import train_state
from vlg.data import tokenizer as tokenizer_lib
from vlg.evaluators import batching
from vlg.evaluators import common as eval_common

PyTree = Any


@dataclasses.dataclass
class Run:
  """One checkpoint of a training run, ready for evaluation."""
  workdir: str
  config: ml_collections.ConfigDict
  graphdef: Any
  params: PyTree
  tokenizer: tokenizer_lib.Tokenizer
  mesh: jax.sharding.Mesh
  rules: list[tuple[str, Any]]
  step: int
  predict_fns: dict[str, predict.PredictFn]
  meta: dict[str, Any]
  kept_steps: list[int]
  abstract_params: PyTree = dataclasses.field(repr=False)
  manager: Any = dataclasses.field(repr=False)  # Read-only orbax manager.

  def at_step(self, step: int) -> Run:
    """The same run at another kept step (reuses model, mesh, tokenizer)."""
    params, meta = _restore_params(self.manager, self.workdir, step,
                                   self.abstract_params)
    _check_tokenizer(self.tokenizer, meta, self.workdir, step)
    return dataclasses.replace(self, params=params, step=step, meta=meta)

  def close(self):
    """Closes the checkpoint reader (the params stay usable)."""
    self.manager.close()


checkpoint_dir = checkpointing.checkpoint_dir


def open_checkpoints(workdir: str):
  """A read-only orbax manager over ``WORKDIR/checkpoints``.

  Raises:
    FileNotFoundError: the workdir has no finished checkpoint.
  """
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f'{workdir} has no checkpoints/ folder; is it a training workdir?')
  manager = checkpointing.open_read_only(directory)
  if not manager.all_steps():
    manager.close()
    raise FileNotFoundError(f'No finished checkpoint in {directory}')
  return manager


def kept_steps(workdir: str) -> list[int]:
  """The steps of the checkpoints kept in ``workdir``, ascending."""
  manager = open_checkpoints(workdir)
  try:
    return sorted(manager.all_steps())
  finally:
    manager.close()


def default_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """The run's mesh sizes if they fit the devices here, else all on data."""
  try:
    return sharding.make_mesh(config.mesh)
  except ValueError as e:
    logging.info('The run\'s mesh %s does not fit %d devices here (%s); '
                 'using every device on the data axis.', list(config.mesh),
                 jax.device_count(), e)
    return sharding.make_mesh((-1, 1, 1))


def load_run(workdir: str, step: int | None = None,
             mesh: jax.sharding.Mesh | None = None) -> Run:
  """Restores ``workdir``'s checkpoint at ``step`` (default: latest kept).

  Args:
    workdir: a training workdir (with ``checkpoints/`` and ``tokenizer/``).
    step: a kept step; None for the latest.
    mesh: the target mesh; None builds one over ``jax.devices()``
      (:func:`default_mesh`).

  Raises:
    FileNotFoundError: no checkpoint in ``workdir``, ``step`` is not kept
      (the message lists the kept steps), or the tokenizer is missing.
    ValueError: the tokenizer found differs from the one trained with.
  """
  manager = open_checkpoints(workdir)
  try:
    return _load(manager, workdir, step, mesh)
  except BaseException:
    manager.close()
    raise


def _load(manager, workdir, step, mesh) -> Run:
  steps = sorted(manager.all_steps())
  step = steps[-1] if step is None else int(step)
  config = _saved_config(manager, workdir, step)
  mesh = default_mesh(config) if mesh is None else mesh
  rules = [tuple(r) for r in config.sharding_rules]
  graphdef, abstract, specs = train_state.abstract_model(config.model, rules)
  abstract_params = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract, sharding.named(mesh, specs))
  params, meta = _restore_params(manager, workdir, step, abstract_params)
  tokenizer = load_tokenizer(workdir, config)
  _check_tokenizer(tokenizer, meta, workdir, step)
  logging.info('Loaded %s step %d onto mesh %s', workdir, step,
               dict(mesh.shape))
  return Run(workdir=os.path.abspath(workdir), config=config,
             graphdef=graphdef, params=params, tokenizer=tokenizer, mesh=mesh,
             rules=rules, step=step,
             predict_fns=predict.make_predict_fns(
                 graphdef,
                 box_head=bool(config.model.get('box_head', False))),
             meta=meta,
             kept_steps=steps, abstract_params=abstract_params,
             manager=manager)


def load_config(workdir: str, step: int | None = None
                ) -> ml_collections.ConfigDict:
  """The config stored with ``workdir``'s checkpoint ``step`` (or latest)."""
  manager = open_checkpoints(workdir)
  try:
    return _saved_config(manager, workdir, step)
  finally:
    manager.close()


def load_tokenizer(workdir: str, config: ml_collections.ConfigDict
                   ) -> tokenizer_lib.Tokenizer:
  """The run's tokenizer: ``input.tokenizer.path`` or the workdir's copy."""
  path = config.input.tokenizer.get('path') or os.path.join(
      workdir, 'tokenizer')
  if not os.path.exists(path):
    raise FileNotFoundError(f'Tokenizer of {workdir} not found at {path}')
  return tokenizer_lib.load(path)


def eval_defaults(run: Run) -> dict[str, Any]:
  """Evaluator defaults as in training, the batch fitted to this mesh.

  The eval batch must split evenly over the data shards and processes of
  the mesh the run was restored onto, which may differ from the training
  mesh; it is rounded up to the next multiple (scores do not depend on it).
  """
  defaults = eval_common.run_defaults(run.config)
  multiple = batching.batch_multiple(run.mesh)
  defaults['batch_size'] = -(-defaults['batch_size'] // multiple) * multiple
  return defaults


def build_evaluators(run: Run, evals: ml_collections.ConfigDict | dict
                     ) -> dict[str, Any]:
  """``{name: (evaluator, log_steps)}`` for ``evals`` on ``run``'s mesh."""
  return eval_common.from_config(
      ml_collections.ConfigDict(dict(evals)), predict_fns=run.predict_fns,
      tokenizer=run.tokenizer, mesh=run.mesh, rules=run.rules,
      defaults=eval_defaults(run))


def _not_kept(workdir, step, steps) -> FileNotFoundError:
  return FileNotFoundError(
      f'Step {step} is not a kept checkpoint of {checkpoint_dir(workdir)}; '
      f'kept steps: {sorted(steps)}')


def _saved_config(manager, workdir, step) -> ml_collections.ConfigDict:
  steps = manager.all_steps()
  step = max(steps) if step is None else step
  if step not in steps:
    raise _not_kept(workdir, step, steps)
  saved = checkpointing.restore_config_item(manager, step)
  if not saved or 'config' not in saved:
    raise ValueError(f'Checkpoint {checkpoint_dir(workdir)}/{step} carries '
                     'no config item')
  return ml_collections.ConfigDict(saved['config'])


def _restore_params(manager, workdir, step, abstract_params):
  if step not in manager.all_steps():
    raise _not_kept(workdir, step, manager.all_steps())
  # The item holds params and EMA together; orbax cannot skip a subtree of
  # a standard item, so the EMA is read onto the same shardings and dropped.
  params, config = checkpointing.restore_params_item(
      manager, step, {'params': abstract_params, 'ema': abstract_params})
  meta = (config or {}).get('meta', {})
  logging.info('Restored %s/%d: %s', checkpoint_dir(workdir), step, meta)
  return params['params'], meta


def _check_tokenizer(tokenizer, meta, workdir, step):
  saved = meta.get('tokenizer_fingerprint')
  if saved and saved != tokenizer.fingerprint:
    raise ValueError(
        f'{workdir} step {step} was trained with tokenizer {saved}, but the '
        f'tokenizer found is {tokenizer.fingerprint}')
