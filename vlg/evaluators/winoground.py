"""Winoground: do the right captions and images pair up?

  config.evals.winoground = dict(type='winoground', root='.../winoground',
                                 log_steps=1000)

Each example has images i0, i1 and captions c0, c1 with the same words in a
different order; with s(c, i) the image–text score (Thrush et al. 2022):

- text score: s(c0, i0) > s(c1, i0) and s(c1, i1) > s(c0, i1);
- image score: s(c0, i0) > s(c0, i1) and s(c1, i1) > s(c1, i0);
- group score: both.

Ties count as wrong. Logged overall (``text``, ``image``, ``group``) and per
tag the reader exposes: ``tag/<tag>/…``, ``collapsed_tag/<tag>/…``,
``secondary_tag/<tag>/…`` (an example with several secondary tags counts in
each) and ``num_main_preds/<n>/…``. Chance levels for random scores
(``chance/text`` = ``chance/image`` = 1/4, ``chance/group`` = 1/6: of the 24
equally likely orders of four scores, 4 satisfy both conditions).
Images are read from ``image_root`` (default: the dataset's ``data/images``
or ``images`` folder); examples with a missing image are skipped and counted.
"""

from __future__ import annotations

import logging

import numpy as np

from vlg import benchmarks
from vlg.evaluators import common

SCORES = ('text', 'image', 'group')
CHANCE = {'text': 0.25, 'image': 0.25, 'group': 1 / 6}


class Evaluator:
  """Winoground text, image and group scores, overall and per tag."""

  def __init__(self, scorer: common.PairScorer, *, root: str,
               image_root: str | None = None, scorer_name: str = 'itm'):
    common.check_scorer_name(scorer_name, 'Winoground')
    self.scorer, self.scorer_name = scorer, scorer_name
    self.examples = benchmarks.load_winoground(root)
    self.image_root = image_root or benchmarks.winoground_images_dir(root)
    present, missing = benchmarks.check_images(self.examples,
                                               self.image_root, decode=True)
    if missing:
      logging.warning('Winoground: %d images missing under %s, e.g. %s',
                      len(missing), self.image_root, missing[:5])
    self.present = present

  def run(self, params) -> dict[str, float]:
    ex = self.present
    images, texts = [], []
    # Order: (c0, i0), (c1, i0), (c0, i1), (c1, i1) per example.
    for e in ex:
      i0, i1 = (benchmarks.image_path(self.image_root, f)
                for f in e.image_files())
      images += [i0, i0, i1, i1]
      texts += [e.caption_0, e.caption_1, e.caption_0, e.caption_1]
    s = self.scorer.score(params, images, texts).get(self.scorer_name,
                                                     np.zeros(0))
    return metrics(ex, s.reshape(len(ex), 2, 2).transpose(0, 2, 1)
                   if len(ex) else np.zeros((0, 2, 2)),
                   num_in_file=len(self.examples))


def example_scores(scores: np.ndarray) -> dict[str, np.ndarray]:
  """Per-example text/image/group correctness.

  Args:
    scores: [N, 2, 2] with ``scores[n, c, i]`` = s(caption c, image i).

  Returns:
    ``{'text', 'image', 'group'}`` boolean [N] arrays.
  """
  s = np.asarray(scores, np.float64).reshape(-1, 2, 2)
  text = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])
  image = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])
  return {'text': text, 'image': image, 'group': text & image}


def _groups(example) -> list[str]:
  out = []
  if example.tag:
    out.append(f'tag/{example.tag}')
  if example.collapsed_tag:
    out.append(f'collapsed_tag/{example.collapsed_tag}')
  for tag in example.secondary_tag.split(','):
    if tag.strip():
      out.append(f'secondary_tag/{tag.strip()}')
  if example.num_main_preds is not None:
    out.append(f'num_main_preds/{example.num_main_preds}')
  return out


def metrics(examples, scores, num_in_file: int) -> common.Results:
  """Winoground scores from ``scores[n, c, i]`` = s(caption c, image i),
  with each score's per-example outcomes."""
  correct = example_scores(scores)
  out = {'num_evaluated': float(len(examples)),
         'num_in_file': float(num_in_file)}
  outcomes = {}
  for name in SCORES:
    out[name] = common.mean_or_nan(correct[name])
    out[f'chance/{name}'] = CHANCE[name]
    outcomes[name] = correct[name]
  members: dict[str, list[int]] = {}
  for n, e in enumerate(examples):
    for group in _groups(e):
      members.setdefault(group, []).append(n)
  for group, rows in sorted(members.items()):
    for name in SCORES:
      out[f'{group}/{name}'] = common.mean_or_nan(correct[name][rows])
      outcomes[f'{group}/{name}'] = correct[name][rows]
    out[f'{group}/num_evaluated'] = float(len(rows))
  return common.Results(out, outcomes)
