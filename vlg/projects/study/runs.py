"""The study's runs: presets, each run's config, training and resumption.

The library of ``python -m vlg.tools.study``, whose docstring describes the
presets, the seeds and how a study resumes: :func:`study_config` builds one
run's config, :func:`run_steps` each model's training steps under a preset,
and :func:`run_study` trains (or resumes) every run and then writes the
results (:mod:`vlg.projects.study.results`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence

import ml_collections

from vlg import checkpointing
from vlg import recipes
from vlg.projects.study import results as results_lib
from vlg.synthetic import world

SETTINGS_FILE = 'study.json'
PRESETS = ('budget', 'hour', 'tiny', 'small')
# Steps of every run; budget: each family's recipes.TINY_STEPS.
DEFAULT_STEPS = {'budget': None, 'hour': 100, 'tiny': 600, 'small': 2_000}
# Evaluations per run: every curve has this many points.
CURVE_POINTS = 5
# The hour preset's changes to the tiny config (vlg/tools/study.py).
HOUR = dict(
    batch_size=16,
    eval_batch_size=32,
    model=dict(vision_depth=2),
    parts=dict(entity=dict(batch_size=4), mrc=dict(batch_size=4),
               vsg=dict(batch_size=8)),
)
ConfigHook = Callable[[ml_collections.ConfigDict], None]


def _hour_preset(c: ml_collections.ConfigDict, eval_every: int,
                 shrink: bool = True) -> None:
  """Turns the tiny config ``c`` into the ``hour`` preset's
  (vlg/tools/study.py); ``shrink=False`` keeps the recipe's model and
  batches (``budget``). Both keep the recipe's evaluation sets (200
  examples a file for the pairwise sets, 50 for the others)."""
  c.eval_batch_size = HOUR['eval_batch_size']
  if shrink:
    c.batch_size = HOUR['batch_size']
    c.model.update(HOUR['model'])
    # The recipe's 1,500-step vision stage would cost more than the hour's
    # 100 steps: the hour preset's towers start from scratch.
    c.vision_pretrain.steps = 0
    for name, part in (c.input.get('parts') or {}).items():
      part.update(HOUR['parts'][name])
  # Checkpoints serve resumption only (the curves come from the metrics
  # log): one per evaluation.
  c.ckpt_steps = eval_every
  c.keep_every_steps = None


def study_config(model: str, seed: int, *, steps: int, eval_every: int,
                 preset: str = 'budget', eval_num: int = 0,
                 cache_dir: str = '') -> ml_collections.ConfigDict:
  """The config of one run: ``model`` under ``preset``, with ``seed``.

  Args:
    model: a family of :data:`vlg.projects.study.results.MODELS`.
    seed: the training seed (``config.seed``).
    steps: training steps (the schedule's length too).
    eval_every: every synthetic evaluator's ``log_steps``.
    preset: one of :data:`PRESETS` (vlg/tools/study.py).
    eval_num: examples per synthetic benchmark file, for every set; 0
      keeps the preset's.
    cache_dir: where the synthetic benchmark sets are written; '' keeps
      the default cache.
  """
  if model not in results_lib.MODELS:
    raise ValueError(f'unknown model {model!r}; valid: {results_lib.MODELS}')
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; valid: {PRESETS}')
  if steps < 1 or eval_every < 1:
    raise ValueError(f'steps={steps} and eval_every={eval_every} must be '
                     '>= 1')
  arg = f'{"small" if preset == "small" else "tiny"},evals=True'
  c = (recipes.albef_config(arg) if model == 'albef' else
       recipes.family_config(model, arg))
  c.seed = seed
  c.total_steps = steps
  if preset in ('hour', 'budget'):
    _hour_preset(c, eval_every, shrink=preset == 'hour')
  for entry in c.evals.values():
    entry.log_steps = eval_every
    if eval_num:
      entry.synthetic_num = eval_num
    if cache_dir:
      entry.synthetic_cache = cache_dir
  return c


def default_eval_every(steps: int) -> int:
  """The evaluation interval that gives every curve ``CURVE_POINTS``."""
  return max(1, steps // CURVE_POINTS)


def run_steps(models: Sequence[str], preset: str,
              steps: int | None = None) -> dict[str, int]:
  """Each model's training steps: ``steps`` for all, else the preset's
  (``budget``: the family's ``recipes.TINY_STEPS``, equal compute)."""
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; valid: {PRESETS}')
  if steps:
    return {m: int(steps) for m in models}
  if DEFAULT_STEPS[preset] is None:
    return {m: recipes.TINY_STEPS[m] for m in models}
  return {m: DEFAULT_STEPS[preset] for m in models}


def is_done(workdir: str, steps: int) -> bool:
  """Whether the run in ``workdir`` finished ``steps`` steps."""
  path = os.path.join(workdir, results_lib.DONE_FILE)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return json.load(f).get('steps') == steps


def _last_checkpoint(workdir: str) -> int | None:
  path = checkpointing.checkpoint_dir(workdir)
  steps = [int(d) for d in os.listdir(path) if d.isdigit()] if (
      os.path.isdir(path)) else []
  return max(steps, default=None)


def _check_settings(out: str, settings: dict[str, object]) -> None:
  """Writes ``out/study.json`` or checks that the settings match it."""
  path = os.path.join(out, SETTINGS_FILE)
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    changed = {k: (saved.get(k), v) for k, v in settings.items()
               if saved.get(k) != v}
    if changed:
      raise ValueError(
          f'{path}: this study was started with other settings '
          f'(saved, now): {changed}; use another --out or the same flags')
    return
  os.makedirs(out, exist_ok=True)
  with open(path, 'w') as f:
    json.dump(settings, f, indent=1)


def _shared_inputs(configs: Sequence[ml_collections.ConfigDict]) -> None:
  """Fails unless every run trains on the same data and evaluation sets."""
  def fingerprint(c):
    evals = {name: {k: v for k, v in e.items() if k.startswith('synthetic')}
             for name, e in c.evals.items()}
    return json.dumps(dict(data=c.input.data.to_dict(), evals=evals,
                           tokenizer=c.input.tokenizer.to_dict(),
                           resolution=c.input.resolution), sort_keys=True,
                      default=str)
  prints = {fingerprint(c) for c in configs}
  if len(prints) > 1:
    raise ValueError('the study runs differ in their data or evaluation '
                     'sets; a config hook must change every run alike')


def _share_tokenizer(configs: Sequence[ml_collections.ConfigDict],
                     out: str) -> str:
  """The one tokenizer every run reads; returns its path.

  Runs that name one (``input.tokenizer.path``, e.g. BERT's ``vocab.txt``
  for a BERT-initialised text tower; ``_shared_inputs`` has checked they
  all name the same) keep it. Otherwise one SentencePiece model is trained
  (or reused) in ``out/tokenizer`` and every run is pointed at it.
  """
  from vlg.data import pipeline  # pylint: disable=g-import-not-at-top
  from vlg.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  # Loads a named tokenizer (failing here if it is absent), else trains.
  pipeline.get_tokenizer(configs[0].input, out)
  named = configs[0].input.tokenizer.get('path')
  if named:
    return named
  path = os.path.join(out, 'tokenizer', tokenizer_lib.MODEL_FILE)
  for c in configs:
    c.input.tokenizer.path = path
  return path


def _stage_key(c: ml_collections.ConfigDict) -> str:
  """What a run's labelled vision stage depends on: its settings, the
  tower's fields, the world and the seed (not the family)."""
  tower = {k: v for k, v in c.model.to_dict().items()
           if k.startswith(('vision', 'image', 'patch'))
           or k in ('init_std', 'dtype')}
  data = c.input.data.to_dict()
  for entry in data.values():  # World fields added later, at their neutral
    if isinstance(entry, dict) and isinstance(entry.get('world'), dict):
      entry['world'] = world.settings_for_key(entry['world'])  # value, out.
  return json.dumps(dict(stage=c.vision_pretrain.to_dict(), tower=tower,
                         data=data,
                         resolution=c.input.resolution, seed=c.seed),
                    sort_keys=True, default=str)


def _share_towers(configs: Mapping[tuple[str, int], ml_collections.ConfigDict],
                  out: str, log: Callable[[str], None] = print
                  ) -> dict[int, str]:
  """Trains each seed's labelled vision tower once for every family.

  The stage (vlg/vision_pretrain.py) reads nothing of the family, so the
  runs of one seed would train the same tower four times; here it is
  trained (or reused) once into ``out/towers/seed<k>/tower.npz`` and every
  run of that seed starts from it (``model.init.vision``, the stage off).
  The families then differ only in what they train after it, and the
  study's compute counts the stage once per seed (``tower.json`` beside
  the tower). Runs of a seed whose stages would differ (a config hook
  changed one) keep their own stage.

  Returns:
    {seed: tower path} of the seeds whose runs share a tower.
  """
  from vlg import vision_pretrain  # pylint: disable=g-import-not-at-top
  shared = {}
  for seed in sorted({s for _, s in configs}):
    staged = [c for (_, s), c in configs.items()
              if s == seed and vision_pretrain.enabled(c)]
    keys = {_stage_key(c) for c in staged}
    if len(keys) != 1:  # No stage, or stages that differ.
      continue
    key = keys.pop()
    path = os.path.join(out, 'towers', f'seed{seed}', 'tower.npz')
    key_path = os.path.join(os.path.dirname(path), 'stage.json')
    if os.path.exists(path):
      with open(key_path) as f:
        if f.read() != key:
          raise ValueError(
              f'{path} was trained with other stage settings than these '
              f'runs have ({key_path}); use another --out or the same '
              'settings')
      log(f'seed {seed}: every run starts from the tower in {path}')
    else:
      log(f'seed {seed}: training the labelled vision tower once for every '
          f'run ({staged[0].vision_pretrain.steps} steps) into {path}')
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(key_path, 'w') as f:
        f.write(key)
      vision_pretrain.train_tower(staged[0], path)
    for c in staged:
      c.model.init.vision = path
      c.vision_pretrain.steps = 0
    shared[seed] = path
  return shared


def _duration(seconds: float) -> str:
  return time.strftime('%H:%M:%S', time.gmtime(max(seconds, 0)))


def run_study(out: str, *, models: Sequence[str], seeds: int,
              steps: int | Mapping[str, int], eval_every: int = 0,
              preset: str = 'budget', eval_num: int = 0,
              config_hook: ConfigHook | None = None,
              log: Callable[[str], None] = print) -> dict[str, object]:
  """Trains (or resumes) every run of the study, then writes its results.

  Args:
    out: the study directory.
    models: model families to train, in order.
    seeds: seeds per model (0..seeds-1).
    steps: training steps of every run, or of each model's runs (the
      ``budget`` preset: :func:`run_steps`).
    eval_every: evaluation interval in steps; 0: each run's steps /
      ``CURVE_POINTS``.
    preset: the preset of every run (:data:`PRESETS`).
    eval_num: examples per synthetic benchmark file (0: the preset's).
    config_hook: changes each run's config in place before it trains
      (tests shrink the model with it); it must change every run alike.
    log: receives the progress lines.

  Returns:
    ``{'trained': [(model, seed)], 'skipped': [...], 'interrupted': bool,
    'results': the aggregate or None}``; results are written only when
    every run of the study finished.
  """
  from vlg import train  # pylint: disable=g-import-not-at-top
  unknown = sorted(set(models) - set(results_lib.MODELS))
  if unknown or not models:
    raise ValueError(f'--models={list(models)}: unknown {unknown}; valid: '
                     f'{results_lib.MODELS}')
  if seeds < 1:
    raise ValueError(f'--seeds={seeds} must be >= 1')
  if not isinstance(steps, Mapping):
    steps = {m: int(steps) for m in models}
  missing = [m for m in models if m not in steps]
  if missing:
    raise ValueError(f'no steps for {missing}')
  every = {m: eval_every or default_eval_every(steps[m]) for m in models}
  # One model's settings in study.json: a number when every model shares it.
  def setting(values):
    distinct = {values[m] for m in models}
    return distinct.pop() if len(distinct) == 1 else {
        m: values[m] for m in models}
  _check_settings(out, dict(steps=setting(steps), eval_every=setting(every),
                            preset=preset, eval_num=eval_num))
  cache_dir = os.path.join(out, 'cache')
  plan = [(m, s) for m in models for s in range(seeds)]
  configs = {}
  for model, seed in plan:
    c = study_config(model, seed, steps=steps[model],
                     eval_every=every[model], preset=preset,
                     eval_num=eval_num, cache_dir=cache_dir)
    if config_hook is not None:
      config_hook(c)
    configs[model, seed] = c
  _shared_inputs(list(configs.values()))

  todo = [(m, s) for m, s in plan
          if not is_done(results_lib.run_dir(out, m, s), steps[m])]
  skipped = [p for p in plan if p not in todo]
  log(f'study {out}: {len(plan)} runs ({len(models)} models x {seeds} '
      f'seeds, {setting(steps)} steps, evals every {setting(every)}); '
      f'{len(skipped)} finished, {len(todo)} to train')
  if todo:
    _share_tokenizer(list(configs.values()), out)
    _share_towers({p: configs[p] for p in todo}, out, log)
  start, trained, interrupted = time.time(), [], False
  for i, (model, seed) in enumerate(todo):
    workdir = results_lib.run_dir(out, model, seed)
    resumed = _last_checkpoint(workdir)
    log(f'[{i + 1}/{len(todo)}] {model} seed {seed}: '
        + (f'resuming from step {resumed}' if resumed else 'training')
        + f' in {workdir}')
    t = time.time()
    train.train_and_evaluate(configs[model, seed], workdir)
    seconds = time.time() - t
    reached = _last_checkpoint(workdir)
    if reached != steps[model]:
      log(f'{model} seed {seed} stopped at step {reached} of '
          f'{steps[model]} (interrupted); run the same command again to '
          'resume')
      interrupted = True
      break
    with open(os.path.join(workdir, results_lib.DONE_FILE), 'w') as f:
      json.dump(dict(model=model, seed=seed, steps=steps[model],
                     seconds=seconds, resumed_from=resumed), f)
    trained.append((model, seed))
    elapsed = time.time() - start
    left = len(todo) - i - 1
    rate = (steps[model] - (resumed or 0)) / seconds
    log(f'[{i + 1}/{len(todo)}] {model} seed {seed} done in '
        f'{_duration(seconds)} ({rate:.2f} steps/s with evals and '
        f'compilation); study {_duration(elapsed)}, about '
        f'{_duration(elapsed / (i + 1) * left)} for the {left} left')
  results = None
  if not interrupted:
    runs = results_lib.load_runs(out)
    runs = {m: {s: c for s, c in runs.get(m, {}).items() if s < seeds}
            for m in models}
    results = results_lib.write_results(runs, out,
                                        results_lib.load_outcomes(out))
    log(f'wrote {os.path.join(out, "results.md")}, results.json and '
        'curves.png')
  return dict(trained=trained, skipped=skipped, interrupted=interrupted,
              results=results)
