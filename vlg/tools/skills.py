r"""Which skills a run shows above chance, beyond sampling noise.

  python -m vlg.tools.skills --workdir=workdirs/albef_tiny [--step=N] \
      [--sds=3] [--all]

Reads ``WORKDIR/metrics.jsonl`` (evaluations logged during training or by
``vlg.tools.eval``) at ``--step`` (default: the last step with
evaluations) and prints, per benchmark, the metric furthest above chance in
binomial standard deviations (``vlg/analysis/significance.py``), marking
those above ``--sds``; ``--all`` lists every metric with a chance level.
Exits 0 whatever it finds: it reports, it does not judge.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags

from vlg import writers
from vlg.analysis import significance

_FLAGS = {}


def define_flags() -> None:
  """Defines the flags (only when run as a program)."""
  _FLAGS['workdir'] = flags.DEFINE_string(
      'workdir', None, 'A run directory with metrics.jsonl.')
  _FLAGS['step'] = flags.DEFINE_integer(
      'step', None, 'Step to read (default: the last step with evaluations).')
  _FLAGS['sds'] = flags.DEFINE_float(
      'sds', 3.0, 'Binomial standard deviations above chance that count.')
  _FLAGS['all'] = flags.DEFINE_bool(
      'all', False, 'List every metric, not only the best per benchmark.')
  flags.mark_flags_as_required(['workdir'])


def metrics_at(workdir: str, step: int | None = None
               ) -> tuple[int, dict[str, float]]:
  """The step (given, or the last with a ``/chance/`` metric) and every
  metric logged at it (a resumed run's later record wins)."""
  curves = writers.metric_curves(workdir)
  steps = sorted({s for k, c in curves.items() if '/chance/' in k for s in c})
  if not steps:
    raise ValueError(f'{workdir}: no evaluation with a chance level in '
                     'metrics.jsonl; run python -m vlg.tools.eval first?')
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ValueError(f'{workdir}: no evaluations at step {step}; steps with '
                     f'evaluations: {steps}')
  return step, {k: float(c[step]) for k, c in curves.items()
                if step in c and isinstance(c[step], (int, float))}


def report(workdir: str, step: int | None = None, sds: float = 3.0,
           every: bool = False) -> str:
  """The table :func:`main` prints."""
  step, metrics = metrics_at(workdir, step)
  rows = significance.above_chance(metrics)
  shown = rows if every else sorted(
      significance.best_per_benchmark(rows).values(), key=lambda r: r.name)
  lines = [f'{workdir} at step {step}: metric, value, chance ± 1 SD (n), '
           f'SDs above chance',
           '| metric | value | chance | SD | n | z | above |',
           '| --- | --- | --- | --- | --- | --- | --- |']
  for r in shown:
    lines.append(f'| {r.name} | {r.value:.4f} | {r.chance:.4f} | '
                 f'{r.sd:.4f} | {r.n} | {r.z:+.2f} | '
                 f'{"yes" if r.z > sds else "no"} |')
  passed = sorted({r.name.split('/')[0] for r in rows if r.z > sds})
  lines.append(f'benchmarks with a metric more than {sds:g} SD above chance: '
               + (', '.join(passed) if passed else 'none'))
  return '\n'.join(lines)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  workdir = _FLAGS['workdir'].value
  if not os.path.isfile(os.path.join(workdir, 'metrics.jsonl')):
    raise app.UsageError(f'{workdir}/metrics.jsonl does not exist: is '
                         '--workdir a training run directory?')
  try:
    print(report(workdir, _FLAGS['step'].value, _FLAGS['sds'].value,
                 _FLAGS['all'].value))
  except ValueError as e:
    raise app.UsageError(str(e)) from None


if __name__ == '__main__':
  define_flags()
  app.run(main)
