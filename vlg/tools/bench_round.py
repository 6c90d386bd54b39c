r"""An evaluation round, batched and one pair at a time, side by side.

  python -m vlg.tools.bench_round --workdir=workdirs/albef_tiny \
      [--step=1460] [--evals=valse,retrieval] [--rounds=3] \
      [--config.eval_batch_size=32]

Restores a run's checkpoint (the latest kept, or ``--step``) and runs its
``config.evals`` two ways: as training and ``vlg.tools.eval`` run them
(batched, each distinct image and text of a chunk encoded once,
``vlg/evaluators/batching.py``) and as the per-example loop of the
fine-grained evaluation notebooks (``vlg.evaluators.one_pair``: every
(image, text) pair encoded from its pixels and words and fused in a call of
its own). A first round each way compiles (its seconds are printed, not
compared); then ``--rounds`` timed rounds alternate which way runs first.
Decoded images are shared by both ways, so neither times file decoding.

Prints, per evaluator, the median seconds of each way and their ratio; the
same for the fine-grained sets together (VALSE, VSR, SVO-Probes and
Winoground, the benchmarks the notebooks loop over) and for the whole
round; and the largest difference between the two ways' metrics, which
differ only by the float rounding of a batch against a single row.
An evaluator without a scorer (RefCOCOg on a model without a box head) is
skipped. ``--config.<field>=<value>`` overrides the run's stored config, as
in ``vlg.tools.eval``.

Runs on the devices JAX sees (one CPU device unless ``XLA_FLAGS`` splits
it); the loop's calls hold one row a device. docs/benchmarks.md says what
each figure means; docs/results.md has measured ones.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence

import jax
from absl import app
from absl import flags

from vlg import restore
from vlg.evaluators import one_pair
from vlg.tools import eval as eval_tool

# The benchmarks the fine-grained evaluation notebooks score one example at
# a time (``config.evals.<name>.type``).
FINE_GRAINED = ('valse', 'vsr', 'svo_probes', 'winoground')

_WORKDIR = None
_OVERRIDES: list[str] = []
_STEP = None
_EVALS = None
_ROUNDS = None


def define_flags() -> None:
  """Defines the flags; called only when run as a program, so that
  tests can import several tools into one process."""
  global _WORKDIR, _STEP, _EVALS, _ROUNDS
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir whose '
                                 'checkpoint and evals are timed.')
  _STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the '
                               'latest kept).')
  _EVALS = flags.DEFINE_list('evals', [], 'Names of the evals to time '
                             '(default: all of the run\'s).')
  _ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timed rounds each way, after '
                                 'a compiling round each.', lower_bound=1)
  flags.mark_flags_as_required(['workdir'])


def metric_difference(a: dict[str, float], b: dict[str, float]
                      ) -> tuple[float, str]:
  """The largest |a[k] - b[k]| over the numeric metrics both report
  (``seconds`` left out), and its key ('' when they share none)."""
  worst, key = 0.0, ''
  for k in sorted(set(a) & set(b)):
    if k == 'seconds' or isinstance(a[k], str) or isinstance(b[k], str):
      continue
    d = abs(float(a[k]) - float(b[k]))
    if d != d:  # NaN on one side only counts; NaN on both agrees.
      if (a[k] == a[k]) != (b[k] == b[k]):
        return float('inf'), k
      continue
    if d > worst:
      worst, key = d, k
  return worst, key


def time_round(evaluators: dict[str, object], params
               ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
  """Seconds and metrics of each evaluator's ``run(params)``."""
  seconds, metrics = {}, {}
  for name, evaluator in evaluators.items():
    t = time.perf_counter()
    metrics[name] = evaluator.run(params)
    seconds[name] = time.perf_counter() - t
  return seconds, metrics


