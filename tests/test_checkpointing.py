"""Which steps a run's checkpointer saves and keeps."""

import grain
import numpy as np

from vlg import checkpointing


def _iterator():
  return iter(grain.MapDataset.range(100).to_iter_dataset())


def test_kept_steps_are_saved_where_ckpt_steps_does_not_divide_them(
    tmp_path):
  # Every 5 steps, keeping every 7th and the latest one: steps 7 and 14 are
  # not multiples of 5 but must be on disk at the end (the tiny run keeps
  # its evaluation steps, 365 apart, with checkpoints every 50).
  ckpt = checkpointing.Checkpointer(str(tmp_path), ckpt_steps=5,
                                    keep_every_steps=7, keep_latest=1,
                                    asynchronous=False)
  data = _iterator()
  saved = []
  for step in range(1, 17):
    next(data)
    if ckpt.save(step, params={'w': np.full(2, step, np.float32)},
                 train_state={'step': np.int32(step)}, data_iter=data,
                 config={'step': step}):
      saved.append(step)
  ckpt.wait()
  assert saved == [5, 7, 10, 14, 15]
  assert ckpt.complete_steps() == [7, 14, 15]
