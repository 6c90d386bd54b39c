"""Which words the model grounds in the image: masked-word accuracy by class.

A model that matches captions to images must see what the words name. This
probe asks the MLM head directly, on held-out synthetic captions: for each
word class of the world (shapes, colours, sizes, numbers, relation words)
every token of that class in a caption is replaced by [MASK] at once and
the head must restore each from the image and the rest of the caption.
With all of a class masked the caption cannot give the answer away (a
"two stars ... the star" caption keeps no star), so accuracy well above
the class's chance (one over its number of words) means the fusion reads
that attribute off the image.

Read by ``vlg.tools.validate`` as ``heldout/mlm_word_acc/<class>`` (and
``mlm_word_num/<class>``, the number of masked tokens). A token counts for
a class when its tokenizer piece is a whole word of the class (vlg's BPE
keeps the world's words whole); a word split into several pieces is left
out, so a tokenizer that splits a class is visible as a small count.
On the synthetic world with the tiny ALBEF, this probe found the shapes
unlearned while colours were read (docs/results.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from vlg.data import tokenizer as tokenizer_lib
from vlg.synthetic import language
from vlg.synthetic import world

# The world's words by what they name. Relation words are those of the
# relation phrases and verbs that name nothing else ('is', 'the', 'of',
# 'than', 'as' are left out, and 'same colour', whose 'colour' would also
# be a colour-class guess).
_RELATION_WORDS = sorted(
    {w for text in (list(language.PHRASES.values()) +
                    list(language.VERBS.values()) +
                    list(language.ALTERNATIVE_PHRASES.values()))
     for w in text.split()} -
    {'is', 'the', 'of', 'than', 'as', 'same', 'colour'})
WORD_CLASSES: dict[str, tuple[str, ...]] = {
    'shape': tuple(world.CATEGORIES) + tuple(language.PLURALS.values()),
    'colour': tuple(world.COLOURS),
    'size': tuple(world.SIZES),
    'number': tuple(language.NUMBER_WORDS) + tuple(str(i) for i in range(7)),
    'relation': tuple(_RELATION_WORDS),
}


def class_token_ids(tokenizer: tokenizer_lib.Tokenizer,
                    classes: Mapping[str, Sequence[str]] = WORD_CLASSES
                    ) -> dict[str, np.ndarray]:
  """Token ids of each class's words that the tokenizer keeps whole.

  Returns:
    ``{class: int32 ids}``; a class none of whose words is a single piece
    gets an empty array.
  """
  out = {}
  for name, words in classes.items():
    ids = set()
    for word in words:
      pieces = tokenizer.pieces(word)
      if len(pieces) == 1:
        ids.add(int(tokenizer.encode(word, 3)[0][1]))
    out[name] = np.array(sorted(ids), np.int32)
  return out


def mask_class(text_ids: np.ndarray, text_mask: np.ndarray,
               class_ids: np.ndarray, mask_id: int = tokenizer_lib.MASK_ID
               ) -> tuple[np.ndarray, np.ndarray]:
  """``text_ids`` with every real token in ``class_ids`` set to [MASK]
  (``mask_id``: the tokenizer's, e.g. ``tokenizer.mask_id``).

  Returns:
    ``(masked_ids, targets)``: int32 [B, L] and bool [B, L] (True where a
    token was masked, i.e. where the MLM head is scored).
  """
  ids = np.asarray(text_ids)
  targets = np.isin(ids, class_ids) & (np.asarray(text_mask) > 0)
  masked = np.where(targets, mask_id, ids).astype(np.int32)
  return masked, targets


def accumulate(totals: dict[str, list[int]], name: str,
               predicted: np.ndarray, text_ids: np.ndarray,
               targets: np.ndarray) -> None:
  """Adds one batch's correct and masked counts of class ``name``."""
  correct = int((np.asarray(predicted)[targets] ==
                 np.asarray(text_ids)[targets]).sum())
  entry = totals.setdefault(name, [0, 0])
  entry[0] += correct
  entry[1] += int(targets.sum())


def word_metrics(totals: Mapping[str, Sequence[int]]) -> dict[str, float]:
  """``mlm_word_acc/<class>`` (NaN where nothing was masked) and
  ``mlm_word_num/<class>`` from :func:`accumulate`'s counts."""
  out = {}
  for name, (correct, num) in sorted(totals.items()):
    out[f'mlm_word_acc/{name}'] = correct / num if num else float('nan')
    out[f'mlm_word_num/{name}'] = float(num)
  return out
