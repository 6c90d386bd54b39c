r"""Runs a grid of probes on a trained vlg model and writes the results table.

  python -m vlg.projects.probing.run --config=configs/probe.py:tiny \
      --config.model_workdir=workdirs/albef_tiny --workdir=workdirs/probe

Each cell is (model checkpoint, tap, task, regime, head): ``config.taps`` ×
``config.tasks`` × ``config.regimes`` × ``config.heads``. A cell trains one
probe per seed of ``config.seeds`` with ``config.hparams``, or, with
``config.hpo.enabled``, searches ``config.hpo.n_trials`` TPE trials and
re-runs the best settings per seed (``vlg.projects.probing.hpo``). Output in
``--workdir``:

* ``results.md``: Tables 1–3 of the paper (one per split; rows = model ×
  tap × regime × head, columns = tasks, mean ± std over seeds in %, chance
  and mean-box baselines first) and the VSR per-category table (Table 2);
* ``results.json``: every cell's metrics per seed, their mean/std, the
  HPO's best settings and trials;
* ``predictions/<cell>.seed<k>.npz``: per-example predictions per split for
  ``vlg.projects.probing.analysis``;
* ``features/``: the frozen feature cache; ``metrics.jsonl``: HPO trials.

The grid resumes (``config.resume``, on by default): a cell already in
``results.json`` of ``--workdir``, for the same checkpoint step and the
same settings, is kept and not trained again, so re-running an interrupted
grid only trains what is missing, and cells can be added by widening the
grid. A workdir whose results were made with other settings (hparams,
seeds, data, ...) is refused with the differing fields named; use another
``--workdir`` or ``--config.resume=False`` to train every cell anew.

Data (``config.data``): with ``synthetic=True`` the synthetic RefCOCOg- and
VSR-style sets (``vlg.evaluators.common.synthetic_root``) at the model's
resolution. They have no train split, so the synthetic 'val' split (VSR:
``random/dev``) is divided by image into probe train and validation
(``val_fraction``) and 'test' is the test split. RCM is built by
``vlg.projects.probing.rcm.build_rcm`` within each of those RefCOCOg
splits. Real data: ``data.refcocog.root`` / ``image_root`` (umd
train/val/test) and ``data.vsr.{train,val,test}`` files, ``image_root``,
``categories``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from vlg import benchmarks
from vlg import config_lib
from vlg import restore
from vlg import sharding
from vlg.analysis import curves as curves_lib
from vlg.evaluators import common as eval_common
from vlg.projects.probing import analysis
from vlg.projects.probing import hpo
from vlg.projects.probing import rcm
from vlg.projects.probing import seed_tables
from vlg.projects.probing import stage1
from vlg.projects.probing import taps
from vlg.projects.probing import tasks as tasks_lib
from vlg.projects.probing import train

_CONFIG = None
_WORKDIR = None

# Probe task name → the results table's column key.
TABLE_TASK = {'refcocog_box': 'refcocog', 'vsr': 'vsr', 'rcm': 'rcm'}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags in ``flag_values``; called only when run as a program
  (tests parse a command line into their own ``flags.FlagValues``)."""
  global _CONFIG, _WORKDIR
  _CONFIG = config_flags.DEFINE_config_file(
      'config', None, 'A probe config file, e.g. configs/probe.py:tiny.',
      flag_values=flag_values, lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder: results, '
                                 'predictions, feature cache, metrics.jsonl.',
                                 flag_values=flag_values)
  flags.mark_flags_as_required(['config', 'workdir'], flag_values=flag_values)


# Data
# ---------------------------------------------------------------------------


def split_by_group(examples: Sequence[Any], fraction: float, seed: int,
                   group: Callable[[Any], str]) -> tuple[list[Any], list[Any]]:
  """Splits examples into (train, val) by group (image), deterministically.

  ``ceil(fraction · groups)`` randomly chosen groups go to validation.
  """
  groups = sorted({group(e) for e in examples})
  if len(groups) < 2:
    raise ValueError(f'cannot split {len(examples)} examples of '
                     f'{len(groups)} image(s) into train and validation')
  order = np.random.default_rng(seed).permutation(len(groups))
  n_val = min(len(groups) - 1, max(1, int(np.ceil(fraction * len(groups)))))
  val_groups = {groups[i] for i in order[:n_val]}
  return ([e for e in examples if group(e) not in val_groups],
          [e for e in examples if group(e) in val_groups])


