r"""Evaluates every kept checkpoint of a run, apart from training; resumable.

  python -m vlg.tools.eval --workdir=workdirs/albef_tiny \
      [--evals=valse,vsr_random_dev] [--steps=300,600] \
      [--evals_config=my_evals.py[:arg]] [--evals_config.valse.root=...] \
      [--config.evals.valse.batch_size=64] [--force]

Runs the run's own ``config.evals`` (a subset with ``--evals``, or the evals
of another config file with ``--evals_config``: a ``get_config`` file whose
ConfigDict is the evals dict itself or has an ``evals`` field) on each kept
checkpoint (or ``--steps``) and appends the results to ``WORKDIR/
metrics.jsonl`` through the training writer, as ``<eval name>/<metric>`` at
the checkpoint's step, exactly as training logs them. (step, eval) pairs
already in ``metrics.jsonl`` are skipped, so an interrupted evaluation
resumes where it stopped and a second run evaluates nothing new (``--force``
re-evaluates; the later record wins in ``writers.metric_curves``).
``--config.<field>=<value>`` overrides a field of the run's stored config
(e.g. a benchmark path that moved); an unknown field is an error.
Checkpoints are read onto a mesh over the devices available here, whatever
mesh the run was trained on (``vlg.restore``).
Compiled programs are kept in JAX's persistent compilation cache
(``vlg/compilation_cache.py``), so a second evaluation, or one after
training, loads the programs training compiled.

On a CPU the command splits the processor into ``--cpu_devices`` host
devices (default 2) and gives each the run's evaluation batch, so two
batches run side by side instead of one program's operations sharing the
cores: on a 2-core CPU a warm round of the tiny run's synthetic sets ran
1.27x faster (median of nine alternating pairs, docs/results.md). The
scores do not depend on the devices or the batch. ``--cpu_devices=1``
keeps one device; an ``XLA_FLAGS`` that already sets
``--xla_force_host_platform_device_count`` is kept, and so is an explicit
``--config.eval_batch_size``.
"""

from __future__ import annotations

import ast
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
from absl import app
from absl import flags
from ml_collections import config_flags

from vlg import compilation_cache
from vlg import restore
from vlg import writers
from vlg.evaluators import common as eval_common

_WORKDIR = None
_EVALS = None
_STEPS = None
_EVALS_CONFIG = None
_FORCE = None
_CPU_DEVICES = None

HOST_DEVICES_FLAG = '--xla_force_host_platform_device_count'


def define_flags() -> None:
  """Defines the flags; called only when run as a program, so that
  tests can import several tools into one process."""
  global _WORKDIR, _EVALS, _STEPS, _EVALS_CONFIG, _FORCE, _CPU_DEVICES
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir to '
                                 'evaluate (checkpoints/ and metrics.jsonl).')
  _EVALS = flags.DEFINE_list('evals', [], 'Names of the evals to run '
                             '(default: all of them).')
  _STEPS = flags.DEFINE_list('steps', [], 'Checkpoint steps to evaluate '
                             '(default: every kept checkpoint).')
  _EVALS_CONFIG = config_flags.DEFINE_config_file(
      'evals_config', None, 'A config file giving the evals to run instead of '
      'the run\'s config.evals (its ConfigDict, or its "evals" field).',
      lock_config=False)
  _FORCE = flags.DEFINE_bool('force', False, 'Re-evaluate (step, eval) pairs '
                             'already in metrics.jsonl.')
  _CPU_DEVICES = flags.DEFINE_integer(
      'cpu_devices', 2, 'Where JAX runs on the CPU: host devices to split it '
      'into, each evaluating a batch of the run\'s eval batch size (1: one '
      'device). Ignored on accelerators and where XLA_FLAGS sets '
      f'{HOST_DEVICES_FLAG}.', lower_bound=1)
  flags.mark_flags_as_required(['workdir'])

CONFIG_PREFIX = '--config.'


# Optional fields that training reads with ``config.get``.
OPTIONAL_FIELDS = ('eval_batch_size', 'eval_max_text_len')


