"""VALSE: does the model score the caption above its foil?

  config.evals.valse = dict(type='valse', root='.../valse',
                            image_root='.../images', log_steps=1000)

Reads the real VALSE instrument files (or the synthetic look-alikes written
by ``vlg.tools.synth``) through ``vlg.benchmarks.load_valse`` and keeps
the valid set (``mturk.caption >= 2``). Metrics (docs/benchmarks.md §2):

- ``acc_r`` (micro over all valid examples: the papers' single number),
  ``acc_r_pieces`` (mean over pieces), ``<piece>/acc_r`` (mean of its
  instruments) and ``<instrument>/acc_r``: pairwise accuracy
  mean[s(i, caption) > s(i, foil)], a tie counting as wrong;
- with the ITM scorer: ``precision_caption`` (captions with s >= 0.5),
  ``precision_foil`` (foils with s < 0.5), their minimum and ``auroc``
  (captions positive, foils negative).
Also ``num_evaluated`` / ``num_in_file`` (examples whose image is missing are
skipped and named in the log) and the chance level of a random scorer beside
each headline metric: ``chance/acc_r``, ``chance/acc_r_pieces`` and
``chance/auroc``, all 0.5.
"""

from __future__ import annotations

import logging

import numpy as np

from vlg import benchmarks
from vlg.evaluators import common


class Evaluator:
  """VALSE pairwise accuracy, precisions and AUROC."""

  def __init__(self, scorer: common.PairScorer, *, root: str,
               image_root: str, scorer_name: str = 'itm',
               instruments: tuple[str, ...] | None = None):
    if scorer_name not in common.SCORERS:
      raise ValueError(f'scorer_name={scorer_name!r}; valid: '
                       f'{common.SCORERS}')
    self.scorer, self.scorer_name = scorer, scorer_name
    self.examples = benchmarks.load_valse(root, instruments=instruments,
                                          valid_only=True)
    present, missing = benchmarks.check_images(self.examples, image_root,
                                               decode=True)
    if missing:
      logging.warning('VALSE: %d images missing under %s, e.g. %s',
                      len(missing), image_root, missing[:5])
    self.present = present
    self.image_root = image_root

  def run(self, params) -> dict[str, float]:
    ex = self.present
    paths = [benchmarks.image_path(self.image_root, e.image_file) for e in ex]
    scores = self.scorer.score(params, paths + paths,
                               [e.caption for e in ex] + [e.foil for e in ex])
    s = scores.get(self.scorer_name, np.zeros(0))  # {} when no images.
    return metrics(ex, s[:len(ex)], s[len(ex):], self.scorer_name,
                   num_in_file=len(self.examples))


def metrics(examples, caption_scores, foil_scores, scorer_name: str,
            num_in_file: int) -> common.Results:
  """VALSE metrics from per-example caption and foil scores, with the
  per-example outcomes of the accuracies and precisions."""
  caption_scores = np.asarray(caption_scores, np.float64)
  foil_scores = np.asarray(foil_scores, np.float64)
  correct = caption_scores > foil_scores
  out = {'acc_r': float(correct.mean()) if len(correct) else float('nan'),
         'num_evaluated': float(len(examples)),
         'num_in_file': float(num_in_file),
         'chance/acc_r': 0.5, 'chance/acc_r_pieces': 0.5}
  outcomes = {'acc_r': correct}
  by_instrument: dict[str, list[bool]] = {}
  for e, c in zip(examples, correct):
    by_instrument.setdefault(e.instrument, []).append(bool(c))
  pieces: dict[str, list[float]] = {}
  for inst, values in sorted(by_instrument.items()):
    acc = float(np.mean(values))
    out[f'{inst}/acc_r'] = acc
    outcomes[f'{inst}/acc_r'] = values
    pieces.setdefault(benchmarks.valse_piece(inst), []).append(acc)
  for piece, accs in pieces.items():
    out[f'{piece}/acc_r'] = float(np.mean(accs))
  if pieces:
    out['acc_r_pieces'] = float(np.mean([np.mean(a) for a in pieces.values()]))
  if scorer_name == 'itm':
    p_c = float(np.mean(caption_scores >= 0.5)) if len(correct) else 0.0
    p_f = float(np.mean(foil_scores < 0.5)) if len(correct) else 0.0
    out.update(precision_caption=p_c, precision_foil=p_f,
               min_precision=min(p_c, p_f),
               auroc=common.auroc(caption_scores, foil_scores))
    out['chance/auroc'] = 0.5
    if len(correct):
      outcomes.update(precision_caption=caption_scores >= 0.5,
                      precision_foil=foil_scores < 0.5)
  return common.Results(out, outcomes)