def _refcocog_refs(data: ml_collections.ConfigDict, root: str | None
                   ) -> tuple[dict[str, list[benchmarks.RefExample]], str]:
  if root is not None:
    folder = os.path.join(root, 'refcocog')
    dev = list(benchmarks.load_refcocog(folder, split='val'))
    train_refs, val_refs = split_by_group(dev, data.val_fraction,
                                          data.split_seed,
                                          lambda r: r.image_file)
    test = list(benchmarks.load_refcocog(folder, split='test'))
    return ({'train': train_refs, 'val': val_refs, 'test': test},
            os.path.join(folder, 'images'))
  cfg = data.refcocog
  if not cfg.root:
    raise ValueError('config.data.refcocog.root is empty (and '
                     'config.data.synthetic is False)')
  return ({s: list(benchmarks.load_refcocog(cfg.root, split=s))
           for s in ('train', 'val', 'test')}, cfg.image_root)


def _vsr(data: ml_collections.ConfigDict, root: str | None
         ) -> dict[str, list[tasks_lib.ProbeExample]]:
  if root is not None:
    folder = os.path.join(root, 'vsr')
    categories = benchmarks.load_vsr_categories(
        os.path.join(folder, 'rel_meta_category_dict.txt'))
    images = os.path.join(folder, 'images')
    dev = tasks_lib.vsr_examples(benchmarks.load_vsr(
        os.path.join(folder, 'random', 'dev.jsonl')), images, categories)
    train_ex, val_ex = split_by_group(dev, data.val_fraction, data.split_seed,
                                      lambda e: e.group)
    test = tasks_lib.vsr_examples(benchmarks.load_vsr(
        os.path.join(folder, 'random', 'test.jsonl')), images, categories)
    return {'train': train_ex, 'val': val_ex, 'test': test}
  cfg = data.vsr
  missing = [s for s in ('train', 'val', 'test') if not cfg.get(s)]
  if missing:
    raise ValueError(f'config.data.vsr.{missing} are empty (and '
                     'config.data.synthetic is False)')
  categories = (benchmarks.load_vsr_categories(cfg.categories)
                if cfg.categories else {})
  return {s: tasks_lib.vsr_examples(benchmarks.load_vsr(cfg[s]),
                                    cfg.image_root, categories)
          for s in ('train', 'val', 'test')}


def task_splits(config: ml_collections.ConfigDict, task: str,
                resolution: int) -> dict[str, list[tasks_lib.ProbeExample]]:
  """The train/val/test probe examples of ``task`` (module docstring)."""
  data = config.data
  root = (eval_common.synthetic_root(resolution, data.synthetic_seed,
                                     data.synthetic_num)
          if data.synthetic else None)
  if task == 'vsr':
    return _vsr(data, root)
  refs, image_root = _refcocog_refs(data, root)
  if task == 'refcocog_box':
    return {s: tasks_lib.refcocog_examples(
        r, image_root, {k: analysis.coco_supercategory_of(k)
                        for k in {x.category_id for x in r}}
        if not data.synthetic else None) for s, r in refs.items()}
  if task == 'rcm':
    cap = int(data.rcm.max_per_cell) or None
    return {s: tasks_lib.rcm_examples(
        rcm.build_rcm(r, seed=data.rcm.seed, max_per_cell=cap).examples,
        image_root) for s, r in refs.items()}
  raise ValueError(f'config.tasks: unknown task {task!r}; valid: '
                   f'{list(tasks_lib.TASKS)}')


# The grid
# ---------------------------------------------------------------------------


def cell_name(model: str, tap: str, task: str, regime: str, head: str) -> str:
  """A file-name-safe name of one cell."""
  spec = taps.parse_spec(tap)
  return '.'.join([model, spec.tap.replace(':', ''), spec.reduce, task,
                   regime, head])


def run_cell(encoder, spec, task, splits, inputs, config, hp, *, regime, name,
             workdir, log) -> dict[str, Any]:
  """Trains one cell's probes (per seed, or HPO then per seed)."""
  cache = config.cache_dir or os.path.join(workdir, 'features')

  def train_fn(h):
    start, epochs = time.time(), [0]

    def progress(line):  # One line per epoch, with the time left.
      epochs[0] += 1
      spent = time.time() - start
      left = spent / epochs[0] * (h.epochs - epochs[0])
      log(f'  seed {h.seed}: {line} [{spent:.0f}s, at most {left:.0f}s '
          'left]')
    return train.train_probe(encoder, spec, task, splits, inputs, h,
                             regime=regime, cache_dir=cache, log=progress)
  out: dict[str, Any] = {}
  if config.hpo.enabled:
    search = hpo.run_search(
        train_fn, hp, task, regime, cell=name, n_trials=config.hpo.n_trials,
        startup_trials=config.hpo.startup_trials,
        epochs=tuple(config.hpo.epochs) or None, seeds=tuple(config.seeds),
        metrics_path=os.path.join(workdir, 'metrics.jsonl'), log=log)
    results = search.seed_results
    out.update(best_params=search.best_params, trials=search.trials)
  else:
    results = {s: train_fn(dataclasses.replace(hp, seed=s))
               for s in config.seeds}
  folder = os.path.join(workdir, 'predictions')
  os.makedirs(folder, exist_ok=True)
  for seed, r in results.items():
    np.savez(os.path.join(folder, f'{name}.seed{seed}.npz'), **r.predictions)
  out['seeds'] = {int(s): r.metrics for s, r in results.items()}
  out['summary'] = {k: list(v) for k, v in
                    hpo.summarise(list(results.values())).items()}
  return out


