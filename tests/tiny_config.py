"""The tests' shrunk tiny ALBEF config as a ``--config`` file.

  python -m vlg.main --config=tests/tiny_config.py --workdir=/tmp/run
  python -m vlg.main --config=tests/tiny_config.py:total_steps=4 ...

:func:`get_config` is ``test_train.tiny_test_config`` (6 steps, checkpoints
at 3 and 6), so a test's subprocess runs the program the test process runs
and finds it compiled in the persistent cache ``conftest.py`` shares.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
for path in (os.path.dirname(HERE), HERE):
  if path not in sys.path:
    sys.path.insert(0, path)


def get_config(arg: str | None = None):
  """``tiny_test_config()``; ``arg`` is ``key=value,...`` integer overrides."""
  from test_train import tiny_test_config  # pylint: disable=g-import-not-at-top
  overrides = dict(kv.split('=') for kv in (arg or '').split(',') if kv)
  return tiny_test_config(**{k: int(v) for k, v in overrides.items()})
