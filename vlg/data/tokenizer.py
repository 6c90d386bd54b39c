"""SentencePiece tokenizer trained by vlg, with fixed special-token ids.

vlg trains its own tokenizer on the training texts of a data source (about
1k pieces for the synthetic world, 32k for real corpora) and caches the model
file next to the data or in the workdir, so a re-run reuses it. Special tokens
have fixed ids so that models, masking and checkpoints agree::

  [PAD]=0  [UNK]=1  [CLS]=2  [SEP]=3  [MASK]=4

They are user-defined symbols, so a literal ``[SEP]`` in a text (as in the
verbalised scene graphs) is one token and is never split. Inputs and outputs
are numpy, and the class pickles by value, so it runs inside grain worker
processes without jax.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable

import numpy as np
import sentencepiece as spm

PAD, UNK, CLS, SEP, MASK = '[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
SPECIAL_IDS = (PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID)
MODEL_FILE = 'tokenizer.model'


class Tokenizer:
  """Wraps a SentencePiece model; ``encode`` adds [CLS] ... [SEP] and pads."""

  kind = 'sentencepiece'
  # The special ids as attributes, as BERT's WordPiece tokenizer
  # (vlg/data/wordpiece.py) has them at other values.
  pad_id, unk_id, cls_id, sep_id, mask_id = (PAD_ID, UNK_ID, CLS_ID, SEP_ID,
                                             MASK_ID)
  special_ids = SPECIAL_IDS

  def __init__(self, model_proto: bytes):
    self._proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    for piece, want in ((PAD, PAD_ID), (UNK, UNK_ID), (CLS, CLS_ID),
                        (SEP, SEP_ID), (MASK, MASK_ID)):
      got = self._sp.piece_to_id(piece)
      if got != want:
        raise ValueError(f'Tokenizer model has {piece} at id {got}, vlg '
                         f'expects {want}; was it trained by vlg?')

  @classmethod
  def load(cls, path: str) -> 'Tokenizer':
    if os.path.isdir(path):
      path = os.path.join(path, MODEL_FILE)
    if not os.path.exists(path):
      raise FileNotFoundError(f'No tokenizer model at {path}')
    with open(path, 'rb') as f:
      return cls(f.read())

  def save(self, path: str) -> str:
    if os.path.isdir(path) or not path.endswith('.model'):
      os.makedirs(path, exist_ok=True)
      path = os.path.join(path, MODEL_FILE)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
      f.write(self._proto)
    os.replace(tmp, path)
    return path

  def __getstate__(self):
    return {'proto': self._proto}

  def __setstate__(self, state):
    self.__init__(state['proto'])

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def fingerprint(self) -> str:
    return hashlib.sha256(self._proto).hexdigest()[:16]

  def pieces(self, text: str) -> list[str]:
    return self._sp.encode(text, out_type=str)

  def encode(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``[CLS] pieces [SEP]``, truncated to ``max_len``, padded with [PAD].

    Returns:
      ids int32 [max_len] and mask int32 [max_len] (1 on real tokens).
    """
    if max_len < 2:
      raise ValueError(f'max_len must be >= 2, got {max_len}')
    body = self._sp.encode(text)[:max_len - 2]
    ids = np.full((max_len,), PAD_ID, np.int32)
    seq = [CLS_ID] + body + [SEP_ID]
    ids[:len(seq)] = seq
    mask = (ids != PAD_ID).astype(np.int32)
    return ids, mask

  def decode(self, ids: Iterable[int]) -> str:
    """Text of the non-special ids (special tokens other than [UNK] dropped)."""
    keep = [int(i) for i in ids if int(i) not in (PAD_ID, CLS_ID, SEP_ID)]
    return self._sp.decode(keep)


def load(path: str):
  """A tokenizer from ``path``: a SentencePiece model (or a folder with
  ``tokenizer.model``), or BERT's WordPiece ``vocab.txt`` (or a folder with
  one, e.g. a Hugging Face BERT folder; vlg/data/wordpiece.py)."""
  from vlg.data import wordpiece  # pylint: disable=g-import-not-at-top
  if os.path.isdir(path):
    if (not os.path.exists(os.path.join(path, MODEL_FILE)) and
        os.path.exists(os.path.join(path, wordpiece.VOCAB_FILE))):
      return wordpiece.WordPieceTokenizer.load(path)
  elif path.endswith('.txt'):
    return wordpiece.WordPieceTokenizer.load(path)
  return Tokenizer.load(path)


def train_tokenizer(texts: Iterable[str], vocab_size: int, *,
                    model_type: str = 'unigram') -> Tokenizer:
  """Trains a SentencePiece model on ``texts`` with vlg's special tokens.

  Training is deterministic for the same texts in the same order (one thread,
  no sentence shuffling). ``vocab_size`` is an upper bound: a small corpus
  (the synthetic world) yields fewer pieces rather than failing.
  """
  if model_type not in ('unigram', 'bpe'):
    raise ValueError(f"tokenizer model_type={model_type!r}; valid: 'unigram', "
                     "'bpe'")
  sentences = [t for t in texts if t and t.strip()]
  if not sentences:
    raise ValueError('Cannot train a tokenizer on zero texts')
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=model,
      vocab_size=vocab_size, model_type=model_type, hard_vocab_limit=False,
      pad_id=PAD_ID, unk_id=UNK_ID, bos_id=-1, eos_id=-1,
      pad_piece=PAD, unk_piece=UNK, user_defined_symbols=[CLS, SEP, MASK],
      character_coverage=1.0, num_threads=1, shuffle_input_sentence=False,
      input_sentence_size=0, minloglevel=2)
  return Tokenizer(model.getvalue())


# Written last, atomically, by load_or_train: its presence means the model is
# complete (other processes of a multi-process job wait for it).
KEY_FILE = 'tokenizer.key'


def load_or_train(directory: str, texts_fn, vocab_size: int, *,
                  key: str = '', model_type: str = 'unigram') -> Tokenizer:
  """Reuses ``directory/tokenizer.model`` if it matches ``key``, else trains.

  Args:
    directory: where the model (and a ``tokenizer.key`` file) are cached.
    texts_fn: zero-argument callable returning the training texts; only
      called when a new model must be trained.
    vocab_size: upper bound on the number of pieces.
    key: a fingerprint of the training data and settings; a cached model
      trained under another key is an error rather than silently reused.
    model_type: SentencePiece's model type ('unigram' or 'bpe').
  """
  path = os.path.join(directory, MODEL_FILE)
  key_path = os.path.join(directory, KEY_FILE)
  want = f'{key}|vocab={vocab_size}'
  if os.path.exists(path):
    have = open(key_path).read() if os.path.exists(key_path) else ''
    if have and have != want:
      raise ValueError(
          f'{path} was trained for {have!r} but this run needs {want!r}. '
          'Use another directory or delete the cached tokenizer.')
    return Tokenizer.load(path)
  tok = train_tokenizer(texts_fn(), vocab_size, model_type=model_type)
  tok.save(path)
  with open(key_path + '.tmp', 'w') as f:
    f.write(want)
  os.replace(key_path + '.tmp', key_path)
  return tok
