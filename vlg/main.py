r"""vlg's command-line entry point: flags, distributed set-up, then train.

  python -m vlg.main --config=configs/albef.py:tiny --workdir=workdirs/tiny

``--config`` names a config file and its argument (``file.py:arg``);
``--config.field=value`` overrides any field; an unknown field is an error
of one line naming the path and the nearest valid field
(``config_lib.parse_flags``).
Running the same command again resumes from the last checkpoint in
``--workdir``. Multi-process jobs: see ``launch/README.md``; a process of
one that fails prints its error and exits at once, and the others, whose
collectives lose it, follow (:func:`_exit_now`) instead of hanging.
Compiled programs are kept in JAX's persistent compilation cache, so a
resumed or repeated run loads them instead of compiling again
(``vlg/compilation_cache.py``; ``VLG_COMPILATION_CACHE=off`` turns it off).
"""

import logging
import os
import sys
import traceback

from absl import app
from absl import flags
from ml_collections import config_flags

from vlg import compilation_cache
from vlg import config_lib
from vlg import huge_pages

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file and argument, e.g. configs/albef.py:tiny.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, metrics.jsonl and '
    'TensorBoard events; an existing run there is resumed.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 for multi-process '
    'runs on bare machines; leave unset on TPU pods/SLURM (auto-detected).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'Number of processes (bare machines).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                   'This process index (bare machines).')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() with '
    'auto-detection (TPU pods, SLURM).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Libraries that log through absl (orbax, grain) print several INFO lines
  # per checkpoint; keep their warnings, and vlg's own progress lines.
  logging.getLogger('absl').setLevel(logging.WARNING)
  import jax  # pylint: disable=g-import-not-at-top
  if _COORDINATOR.value:
    # Only affects the CPU backend (multi-process CPU runs need gloo); must be
    # set before any device is touched.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.info('JAX %s, process %d/%d, %d local / %d global devices',
               jax.__version__, jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  compilation_cache.enable()
  from vlg import train  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    return
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (Exception, KeyboardInterrupt):  # pylint: disable=broad-except
    _exit_now(jax.process_index())


def _exit_now(process_index: int) -> None:
  """Prints the exception being handled and ends this process at once.

  In a multi-process job a process that fails must not exit normally:
  ``jax.distributed``'s exit hook waits in a shutdown barrier for every
  other process, and those wait in the next collective (a train step's
  all-reduce, a checkpoint barrier) for this one — both hang. Ending the
  process without the hooks closes its connections, so the others'
  collectives fail and they exit through here too.
  """
  traceback.print_exc()
  logging.error('Process %d failed (traceback above); exiting without the '
                'shutdown barrier so the other processes stop too',
                process_index)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(1)  # pylint: disable=protected-access


if __name__ == '__main__':
  huge_pages.restart_with_huge_pages()
  app.run(main, flags_parser=config_lib.parse_flags)
