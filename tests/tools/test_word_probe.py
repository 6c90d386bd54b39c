"""vlg.tools.word_probe: the masked-word probe's classes, masks and counts."""

import numpy as np
import pytest

from vlg.data import tokenizer as tokenizer_lib
from vlg.synthetic import source as synthetic_source
from vlg.tools import word_probe


@pytest.fixture(scope='module')
def world_tokenizer():
  texts = [c for i in range(300)
           for c in synthetic_source.make_record('train', i)['captions']]
  return tokenizer_lib.train_tokenizer(texts, 1024, model_type='bpe')


def test_class_ids_are_the_whole_words_of_each_class(world_tokenizer):
  ids = word_probe.class_token_ids(world_tokenizer)
  assert set(ids) == set(word_probe.WORD_CLASSES)
  for name, class_ids in ids.items():
    assert class_ids.size, name  # BPE keeps the world's words whole.
    words = {world_tokenizer.decode([i]).strip() for i in class_ids}
    assert words <= set(word_probe.WORD_CLASSES[name]), name
  assert {'star', 'stars', 'hexagon'} <= {
      world_tokenizer.decode([i]).strip() for i in ids['shape']}
  assert 'left' in word_probe.WORD_CLASSES['relation']
  assert 'is' not in word_probe.WORD_CLASSES['relation']
  # A class of words the tokenizer splits (or never saw) gets no ids.
  assert word_probe.class_token_ids(
      world_tokenizer, {'odd': ('xqzzv',)})['odd'].size == 0


def test_mask_class_masks_every_class_token_and_nothing_else(
    world_tokenizer):
  tok = world_tokenizer
  shape_ids = word_probe.class_token_ids(tok)['shape']
  ids, mask = tok.encode('two stars and a red star', 10)
  masked, targets = word_probe.mask_class(ids[None], mask[None], shape_ids)
  words = [tok.decode([i]).strip() for i in ids[mask > 0]]
  want = np.isin(np.arange(10), [1 + words[1:-1].index('stars'),
                                 len(words) - 2])
  np.testing.assert_array_equal(targets[0], want)
  np.testing.assert_array_equal(masked[0][want], tokenizer_lib.MASK_ID)
  np.testing.assert_array_equal(masked[0][~want], ids[~want])
  # Padding is never a target, even if its id were in the class.
  _, t = word_probe.mask_class(ids[None], mask[None],
                               np.array([tokenizer_lib.PAD_ID]))
  assert not t.any()


def test_accumulate_and_metrics_by_hand():
  totals = {}
  ids = np.array([[5, 6, 7], [5, 8, 9]])
  targets = np.array([[True, False, True], [False, True, False]])
  word_probe.accumulate(totals, 'shape', np.array([[5, 0, 0], [0, 8, 0]]),
                        ids, targets)
  word_probe.accumulate(totals, 'shape', ids, ids, targets)
  word_probe.accumulate(totals, 'size', ids, ids, np.zeros_like(targets))
  got = word_probe.word_metrics(totals)
  assert got['mlm_word_acc/shape'] == pytest.approx(5 / 6)
  assert got['mlm_word_num/shape'] == 6
  assert np.isnan(got['mlm_word_acc/size']) and got['mlm_word_num/size'] == 0