def override_config(config: ml_collections.ConfigDict,
                    overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """Applies ``field.path=value`` overrides to a run's stored config.

  A value is coerced to the type of the field it replaces (lists and
  tuples are read as Python literals). New fields are accepted only where
  they are open: an evaluator's keyword arguments (``evals.<name>.<kwarg>``)
  and :data:`OPTIONAL_FIELDS`; they are read as Python literals, else kept
  as strings.

  Raises:
    ValueError: no ``=``, an unknown field (named with the fields valid
      there), or a value of the wrong type.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  for item in overrides:
    path, sep, text = item.partition('=')
    if not sep:
      raise ValueError(f'--config.{item}: expected --config.field=value')
    keys = path.split('.')
    node = config
    for i, key in enumerate(keys[:-1]):
      if not isinstance(node.get(key), ml_collections.ConfigDict):
        raise ValueError(f'--config.{path}: the run config has no section '
                         f'{".".join(keys[:i + 1])!r}; valid there: '
                         f'{sorted(node.keys())}')
      node = node[key]
    last = keys[-1]
    is_open = (len(keys) == 3 and keys[0] == 'evals') or (
        path in OPTIONAL_FIELDS)
    if last in node:
      node[last] = _coerce(text, node[last], path)
    elif is_open:
      node[last] = _coerce(text, None, path)
    else:
      raise ValueError(f'--config.{path}: the run config has no field '
                       f'{path!r}; valid there: {sorted(node.keys())}')
  return config


def _coerce(text: str, old: Any, path: str) -> Any:
  try:
    if isinstance(old, bool):
      if text.lower() not in ('true', 'false', '1', '0'):
        raise ValueError(text)
      return text.lower() in ('true', '1')
    if isinstance(old, (int, float)):
      return type(old)(text)
    if isinstance(old, str):
      return text
    return ast.literal_eval(text)
  except (ValueError, SyntaxError) as e:
    if old is None:
      return text
    raise ValueError(f'--config.{path}={text!r}: expected a value like '
                     f'{old!r}') from e


def select_evals(evals: ml_collections.ConfigDict,
                 names: Sequence[str]) -> ml_collections.ConfigDict:
  """``evals`` restricted to ``names`` (all when empty); unknown: error."""
  if not evals:
    raise ValueError('No evals to run: the run\'s config.evals is empty; '
                     'give --evals_config')
  unknown = sorted(set(names) - set(evals.keys()))
  if unknown:
    raise ValueError(f'--evals: unknown eval(s) {unknown}; the config has '
                     f'{sorted(evals.keys())}')
  keep = [n for n in evals.keys() if not names or n in names]
  return ml_collections.ConfigDict({n: evals[n].to_dict() for n in keep})


def done_pairs(workdir: str) -> set[tuple[int, str]]:
  """(step, eval name) pairs with results in ``WORKDIR/metrics.jsonl``."""
  if not os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
    return set()
  return {(step, name.split('/', 1)[0])
          for name, curve in writers.metric_curves(workdir).items()
          if '/' in name for step in curve}


def evaluate_workdir(workdir: str, *,
                     evals: ml_collections.ConfigDict | None = None,
                     names: Sequence[str] = (), steps: Sequence[int] = (),
                     overrides: Sequence[str] = (), force: bool = False,
                     mesh=None, batch_devices: int = 1,
                     log: Callable[[str], None] = print
                     ) -> dict[tuple[int, str], dict[str, float]]:
  """Evaluates the kept checkpoints of ``workdir``; see the module doc.

  Args:
    workdir: the training workdir.
    evals: evals to run instead of the run's ``config.evals``.
    names: a subset of the evals' names (empty: all).
    steps: checkpoint steps (empty: every kept one); each must be kept.
    overrides: ``field.path=value`` overrides of the run's config.
    force: re-evaluate pairs already in ``metrics.jsonl``.
    mesh: target mesh (default: over every device, ``restore.default_mesh``).
    batch_devices: devices that each take a batch of the run's eval batch
      size (:func:`scale_eval_batch`); 1 keeps the run's batch.
    log: called with each progress line.

  Returns:
    ``{(step, eval name): metrics}`` for the pairs evaluated now.
  """
  kept = restore.kept_steps(workdir)
  missing = sorted(set(steps) - set(kept))
  if missing:
    raise ValueError(f'--steps {missing} are not kept checkpoints of '
                     f'{workdir}; kept steps: {kept}')
  steps = sorted(set(steps)) if steps else kept
  config = override_config(restore.load_config(workdir), overrides)
  if batch_devices > 1:
    scale_eval_batch(config, overrides, batch_devices)
  if evals is None:
    evals = config.get('evals') or ml_collections.ConfigDict()
  evals = select_evals(evals, names)
  done = set() if force else done_pairs(workdir)
  todo = {s: [n for n in evals.keys() if (s, n) not in done] for s in steps}
  todo = {s: names_ for s, names_ in todo.items() if names_}
  skipped = len(steps) * len(evals) - sum(len(v) for v in todo.values())
  log(f'{workdir}: {len(kept)} kept checkpoint(s) {kept}; evals '
      f'{list(evals.keys())}; {sum(len(v) for v in todo.values())} '
      f'(step, eval) pair(s) to run, {skipped} already in metrics.jsonl')
  if not todo:
    return {}

  start = time.time()
  run = restore.load_run(workdir, step=min(todo), mesh=mesh)
  run.config = config
  writer = writers.create_writer(workdir, jax.process_index())
  results = {}
  try:
    with jax.set_mesh(run.mesh):
      evaluators = restore.build_evaluators(run, evals)
      for i, step in enumerate(sorted(todo)):
        if step != run.step:
          run = run.at_step(step)
        for name in todo[step]:
          results[(step, name)] = _evaluate_one(
              evaluators[name][0], run, name, writer)
          log(f'checkpoint {i + 1}/{len(todo)} (step {step}) {name}: '
              + _headline(results[(step, name)]))
  finally:
    writer.close()
    run.close()
  log(f'done: {len(results)} evaluation(s) in {time.time() - start:.1f}s')
  return results


def _evaluate_one(evaluator, run, name, writer) -> dict[str, float]:
  """Runs one evaluator on ``run`` and logs as training does."""
  start = time.time()
  metrics = evaluator.run(run.params)
  metrics['seconds'] = time.time() - start
  writer.write_scalars(run.step, {f'{name}/{k}': v
                                  for k, v in metrics.items()})
  writer.flush()
  writers.write_outcomes(run.workdir, run.step, name, metrics,
                         jax.process_index())
  return metrics


def _headline(metrics: dict[str, float]) -> str:
  numbers = ', '.join(f'{k} {v:.4f}' for k, v in metrics.items()
                      if '/' not in k and not k.startswith('num_')
                      and k != 'seconds')
  return f'{numbers} [{metrics["seconds"]:.1f}s]'


def split_host_cpu(environ: dict[str, str], devices: int) -> bool:
  """Asks XLA for ``devices`` host (CPU) devices through ``XLA_FLAGS``.

  Must run before JAX creates its CPU client (the first device query).
  Returns False, changing nothing, for ``devices`` 1 or where the user's
  ``XLA_FLAGS`` already sets the count.
  """
  current = environ.get('XLA_FLAGS', '')
  if devices <= 1 or HOST_DEVICES_FLAG in current:
    return False
  environ['XLA_FLAGS'] = f'{current} {HOST_DEVICES_FLAG}={devices}'.strip()
  return True


def scale_eval_batch(config: ml_collections.ConfigDict,
                     overrides: Sequence[str], devices: int) -> None:
  """Sets ``config.eval_batch_size`` to the run's eval batch times
  ``devices`` (one such batch a host device), unless ``overrides`` set it."""
  if not any(o.startswith('eval_batch_size=') for o in overrides):
    config.eval_batch_size = (
        eval_common.run_defaults(config)['batch_size'] * devices)


def config_overrides_parser(store: list[str]
                            ) -> Callable[[list[str]], list[str]]:
  """An ``app.run`` flags parser that takes the ``--config.<field>=<value>``
  items out of ``argv`` (absl knows no such flags: the config is the run's
  own), keeps their ``<field>=<value>`` in ``store`` and parses the rest."""
  def parse(argv: list[str]) -> list[str]:
    store[:] = [a[len(CONFIG_PREFIX):] for a in argv[1:]
                if a.startswith(CONFIG_PREFIX)]
    return app.parse_flags_with_usage(
        [a for a in argv if not a.startswith(CONFIG_PREFIX)])
  return parse


_OVERRIDES: list[str] = []


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  evals = _EVALS_CONFIG.value
  if evals is not None and 'evals' in evals:
    evals = evals.evals
  try:
    steps = [int(s) for s in _STEPS.value]
  except ValueError as e:
    raise app.UsageError(f'--steps must be integers: {_STEPS.value}') from e
  batch_devices = 1
  if (split_host_cpu(os.environ, _CPU_DEVICES.value) and
      jax.default_backend() == 'cpu' and
      jax.device_count() == _CPU_DEVICES.value):
    batch_devices = _CPU_DEVICES.value
    print(f'CPU split into {batch_devices} host devices '
          '(--cpu_devices=1 keeps one)', flush=True)
  compilation_cache.enable()
  evaluate_workdir(_WORKDIR.value, evals=evals, names=_EVALS.value,
                   steps=steps, overrides=_OVERRIDES, force=_FORCE.value,
                   batch_devices=batch_devices)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=config_overrides_parser(_OVERRIDES))
