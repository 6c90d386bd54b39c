"""How often training's ITM negatives are in fact true (synthetic captions).

ITM draws, for every image of a caption batch, a negative text, and for
every text a negative image, in proportion to the ITC similarity (ALBEF)
or from the in-batch similarities (X-VLM). A caption that is also true of
the other image is then a positive labelled "no match"; when many are,
answering "no match" everywhere is the best an ITM head can do. Real
corpora do not say which pairs those are; the built-in world does.

On the synthetic world, at every logged step, the train loop hands
:class:`FalseNegativeMonitor` the host copy of the caption batch and the
negatives its step drew (the ``itm_neg_image`` / ``itm_neg_text`` vectors
of the step's metrics). It rebuilds the batch's truth
(``vlg/data/batch_truth.py``) and returns two scalars, logged
as ``train/<name>``:

- ``fn_itm_neg_share``: the share of the sampled caption ITM negatives
  (each image's negative text and each text's negative image, over the
  entries that have a negative) whose caption is true of the image;
- ``fn_pair_rate``: the share of the batch's pairs of different images
  where the caption is true of the other image (ITC's in-batch negatives).

The monitor is off (``for_config`` returns None) where the caption data is
not one synthetic world configuration and split, and where several
processes share the batch (each holds only its slice of the batch the
indices point into).
"""

from __future__ import annotations

import logging

import ml_collections
import numpy as np

from vlg.data import batch_truth as batch_truth_lib
from vlg.synthetic import truth as truth_lib
from vlg.synthetic import world

NEGATIVE_KEYS = ('itm_neg_image', 'itm_neg_text')


class FalseNegativeMonitor:
  """The false-negative shares of one training batch and its negatives."""

  def __init__(self, world_cfg: world.WorldConfig, split: str, tokenizer,
               input_cfg: ml_collections.ConfigDict):
    self.world_cfg = world_cfg
    self.split = split
    self.tokenizer = tokenizer
    self.input_cfg = input_cfg
    self.disabled = False

  @classmethod
  def for_config(cls, config: ml_collections.ConfigDict, tokenizer,
                 process_count: int = 1) -> FalseNegativeMonitor | None:
    """The monitor of ``config``'s caption data, or None where it cannot
    know the truth (see the module docstring)."""
    if process_count != 1:
      return None
    world_cfg = batch_truth_lib.caption_world(config.input)
    splits = {str(s.get('split', 'train'))
              for s in config.input.data.values()}
    if world_cfg is None or len(splits) != 1:
      return None
    return cls(world_cfg, splits.pop(), tokenizer, config.input)

  def __call__(self, batch: dict[str, np.ndarray],
               vectors: dict[str, np.ndarray]) -> dict[str, float]:
    """``{'fn_itm_neg_share', 'fn_pair_rate'}`` of one step.

    Args:
      batch: the step's caption batch as the input pipeline made it (host
        numpy, before ``pipeline.to_global``).
      vectors: the step's non-scalar metrics; ``itm_neg_image`` and
        ``itm_neg_text`` [B] are read (an empty dict where they are
        missing, e.g. with gradient accumulation).

    A batch whose truth cannot be rebuilt (a caption outside the world's
    grammar, a text that does not match its record) turns the monitor off
    with a warning that names the cause; it never logs a guess.
    """
    if self.disabled or not all(k in vectors for k in NEGATIVE_KEYS):
      return {}
    try:
      truth = batch_truth_lib.batch_truth(batch, self.world_cfg, self.split,
                                          self.tokenizer, self.input_cfg)
    except (ValueError, truth_lib.ParseError) as e:
      logging.warning('False-negative monitor off: %s', e)
      self.disabled = True
      return {}
    return false_negative_shares(
        truth, np.asarray(batch['image_id']),
        np.asarray(vectors['itm_neg_image']).astype(np.int64),
        np.asarray(vectors['itm_neg_text']).astype(np.int64))


def false_negative_counts(truth: np.ndarray, image_ids: np.ndarray,
                          neg_image: np.ndarray, neg_text: np.ndarray
                          ) -> dict[str, int]:
  """The counts behind the shares of one batch (so that several batches
  can be pooled, as ``vlg.tools.itm_probe`` does).

  Args:
    truth: [B, B] bool, caption j true of image i.
    image_ids: [B]; entries of one image are never negatives of each other,
      and an entry without any other image has no negative.
    neg_image: [B] the negative image of each text.
    neg_text: [B] the negative text of each image.

  Returns:
    ``neg_true`` / ``neg_num``: true captions among the drawn negatives
    (each image's negative text and each text's negative image) / their
    number; ``pairs_true`` / ``pairs_num``: the same over every pair of
    different images.
  """
  ids = np.asarray(image_ids).reshape(-1)
  other = ids[:, None] != ids[None, :]
  rows = np.flatnonzero(other.any(axis=1))
  return {
      'neg_true': int(truth[rows, neg_text[rows]].sum() +
                      truth[neg_image[rows], rows].sum()),
      'neg_num': 2 * int(rows.size),
      'pairs_true': int((truth & other).sum()),
      'pairs_num': int(other.sum()),
  }


def shares(counts: dict[str, int], neg_key: str = 'fn_itm_neg_share'
           ) -> dict[str, float]:
  """``{neg_key: neg_true / neg_num, 'fn_pair_rate': pairs_true /
  pairs_num}`` of :func:`false_negative_counts` (NaN where a count is 0)."""
  nan = float('nan')
  return {
      neg_key: (counts['neg_true'] / counts['neg_num'] if counts['neg_num']
                else nan),
      'fn_pair_rate': (counts['pairs_true'] / counts['pairs_num']
                       if counts['pairs_num'] else nan),
  }


def false_negative_shares(truth: np.ndarray, image_ids: np.ndarray,
                          neg_image: np.ndarray, neg_text: np.ndarray
                          ) -> dict[str, float]:
  """The two shares of the module docstring, of one batch (arguments as
  :func:`false_negative_counts`)."""
  return shares(false_negative_counts(truth, image_ids, neg_image,
                                      neg_text))
