r"""Input-pipeline throughput: training examples/s by worker count and size.

  python -m vlg.tools.bench_data --config=configs/albef.py:tiny \
      --workers=0,1,2 --resolutions=64,256 --batches=30

For each (resolution, workers) it builds the training pipeline of the
config (same sources, transforms and batch size), skips the first batches
(start-up and worker spawn) and prints examples/s over the next ones.
"""

import tempfile
import time

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/albef.py:tiny.',
    lock_config=False)
_WORKERS = flags.DEFINE_list('workers', ['0', '1', '2'],
                             'Worker process counts to measure.')
_RESOLUTIONS = flags.DEFINE_list('resolutions', ['64', '256'],
                                 'Image resolutions to measure.')
_BATCHES = flags.DEFINE_integer('batches', 30, 'Timed batches per setting.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed batches per setting.')
_TOKENIZER_DIR = flags.DEFINE_string(
    'tokenizer_dir', None, 'Where to cache the tokenizer (default: a '
    'temporary directory).')
flags.mark_flags_as_required(['config'])


def measure(config, tokenizer, resolution: int, workers: int, batches: int,
            warmup: int) -> float:
  """Examples/s of the training pipeline at one setting."""
  from vlg.data import pipeline  # pylint: disable=g-import-not-at-top
  cfg = config.input.copy_and_resolve_references()
  cfg.resolution = resolution
  for entry in cfg.data.values():
    if entry.source == 'synthetic':
      entry.world = dict(entry.get('world', {}), resolution=resolution)
  cfg.num_workers = workers
  it = iter(pipeline.make_dataset(cfg, tokenizer,
                                  global_batch=config.batch_size, seed=0))
  try:
    for _ in range(warmup):
      next(it)
    start = time.perf_counter()
    for _ in range(batches):
      next(it)
    elapsed = time.perf_counter() - start
  finally:
    close = getattr(it, 'close', None)
    if close:
      close()
  return batches * config.batch_size / elapsed


def main(argv):
  del argv
  from vlg.data import pipeline  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  cache = _TOKENIZER_DIR.value or tempfile.mkdtemp(prefix='vlg_bench_tok_')
  tokenizer = pipeline.get_tokenizer(config.input, cache)
  print(f'batch {config.batch_size}, {_BATCHES.value} timed batches, '
        f'kind {config.input.kind}, augment {tuple(config.input.augment)}')
  print(f'{"resolution":>10} {"workers":>8} {"examples/s":>12}')
  for res in (int(r) for r in _RESOLUTIONS.value):
    for workers in (int(w) for w in _WORKERS.value):
      eps = measure(config, tokenizer, res, workers, _BATCHES.value,
                    _WARMUP.value)
      print(f'{res:>10} {workers:>8} {eps:>12.1f}', flush=True)


if __name__ == '__main__':
  app.run(main)
