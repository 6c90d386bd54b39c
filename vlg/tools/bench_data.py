r"""Input-pipeline throughput: training examples/s by worker count and size.

  python -m vlg.tools.bench_data --config=configs/albef.py:tiny \
      --workers=0,1,2 --resolutions=64,256 --batches=30

  python -m vlg.tools.bench_data --config=configs/albef.py:base_4m \
      --config.data_dir=/data/vlg --config.batch_size=64 --workers=0,1,2,4

For each (resolution, workers) it builds the training pipeline of the
config (same sources, transforms, typed parts and batch size), skips the
first batches (start-up and worker spawn) and prints examples/s over the
next ones: reading and decoding each image (``prepared`` folders: the JPEG
bytes in the shards; ``synthetic``: rendering the scene) plus the
augmentations, tokenisation and batching, i.e. what the hosts must sustain
to feed the accelerators. ``per worker`` divides by the worker processes
(by one with 0 workers: the main process does the work).

``--resolutions`` defaults to the config's ``input.resolution``. A
synthetic source is rendered at each resolution; a prepared folder's images
keep their stored size (choose it with ``prepare --reencode_size``) and
are cropped and resized to the resolution.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from vlg import config_lib

_CONFIG = None
_WORKERS = None
_RESOLUTIONS = None
_BATCHES = None
_WARMUP = None
_TOKENIZER_DIR = None


def define_flags() -> None:
  """Defines the flags; called only when run as a program, so that
  tests can import several tools into one process."""
  global _CONFIG, _WORKERS, _RESOLUTIONS, _BATCHES, _WARMUP, _TOKENIZER_DIR
  _CONFIG = config_flags.DEFINE_config_file(
      'config', None, 'Config file, e.g. configs/albef.py:tiny; override '
      'fields with --config.x=y (e.g. --config.data_dir=/data/vlg).',
      lock_config=False)
  _WORKERS = flags.DEFINE_list('workers', ['0', '1', '2'],
                               'Worker process counts to measure.')
  _RESOLUTIONS = flags.DEFINE_list(
      'resolutions', [], 'Image resolutions to measure (default: the '
      "config's input.resolution).")
  _BATCHES = flags.DEFINE_integer('batches', 30, 'Timed batches per setting.')
  _WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed batches per setting.')
  _TOKENIZER_DIR = flags.DEFINE_string(
      'tokenizer_dir', None, 'Where to cache the tokenizer (default: a '
      'temporary directory).')
  flags.mark_flags_as_required(['config'])


def _input_at(input_cfg: ml_collections.ConfigDict, resolution: int,
              workers: int) -> ml_collections.ConfigDict:
  """``input_cfg`` (references resolved) at ``resolution`` with ``workers``."""
  cfg = input_cfg.copy_and_resolve_references()
  cfg.resolution = resolution
  mixtures = [cfg.data] + [p.get('data') or {} for p in
                           (cfg.get('parts') or {}).values()]
  for data in mixtures:
    for entry in data.values():
      if entry.source == 'synthetic':
        entry.world = dict(entry.get('world', {}), resolution=resolution)
  cfg.num_workers = workers
  return cfg


def measure(config: ml_collections.ConfigDict, tokenizer, resolution: int,
            workers: int, batches: int, warmup: int) -> dict[str, Any]:
  """Throughput of the training pipeline at one setting.

  Returns:
    ``resolution``, ``workers``, ``examples`` (timed caption examples),
    ``seconds`` and ``examples_per_s``.
  """
  from vlg.data import pipeline  # pylint: disable=g-import-not-at-top
  cfg = _input_at(config.input, resolution, workers)
  batch = int(config.batch_size)
  it = iter(pipeline.make_dataset(cfg, tokenizer, global_batch=batch,
                                  seed=0))
  try:
    for _ in range(warmup):
      next(it)
    start = time.perf_counter()
    examples = 0
    for _ in range(batches):
      examples += len(next(it)['image'])
    seconds = time.perf_counter() - start
  finally:
    close = getattr(it, 'close', None)
    if close:
      close()
  return {'resolution': resolution, 'workers': workers,
          'examples': examples, 'seconds': seconds,
          'examples_per_s': examples / seconds}


def describe_sources(input_cfg: ml_collections.ConfigDict) -> list[str]:
  """One line per source of the caption mixture and of each typed part."""
  from vlg.data import pipeline  # pylint: disable=g-import-not-at-top
  cfg = input_cfg.copy_and_resolve_references()
  mixtures = {'input.data': None}
  mixtures.update({f'input.parts.{name}.data': part.get('data') or None
                   for name, part in pipeline.enabled_parts(cfg).items()})
  lines = []
  for where, data in mixtures.items():
    if data is None and where != 'input.data':
      lines.append(f'  {where}: the caption mixture')
      continue
    for name, (source, weight) in sorted(
        pipeline.build_sources(cfg, data).items()):
      lines.append(f'  {where}.{name}: {source.source!r}, weight {weight:g}')
  return lines


def run(config: ml_collections.ConfigDict, tokenizer,
        resolutions: list[int], workers: list[int], batches: int,
        warmup: int, log=print) -> list[dict[str, Any]]:
  """Measures every (resolution, workers), logging a table row each."""
  log(f'batch {config.batch_size}, {batches} timed batches after {warmup}, '
      f'kind {config.input.kind}, augment {tuple(config.input.augment)}')
  for line in describe_sources(config.input):
    log(line)
  log(f'{"resolution":>10} {"workers":>8} {"examples/s":>12} '
      f'{"per worker":>11}')
  rows = []
  for res in resolutions:
    for n in workers:
      row = measure(config, tokenizer, res, n, batches, warmup)
      rows.append(row)
      log(f'{res:>10} {n:>8} {row["examples_per_s"]:>12.1f} '
          f'{row["examples_per_s"] / max(n, 1):>11.1f}')
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from vlg.data import pipeline  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  cache = _TOKENIZER_DIR.value or tempfile.mkdtemp(prefix='vlg_bench_tok_')
  tokenizer = pipeline.get_tokenizer(config.input, cache)
  resolutions = [int(r) for r in _RESOLUTIONS.value] or [
      int(config.input.resolution)]
  run(config, tokenizer, resolutions, [int(w) for w in _WORKERS.value],
      _BATCHES.value, _WARMUP.value, log=lambda s: print(s, flush=True))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=config_lib.parse_flags)
