"""VSR: is the spatial statement about the image true?

  config.evals.vsr_random_dev = dict(type='vsr', file='.../random/dev.jsonl',
                                     image_root='.../images',
                                     categories='.../rel_meta_category_dict.txt')

Accuracy of [s(i, caption) >= 0.5] == label with the ITM match probability
(a positive counts correct at s >= 0.5, a negative at s < 0.5), overall,
per relation (``relation/<name>``) and per meta-category
(``category/<name>``; a relation the category file does not list, such
as ``congruent``, counts under ``category/unknown``, with one warning per
relation name when the evaluator is built). Examples whose image is
missing are skipped and counted (``num_evaluated`` / ``num_in_file``).
``chance/accuracy`` is 0.5, the expected accuracy of random answers
(whatever the label balance).
"""

from __future__ import annotations

import logging

import numpy as np

from vlg import benchmarks
from vlg.evaluators import common


class Evaluator:
  """VSR accuracy overall, per relation and per category."""

  def __init__(self, scorer: common.PairScorer, *, file: str,
               image_root: str, categories: str | None = None,
               scorer_name: str = 'itm'):
    if scorer_name != 'itm':
      raise ValueError('VSR thresholds a probability at 0.5: use the itm '
                       f'scorer, not {scorer_name!r}')
    self.scorer = scorer
    self.examples = benchmarks.load_vsr(file)
    # Every relation of the file gets a category ('unknown' if the file
    # lists none for it; warned here, once per relation name).
    self.categories = benchmarks.categorise_relations(
        (e.relation for e in self.examples),
        benchmarks.load_vsr_categories(categories),
        source=categories) if categories else {}
    present, missing = benchmarks.check_images(self.examples, image_root,
                                               decode=True)
    if missing:
      logging.warning('VSR: %d images missing under %s, e.g. %s',
                      len(missing), image_root, missing[:5])
    self.present, self.image_root = present, image_root

  def run(self, params) -> dict[str, float]:
    ex = self.present
    paths = [benchmarks.image_path(self.image_root, e.image) for e in ex]
    s = self.scorer.score(params, paths, [e.caption for e in ex]).get(
        'itm', np.zeros(0))  # {} when no images.
    return metrics(ex, s, self.categories, num_in_file=len(self.examples))


def metrics(examples, scores, categories: dict[str, str],
            num_in_file: int) -> common.Results:
  """VSR accuracies from per-example ITM match probabilities, with each
  accuracy's per-example outcomes.

  With ``categories`` (relation → category), an example whose relation it
  does not list counts under ``category/unknown``; without, there are no
  category figures.
  """
  scores = np.asarray(scores, np.float64)
  labels = np.array([e.label for e in examples], bool)
  correct = (scores >= 0.5) == labels
  out = {'accuracy': float(correct.mean()) if len(correct) else float('nan'),
         'num_evaluated': float(len(examples)),
         'num_in_file': float(num_in_file), 'chance/accuracy': 0.5}
  groups: dict[str, list[bool]] = {}
  for e, c in zip(examples, correct):
    groups.setdefault(f'relation/{e.relation}', []).append(bool(c))
    if categories:
      category = categories.get(e.relation, benchmarks.UNKNOWN_CATEGORY)
      groups.setdefault(f'category/{category}', []).append(bool(c))
  out.update({k: float(np.mean(v)) for k, v in sorted(groups.items())})
  return common.Results(out, {'accuracy': correct, **groups})
