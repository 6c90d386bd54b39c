"""JAX's persistent compilation cache for vlg's programs.

XLA compiles every program a process runs (the train step, each evaluation
function at each text width) before its first call; a later process that
runs the same program compiles it again. With the cache on, each compiled
executable is also written to a directory and a later process loads it
instead: a resumed or repeated run, ``vlg.tools.eval`` after training.
On a 2-core CPU the tiny ALBEF run went from initialised to a compiled
train step in 28 s, 8 s with the cache, and its first evaluation round
took 17 s instead of 28 (docs/results.md); on accelerators, where the
base step compiles for minutes, the saving is larger. The programs and
numbers are the same: an entry is keyed by the program, the compile
options, the devices and the jax/jaxlib versions, and XLA's CPU loader
refuses an entry compiled for other CPU features (it compiles again).

``vlg.main`` and ``vlg.tools.eval`` turn it on before they compile
anything (``vlg.tools.study`` keeps its own, in its output directory,
through :func:`use_directory`); importing vlg changes nothing. The
directory is ``$VLG_CACHE_DIR/jax`` or ``~/.cache/vlg/jax``;
``VLG_COMPILATION_CACHE`` names another one (a ``gs://`` path for a pod,
whose process 0 writes the entries every process reads) or ``off``. A
``JAX_COMPILATION_CACHE_DIR`` already set is kept. Known limit: on some
Intel CPUs jax 0.10 logs an error for every entry it reloads (its loader
takes two LLVM tuning flags for missing CPU features, jax-ml/jax#38445)
and compiles again; turn the cache off there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from vlg import cache_root

ENV = 'VLG_COMPILATION_CACHE'
OFF = ('off', '0', 'none', 'false', 'no')


def cache_dir(environ: Mapping[str, str] = os.environ) -> str | None:
  """The directory vlg caches compiled programs in, or None when off."""
  setting = environ.get(ENV, '').strip()
  if setting.lower() in OFF:
    return None
  if setting:
    return setting
  return os.path.join(cache_root.cache_root(environ), 'jax')


def use_directory(directory: str) -> None:
  """Caches every compiled program in ``directory``: the tiny models'
  programs compile in 0.3-30 s on CPU, mostly below JAX's default
  threshold of 1 s, and a cached one loads in milliseconds to seconds."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def enable(environ: Mapping[str, str] = os.environ) -> str | None:
  """Turns the persistent compilation cache on (see the module doc).

  Call before the process compiles anything: JAX reads the setting at its
  first compilation.

  Args:
    environ: the environment to read ``VLG_COMPILATION_CACHE`` and
      ``VLG_CACHE_DIR`` from.

  Returns:
    The cache directory in use (the user's ``JAX_COMPILATION_CACHE_DIR``
    where that is set), or None when the cache is off.
  """
  import jax  # pylint: disable=g-import-not-at-top
  current = jax.config.jax_compilation_cache_dir
  if current:
    logging.info('JAX compilation cache: %s (JAX_COMPILATION_CACHE_DIR)',
                 current)
    return current
  directory = cache_dir(environ)
  if directory is None:
    logging.info('JAX compilation cache off (%s=%s)', ENV, environ.get(ENV))
    return None
  use_directory(directory)
  logging.info('JAX compilation cache: %s (%s=off turns it off)', directory,
               ENV)
  return directory
