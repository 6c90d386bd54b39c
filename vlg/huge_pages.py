"""Transparent huge pages for XLA's host buffers, by restarting a program
once with glibc's ``glibc.malloc.hugetlb=1`` tunable.

XLA on CPU allocates each step's temporaries as one large buffer (190 MiB
for the tiny ALBEF step) and frees it when the step ends. glibc serves an
allocation that large with a fresh ``mmap`` and returns it with
``munmap``, so every step faults its pages in again, 4 KiB at a time: about
48,000 minor page faults a step, which the kernel pays for in zeroing and
bookkeeping on the same cores the step runs on. With the tunable, glibc
asks the kernel for transparent huge pages on those mappings
(``madvise(MADV_HUGEPAGE)``), 2 MiB at a time: measured side by side in
docs/results.md, the tiny steps are 25–30% faster on CPU and page faults
fall 6–9×. Nothing else changes: the same programs and numbers.

glibc reads its tunables once, at process start, so the setting cannot be
made from Python in a running process: :func:`restart_with_huge_pages`
re-executes the program (same interpreter, arguments and environment, plus
the tunable) where it would help — Linux with glibc, the kernel's
transparent huge pages not ``never``, the tunable not yet set — and does
nothing otherwise; the restart prints nothing (``vlg.tools.bench`` prints
the mode it measured under). Entry points call it first thing when run as
programs (``vlg.main``, ``vlg.tools.study``, ``vlg.tools.bench``,
``vlg.tools.bench_reference``); importing vlg never restarts anything,
nor does a command asked only for its help (``--help``, ``-h``,
``--helpfull``, …), which would import everything twice to print a page.
``VLG_HUGE_PAGES=0`` turns it off.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

TUNABLE = 'glibc.malloc.hugetlb'
SETTING = f'{TUNABLE}=1'
OPT_OUT = 'VLG_HUGE_PAGES'
THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'
# absl's help flags, with one dash or two: the program prints and exits.
HELP_FLAGS = frozenset(
    dash + name for dash in ('-', '--')
    for name in ('h', 'help', 'helpfull', 'helpshort', 'helpxml', '?'))


def asks_for_help(args: list[str]) -> bool:
  """Whether a command line (without the program) asks only for help."""
  return any(arg in HELP_FLAGS for arg in args)


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's transparent huge page mode (``always``, ``madvise`` or
  ``never``, the bracketed word of ``path``), or None where unreadable."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else None


def restart_env(environ: Mapping[str, str], *, system: str, libc: str,
                mode: str | None) -> dict[str, str] | None:
  """The environment to restart with, or None when a restart would not
  help: not Linux with glibc, huge pages ``never`` or unknown, the tunable
  already set (as it is after a restart, so there is never a second one),
  or ``VLG_HUGE_PAGES=0``. Other tunables already set are kept."""
  if environ.get(OPT_OUT, '1').strip() == '0':
    return None
  if system != 'Linux' or libc != 'glibc' or mode not in ('always',
                                                          'madvise'):
    return None
  tunables = environ.get('GLIBC_TUNABLES', '')
  if TUNABLE in tunables:
    return None
  env = dict(environ)
  env['GLIBC_TUNABLES'] = f'{tunables}:{SETTING}' if tunables else SETTING
  return env


def restart_with_huge_pages() -> None:
  """Re-executes this program with :data:`SETTING` where that helps (see
  the module docstring); returns (doing nothing) otherwise."""
  if asks_for_help(sys.argv[1:]):
    return
  env = restart_env(os.environ, system=platform.system(),
                    libc=platform.libc_ver()[0], mode=thp_mode())
  if env is None:
    return
  argv = [sys.executable] + list(getattr(sys, 'orig_argv', sys.argv)[1:])
  # Silent: a command's output (one-line config errors, --help) stays as
  # it is; describe() tells which mode a process runs in.
  os.execve(sys.executable, argv, env)


def describe(environ: Mapping[str, str] | None = None) -> str:
  """'on' or 'off' and why, for tools that print what they measured
  under (``vlg.tools.bench``)."""
  environ = os.environ if environ is None else environ
  tunables = environ.get('GLIBC_TUNABLES', '')
  if SETTING in tunables.split(':'):
    return f'on (GLIBC_TUNABLES={tunables}; {OPT_OUT}=0 turns it off)'
  return 'off' + (f' ({OPT_OUT}=0)' if environ.get(OPT_OUT, '').strip() == '0'
                  else '')
