"""Orbax checkpoints of a training run, with exact resume.

Layout: ``WORKDIR/checkpoints/<step>/{params,train_state,data_iter,config}``.

- ``params``: ``{'params': ..., 'ema': ...}`` — the online and momentum
  weights, so fine-tuning and colabs restore only this item;
- ``train_state``: optimizer state, queues, step and RNG;
- ``data_iter``: the grain iterator state (per process);
- ``config``: the run's config plus metadata (step, workdir, tokenizer
  fingerprint, image normalisation), printed on load.

Policies: save every ``ckpt_steps`` (and on demand, e.g. at the end or on a
preemption notice); keep the latest ``keep_latest`` plus every
``keep_every_steps`` step — the kept ones are what learning curves are
computed from. Saves are atomic (orbax writes to a temporary directory and
renames it), so a crash mid-save leaves the previous checkpoint intact.
Restores always target the given abstract shardings, and a restore that
finds no checkpoint where one was asked for is an error.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

ITEMS = ('params', 'train_state', 'data_iter', 'config')


class Checkpointer:
  """A thin wrapper over ``ocp.CheckpointManager`` with vlg's items."""

  def __init__(self, workdir: str, *, ckpt_steps: int,
               keep_every_steps: int | None = None, keep_latest: int = 2,
               asynchronous: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    keep = [policies.LatestN(keep_latest)]
    if keep_every_steps:
      keep.append(policies.EveryNSteps(keep_every_steps))
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=policies.AnySavePolicy([
            policies.FixedIntervalPolicy(ckpt_steps),
            policies.PreemptionCheckpointingPolicy(),
        ]),
        preservation_policy=policies.AnyPreservationPolicy(keep),
        enable_async_checkpointing=asynchronous,
        cleanup_tmp_directories=True,
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=ITEMS)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def should_save(self, step: int) -> bool:
    return self.manager.should_save(step)

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def save(self, step: int, *, params: Any, train_state: Any,
           data_iter: grain.DatasetIterator, config: dict[str, Any],
           force: bool = False) -> bool:
    """Saves if the policy says so (or ``force``); returns whether it did."""
    return self.manager.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            train_state=ocp.args.StandardSave(train_state),
            data_iter=grain.checkpoint.CheckpointSave(data_iter),
            config=ocp.args.JsonSave(config),
        ),
        force=force)

  def restore(self, step: int, *, abstract_params: Any,
              abstract_train_state: Any,
              data_iter: grain.DatasetIterator | None) -> tuple[Any, Any,
                                                                dict]:
    """Restores onto the shardings of the abstract trees (and the iterator).

    Args:
      step: the step to restore; must exist.
      abstract_params / abstract_train_state: trees of
        ``jax.ShapeDtypeStruct`` carrying the *target* shardings.
      data_iter: restored in place when given.

    Returns:
      (params, train_state, config_and_metadata)
    """
    if step not in self.manager.all_steps():
      raise FileNotFoundError(
          f'No checkpoint for step {step} in {self.directory}; have '
          f'{self.all_steps()}')
    items = dict(
        params=ocp.args.StandardRestore(abstract_params),
        train_state=ocp.args.StandardRestore(abstract_train_state),
        config=ocp.args.JsonRestore(),
    )
    if data_iter is not None:
      items['data_iter'] = grain.checkpoint.CheckpointRestore(data_iter)
    out = self.manager.restore(step, args=ocp.args.Composite(**items))
    meta = out['config'] or {}
    logging.info('Restored checkpoint %s/%d: %s', self.directory, step,
                 meta.get('meta', {}))
    return out['params'], out['train_state'], meta

  def restore_config(self, step: int | None = None) -> dict[str, Any]:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {self.directory}')
    return self.manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree: Any) -> Any:
  """``ShapeDtypeStruct`` tree with the shardings of a concrete tree."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      tree)
