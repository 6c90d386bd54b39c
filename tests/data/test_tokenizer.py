"""Tokenizer: fixed special ids, round trips, caching, pickling."""

import os
import pickle

import numpy as np
import pytest

from vlg.data import tokenizer as tok_lib

TEXTS = [
    'a large red circle left of a small blue square',
    'two green stars and a purple ring',
    'the yellow triangle points at the orange hexagon',
    'a small white cross is connected to the red diamond',
    'three objects the ring contains a small star',
] * 20


@pytest.fixture(scope='module')
def tok():
  return tok_lib.train_tokenizer(TEXTS, 200)


def test_special_ids_fixed(tok):
  for piece, want in [('[PAD]', 0), ('[UNK]', 1), ('[CLS]', 2), ('[SEP]', 3),
                      ('[MASK]', 4)]:
    assert tok._sp.piece_to_id(piece) == want


def test_round_trip_captions(tok):
  for text in set(TEXTS):
    ids, mask = tok.encode(text, 64)
    assert ids[0] == tok_lib.CLS_ID
    n = int(mask.sum())
    assert ids[n - 1] == tok_lib.SEP_ID
    assert np.all(ids[n:] == tok_lib.PAD_ID)
    assert tok.decode(ids) == text


def test_special_tokens_never_split(tok):
  text = 'red circle left of blue square [SEP] ring contains star [SEP]'
  pieces = tok.pieces(text)
  assert pieces.count('[SEP]') == 2
  ids, _ = tok.encode(text, 64)
  # Two [SEP] from the text plus the closing one.
  assert int(np.sum(ids == tok_lib.SEP_ID)) == 3
  assert '[MASK]' in tok.pieces('a [MASK] circle')


def test_truncation_keeps_cls_and_sep(tok):
  ids, mask = tok.encode(' '.join(['red circle'] * 50), 10)
  assert ids.shape == (10,) and mask.sum() == 10
  assert ids[0] == tok_lib.CLS_ID and ids[-1] == tok_lib.SEP_ID


def test_pickle_and_save_load(tok, tmp_path):
  again = pickle.loads(pickle.dumps(tok))
  assert again.fingerprint == tok.fingerprint
  path = tok.save(str(tmp_path))
  loaded = tok_lib.Tokenizer.load(path)
  np.testing.assert_array_equal(loaded.encode(TEXTS[0], 20)[0],
                                tok.encode(TEXTS[0], 20)[0])


def test_load_or_train_reuses_and_checks_key(tmp_path):
  calls = []

  def texts():
    calls.append(1)
    return TEXTS

  a = tok_lib.load_or_train(str(tmp_path), texts, 200, key='k1')
  b = tok_lib.load_or_train(str(tmp_path), texts, 200, key='k1')
  assert len(calls) == 1 and a.fingerprint == b.fingerprint
  assert os.path.exists(tmp_path / 'tokenizer.model')
  with pytest.raises(ValueError, match='trained for'):
    tok_lib.load_or_train(str(tmp_path), texts, 200, key='other')


def test_deterministic_training():
  a = tok_lib.train_tokenizer(TEXTS, 200)
  b = tok_lib.train_tokenizer(TEXTS, 200)
  assert a.fingerprint == b.fingerprint


def test_bpe_keeps_every_word_of_the_synthetic_world_whole():
  """The recipes' tokenizer (BPE, ``input.tokenizer.model_type``) spells
  each colour, size, category and relation word as one piece; the unigram
  trainer on the same small corpus splits some into letters."""
  from vlg.data import ops  # pylint: disable=g-import-not-at-top
  from vlg.synthetic import source  # pylint: disable=g-import-not-at-top
  from vlg.synthetic import world  # pylint: disable=g-import-not-at-top
  texts = []
  for i in range(300):
    rec = source.make_record('train', i)
    texts += [ops.pre_caption(t, 1000) for t in rec['captions'] +
              [r['text'] for r in rec['regions']]]
  words = (list(world.COLOURS) + list(world.CATEGORIES) + list(world.SIZES)
           + ['objects', 'image', 'above', 'below'])
  bpe = tok_lib.train_tokenizer(texts, 1024, model_type='bpe')
  assert all(len(bpe.pieces(w)) == 1 for w in words), [
      (w, bpe.pieces(w)) for w in words if len(bpe.pieces(w)) > 1]
  unigram = tok_lib.train_tokenizer(texts, 1024, model_type='unigram')
  assert max(len(unigram.pieces(w)) for w in words) > 1
  with pytest.raises(ValueError, match='model_type'):
    tok_lib.train_tokenizer(texts, 1024, model_type='char')
