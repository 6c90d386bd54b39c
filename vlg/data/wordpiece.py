"""BERT's WordPiece tokenizer (``vocab.txt``), for runs whose text tower
starts from BERT (``model.init.text``, docs/weights.md).

The tokenisation itself is Hugging Face's ``tokenizers`` library
(``BertWordPieceTokenizer``: BERT's basic tokenizer — lower-casing and
accent stripping for an uncased vocabulary, punctuation and CJK splitting —
then greedy longest-match WordPiece), not a re-implementation. This class
gives it the interface of vlg's SentencePiece :class:`Tokenizer`
(``encode`` → ``[CLS] … [SEP]`` padded, ``decode``, ``pieces``,
``vocab_size``, ``fingerprint``, pickling by value) and BERT's special ids
(``bert-base-uncased``: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102,
[MASK] 103), read from the vocabulary rather than assumed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable

import numpy as np

VOCAB_FILE = 'vocab.txt'
CONFIG_FILE = 'tokenizer_config.json'  # Hugging Face's; read for the casing.
_SPECIALS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')


class WordPieceTokenizer:
  """A BERT ``vocab.txt`` through ``tokenizers.BertWordPieceTokenizer``."""

  kind = 'wordpiece'

  def __init__(self, vocab: str, lowercase: bool = True):
    """``vocab``: the text of a ``vocab.txt`` (one piece a line)."""
    self._vocab_text = vocab
    self._lowercase = bool(lowercase)
    pieces = vocab.splitlines()
    self._ids = {p: i for i, p in enumerate(pieces)}
    missing = [s for s in _SPECIALS if s not in self._ids]
    if missing:
      raise ValueError(f'WordPiece vocabulary lacks {missing}')
    import tokenizers  # pylint: disable=g-import-not-at-top
    self._tok = tokenizers.BertWordPieceTokenizer(
        self._ids, lowercase=self._lowercase)
    (self.pad_id, self.unk_id, self.cls_id, self.sep_id,
     self.mask_id) = (self._ids[s] for s in _SPECIALS)
    self.special_ids = (self.pad_id, self.unk_id, self.cls_id, self.sep_id,
                        self.mask_id)
    self._size = len(pieces)

  @classmethod
  def load(cls, path: str, lowercase: bool | None = None
           ) -> WordPieceTokenizer:
    """From a ``vocab.txt`` or a folder holding one (a Hugging Face BERT
    folder); ``lowercase`` None: from the folder's ``tokenizer_config.json``
    (``do_lower_case``), else True (the uncased models)."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if os.path.isdir(path):
      path = os.path.join(path, VOCAB_FILE)
    if not os.path.exists(path):
      raise FileNotFoundError(f'No WordPiece vocabulary at {path}')
    if lowercase is None:
      lowercase = True
      cfg = os.path.join(folder, CONFIG_FILE)
      if os.path.exists(cfg):
        with open(cfg) as f:
          lowercase = bool(json.load(f).get('do_lower_case', True))
    with open(path, encoding='utf-8') as f:
      return cls(f.read(), lowercase=lowercase)

  def save(self, path: str) -> str:
    """Writes the folder ``path``: ``vocab.txt`` and, as a Hugging Face
    BERT folder has it, ``tokenizer_config.json`` with ``do_lower_case``,
    so :meth:`load` gives back the same tokenizer (same fingerprint) for a
    cased vocabulary too. Returns the ``vocab.txt`` path."""
    os.makedirs(path, exist_ok=True)
    out = os.path.join(path, VOCAB_FILE)
    cfg = os.path.join(path, CONFIG_FILE)
    for name, text in ((out, self._vocab_text), (cfg, json.dumps(
        {'do_lower_case': self._lowercase}))):
      with open(name + '.tmp', 'w', encoding='utf-8') as f:
        f.write(text)
      os.replace(name + '.tmp', name)
    return out

  def __getstate__(self):
    return {'vocab': self._vocab_text, 'lowercase': self._lowercase}

  def __setstate__(self, state):
    self.__init__(state['vocab'], state['lowercase'])

  @property
  def vocab_size(self) -> int:
    return self._size

  @property
  def fingerprint(self) -> str:
    h = hashlib.sha256(self._vocab_text.encode('utf-8'))
    h.update(b'|lower' if self._lowercase else b'|cased')
    return h.hexdigest()[:16]

  def pieces(self, text: str) -> list[str]:
    return self._tok.encode(text, add_special_tokens=False).tokens

  def encode(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``[CLS] pieces [SEP]``, truncated to ``max_len``, padded with [PAD].

    Returns:
      ids int32 [max_len] and mask int32 [max_len] (1 on real tokens).
    """
    if max_len < 2:
      raise ValueError(f'max_len must be >= 2, got {max_len}')
    body = self._tok.encode(text, add_special_tokens=False).ids
    seq = [self.cls_id] + body[:max_len - 2] + [self.sep_id]
    ids = np.full((max_len,), self.pad_id, np.int32)
    ids[:len(seq)] = seq
    mask = np.zeros((max_len,), np.int32)
    mask[:len(seq)] = 1
    return ids, mask

  def decode(self, ids: Iterable[int]) -> str:
    """Text of the ids without [PAD], [CLS] and [SEP] (WordPiece joined)."""
    drop = (self.pad_id, self.cls_id, self.sep_id)
    keep = [int(i) for i in ids if int(i) not in drop]
    return self._tok.decode(keep, skip_special_tokens=False)
