r"""Plots runs' evaluation curves; prints best steps and checkpoint selection.

  python -m vlg.tools.curves --workdir=workdirs/albef_tiny \
      [--workdir=workdirs/xvlm_tiny ...] --out=curves.png \
      [--skills=REGEX] [--selectors=a/b,c/d] [--tasks=e/f,g/h] \
      [--bootstrap=1000] [--seed=0]

Reads each workdir's ``metrics.jsonl`` (``vlg.tools.eval`` fills in every
kept checkpoint), draws a panel per benchmark or piece with every run as a
line and the chance level where logged (``--out``), and prints per run and
skill the best step and value, the final value and how far final is below
best, then per run the checkpoint-selection table of docs/benchmarks.md §11
(rows: Dev-metric selectors; columns: tasks; cells: the task at the
selector's best checkpoint minus the task at the last checkpoint). The
tables are also written as markdown next to the PNG (``curves.md``).

Where a run stored its evaluators' per-example outcomes
(``WORKDIR/outcomes/``, written by training and ``vlg.tools.eval``), each
curve gets a shaded 95% bootstrap band over examples (``--bootstrap``
resamples, seeded by ``--seed``), and a table gives each skill's best and
final values with their intervals and whether the drop from best to final
is real: a paired test over the same examples (exact McNemar for
right-or-wrong outcomes, the paired bootstrap otherwise; p < 0.05).
"""

from __future__ import annotations

import os
import re

from absl import app
from absl import flags

from vlg import writers
from vlg.analysis import confidence
from vlg.analysis import curves as curves_lib

_WORKDIRS = None
_OUT = None
_SKILLS = None
_SELECTORS = None
_TASKS = None
_BOOTSTRAP = None
_SEED = None


def define_flags() -> None:
  """Defines the flags; called only when run as a program, so that
  tests can import several tools into one process."""
  global _WORKDIRS, _OUT, _SKILLS, _SELECTORS, _TASKS, _BOOTSTRAP, _SEED
  _WORKDIRS = flags.DEFINE_multi_string(
      'workdir', None, 'A run directory with metrics.jsonl (repeat for more '
      'runs).')
  _OUT = flags.DEFINE_string('out', None, 'The PNG to write; the tables go to '
                             'the same name with .md.')
  _SKILLS = flags.DEFINE_string('skills', None, 'Regex: only skills whose name '
                                'it matches (re.search) are summarised and '
                                'plotted.')
  _SELECTORS = flags.DEFINE_list('selectors', None, 'Dev metrics to select '
                                 'checkpoints with (default: headline metrics '
                                 'with a dev/val token).')
  _TASKS = flags.DEFINE_list('tasks', None, 'Metrics to compare (default: the '
                             'headline metrics that are not selectors).')
  _BOOTSTRAP = flags.DEFINE_integer(
      'bootstrap', confidence.NUM_RESAMPLES, 'Bootstrap resamples for the '
      'confidence bands and paired tests (0: no bands).', lower_bound=0)
  _SEED = flags.DEFINE_integer('seed', 0, 'Seed of the bootstrap resampling.')
  flags.mark_flags_as_required(['workdir', 'out'])


def run_labels(workdirs: list[str]) -> list[str]:
  """Short labels: the folder names, or the full paths if two collide."""
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  return names if len(set(names)) == len(names) else list(workdirs)


