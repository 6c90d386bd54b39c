"""Orbax checkpoints of a training run, with exact resume.

Layout: ``WORKDIR/checkpoints/<step>/{params,train_state,data_iter,config}``.

- ``params``: ``{'params': ..., 'ema': ...}`` — the online and momentum
  weights, so fine-tuning and colabs restore only this item;
- ``train_state``: optimizer state, queues, step and RNG;
- ``data_iter``: the grain iterator state (per process);
- ``config``: the run's config plus metadata (step, workdir, tokenizer
  fingerprint, image normalisation), printed on load.

Policies: save every ``ckpt_steps`` and every ``keep_every_steps`` (and on
demand, e.g. at the end or on a preemption notice); keep the latest
``keep_latest`` plus every ``keep_every_steps`` step — the kept ones are
what learning curves are computed from. Saves are atomic (orbax writes to a temporary directory and
renames it), so a crash mid-save leaves the previous checkpoint intact; the
next run's manager removes the unfinished temporary directory
(``cleanup_tmp_directories``). A save that fails (a full disk, a lost
mount) is :class:`CheckpointSaveError`, naming the step, the directory and
the last complete checkpoint, whenever orbax's background write reports it
(at the next save, ``wait`` or ``close``). Restores always target the given
abstract shardings, and a restore that finds no checkpoint where one was
asked for is an error.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

ITEMS = ('params', 'train_state', 'data_iter', 'config')


class CheckpointSaveError(RuntimeError):
  """Writing a checkpoint failed; the message names the step, the directory
  and the last complete checkpoint, which a rerun resumes from."""


def checkpoint_dir(workdir: str) -> str:
  """``WORKDIR/checkpoints`` (absolute): where a run's checkpoints live."""
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


