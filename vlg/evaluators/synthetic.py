"""The default ``config.evals`` entries: every synthetic benchmark set.

Configs that train on the synthetic world evaluate on its look-alike
benchmark sets (``vlg.synthetic.benchmarks``), written once by the
evaluator factory into a cache keyed by (resolution, seed, num) (see
``vlg.evaluators.common``)::

  from vlg.evaluators import synthetic as synthetic_evals
  c.evals = synthetic_evals.default_evals(log_steps=200)

gives VALSE, VSR (random and zero-shot, dev and test), SVO-Probes,
Winoground, Karpathy-style retrieval, paragraph retrieval and RefCOCOg (val
and test; skipped with a logged reason for models without a box head).
Any entry can then be overridden or removed like any config field.
"""

from __future__ import annotations

import ml_collections

ROOT = '{synthetic}'
# The sets scored one accuracy per example (pairs or single captions), whose
# binomial standard deviation decides what a run can claim: at 50 examples
# one accuracy's is 7 points, at 200 3.5 (VALSE's seven pieces: 1.3).
PAIRWISE = ('valse', 'svo_probes', 'winoground', 'vsr_random_dev',
            'vsr_random_test', 'vsr_zeroshot_dev', 'vsr_zeroshot_test')


def default_evals(log_steps: int = 500, *, num: int = 200,
                  pairwise_num: int | None = None, seed: int = 0,
                  resolution: int | None = None, k_test: int = 16,
                  paragraph_max_text_len: int = 128,
                  cache_dir: str | None = None) -> ml_collections.ConfigDict:
  """``config.evals`` with one entry per synthetic benchmark set.

  Args:
    log_steps: evaluate every this many training steps.
    num: examples per synthetic file (``write_all``'s ``num``).
    pairwise_num: examples per file of the :data:`PAIRWISE` sets; None:
      ``num``. (Each ``num`` is its own cached folder.)
    seed: the synthetic sets' seed.
    resolution: image side of the written sets; None: the eval resolution.
    k_test: retrieval candidates re-scored by ITM per query (ALBEF uses 256
      for COCO's 5k images; the synthetic sets hold ``num`` images).
    paragraph_max_text_len: token limit for paragraphs (at most the
      model's ``max_positions``).
    cache_dir: where the sets are cached; None: ``$VLG_CACHE_DIR`` or
      ``~/.cache/vlg``.

  Returns:
    An unlocked ConfigDict of eval entries.
  """
  synthetic = dict(synthetic=True, synthetic_num=num, synthetic_seed=seed,
                   synthetic_resolution=resolution or 0,
                   synthetic_cache=cache_dir or '', log_steps=log_steps)
  evals = dict(
      valse=dict(type='valse', root=f'{ROOT}/valse',
                 image_root=f'{ROOT}/valse/images'),
      svo_probes=dict(type='svo_probes',
                      file=f'{ROOT}/svo_probes/svo_probes.jsonl',
                      image_root=f'{ROOT}/svo_probes/images'),
      winoground=dict(type='winoground', root=f'{ROOT}/winoground'),
      retrieval=dict(type='retrieval', file=f'{ROOT}/retrieval/test.json',
                     image_root=f'{ROOT}/retrieval', k_test=k_test),
      paragraphs=dict(type='retrieval', format='paragraphs',
                      file=f'{ROOT}/paragraphs/paragraphs_v1.json',
                      split_file=f'{ROOT}/paragraphs/test_split.json',
                      image_root=f'{ROOT}/paragraphs/images', k_test=k_test,
                      max_text_len=paragraph_max_text_len, max_words=200),
  )
  for split in ('random', 'zeroshot'):
    for part in ('dev', 'test'):
      evals[f'vsr_{split}_{part}'] = dict(
          type='vsr', file=f'{ROOT}/vsr/{split}/{part}.jsonl',
          image_root=f'{ROOT}/vsr/images',
          categories=f'{ROOT}/vsr/rel_meta_category_dict.txt')
  for split in ('val', 'test'):
    evals[f'refcocog_{split}'] = dict(
        type='refcocog', root=f'{ROOT}/refcocog',
        image_root=f'{ROOT}/refcocog/images', split=split)
  out = ml_collections.ConfigDict(
      {name: {**entry, **synthetic} for name, entry in evals.items()})
  if pairwise_num is not None:
    for name in PAIRWISE:
      out[name].synthetic_num = pairwise_num
  return out