def confidence_rows(summaries, outcomes, *, num_resamples: int, seed: int
                    ) -> tuple[list[tuple], dict[str, dict]]:
  """Per skill with stored outcomes at its best and final steps: the
  markdown row (intervals, drop, paired test) and the bands to shade.

  Args:
    summaries: ``{run: [SkillSummary]}``.
    outcomes: ``{run: {metric: {step: [n]}}}`` (``writers.read_outcomes``).
    num_resamples: bootstrap resamples.
    seed: the resampling seed.

  Returns:
    (rows, bands): the table rows and ``{run: {metric: {step: (lo, hi)}}}``.
  """
  rows, bands = [], {}
  for label, items in summaries.items():
    stored = outcomes.get(label, {})
    for item in items:
      by_step = stored.get(item.name, {})
      if not by_step:
        continue
      intervals = confidence.curve_intervals(
          by_step, num_resamples=num_resamples, seed=seed)
      bands.setdefault(label, {})[item.name] = {
          step: (i.low, i.high) for step, i in intervals.items()}
      best, final = (intervals.get(item.best_step),
                     intervals.get(item.final_step))
      if best is None or final is None:
        continue
      test = confidence.paired_test(by_step[item.best_step],
                                    by_step[item.final_step],
                                    num_resamples=num_resamples, seed=seed)
      rows.append((label, item.name, item.best_step,
                   f'{best.mean:.4f} [{best.low:.4f}, {best.high:.4f}]',
                   item.final_step,
                   f'{final.mean:.4f} [{final.low:.4f}, {final.high:.4f}]',
                   item.drop, test.test, test.p_value,
                   'yes' if item.drop > 0 and test.significant else 'no'))
  return rows, bands


def report(runs: dict[str, dict], out: str, skills: str | None = None,
           selectors: list[str] | None = None,
           tasks: list[str] | None = None, outcomes: dict | None = None,
           num_resamples: int = confidence.NUM_RESAMPLES,
           seed: int = 0) -> str:
  """Writes the PNG and the markdown tables; returns the markdown text.

  ``outcomes`` (``{run: writers.read_outcomes(workdir)}``) adds the bands
  and the confidence table; ``num_resamples=0`` leaves them out.
  """
  pattern = re.compile(skills) if skills else None
  names = sorted({n for c in runs.values() for n in curves_lib.skill_names(c)
                  if pattern is None or pattern.search(n)})
  if not names:
    raise ValueError('No evaluation metrics in ' + ', '.join(runs) +
                     (f' matching --skills={skills!r}' if skills else '') +
                     '; run python -m vlg.tools.eval first?')
  summaries = {label: curves_lib.summarize(c, [n for n in names if n in c])
               for label, c in runs.items()}
  parts = ['## Best step per skill', '',
           curves_lib.summary_markdown(summaries), '']
  bands = {}
  if outcomes and num_resamples:
    rows, bands = confidence_rows(summaries, outcomes,
                                  num_resamples=num_resamples, seed=seed)
    if rows:
      parts += [
          '## Confidence over examples', '',
          f'95% bootstrap intervals ({num_resamples} resamples of the '
          f'examples, seed {seed}); the drop from best to final is real '
          'when the paired test over the same examples has p < 0.05.', '',
          curves_lib.markdown_table(
              ('run', 'skill', 'best step', 'best [95% CI]', 'final step',
               'final [95% CI]', 'drop', 'paired test', 'p', 'real drop'),
              rows), '']
  for label, c in runs.items():
    table = curves_lib.selection_table(c, selectors, tasks)
    parts += [f'## Checkpoint selection: {label}', '',
              'Gain of each task (column) at the best checkpoint of each '
              'selector (row) over the last checkpoint.', '',
              curves_lib.selection_markdown(table) if table else
              '(no Dev-metric selector in this run; give --selectors)', '']
  text = '\n'.join(parts)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  curves_lib.plot_curves(runs, names, bands=bands).savefig(out, dpi=100)
  with open(os.path.splitext(out)[0] + '.md', 'w') as f:
    f.write(text)
  return text


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  workdirs = _WORKDIRS.value
  labels = dict(zip(run_labels(workdirs), workdirs))
  runs = {label: writers.metric_curves(w) for label, w in labels.items()}
  outcomes = {label: writers.read_outcomes(w) for label, w in labels.items()}
  print(report(runs, _OUT.value, _SKILLS.value, _SELECTORS.value,
               _TASKS.value, outcomes=outcomes,
               num_resamples=_BOOTSTRAP.value, seed=_SEED.value))
  print(f'wrote {_OUT.value} and {os.path.splitext(_OUT.value)[0]}.md')


if __name__ == '__main__':
  define_flags()
  app.run(main)
