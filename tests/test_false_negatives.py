"""The training-time false-negative shares of the drawn ITM negatives."""

import logging

import ml_collections
import numpy as np
import pytest

from vlg import false_negatives
from vlg.data import batch_truth
from vlg.data import pipeline
from vlg.data import tokenizer as tok_lib
from vlg.synthetic import world

import configs.albef as albef_config


def _config():
  c = albef_config.get_config('tiny,evals=False')
  c.input.data.synthetic.num_examples = 64
  return c


@pytest.fixture(scope='module')
def tok():
  return tok_lib.train_tokenizer(
      pipeline.training_texts(_config().input, 200), 1024)


def test_shares_on_a_hand_made_case():
  # Entries 0 and 1 show one image; caption 2 is true of image 0 and
  # caption 0 of image 2 (beside the diagonal).
  truth = np.array([[1, 1, 1],
                    [1, 1, 0],
                    [1, 0, 1]], bool)
  ids = np.array([7, 7, 9])
  # Image 0's negative text is 2 (true), image 1's is 2 (false), image 2's
  # is 0 (true); text 0's negative image is 2 (true), text 1's is 2
  # (false), text 2's is 1 (false).
  got = false_negatives.false_negative_shares(
      truth, ids, neg_image=np.array([2, 2, 1]),
      neg_text=np.array([2, 2, 0]))
  assert got['fn_itm_neg_share'] == pytest.approx(3 / 6)
  # Pairs of different images: (0,2), (1,2), (2,0), (2,1); true: (0,2),
  # (2,0).
  assert got['fn_pair_rate'] == pytest.approx(2 / 4)


def test_monitor_reads_the_batch_and_the_drawn_negatives(tok):
  cfg = _config()
  monitor = false_negatives.FalseNegativeMonitor.for_config(cfg, tok)
  assert monitor is not None and monitor.split == 'train'
  batch = next(iter(pipeline.make_dataset(cfg.input, tok, global_batch=16,
                                          seed=0)))
  truth = batch_truth.batch_truth(
      batch, world.WorldConfig(**dict(cfg.input.data.synthetic.world)),
      'train', tok, cfg.input)
  rng = np.random.default_rng(0)
  neg_image = rng.integers(16, size=16)
  neg_text = rng.integers(16, size=16)
  got = monitor(batch, {'itm_neg_image': neg_image.astype(np.float32),
                        'itm_neg_text': neg_text.astype(np.float32)})
  assert got == false_negatives.false_negative_shares(
      truth, batch['image_id'], neg_image, neg_text)
  # Without the vectors (gradient accumulation drops them) there is nothing
  # to log, rather than a guess.
  assert monitor(batch, {}) == {}


def test_monitor_turns_off_with_a_warning_on_a_foreign_batch(tok, caplog):
  cfg = _config()
  monitor = false_negatives.FalseNegativeMonitor.for_config(cfg, tok)
  batch = next(iter(pipeline.make_dataset(cfg.input, tok, global_batch=4,
                                          seed=0)))
  # Each text now sits beside another example's image and caption index.
  batch = dict(batch, text_ids=np.roll(batch['text_ids'], 1, axis=0))
  vectors = {'itm_neg_image': np.zeros(4), 'itm_neg_text': np.zeros(4)}
  with caplog.at_level(logging.WARNING):
    assert monitor(batch, vectors) == {}
  assert 'False-negative monitor off' in caplog.text
  assert monitor.disabled


def test_monitor_is_off_where_the_truth_is_unknown(tok):
  cfg = _config()
  assert false_negatives.FalseNegativeMonitor.for_config(
      cfg, tok, process_count=2) is None
  real = _config()
  real.input.data = ml_collections.ConfigDict(dict(
      coco=dict(source='prepared', dir='/nowhere', weight=1.0)))
  assert false_negatives.FalseNegativeMonitor.for_config(real, tok) is None
