"""BERT's WordPiece tokenizer (vlg/data/wordpiece.py) against transformers'
pure-Python ``BertTokenizer`` (ids stored by
tests/testdata/weights/make_fixtures.py in ``wordpiece_io.npz``)."""

import os
import pickle

import numpy as np
import pytest

from vlg.data import tokenizer as tokenizer_lib
from vlg.data import wordpiece

DATA = os.path.join(os.path.dirname(__file__), '..', 'testdata', 'weights')
FOLDER = os.path.join(DATA, 'bert_synth')


@pytest.fixture(scope='module')
def tok():
  return tokenizer_lib.load(FOLDER)  # A HF folder → WordPiece.


def test_ids_match_the_reference_bert_tokenizer(tok):
  io = np.load(os.path.join(DATA, 'wordpiece_io.npz'))
  assert isinstance(tok, wordpiece.WordPieceTokenizer)
  for sentence, want in zip(io['sentences'], io['ids']):
    want = [int(i) for i in want if i >= 0]
    ids, mask = tok.encode(str(sentence), 40)
    n = int(mask.sum())
    assert ids[0] == tok.cls_id and ids[n - 1] == tok.sep_id
    assert list(ids[1:n - 1]) == want, sentence
    assert (ids[n:] == tok.pad_id).all()


def test_special_ids_come_from_the_vocabulary(tok):
  with open(os.path.join(FOLDER, 'vocab.txt')) as f:
    pieces = f.read().splitlines()
  assert tok.vocab_size == len(pieces)
  assert pieces[tok.mask_id] == '[MASK]' and pieces[tok.cls_id] == '[CLS]'
  assert set(tok.special_ids) == {pieces.index(s) for s in (
      '[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')}
  # A literal [SEP] (verbalised scene graphs) is one token.
  assert tok.pieces('a ring [SEP] a hexagon').count('[SEP]') == 1


def test_truncation_decode_pickle_and_fingerprint(tok):
  ids, mask = tok.encode('a ring left of a hexagon ' * 10, 8)
  assert mask.sum() == 8 and ids[-1] == tok.sep_id
  ids, _ = tok.encode('an image of a ring', 12)
  assert tok.decode(ids) == 'an image of a ring'
  again = pickle.loads(pickle.dumps(tok))
  assert again.fingerprint == tok.fingerprint
  np.testing.assert_array_equal(again.encode('a ring', 6)[0],
                                tok.encode('a ring', 6)[0])
  cased = wordpiece.WordPieceTokenizer.load(FOLDER, lowercase=False)
  assert cased.fingerprint != tok.fingerprint


def test_sentencepiece_tokenizer_keeps_its_fixed_ids():
  assert tokenizer_lib.Tokenizer.mask_id == tokenizer_lib.MASK_ID == 4
  assert tokenizer_lib.Tokenizer.special_ids == tokenizer_lib.SPECIAL_IDS
  with pytest.raises(FileNotFoundError):
    tokenizer_lib.load(os.path.join(DATA, 'missing_vocab.txt'))


@pytest.mark.parametrize('lowercase', [True, False])
def test_save_then_load_gives_the_same_tokenizer(tmp_path, lowercase):
  """A saved folder (a converted run's or a stage-1 run's ``tokenizer/``)
  loads back, through the dispatching ``load``, as the same tokenizer:
  same vocabulary and casing, hence the same fingerprint and ids."""
  tok = wordpiece.WordPieceTokenizer.load(FOLDER, lowercase=lowercase)
  folder = str(tmp_path / 'tokenizer')
  assert tok.save(folder) == os.path.join(folder, 'vocab.txt')
  assert sorted(os.listdir(folder)) == ['tokenizer_config.json', 'vocab.txt']
  again = tokenizer_lib.load(folder)
  assert again.kind == 'wordpiece'
  assert again.fingerprint == tok.fingerprint
  text = 'A Ring left of a Hexagon'
  np.testing.assert_array_equal(again.encode(text, 12)[0],
                                tok.encode(text, 12)[0])

