r"""The built-in study: ALBEF, X-VLM, ReALBEF and ReX-VLM over several seeds.

  python -m vlg.tools.study --out=DIR [--seeds=3] [--preset=budget] \
      [--steps=N] [--eval_every=N] [--models=albef,xvlm,realbef,rexvlm]

Trains each model family (``vlg/recipes.py``) under one preset on the same
synthetic data, once per seed, with every synthetic evaluator
(``vlg.evaluators.synthetic``) running every ``--eval_every`` steps
(default: a run's steps / 5, so every curve has five points) and at the
end, then writes ``DIR/results.md``, ``DIR/results.json`` and
``DIR/curves.png`` (``vlg.projects.study.results``).

Presets. ``budget`` (the default) compares the families at equal training
compute: each trains its tiny recipe (the labelled vision stage, then its
own ``recipes.TINY_STEPS``; about 37 TFLOP a run by XLA's count, stage
included; the stage is trained once per seed for all four families, so 4
models x 3 seeds spend ~346 TFLOP), with the evaluation settings of
``hour`` below. ``tiny`` and ``small`` are the recipes' variants as they
are, every family for the same steps (``tiny``: 600 steps unless
``--steps``). ``hour`` is
``tiny`` sized so that 4 models x 3 seeds fit an hour on a 2-core CPU; at
its 100 steps ITM has not yet left its 1:2 prior (docs/results.md), so it
shows the early curves only:

- batch 16 captions and the typed parts' tiny batches (entity 4, MRC 4,
  VSG 8; the parts keep their ratios to the captions). VSG keeps K = 8 at
  64 tokens: whole triplets are kept while they fit, about 3 (measured:
  32 tokens keep one triplet in most texts, which would starve the very
  objective the study is about);
- a 2-layer ViT (tiny has 4; width, text and fusion stacks unchanged):
  cheaper train steps and evaluation rounds, and a faster compile;
- no labelled vision stage (the recipe's 1,500 stage steps would cost
  more than the 100 training steps);
- as in the recipes, 200 examples per file for the pairwise sets (VSR x
  4, VALSE, SVO, Winoground), whose accuracies carry the claims (binomial
  std of one accuracy ~3.5 points instead of ~7 at 50); retrieval,
  paragraph retrieval and RefCOCOg keep 50, since the ITM re-scoring of
  retrieval costs images x k_test fusions;
- evaluation batches of 32 rows, one checkpoint per evaluation (they serve
  resumption only), and 100 steps, which is what fits.

The same world, resolution and benchmark sets as ``tiny``: nothing is
made easier. The preset's measured step rates, evaluation and compile
times are in docs/results.md.

A seed is the config's ``seed``: the parameter initialisation, the ITM
negatives, and the order and augmentation of the training examples. It
leaves the synthetic world (``input.data.synthetic.world``) and the
benchmark sets (``evals.*.synthetic_seed``) alone, so every run sees the
same images and is scored on the same examples; one tokenizer, trained once
into ``DIR/tokenizer``, serves every run.

Runs go to ``DIR/runs/<model>/seed<k>`` one after another in this process.
Where the runs train the labelled vision stage (``budget``, ``tiny``), it
depends on the seed and not on the family, so each seed's tower is trained
once into ``DIR/towers/seed<k>/`` and all four families start from it:
the families differ only in what they train after it, and the study's
compute counts the stage once per seed (its ``tower.json``).
Running the same command again resumes the study: a run whose training
reached the final step (marker file ``study_done.json``) is skipped, a
killed run continues from its last checkpoint (``vlg.train``), and only
then are the results written. ``DIR/study.json`` keeps the settings that
must not change within a study (steps, eval interval, preset); more seeds
or models can be added later. JAX's persistent compilation cache lives in
``DIR/cache/jax`` so that later seeds of a model reuse its compiled steps.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags

from vlg import compilation_cache
from vlg import huge_pages
from vlg.projects.study import results as results_lib
from vlg.projects.study import runs

_OUT = None
_SEEDS = None
_STEPS = None
_MODELS = None
_EVAL_EVERY = None
_PRESET = None
_EVAL_NUM = None
_COMPILATION_CACHE = None


def define_flags() -> None:
  """Defines the flags; called only when run as a program, so that
  tests can import several tools into one process."""
  global _OUT, _SEEDS, _STEPS, _MODELS, _EVAL_EVERY, _PRESET, _EVAL_NUM
  global _COMPILATION_CACHE
  _OUT = flags.DEFINE_string('out', None, 'Study directory: runs/, results.md, '
                             'results.json, curves.png; an existing study '
                             'there is resumed.')
  _SEEDS = flags.DEFINE_integer('seeds', 3, 'Seeds per model (0..seeds-1).')
  _STEPS = flags.DEFINE_integer(
      'steps', None, "Training steps of every run; default: the preset's "
      f'({runs.DEFAULT_STEPS}; None: each family\'s recipes.TINY_STEPS).')
  _MODELS = flags.DEFINE_list('models', list(results_lib.MODELS),
                              f'Model families, of {results_lib.MODELS}.')
  _EVAL_EVERY = flags.DEFINE_integer(
      'eval_every', 0, 'Run every synthetic evaluator every this many '
      "steps (and at the last step); 0: a run's steps / "
      f'{runs.CURVE_POINTS}, so every curve has {runs.CURVE_POINTS} points.')
  _PRESET = flags.DEFINE_enum(
      'preset', 'budget', runs.PRESETS, 'budget: each family\'s tiny recipe '
      'for its own steps (equal training compute); hour: the tiny models and '
      'evaluation sized to fit 3 seeds in an hour on 2 CPU cores (module '
      "docstring); tiny, small: the recipes' variants unchanged.")
  _EVAL_NUM = flags.DEFINE_integer(
      'eval_num', 0, 'Examples per synthetic benchmark file, for every '
      "set; 0: the preset's.")
  _COMPILATION_CACHE = flags.DEFINE_bool(
      'compilation_cache', True, "Keep JAX's persistent compilation cache "
      'in DIR/cache/jax, so later seeds of a model reuse its compiled steps.')
  flags.mark_flags_as_required(['out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  import logging  # pylint: disable=g-import-not-at-top
  # Orbax and grain log several INFO lines per checkpoint through absl.
  logging.getLogger('absl').setLevel(logging.WARNING)
  out = _OUT.value
  if _COMPILATION_CACHE.value:
    compilation_cache.use_directory(os.path.join(out, 'cache', 'jax'))
  steps = runs.run_steps(_MODELS.value, _PRESET.value, _STEPS.value)
  result = runs.run_study(out, models=_MODELS.value, seeds=_SEEDS.value,
                          steps=steps, eval_every=_EVAL_EVERY.value,
                          preset=_PRESET.value, eval_num=_EVAL_NUM.value,
                          log=lambda line: print(line, flush=True))
  if result['results'] is not None:
    with open(os.path.join(out, 'results.md')) as f:
      print(f.read())


if __name__ == '__main__':
  huge_pages.restart_with_huge_pages()
  define_flags()
  app.run(main)
