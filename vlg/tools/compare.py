r"""Is one checkpoint (or model) better than another on a benchmark?

  python -m vlg.tools.compare --a=workdirs/albef_tiny@1000 \
      --b=workdirs/realbef_tiny@1000 [--metrics=REGEX] [--bootstrap=1000] \
      [--seed=0] [--all]

Each side is a run directory with an optional ``@STEP`` (default: the
last step with stored outcomes). Both must have scored the same benchmark
files, so their per-example outcomes (``WORKDIR/outcomes/``, stored by
training and by ``vlg.tools.eval``) pair example by example. Per metric
both runs have, it prints the two scores, the difference b − a with its 95%
interval and a paired test over the examples: the exact McNemar test
(``scipy.stats.binomtest`` on the discordant examples) where both are
right-or-wrong, the paired bootstrap otherwise (``vlg/analysis/
confidence.py``). Only headline metrics (``<eval>/<metric>``) are listed
unless ``--all``; ``--metrics`` keeps the names a regex matches. It
reports and exits 0 whatever it finds.
"""

from __future__ import annotations

import re

from absl import app
from absl import flags

from vlg import writers
from vlg.analysis import confidence
from vlg.analysis import curves as curves_lib

_FLAGS = {}


def define_flags() -> None:
  """Defines the flags (only when run as a program)."""
  _FLAGS['a'] = flags.DEFINE_string(
      'a', None, 'The first run: WORKDIR or WORKDIR@STEP.')
  _FLAGS['b'] = flags.DEFINE_string(
      'b', None, 'The second run: WORKDIR or WORKDIR@STEP (b − a is shown).')
  _FLAGS['metrics'] = flags.DEFINE_string(
      'metrics', None, 'Regex: only metrics whose name it matches.')
  _FLAGS['all'] = flags.DEFINE_bool(
      'all', False, 'Also breakdowns (relation/..., instrument/...), not only '
      '<eval>/<metric>.')
  _FLAGS['bootstrap'] = flags.DEFINE_integer(
      'bootstrap', confidence.NUM_RESAMPLES, 'Resamples of the paired '
      'bootstrap (non-binary outcomes).', lower_bound=1)
  _FLAGS['seed'] = flags.DEFINE_integer('seed', 0, 'Resampling seed.')
  flags.mark_flags_as_required(['a', 'b'])


def parse_side(spec: str) -> tuple[str, int | None]:
  """``'DIR@300'`` → ``('DIR', 300)``; ``'DIR'`` → ``('DIR', None)``."""
  workdir, sep, step = spec.rpartition('@')
  if not sep:
    return spec, None
  try:
    return workdir, int(step)
  except ValueError:
    raise ValueError(f'{spec!r}: the part after @ must be a step number'
                     ) from None


def outcomes_at(workdir: str, step: int | None
                ) -> tuple[int, dict[str, object]]:
  """The step (given, or the last with outcomes) and ``{metric: [n]}``.

  Raises:
    ValueError: no outcomes stored in ``workdir``, or none at ``step``.
  """
  stored = writers.read_outcomes(workdir)
  steps = sorted({s for by_step in stored.values() for s in by_step})
  if not steps:
    raise ValueError(f'{workdir}: no per-example outcomes stored (outcomes/); '
                     'evaluate it with python -m vlg.tools.eval --force')
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ValueError(f'{workdir}: no outcomes at step {step}; steps with '
                     f'outcomes: {steps}')
  return step, {m: by_step[step] for m, by_step in stored.items()
                if step in by_step}


def report(a: str, b: str, *, metrics: str | None = None,
           every: bool = False, num_resamples: int = confidence.NUM_RESAMPLES,
           seed: int = 0) -> str:
  """The table :func:`main` prints."""
  (dir_a, step_a), (dir_b, step_b) = parse_side(a), parse_side(b)
  step_a, out_a = outcomes_at(dir_a, step_a)
  step_b, out_b = outcomes_at(dir_b, step_b)
  pattern = re.compile(metrics) if metrics else None
  names = sorted(n for n in set(out_a) & set(out_b)
                 if (every or curves_lib.is_headline(n)) and
                 (pattern is None or pattern.search(n)))
  lines = [f'a = {dir_a} at step {step_a}; b = {dir_b} at step {step_b}',
           '| metric | n | a | b | b − a [95% CI] | test | p | '
           'significant (p < 0.05) |',
           '| --- | --- | --- | --- | --- | --- | --- | --- |']
  skipped = []
  for name in names:
    if out_a[name].size != out_b[name].size:
      skipped.append(f'{name} ({out_a[name].size} against '
                     f'{out_b[name].size} examples)')
      continue
    if not out_a[name].size:
      continue
    c = confidence.paired_test(out_a[name], out_b[name],
                               num_resamples=num_resamples, seed=seed)
    lines.append(f'| {name} | {c.n} | {c.a:.4f} | {c.b:.4f} | '
                 f'{c.difference:+.4f} [{c.low:+.4f}, {c.high:+.4f}] | '
                 f'{c.test} | {c.p_value:.4g} | '
                 f'{"yes" if c.significant else "no"} |')
  if len(lines) == 3:
    lines.append('(no metric that both runs stored'
                 + (f' matching --metrics={metrics!r}' if metrics else '')
                 + ')')
  if skipped:
    lines.append('not paired (different benchmark files?): '
                 + ', '.join(skipped))
  return '\n'.join(lines)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    print(report(_FLAGS['a'].value, _FLAGS['b'].value,
                 metrics=_FLAGS['metrics'].value, every=_FLAGS['all'].value,
                 num_resamples=_FLAGS['bootstrap'].value,
                 seed=_FLAGS['seed'].value))
  except ValueError as e:
    raise app.UsageError(str(e)) from None


if __name__ == '__main__':
  define_flags()
  app.run(main)
