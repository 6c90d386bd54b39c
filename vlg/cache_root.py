"""The one folder vlg keeps what it can rebuild in.

``$VLG_CACHE_DIR`` when set, else ``~/.cache/vlg``. Under it live the
synthetic benchmark sets (``synthetic_benchmarks/``, written by the
evaluators on first use) and JAX's compiled programs (``jax/``,
``vlg.compilation_cache``). Deleting it loses nothing a run cannot write
again; point ``VLG_CACHE_DIR`` at a larger or shared disk to move both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

ENV = 'VLG_CACHE_DIR'


def cache_root(environ: Mapping[str, str] = os.environ) -> str:
  """``environ['VLG_CACHE_DIR']`` if set and not blank, else ``~/.cache/vlg``."""
  return environ.get(ENV, '').strip() or os.path.join(
      os.path.expanduser('~'), '.cache', 'vlg')