def compare(run, evals, *, rounds: int,
            log: Callable[[str], None] = print) -> dict[str, object]:
  """Times ``evals`` on ``run`` batched and one pair at a time.

  Returns:
    ``batched`` and ``loop``: {evaluator: [seconds of each timed round]};
    ``compile``: {way: seconds of the first round}; ``difference``:
    {evaluator: (largest metric difference, its key)}; ``skipped``: the
    evaluators without a scorer; ``types``: {evaluator: module name}.
  """
  built = restore.build_evaluators(run, evals)
  batched, loop, skipped = {}, {}, []
  for name, (evaluator, _) in built.items():
    if getattr(evaluator, 'scorer', None) is None:
      skipped.append(name)
      continue
    batched[name] = evaluator
    looped = copy.copy(evaluator)
    looped.scorer = one_pair.loop_scorer(evaluator.scorer)
    loop[name] = looped
  ways = {'batched': batched, 'loop': loop}
  out = {'batched': {n: [] for n in batched}, 'loop': {n: [] for n in loop},
         'compile': {}, 'skipped': skipped,
         'types': {n: str(evals[n].get('type')) for n in batched}}
  last = {}
  for way, evaluators in ways.items():
    seconds, last[way] = time_round(evaluators, run.params)
    out['compile'][way] = sum(seconds.values())
    log(f'{way}: first round (compiling) {out["compile"][way]:.1f}s')
  for r in range(rounds):
    order = ('batched', 'loop') if r % 2 == 0 else ('loop', 'batched')
    for way in order:
      seconds, last[way] = time_round(ways[way], run.params)
      for name, s in seconds.items():
        out[way][name].append(s)
      log(f'round {r + 1}/{rounds} {way}: {sum(seconds.values()):.1f}s')
  out['difference'] = {n: metric_difference(last['batched'][n],
                                            last['loop'][n])
                       for n in batched}
  return out


def _median_sum(per_eval: dict[str, list[float]], names: Sequence[str]
                ) -> float:
  """The median over rounds of the rounds' summed seconds of ``names``."""
  if not names:
    return 0.0
  rounds = len(per_eval[names[0]])
  return statistics.median(sum(per_eval[n][r] for n in names)
                           for r in range(rounds))


def report(result: dict[str, object]) -> list[str]:
  """The table :func:`main` prints."""
  batched, loop = result['batched'], result['loop']
  lines = [f'{"eval":<24} {"batched s":>10} {"one pair s":>11} '
           f'{"ratio":>7}  largest metric difference']
  def row(label, names, note=''):
    b, l = _median_sum(batched, names), _median_sum(loop, names)
    ratio = f'{l / b:.2f}x' if b > 0 else '-'
    lines.append(f'{label:<24} {b:>10.2f} {l:>11.2f} {ratio:>7}  {note}')
  for name in batched:
    diff, key = result['difference'][name]
    row(name, [name], f'{diff:.2g} ({key})' if key else '0')
  fine = [n for n in batched if result['types'][n] in FINE_GRAINED]
  row('fine-grained sets', fine)
  row('whole round', list(batched))
  if result['skipped']:
    lines.append(f'skipped (no scorer): {", ".join(result["skipped"])}')
  return lines


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  run = restore.load_run(_WORKDIR.value, step=_STEP.value)
  try:
    run.config = eval_tool.override_config(run.config, _OVERRIDES)
    if not run.config.get('evals'):
      raise app.UsageError(f'{_WORKDIR.value}: the run\'s config.evals is '
                           'empty; there is no round to time')
    evals = eval_tool.select_evals(run.config.evals, _EVALS.value)
    print(f'{_WORKDIR.value} step {run.step}: {len(evals)} eval(s) on '
          f'{jax.device_count()} {jax.default_backend()} device(s), '
          f'{_ROUNDS.value} timed round(s) each way', flush=True)
    with jax.set_mesh(run.mesh):
      result = compare(run, evals, rounds=_ROUNDS.value,
                       log=lambda s: print(s, flush=True))
  finally:
    run.close()
  print('\n'.join(report(result)))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=eval_tool.config_overrides_parser(_OVERRIDES))
