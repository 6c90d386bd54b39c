r"""Host memory of a training run: the process RSS at chosen steps.

  python -m vlg.tools.bench_memory --config=configs/albef.py:tiny,evals=False \
      --steps=200,2000

Trains the config with the real loop (``vlg.train.train_and_evaluate``:
input pipeline, train step, metric writers, checkpoints, evaluations if
the config has them) for ``max(--steps)`` steps in ``--workdir`` (default:
a temporary directory, removed afterwards), and prints the resident set
size of this process before training and after each requested step, with
the growth since the previous one:

  RSS before training: 812.4 MiB
  RSS at step 200: 1290.6 MiB
  RSS at step 2000: 1301.9 MiB (+11.3 MiB since step 200, +6.4 KiB/step)

A loop that leaks host memory (metrics kept per step, an iterator that
buffers, checkpoints held) grows linearly between the later steps; the
first requested step should be past compilation and the first
checkpoint, where the RSS settles. The RSS is ``VmRSS`` of
``/proc/self/status`` (Linux); elsewhere ``resource.getrusage``'s peak RSS,
which only grows, and the lines say so.
"""

from __future__ import annotations

import logging
import resource
import shutil
import sys
import tempfile
from typing import Callable

from absl import app
from absl import flags
from ml_collections import config_flags

from vlg import config_lib

_CONFIG = None
_STEPS = None
_WORKDIR = None


def define_flags() -> None:
  """Defines the flags; called only when run as a program, so that
  tests can import several tools into one process."""
  global _CONFIG, _STEPS, _WORKDIR
  _CONFIG = config_flags.DEFINE_config_file(
      'config', None, 'Config file, e.g. configs/albef.py:tiny,evals=False.',
      lock_config=True)
  _STEPS = flags.DEFINE_list(
      'steps', ['200', '2000'], 'Steps after which to print the RSS; the run '
      'trains max(steps) steps.')
  _WORKDIR = flags.DEFINE_string(
      'workdir', None, 'Run directory (default: a temporary one, removed '
      'afterwards). An existing run there is resumed, so use a fresh one.')
  flags.mark_flags_as_required(['config'])


def rss_bytes() -> tuple[int, str]:
  """(RSS of this process in bytes, what was read): ``VmRSS`` from
  ``/proc/self/status``, else the peak RSS of ``resource.getrusage``."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmRSS:'):
          return int(line.split()[1]) * 1024, 'VmRSS'
  except OSError:
    pass
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  # ru_maxrss is in KiB on Linux, in bytes on macOS.
  return (peak if sys.platform == 'darwin' else peak * 1024), 'peak RSS'


def parse_steps(values: list[str]) -> list[int]:
  """``['200', '2000']`` → ``[200, 2000]``: positive, strictly increasing."""
  try:
    steps = [int(v) for v in values]
  except ValueError:
    raise ValueError(f'--steps={",".join(values)}: expected integers, e.g. '
                     '--steps=200,2000') from None
  if not steps or steps[0] < 1 or any(b <= a for a, b in zip(steps,
                                                             steps[1:])):
    raise ValueError(f'--steps={",".join(values)}: expected positive, '
                     'increasing steps, e.g. --steps=200,2000')
  return steps


def measure(config, steps: list[int], workdir: str,
            log: Callable[[str], None] = print) -> dict[int, int]:
  """Trains ``config`` for ``max(steps)`` steps in ``workdir``; logs and
  returns the RSS in bytes before training (key 0) and at each step."""
  from vlg import train  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  config.total_steps = steps[-1]
  wanted = set(steps)
  rss, source = rss_bytes()
  out = {0: rss}
  what = 'RSS' if source == 'VmRSS' else 'peak RSS (no /proc)'
  log(f'{what} before training: {rss / 2**20:.1f} MiB')

  def on_step(step: int) -> None:
    if step not in wanted:
      return
    out[step] = rss_bytes()[0]
    line = f'{what} at step {step}: {out[step] / 2**20:.1f} MiB'
    previous = max(s for s in out if s < step)
    if previous:
      growth = out[step] - out[previous]
      line += (f' ({growth / 2**20:+.1f} MiB since step {previous}, '
               f'{growth / 1024 / (step - previous):+.1f} KiB/step)')
    log(line)

  train.train_and_evaluate(config, workdir, on_step=on_step)
  missing = wanted - set(out)
  if missing:  # A resumed workdir starts past them.
    raise ValueError(f'Steps {sorted(missing)} were not trained in '
                     f'{workdir} (a run there was resumed past them); use a '
                     'fresh --workdir')
  return out


def main(argv):
  del argv
  # orbax and grain log several INFO lines per checkpoint (as vlg.main).
  logging.getLogger('absl').setLevel(logging.WARNING)
  steps = parse_steps(_STEPS.value)
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix='vlg_bench_memory_')
  try:
    measure(_CONFIG.value, steps, workdir,
            log=lambda line: print(line, flush=True))
  finally:
    if _WORKDIR.value is None:
      shutil.rmtree(workdir, ignore_errors=True)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=config_lib.parse_flags)
