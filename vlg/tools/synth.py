r"""Writes synthetic benchmark sets in each real benchmark's file layout.

  python -m vlg.tools.synth --out=/tmp/synth [--resolution=64] [--seed=0] \
      [--num=200] [--sets=all|valse,vsr,...]

VALSE, VSR (random and zero-shot splits), SVO-Probes, Winoground, Karpathy
retrieval, image paragraphs and RefCOCOg look-alikes drawn from vlg's
synthetic world, with images under each set's ``images/`` folder, a
``README.md`` (sets, chance levels, settings) and a ``manifest.json``
(counts). The readers of ``vlg.benchmarks`` load them unchanged. The
same flags give identical files. See ``vlg.synthetic.benchmarks``.
"""

import time

from absl import app
from absl import flags

from vlg.synthetic import benchmarks as synthetic_benchmarks

_OUT = None
_RESOLUTION = None
_SEED = None
_NUM = None
_SETS = None


def define_flags() -> None:
  """Defines the flags; called only when run as a program, so that
  tests can import several tools into one process."""
  global _OUT, _RESOLUTION, _SEED, _NUM, _SETS
  _OUT = flags.DEFINE_string('out', None, 'Output folder.')
  _RESOLUTION = flags.DEFINE_integer('resolution', 64,
                                     'Image side in pixels (>= 48).')
  _SEED = flags.DEFINE_integer('seed', 0, 'World and benchmark seed.')
  _NUM = flags.DEFINE_integer('num', 200, 'Examples per file.')
  _SETS = flags.DEFINE_list(
      'sets', ['all'], 'Sets to write, comma-separated, or "all": '
      + ', '.join(synthetic_benchmarks.SETS) + '.')
  flags.mark_flags_as_required(['out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  start = time.perf_counter()
  manifest = synthetic_benchmarks.write_all(
      _OUT.value, resolution=_RESOLUTION.value, seed=_SEED.value,
      num=_NUM.value, sets=_SETS.value, log=print)
  images = sum(s['images'] for s in manifest['sets'].values())
  print(f'wrote {len(manifest["sets"])} set(s), {images} images to '
        f'{_OUT.value} in {time.perf_counter() - start:.1f}s '
        f'(README.md, manifest.json)')


if __name__ == '__main__':
  define_flags()
  app.run(main)