def results_markdown(cells: Sequence[dict[str, Any]]) -> str:
  """Tables 1–3 per split (``vlg.projects.probing.seed_tables.results_table``)
  and the VSR per-category table (Table 2), mean ± std over seeds."""
  parts = []
  for split in ('val', 'test'):
    rows, mean_box = [], None
    for c in cells:
      task = tasks_lib.get_task(c['task'])
      for seed, m in c['seeds'].items():
        rows.append({'model': c['model'], 'tap': c['tap'],
                     'regime': c['regime'], 'head': c['head'],
                     'task': TABLE_TASK[c['task']], 'seed': seed,
                     'value': m[f'{split}/{task.headline}']})
        mean_box = m.get(f'{split}/mean_box/acc@0.5', mean_box)
    if rows:
      parts.append(f'## {split}\n\n'
                   + seed_tables.results_table(rows, mean_box))
  vsr = [c for c in cells if c['task'] == 'vsr']
  names = sorted({k.split('/', 2)[2] for c in vsr for k in c['summary']
                  if k.startswith('test/category/')})
  if names:
    table = [[c['model'], c['tap'], c['regime'], c['head']] + [
        str(seed_tables.mean_std([m.get(f'test/category/{n}', np.nan)
                                  for m in c['seeds'].values()]))
        for n in names] for c in vsr]
    parts.append('## VSR test accuracy per category\n\n' +
                 curves_lib.markdown_table(
                     ['model', 'tap', 'regime', 'head', *names], table))
  return '\n\n'.join(parts) + '\n'


@dataclasses.dataclass
class Source:
  """What a probe grid reads: an encoder and how to feed it."""
  name: str
  encoder: train.Encoder
  tokenizer: Any
  resolution: int
  step: int
  mesh: jax.sharding.Mesh
  close: Callable[[], None]


def load_source(config: ml_collections.ConfigDict) -> Source:
  """The trained vlg model of ``model_workdir``, or with
  ``resampler_workdir`` the Q-Former of a ``vlg.projects.probing.stage1``
  run on its frozen tower."""
  if config.get('resampler_workdir'):
    trained = stage1.load_resampler(config.resampler_workdir,
                                    mode=config.resampler_mode)
    mesh = sharding.make_mesh((-1, 1, 1))
    encoder = train.resampler_encoder(trained.module, trained.cache_id)
    # Restored onto one device; the probe's steps run under this mesh,
    # which spans every device, so the weights are replicated over it.
    encoder = dataclasses.replace(encoder, params=jax.device_put(
        encoder.params, sharding.replicated(mesh)))
    return Source(
        name=os.path.basename(os.path.normpath(config.resampler_workdir)),
        encoder=encoder, tokenizer=trained.tokenizer,
        resolution=trained.resolution, step=trained.step, mesh=mesh,
        close=lambda: None)
  run = restore.load_run(config.model_workdir,
                         step=None if config.step < 0 else config.step)
  return Source(
      name=os.path.basename(os.path.normpath(config.model_workdir)),
      encoder=train.model_encoder(run), tokenizer=run.tokenizer,
      resolution=int(run.config.input.resolution), step=run.step,
      mesh=run.mesh, close=run.close)


# Config fields that choose cells rather than how a cell is trained: a
# resumed grid may differ from the earlier one in these.
GRID_FIELDS = ('taps', 'tasks', 'regimes', 'heads', 'resume', 'cache_dir')


def _cell_key(cell: dict[str, Any]) -> tuple[Any, ...]:
  return tuple(cell[k] for k in ('model', 'step', 'tap', 'task', 'regime',
                                 'head'))


def _flat(tree: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f'{prefix}{k}.'))
    return out
  return {prefix[:-1]: tree}


