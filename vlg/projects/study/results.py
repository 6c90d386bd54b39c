"""The built-in study's results: seed means, best steps and the claims.

Pure aggregation over the runs of ``python -m vlg.tools.study``:
each run is one model family trained with one seed, and its curves are
``{metric: {step: value}}`` as ``vlg.writers.metric_curves`` reads them from
``DIR/runs/<model>/seed<k>/metrics.jsonl``.

- :data:`COLUMNS`: the first table of docs/benchmarks.md §10 in the
  synthetic evaluators' metric keys (``vlg.evaluators.synthetic``): VSR
  random and zero-shot, the VALSE pieces, SVO, Winoground group, retrieval
  and paragraph retrieval R@1/5;
- :func:`aggregate`: per model and column, mean ± std over seeds at the
  final step and at the column's best step (the step where the seed-mean
  curve peaks; the earliest wins a tie), each seed's own best step, and the
  claims of the papers checked against twice the seed-to-seed std and,
  where the runs stored per-example outcomes (:func:`load_outcomes`), by a
  paired test over the benchmark's examples (each example's outcome
  averaged over seeds; ``vlg.analysis.confidence.paired_test``); whether
  the relation models peak later than their baselines, and what a
  retrieval-based checkpoint selector costs each fine-grained skill
  (``vlg.projects.study.selection``);
- :func:`results_markdown`: the tables and a plain-language summary written
  from those numbers;
- :func:`write_results`: ``results.json``, ``results.md`` and ``curves.png``.

The std is the sample std over seeds (ddof 1); with one seed it is
undefined (NaN, ``null`` in JSON) and no claim can be judged.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vlg import writers
from vlg.analysis import confidence
from vlg.analysis import curves as curves_lib
from vlg.projects.study import selection as selection_lib

RUNS_DIR = 'runs'
# Written into a run's directory once its training reached the final step.
DONE_FILE = 'study_done.json'
MODELS = ('albef', 'xvlm', 'realbef', 'rexvlm')
MODEL_NAMES = {'albef': 'ALBEF', 'xvlm': 'X-VLM', 'realbef': 'ReALBEF',
               'rexvlm': 'ReX-VLM'}

# (metric key, column label), in the layout of docs/benchmarks.md §10.
COLUMNS: tuple[tuple[str, str], ...] = (
    ('vsr_random_dev/accuracy', 'VSR rand dev'),
    ('vsr_random_test/accuracy', 'VSR rand test'),
    ('vsr_zeroshot_dev/accuracy', 'VSR 0-shot dev'),
    ('vsr_zeroshot_test/accuracy', 'VSR 0-shot test'),
    ('valse/acc_r', 'VALSE'),
    ('valse/existence/acc_r', 'VALSE existence'),
    ('valse/plurality/acc_r', 'VALSE plurality'),
    ('valse/counting/acc_r', 'VALSE counting'),
    ('valse/relations/acc_r', 'VALSE relations'),
    ('valse/actions/acc_r', 'VALSE actions'),
    ('svo_probes/accuracy', 'SVO'),
    ('winoground/group', 'Winoground group'),
    ('retrieval/tr_r1', 'Retr TR@1'),
    ('retrieval/tr_r5', 'Retr TR@5'),
    ('retrieval/ir_r1', 'Retr IR@1'),
    ('retrieval/ir_r5', 'Retr IR@5'),
    ('paragraphs/tr_r1', 'Para TR@1'),
    ('paragraphs/tr_r5', 'Para TR@5'),
    ('paragraphs/ir_r1', 'Para IR@1'),
    ('paragraphs/ir_r5', 'Para IR@5'),
)
# Column labels, and those of the claims' skills outside the table.
LABELS = {**dict(COLUMNS), 'valse/actant-swap/acc_r': 'VALSE actant swap'}

VSR_SKILLS = ('vsr_random_dev/accuracy', 'vsr_random_test/accuracy',
              'vsr_zeroshot_dev/accuracy', 'vsr_zeroshot_test/accuracy')
# Relations and their direction, as the synthetic world's benchmarks test
# them (docs/benchmarks.md §9): VALSE relations and actant swap, word order.
RELATION_SKILLS = ('valse/relations/acc_r', 'valse/actant-swap/acc_r',
                   'winoground/group')
PARAGRAPH_SKILLS = ('paragraphs/ir_r1', 'paragraphs/tr_r1')
# The skills a COCO-style selector is judged on: all but retrieval.
FINE_GRAINED = tuple(k for k, _ in COLUMNS
                     if not k.startswith(('retrieval/', 'paragraphs/')))
# (model, baseline, skills or None for every column, what the papers claim).
CLAIMS: tuple[tuple[str, str, tuple[str, ...] | None, str], ...] = (
    ('rexvlm', 'xvlm', VSR_SKILLS, 'ReX-VLM beats X-VLM on VSR'),
    ('rexvlm', 'xvlm', PARAGRAPH_SKILLS,
     'ReX-VLM beats X-VLM on paragraph retrieval'),
    ('realbef', 'albef', PARAGRAPH_SKILLS,
     'ReALBEF beats ALBEF on paragraph retrieval'),
    ('rexvlm', 'albef', VSR_SKILLS + RELATION_SKILLS,
     'ReX-VLM beats ALBEF on the VSR-style and relation skills'),
    ('realbef', 'albef', VSR_SKILLS, 'ReALBEF beats ALBEF on VSR'),
    ('xvlm', 'albef', None, 'X-VLM beats ALBEF'),
)
# (relation model, its baseline): the relation models reach their best later.
LATER = (('realbef', 'albef'), ('rexvlm', 'xvlm'))

Runs = Mapping[str, Mapping[int, curves_lib.Curves]]


def run_dir(out: str, model: str, seed: int) -> str:
  """The directory of one run of a study in ``out``."""
  return os.path.join(out, RUNS_DIR, model, f'seed{seed}')


def load_runs(out: str) -> dict[str, dict[int, dict]]:
  """``{model: {seed: curves}}`` of the finished runs under ``out``.

  A run counts once its :data:`DONE_FILE` is written; unfinished runs are
  left out (their last step is not the study's final step).
  """
  root = os.path.join(out, RUNS_DIR)
  runs: dict[str, dict[int, dict]] = {}
  if not os.path.isdir(root):
    return runs
  for model in sorted(os.listdir(root)):
    for name in sorted(os.listdir(os.path.join(root, model))):
      match = re.fullmatch(r'seed(\d+)', name)
      path = os.path.join(root, model, name)
      if match and os.path.exists(os.path.join(path, DONE_FILE)):
        runs.setdefault(model, {})[int(match.group(1))] = (
            writers.metric_curves(path))
  return runs


def load_outcomes(out: str) -> dict[str, dict[int, dict]]:
  """``{model: {seed: {metric: {step: [n]}}}}`` of the finished runs'
  stored per-example outcomes (``writers.read_outcomes``)."""
  return {model: {seed: writers.read_outcomes(run_dir(out, model, seed))
                  for seed in seeds}
          for model, seeds in load_runs(out).items()}


def seed_mean_outcomes(seed_outcomes: Mapping[int, Mapping[str, Any]],
                       key: str, step: int) -> np.ndarray | None:
  """Each example's outcome of ``key`` at ``step``, averaged over seeds;
  None unless every seed stored it (with the same examples)."""
  vectors = [o.get(key, {}).get(step) for o in seed_outcomes.values()]
  if not vectors or any(v is None for v in vectors) or len(
      {v.size for v in vectors}) > 1:
    return None
  return np.mean(np.stack(vectors), axis=0)


def _ordered_models(runs: Runs) -> list[str]:
  known = [m for m in MODELS if m in runs]
  return known + sorted(m for m in runs if m not in MODELS)


def _stats(values: Sequence[float], **extra: Any) -> dict[str, Any]:
  """``selection.seed_stats`` (mean, sample std, n, values) plus ``extra``."""
  return dict(selection_lib.seed_stats(values), **extra)


def column_stats(seed_curves: Mapping[int, curves_lib.Curves],
                 key: str) -> dict[str, Any] | None:
  """Final-step and best-step statistics of metric ``key`` over seeds.

  Returns None if no seed logged ``key``. Otherwise ``final`` (each seed's
  value at its last evaluated step) and ``best`` (the values at the step
  where the seed-mean curve, over the steps every seed logged, peaks) as
  ``{mean, std, n, values, step}``, plus ``seed_best_steps`` (each seed's
  own best step) and ``mean_curve`` (``{step: mean}``).

  Raises:
    ValueError: the seeds' last evaluated steps differ.
  """
  curves = {seed: curves_lib.numeric(c.get(key, {}))
            for seed, c in sorted(seed_curves.items())}
  curves = {seed: c for seed, c in curves.items() if c}
  if not curves:
    return None
  finals = {seed: max(c) for seed, c in curves.items()}
  if len(set(finals.values())) > 1:
    raise ValueError(f'{key}: the seeds end at different steps {finals}; '
                     'a study compares runs of the same length')
  common = sorted(set.intersection(*(set(c) for c in curves.values())))
  mean_curve = {s: float(np.mean([c[s] for c in curves.values()]))
                for s in common}
  best, _ = curves_lib.best_step(mean_curve)
  final = next(iter(finals.values()))
  return dict(
      final=_stats([c[final] for c in curves.values()], step=final),
      best=_stats([c[best] for c in curves.values()], step=best),
      seed_best_steps={seed: curves_lib.best_step(c)[0]
                       for seed, c in curves.items()},
      mean_curve=mean_curve)


def compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
  """Margin of ``a`` over ``b`` (two ``final``/``best`` stats) and whether
  it exceeds twice the pooled seed std sqrt((std_a² + std_b²) / 2)."""
  margin = a['mean'] - b['mean']
  spread = 2 * math.sqrt((a['std'] ** 2 + b['std'] ** 2) / 2)
  if math.isnan(spread):
    verdict = 'unjudged'  # One seed: no spread to compare with.
  elif margin > spread:
    verdict = 'holds'
  elif margin < -spread:
    verdict = 'reversed'
  else:
    verdict = 'within spread'
  return dict(margin=margin, two_std=spread, verdict=verdict)


def _paired(outcomes, model: str, baseline: str, key: str, stats
            ) -> dict[str, Any]:
  """The paired test of ``model`` against ``baseline`` on ``key`` at their
  final steps over the same examples; empty without outcomes."""
  if not outcomes or model not in outcomes or baseline not in outcomes:
    return {}
  a = seed_mean_outcomes(outcomes[model], key,
                         stats[model][key]['final']['step'])
  b = seed_mean_outcomes(outcomes[baseline], key,
                         stats[baseline][key]['final']['step'])
  if a is None or b is None or a.size != b.size or not a.size:
    return {}
  c = confidence.paired_test(b, a)
  return dict(p_value=c.p_value, test=c.test, significant=c.significant,
              num_examples=c.n)


def _claims(stats: Mapping[str, Mapping[str, Any]],
            outcomes=None) -> list[dict[str, Any]]:
  out = []
  for model, baseline, skills, text in CLAIMS:
    if model not in stats or baseline not in stats:
      continue
    keys = [k for k, _ in COLUMNS] if skills is None else list(skills)
    rows = []
    for key in keys:
      a, b = stats[model].get(key), stats[baseline].get(key)
      if a is None or b is None:
        continue
      rows.append(dict(skill=key, **compare(a['final'], b['final']),
                       **_paired(outcomes, model, baseline, key, stats)))
    held = sum(r['verdict'] == 'holds' for r in rows)
    out.append(dict(model=model, baseline=baseline, claim=text, skills=rows,
                    num_held=held, holds=bool(rows) and held == len(rows)))
  return out


def _peaks(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
  """Per model: the distinct best steps of the table's skills."""
  out = {}
  for model, by_key in stats.items():
    steps = {k: s['best']['step'] for k, s in by_key.items()}
    evaluated = {st for s in by_key.values() for st in s['mean_curve']}
    distinct = sorted(set(steps.values()))
    # Skills whose final mean is more than 2 std below their best mean.
    dropped = [k for k, s in by_key.items()
               if compare(s['best'], s['final'])['verdict'] == 'holds']
    out[model] = dict(best_steps=steps, distinct_steps=distinct,
                      num_eval_steps=len(evaluated),
                      different_peaks=len(distinct) >= 2,
                      dropped_after_peak=dropped)
  return out


def aggregate(runs: Runs, outcomes=None) -> dict[str, Any]:
  """The study's numbers from ``{model: {seed: curves}}`` (and, for the
  claims' paired tests, :func:`load_outcomes`'s per-example outcomes).

  Returns:
    ``{'models', 'seeds': {model: [seed]}, 'columns': [{key, label}],
    'stats': {model: {key: column_stats}}, 'claims': [...], 'peaks':
    {model: ...}}``; columns no run logged are left out of ``stats``.
  """
  models = _ordered_models(runs)
  stats = {}
  for model in models:
    by_key = {}
    for key, _ in COLUMNS:
      s = column_stats(runs[model], key)
      if s is not None:
        by_key[key] = s
    stats[model] = by_key
  # Models may end at different steps (the budget preset gives each family
  # its own steps at equal compute); each model's skills share one.
  final_steps = {}
  for model, by_key in stats.items():
    ends = {s['final']['step'] for s in by_key.values()}
    if len(ends) > 1:
      raise ValueError(f'{model}: skills end at different steps '
                       f'{sorted(ends)}')
    if ends:
      final_steps[model] = ends.pop()
  timing = selection_lib.peak_timing(runs, FINE_GRAINED)
  later = [dict(model=m, baseline=b, **compare(timing[m], timing[b]))
           for m, b in LATER if m in timing and b in timing]
  return dict(
      models=models, final_steps=final_steps,
      seeds={m: sorted(runs[m]) for m in models},
      columns=[dict(key=k, label=label) for k, label in COLUMNS],
      stats=stats, claims=_claims(stats, outcomes), peaks=_peaks(stats),
      timing=timing, later=later,
      selection=selection_lib.select({m: runs[m] for m in models},
                                     FINE_GRAINED))


# Reports
# ---------------------------------------------------------------------------


def _cell(stats: Mapping[str, Any] | None) -> str:
  if stats is None or math.isnan(stats['mean']):
    return '—'
  if math.isnan(stats['std']):
    return f'{100 * stats["mean"]:.1f}'
  return f'{100 * stats["mean"]:.1f} ± {100 * stats["std"]:.1f}'


def _table(results: Mapping[str, Any], which: str) -> str:
  keys = [c['key'] for c in results['columns']]
  present = [k for k in keys if any(k in results['stats'][m]
                                    for m in results['models'])]
  header = ['model', 'seeds'] + [LABELS.get(k, k) for k in present]
  rows = []
  for m in results['models']:
    by_key = results['stats'][m]
    rows.append([MODEL_NAMES.get(m, m), str(len(results['seeds'][m]))] +
                [_cell(by_key[k][which] if k in by_key else None)
                 for k in present])
  return curves_lib.markdown_table(header, rows)


def _best_step_table(results: Mapping[str, Any]) -> str:
  keys = [c['key'] for c in results['columns']]
  present = [k for k in keys if any(k in results['stats'][m]
                                    for m in results['models'])]
  rows = []
  for k in present:
    row = [LABELS.get(k, k)]
    for m in results['models']:
      s = results['stats'][m].get(k)
      if s is None:
        row.append('—')
        continue
      seeds = ', '.join(str(v) for v in s['seed_best_steps'].values())
      row.append(f'{s["best"]["step"]} ({seeds})')
    rows.append(row)
  return curves_lib.markdown_table(
      ['skill'] + [MODEL_NAMES.get(m, m) for m in results['models']], rows)


def _pct(x: float) -> str:
  return f'{100 * x:+.1f}'


def _claim_detail(row: Mapping[str, Any]) -> str:
  """'VSR rand dev +10.0 (2σ 4.0, holds, paired p 0.002)'."""
  notes = []
  if not math.isnan(row['two_std']):
    notes += [f'2σ {100 * row["two_std"]:.1f}', row['verdict']]
  if 'p_value' in row:
    notes.append(f'paired p {row["p_value"]:.3g}')
  label = f'{LABELS.get(row["skill"], row["skill"])} {_pct(row["margin"])}'
  return f'{label} ({", ".join(notes)})' if notes else label


def summary_lines(results: Mapping[str, Any]) -> list[str]:
  """The plain-language summary, one line per claim, from the numbers."""
  lines = []
  for c in results['claims']:
    rows = c['skills']
    if not rows:
      continue
    unjudged = all(r['verdict'] == 'unjudged' for r in rows)
    if unjudged:
      head = (f'**{c["claim"]}**: cannot be judged — one seed per model, '
              'so there is no seed-to-seed spread.')
    elif c['holds']:
      head = (f'**{c["claim"]}**: holds on all {len(rows)} skills by more '
              'than twice the seed std.')
    elif c['num_held']:
      head = (f'**{c["claim"]}**: holds on {c["num_held"]} of {len(rows)} '
              'skills only.')
    else:
      head = (f'**{c["claim"]}**: does not show on any of the {len(rows)} '
              'skills (no margin above twice the seed std).')
    details = '; '.join(_claim_detail(r) for r in rows)
    lines.append(f'- {head} Final-step margins in points: {details}.')
  for m, p in results['peaks'].items():
    name = MODEL_NAMES.get(m, m)
    if p['num_eval_steps'] < 2:
      lines.append(f'- {name}: evaluated at one step only; no learning '
                   'dynamics to read.')
      continue
    by_step: dict[int, list[str]] = {}
    for k, st in p['best_steps'].items():
      by_step.setdefault(st, []).append(LABELS.get(k, k))
    steps = ', '.join(f'{st}: {len(names)}' for st, names in
                      sorted(by_step.items()))
    verdict = ('skills peak at different steps' if p['different_peaks'] else
               'every skill peaks at the same step')
    dropped = [LABELS.get(k, k) for k in p['dropped_after_peak']]
    drop = (f'; {len(dropped)} end more than 2σ below their peak '
            f'({", ".join(dropped)})' if dropped else '')
    lines.append(f'- {name}: {verdict} (best step of the seed-mean curve: '
                 f'number of skills — {steps}){drop}.')
  timing = results.get('timing', {})
  for row in results.get('later', []):
    m, b = row['model'], row['baseline']
    lines.append(
        f'- **{MODEL_NAMES.get(m, m)} reaches its best later than '
        f'{MODEL_NAMES.get(b, b)}**: {row["verdict"]} (median best step at '
        f'{100 * timing[m]["mean"]:.0f}% of the run against '
        f'{100 * timing[b]["mean"]:.0f}%; margin {_pct(row["margin"])} '
        f'points of the run, twice the seed std '
        f'{100 * row["two_std"]:.1f}).')
  for m, s in results.get('selection', {}).items():
    worst = max(s['loss'].items(), key=lambda kv: kv[1]['mean'],
                default=None)
    lost = (f'; the most lost there: {LABELS.get(worst[0], worst[0])}, '
            f'{100 * worst[1]["mean"]:.1f} points' if worst else '')
    lines.append(
        f'- {MODEL_NAMES.get(m, m)}: the retrieval-selected checkpoint is '
        f'step {", ".join(str(x) for x in s["steps"].values())} (per seed); '
        f'one step is best for every fine-grained skill in '
        f'{s["num_one_step_best"]} of {s["num_seeds"]} seeds{lost}.')
  return lines


def results_markdown(results: Mapping[str, Any]) -> str:
  """``results.md``: the two tables, the best steps and the summary."""
  finals = results.get('final_steps', {})
  if len(set(finals.values())) <= 1:
    final = f'Final step: {next(iter(finals.values()), None)}.'
  else:  # Equal compute, different steps.
    final = 'Final steps: ' + ', '.join(
        f'{MODEL_NAMES.get(m, m)} {st}' for m, st in finals.items()) + '.'
  return '\n'.join([
      '# Study results', '',
      f'Scores in % (mean ± sample std over seeds). {final}', '',
      '## Summary', '',
      *summary_lines(results), '',
      '## At the final step', '', _table(results, 'final'), '',
      "## At each skill's best step", '',
      'The step where the seed-mean curve peaks (earliest on a tie); the '
      'step per model and skill is in the next table.', '',
      _table(results, 'best'), '',
      '## Best step per skill', '',
      'Best step of the seed-mean curve (each seed\'s own best step).', '',
      _best_step_table(results), '',
      '## The retrieval-selected checkpoint', '',
      'Per run, the step with the best mean of retrieval TR@1 and IR@1; '
      "each fine-grained skill's loss there against its own best step of "
      'the run, in points (mean ± seed std).', '',
      *selection_lib.markdown(results.get('selection', {}), LABELS,
                              MODEL_NAMES), '',
      'Curves of every run: `curves.png`.', ''])


def _json_safe(value: Any) -> Any:
  if isinstance(value, float):
    return None if math.isnan(value) else value
  if isinstance(value, Mapping):
    return {str(k): _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  return value


def write_results(runs: Runs, out: str, outcomes=None) -> dict[str, Any]:
  """Writes ``results.json``, ``results.md`` and ``curves.png`` in ``out``.

  Returns:
    The :func:`aggregate` results.
  """
  results = aggregate(runs, outcomes)
  results['summary'] = summary_lines(results)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'results.json'), 'w') as f:
    json.dump(_json_safe(results), f, indent=1)
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write(results_markdown(results))
  labelled = {f'{m}/seed{s}': c for m in results['models']
              for s, c in sorted(runs[m].items())}
  names = sorted({k for c in labelled.values() for k, _ in COLUMNS
                  if curves_lib.numeric(c.get(k, {}))})
  if names:
    curves_lib.plot_curves(labelled, names).savefig(
        os.path.join(out, 'curves.png'), dpi=80)
  return results
