"""SVO-Probes: does the sentence score its image above the near miss?

  config.evals.svo = dict(type='svo_probes', file='.../svo_probes.csv',
                          image_root='.../images', log_steps=1000)

Reads either published layout (the DeepMind CSV or the JSON lines of
Bugliarello et al. 2023) through ``vlg.benchmarks.load_svo_probes``.
Metrics (docs/benchmarks.md §4): pairwise accuracy
``accuracy`` = mean[s(pos, sentence) > s(neg, sentence)] (a tie is wrong)
and the same per negative type, ``subject/accuracy``, ``verb/accuracy``,
``object/accuracy`` (a row counts in a type only when exactly that flag is
set, as the DeepMind notebook does); ``chance/accuracy`` = 0.5;
``num_evaluated`` / ``num_in_file`` (rows with a missing image, common for
the URL-fetched originals, are skipped and counted).
"""

from __future__ import annotations

import logging

import numpy as np

from vlg import benchmarks
from vlg.benchmarks import svo_probes as svo_reader
from vlg.evaluators import common


class Evaluator:
  """SVO-Probes pairwise accuracy, overall and per negative type."""

  def __init__(self, scorer: common.PairScorer, *, file: str,
               image_root: str, scorer_name: str = 'itm',
               image_template: str = '{id}.jpg'):
    common.check_scorer_name(scorer_name, 'SVO-Probes')
    self.scorer, self.scorer_name = scorer, scorer_name
    self.examples = benchmarks.load_svo_probes(file,
                                               image_template=image_template)
    present, missing = benchmarks.check_images(self.examples, image_root,
                                               decode=True)
    if missing:
      logging.warning('SVO-Probes: %d of %d rows lack an image (%d images '
                      'missing under %s, e.g. %s)',
                      len(self.examples) - len(present), len(self.examples),
                      len(missing), image_root, missing[:5])
    self.present, self.image_root = present, image_root

  def run(self, params) -> dict[str, float]:
    ex = self.present
    pos = [benchmarks.image_path(self.image_root, e.pos_image) for e in ex]
    neg = [benchmarks.image_path(self.image_root, e.neg_image) for e in ex]
    sentences = [e.sentence for e in ex]
    s = self.scorer.score(params, pos + neg, sentences + sentences).get(
        self.scorer_name, np.zeros(0))
    return metrics(ex, s[:len(ex)], s[len(ex):],
                   num_in_file=len(self.examples))


def metrics(examples, pos_scores, neg_scores,
            num_in_file: int) -> common.Results:
  """SVO-Probes accuracies from per-row positive and negative scores, with
  their per-row outcomes."""
  pos_scores = np.asarray(pos_scores, np.float64)
  neg_scores = np.asarray(neg_scores, np.float64)
  correct = pos_scores > neg_scores
  out = {'accuracy': common.mean_or_nan(correct), 'chance/accuracy': 0.5,
         'num_evaluated': float(len(examples)),
         'num_in_file': float(num_in_file)}
  outcomes = {'accuracy': correct}
  for neg_type in svo_reader.NEG_TYPES:
    rows = [c for e, c in zip(examples, correct) if e.neg_type == neg_type]
    out[f'{neg_type}/accuracy'] = common.mean_or_nan(rows)
    out[f'{neg_type}/num_evaluated'] = float(len(rows))
    outcomes[f'{neg_type}/accuracy'] = rows
  return common.Results(out, outcomes)