class Checkpointer:
  """A thin wrapper over ``ocp.CheckpointManager`` with vlg's items."""

  def __init__(self, workdir: str, *, ckpt_steps: int,
               keep_every_steps: int | None = None, keep_latest: int = 2,
               asynchronous: bool = True):
    self.directory = checkpoint_dir(workdir)
    keep = [policies.LatestN(keep_latest)]
    saves = [policies.FixedIntervalPolicy(ckpt_steps),
             policies.PreemptionCheckpointingPolicy()]
    if keep_every_steps:
      keep.append(policies.EveryNSteps(keep_every_steps))
      # A step to keep is saved even where ckpt_steps does not divide it
      # (the tiny run keeps every evaluation's step, 365 apart).
      saves.append(policies.FixedIntervalPolicy(keep_every_steps))
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=policies.AnySavePolicy(saves),
        preservation_policy=policies.AnyPreservationPolicy(keep),
        enable_async_checkpointing=asynchronous,
        cleanup_tmp_directories=True,
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=ITEMS)
    # The step whose (asynchronous) save was started and not yet confirmed:
    # an error orbax reports later belongs to it.
    self._pending: int | None = None
    self._failure: CheckpointSaveError | None = None

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
    """Saves if the policy says so (or ``force``); returns whether it did.

    Raises:
      CheckpointSaveError: this save, or the previous one still being
        written, failed.
    """
    if not (force or self.manager.should_save(step)):
      return False
    # orbax waits for the previous save before starting one; waiting here
    # first tells a failure of that save from one of this save.
    self.wait()
    try:
      saved = self.manager.save(
          step,
          args=ocp.args.Composite(
              params=ocp.args.StandardSave(params),
              train_state=ocp.args.StandardSave(train_state),
              data_iter=grain.checkpoint.CheckpointSave(data_iter),
              config=ocp.args.JsonSave(config),
          ),
          force=force)
    except Exception as e:  # pylint: disable=broad-except
      raise self._failed(step, e) from e
    if saved:
      self._pending = step
    return saved

  def complete_steps(self) -> list[int]:
    """The steps whose checkpoints are complete on disk, as a rerun finds
    them: a save still in flight or cut short is a temporary directory
    (``<step>.orbax-checkpoint-tmp*``), not a ``<step>`` one."""
    if not os.path.isdir(self.directory):
      return []
    return sorted(int(d) for d in os.listdir(self.directory) if d.isdigit())

  def _failed(self, step: int | None,
              e: BaseException) -> CheckpointSaveError:
    """The error naming the failed save of ``step`` (kept: orbax reports a
    failure again on every later wait, and only the first is news)."""
    if self._failure is not None:
      return self._failure
    complete = [s for s in self.complete_steps() if s != step]
    full = isinstance(e, OSError) and e.errno == errno.ENOSPC
    what = 'a checkpoint' if step is None else f'the checkpoint of step {step}'
    self._failure = CheckpointSaveError(
        f'Saving {what} to {self.directory} failed: {type(e).__name__}: '
        f'{e}. '
        + ('The disk is full; free space there, then ' if full else
           'Fix the cause, then ')
        + ('run the same command again: it resumes from the last complete '
           f'checkpoint, step {complete[-1]}, and removes the unfinished '
           'save.' if complete else
           'run the same command again: no checkpoint is complete, so it '
           'starts from scratch.'))
    return self._failure

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
    """The config and metadata item of ``step`` (default: the latest)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {self.directory}')
    return restore_config_item(self.manager, step)

  def wait(self):
    """Blocks until the save in flight is written.

    Raises:
      CheckpointSaveError: it failed.
    """
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      step, self._pending = self._pending, None
      raise self._failed(step, e) from e
    self._pending = None

  def close(self):
    """Waits for the save in flight, then closes the manager.

    Raises:
      CheckpointSaveError: that save failed (not raised again when a failed
        save was already reported, e.g. to a caller now unwinding from it).
    """
    reported = self._failure is not None
    try:
      self.wait()
    except CheckpointSaveError:
      self._close_after_failure()
      if reported:
        return
      raise
    if reported:
      self._close_after_failure()
    else:
      self.manager.close()

  def _close_after_failure(self):
    """Closes the manager after a failed save, and waits for orbax's
    threads still writing its other items: left running, they fail at
    interpreter exit and print tracebacks after the error that names the
    failure."""
    try:
      self.manager.close()
    except Exception:  # pylint: disable=broad-except
      pass  # The same failure again; the error raised names it.
    _join_background_writes()


def _join_background_writes(timeout_s: float = 60.0) -> None:
  """Waits, for at most ``timeout_s``, for orbax's threads to end."""
  deadline = time.monotonic() + timeout_s
  for thread in threading.enumerate():
    if (thread is not threading.current_thread() and
        type(thread).__module__.startswith('orbax.')):
      thread.join(max(deadline - time.monotonic(), 0))


def open_read_only(directory: str) -> ocp.CheckpointManager:
  """A read-only manager over ``directory`` (evaluation, probing): it
  never writes, deletes or cleans up an unfinished save."""
  return ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True),
      item_names=ITEMS)


def restore_config_item(manager: ocp.CheckpointManager,
                        step: int) -> dict[str, Any] | None:
  """The ``config`` item (config and metadata) of ``step`` alone."""
  return manager.restore(
      step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']


def restore_params_item(manager: ocp.CheckpointManager, step: int,
                        abstract: Any, with_config: bool = True
                        ) -> tuple[Any, dict[str, Any] | None]:
  """The ``params`` item of ``step`` onto the shardings of ``abstract``
  (a tree of ``jax.ShapeDtypeStruct``), and its ``config`` item (None
  when ``with_config`` is False)."""
  items = dict(params=ocp.args.StandardRestore(abstract))
  if with_config:
    items['config'] = ocp.args.JsonRestore()
  out = manager.restore(step, args=ocp.args.Composite(**items))
  return out['params'], (out['config'] if with_config else None)


def abstract_like(tree: Any) -> Any:
  """``ShapeDtypeStruct`` tree with the shardings of a concrete tree."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      tree)
