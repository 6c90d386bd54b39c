r"""``vlg.main`` with one injected fault, for the fault tests.

  VLG_FAULT=kill_in_save:3 python tests/fault_child.py \
      --config=tests/tiny_config.py --workdir=/tmp/run

Runs the real entry point (flags, ``jax.distributed``, ``train``) after
patching in the fault that ``VLG_FAULT`` names, ``kind:N`` or
``kind:N@P`` (only process ``P`` of a multi-process job):

- ``kill_at_step:N``: SIGKILL when the N-th step this process trains has
  its batch and is about to run (a resumed run counts from its first
  step);
- ``kill_in_save:N``: SIGKILL from inside orbax's write of step N's
  checkpoint, once an item's file is written into its temporary directory
  (so the save is half done);
- ``enospc_in_save:N``: at the same place, ``OSError(ENOSPC)`` (a disk
  that fills during the save);
- ``raise_in_data:N``: the N-th example the caption transform of the
  input pipeline maps raises (in grain's worker threads, as a real bad
  record or decoder bug would).

Run with ``--config=tests/tiny_config.py`` it trains the program the
test process trains (and finds it in the shared compilation cache).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (ROOT, HERE):
  if path not in sys.path:
    sys.path.insert(0, path)

KINDS = ('kill_at_step', 'kill_in_save', 'enospc_in_save', 'raise_in_data')


def parse_fault(spec: str) -> tuple[str, int, int | None] | None:
  """``'kind:N[@P]'`` → (kind, N, P or None); '' → None."""
  if not spec:
    return None
  m = re.fullmatch(r'(\w+):(\d+)(?:@(\d+))?', spec)
  if not m or m.group(1) not in KINDS:
    raise ValueError(f'VLG_FAULT={spec!r}; expected kind:N[@process] with '
                     f'kind one of {KINDS}')
  return m.group(1), int(m.group(2)), (None if m.group(3) is None
                                       else int(m.group(3)))


def _save_step(directory) -> int | None:
  """The step of an orbax temporary item directory,
  ``.../checkpoints/<step>.orbax-checkpoint-tmp*/<item>``."""
  m = re.search(r'/(\d+)\.orbax-checkpoint-tmp[^/]*/', str(directory) + '/')
  return int(m.group(1)) if m else None


def install(kind: str, n: int, patch=setattr) -> None:
  """Patches the fault ``kind`` at ``n`` into this process, through
  ``patch(obj, name, value)`` (a test passes ``monkeypatch.setattr``)."""
  if kind == 'kill_at_step':
    from vlg.data import pipeline  # pylint: disable=g-import-not-at-top
    real, calls = pipeline.to_global, []

    def to_global(*args, **kwargs):
      calls.append(1)
      if len(calls) == n:
        os.kill(os.getpid(), signal.SIGKILL)
      return real(*args, **kwargs)

    patch(pipeline, 'to_global', to_global)
  elif kind in ('kill_in_save', 'enospc_in_save'):
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as jch  # pylint: disable=g-import-not-at-top
    handler = jch.JsonCheckpointHandler
    real_save = handler._save_fn  # pylint: disable=protected-access

    async def _save_fn(self, x, directory):
      await real_save(self, x, directory)  # This item's file is written.
      if _save_step(directory) == n:
        sys.stderr.write(f'fault_child: {kind} at step {n}, after writing '
                         f'{directory}\n')
        sys.stderr.flush()
        if kind == 'kill_in_save':
          os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                      str(directory))

    patch(handler, '_save_fn', _save_fn)
  elif kind == 'raise_in_data':
    from vlg.data import pipeline  # pylint: disable=g-import-not-at-top
    real, calls = pipeline.CaptionTransform.random_map, []

    def random_map(self, record, rng):
      calls.append(1)
      if len(calls) == n:
        raise RuntimeError(f'fault_child: injected data pipeline failure '
                           f'(example {n} of this process)')
      return real(self, record, rng)

    patch(pipeline.CaptionTransform, 'random_map', random_map)


def main() -> None:
  fault = parse_fault(os.environ.get('VLG_FAULT', ''))
  process_id = next((int(a.split('=', 1)[1]) for a in sys.argv
                     if a.startswith('--process_id=')), 0)
  if fault is not None and fault[2] in (None, process_id):
    install(fault[0], fault[1])
  from absl import app  # pylint: disable=g-import-not-at-top
  from vlg import config_lib  # pylint: disable=g-import-not-at-top
  from vlg import main as vlg_main  # pylint: disable=g-import-not-at-top
  app.run(vlg_main.main, flags_parser=config_lib.parse_flags)


if __name__ == '__main__':
  main()