def finished_cells(config: ml_collections.ConfigDict, workdir: str
                   ) -> list[dict[str, Any]]:
  """The cells of ``workdir/results.json`` if it was made with the same
  settings as ``config`` (up to :data:`GRID_FIELDS`); [] if there is none.

  Raises:
    ValueError: the results were made with other settings, naming them.
  """
  path = os.path.join(workdir, 'results.json')
  if not config.get('resume', True) or not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      earlier = json.load(f)
    earlier_config, cells = earlier['config'], list(earlier['cells'])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f'{path} is not a readable results file ({e}); move it '
                     'away, or use another --workdir') from e
  # Through JSON, as results.json was written: tuples become lists.
  now = _flat(json.loads(json.dumps(config.to_dict(), default=float)))
  then = _flat(earlier_config)
  differ = sorted(k for k in set(now) | set(then)
                  if k.split('.')[0] not in GRID_FIELDS
                  and now.get(k) != then.get(k))
  if differ:
    shown = ', '.join(f'{k}: {then.get(k)!r} then, {now.get(k)!r} now'
                      for k in differ[:6])
    raise ValueError(
        f'{workdir} holds probe results made with other settings ({shown}'
        f'{", ..." if len(differ) > 6 else ""}); use another --workdir, or '
        '--config.resume=False to train every cell anew')
  return cells


def check_synthetic_resolution(resolution: int, source: str,
                               overridden: bool) -> None:
  """Fails, naming ``source`` and the fix, when the synthetic probe sets
  would be drawn below the resolution the synthetic world renders at (a
  converted checkpoint keeps its own, 32 px for the ALBEF test fixture)."""
  from vlg.synthetic import world  # pylint: disable=g-import-not-at-top
  if resolution >= world.MIN_RESOLUTION:
    return
  where = ('config.data.resolution' if overridden else
           f'the resolution of {source}')
  raise ValueError(
      f'probing {source} on the synthetic sets at {resolution} px '
      f'({where}), below the {world.MIN_RESOLUTION} px the synthetic world '
      f'renders at; set --config.data.resolution={world.MIN_RESOLUTION}, '
      'or for a converted checkpoint convert it again with python -m '
      f'vlg.tools.convert ... --resolution={world.MIN_RESOLUTION}, which '
      'resizes the position embeddings as ALBEF does')


def run_grid(config: ml_collections.ConfigDict, workdir: str,
             log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Runs every cell of ``config`` and writes the results (module doc),
  rewritten after every cell so an interrupted grid keeps what it did."""
  for spec in config.taps:
    taps.parse_spec(spec)  # Fail on a bad tap before loading anything.
  for t in config.tasks:
    tasks_lib.get_task(t)
  earlier = finished_cells(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  source = load_source(config)
  model = config.model_name or source.name
  resolution = int(config.data.resolution or source.resolution)
  inputs = train.Inputs(source.tokenizer, resolution=resolution,
                        max_text_len=config.max_text_len,
                        max_words=config.max_text_len)
  encoder = source.encoder
  done = {_cell_key(c): c for c in earlier}
  cells = []
  try:
    if config.data.synthetic:
      check_synthetic_resolution(resolution, source.name,
                                 bool(config.data.resolution))
    # Every task's examples first: a set that cannot be built (e.g. too few
    # expressions per RCM cell) fails before hours of training, not after.
    all_splits = {t: task_splits(config, t, resolution)
                  for t in config.tasks}
    with jax.set_mesh(source.mesh):
      for task_name in config.tasks:
        task = tasks_lib.get_task(task_name)
        splits = all_splits[task_name]
        log(f'{task_name}: ' + ', '.join(f'{s} {len(v)}'
                                         for s, v in splits.items()))
        for tap in config.taps:
          spec = taps.parse_spec(tap)
          for regime in config.regimes:
            for head in config.heads:
              name = cell_name(model, tap, task_name, regime, head)
              hp = train.HParams(**{**config.hparams.to_dict(), 'head': head})
              cell = dict(model=model, step=source.step, tap=spec.key,
                          task=task_name, regime=regime, head=head)
              if _cell_key(cell) in done:
                cells.append(done.pop(_cell_key(cell)))
                log(f'cell {name}: kept from {workdir}/results.json')
                continue
              log(f'cell {name}')
              cell.update(run_cell(encoder, spec, task, splits, inputs,
                                   config, hp, regime=regime, name=name,
                                   workdir=workdir, log=log))
              cells.append(cell)
              # Earlier cells outside this grid are kept, after its own.
              _write_results(workdir, config, model, source.step,
                             cells + list(done.values()))
              log(f'{name}: ' + ', '.join(
                  f'{k} {v[0]:.4f}±{v[1]:.4f}'
                  for k, v in cell['summary'].items()
                  if k.endswith(task.headline) and k.count('/') == 1))
  finally:
    source.close()
  return cells


def _write_results(workdir, config, model, step, cells) -> None:
  """(Re)writes results.json and results.md with the cells done so far."""
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump({'config': config.to_dict(), 'cells': cells}, f, indent=1,
              default=float)
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(f'# Probing {model} (step {step})\n\n'
            + results_markdown(cells))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not (_CONFIG.value.model_workdir or _CONFIG.value.resampler_workdir):
    raise app.UsageError('set --config.model_workdir to a trained vlg run '
                         '(or --config.resampler_workdir to a stage-1 run)')
  run_grid(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=config_lib.parse_flags)
