"""Relation vocabulary, verbalised scene graphs and MRC triplet sampling.

Scene-graph data (GQA, Visual Genome, the synthetic world) gives each image
triplets ⟨subject, relation, object⟩ with entity labels and boxes. Two
objectives of Bugliarello et al. (EMNLP 2023) read them
(docs/objectives.md §4, §5):

- VSG turns K sampled triplets into a text, ``s1 r1 o1 [SEP] s2 r2 o2
  [SEP] ...``, sorted by the subject's centre: :func:`verbalise_scene_graph`
  and :func:`encode_vsg`;
- MRC classifies the relation of a (subject box, object box) pair over the
  vocabulary of relation strings: :class:`RelationVocab` (built and saved
  with the prepared data) and :func:`sample_mrc_pairs`.

A relation record is a dict like the synthetic world's: ``subject_label``,
``predicate``, ``object_label``, ``subject_box`` and ``object_box``
(normalised cx, cy, w, h). Grain workers import this module: NumPy only,
no jax.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from vlg.data import ops
from vlg.data import tokenizer as tokenizer_lib

VOCAB_FORMAT = 'vlg_relation_vocab'
# The box of padding rows: the whole image (valid for patch masks and GIoU).
PAD_BOX = np.array([0.5, 0.5, 1.0, 1.0], np.float32)
# A centre this close below a band line (in bands) counts in the next band,
# so float noise (0.3 / 0.1 = 2.9999999999999996) cannot change the order.
_BAND_SNAP = 1e-6


def normalise_relation(text: str) -> str:
  """Lower-cased, stripped, whitespace collapsed: the vocabulary's key."""
  if not isinstance(text, str):
    raise TypeError(f'a relation must be a string, got {text!r}')
  return ' '.join(text.lower().split())


class RelationVocab:
  """The relation strings of the MRC head, in class-id order.

  Built from the data (:meth:`build`): relations are normalised
  (:func:`normalise_relation`), counted, filtered by ``min_count`` and
  ordered by descending count, ties alphabetically. There is no ``[UNK]``
  class: :meth:`encode` of an unknown relation raises ``KeyError`` unless
  the caller passes ``allow_unknown=True`` (then -1).
  """

  def __init__(self, entries: Sequence[tuple[str, int]], min_count: int = 1):
    """Takes ``(relation, count)`` pairs in class-id order, as saved.

    Raises:
      ValueError: on an empty list, a relation that is not normalised, a
        duplicate, or a count that is not an int ≥ ``min_count``.
    """
    self.min_count = int(min_count)
    self._relations: tuple[str, ...] = tuple(r for r, _ in entries)
    self._counts: tuple[int, ...] = tuple(c for _, c in entries)
    if not self._relations:
      raise ValueError('a relation vocabulary needs at least one relation')
    for i, (rel, count) in enumerate(entries):
      if not isinstance(rel, str) or not rel or normalise_relation(rel) != rel:
        raise ValueError(f'relation #{i} {rel!r} is empty or not normalised '
                         f'(want {normalise_relation(str(rel))!r})')
      if (not isinstance(count, int) or isinstance(count, bool) or
          count < self.min_count):
        raise ValueError(f'relation #{i} {rel!r} has count {count!r}; need '
                         f'an int >= min_count {self.min_count}')
    self._ids = {rel: i for i, rel in enumerate(self._relations)}
    if len(self._ids) != len(self._relations):
      dup = [r for r, n in Counter(self._relations).items() if n > 1]
      raise ValueError(f'duplicate relations in the vocabulary: {dup}')

  @classmethod
  def build(cls, relations: Iterable[str], min_count: int = 1
            ) -> RelationVocab:
    """Counts the (normalised) relation strings of a data set.

    Args:
      relations: every relation occurrence, e.g. each triplet's predicate.
      min_count: relations seen fewer times are left out of the vocabulary.

    Raises:
      ValueError: if a relation is empty after normalisation, or none
        reaches ``min_count``.
    """
    counts = Counter()
    for i, rel in enumerate(relations):
      key = normalise_relation(rel)
      if not key:
        raise ValueError(f'relation #{i} {rel!r} is empty')
      counts[key] += 1
    kept = sorted(((r, c) for r, c in counts.items() if c >= min_count),
                  key=lambda rc: (-rc[1], rc[0]))
    if not kept:
      raise ValueError(f'no relation is seen at least min_count={min_count} '
                       f'times ({len(counts)} distinct relations)')
    return cls(kept, min_count)

  @property
  def relations(self) -> tuple[str, ...]:
    """The relation strings, index = class id."""
    return self._relations

  @property
  def counts(self) -> dict[str, int]:
    """Occurrences of each relation in the data the vocabulary was built on."""
    return dict(zip(self._relations, self._counts))

  def __len__(self) -> int:
    return len(self._relations)

  def __contains__(self, text: str) -> bool:
    return normalise_relation(text) in self._ids

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, RelationVocab):
      return NotImplemented
    return (self._relations, self._counts, self.min_count) == (
        other._relations, other._counts, other.min_count)

  __hash__ = None

  def __repr__(self) -> str:
    return (f'RelationVocab({len(self)} relations, '
            f'min_count={self.min_count})')

  def encode(self, text: str, allow_unknown: bool = False) -> int:
    """The class id of a relation string (normalised first).

    Raises:
      KeyError: naming the string, if it is not in the vocabulary and
        ``allow_unknown`` is False (with it: -1).
    """
    key = normalise_relation(text)
    if key in self._ids:
      return self._ids[key]
    if allow_unknown:
      return -1
    raise KeyError(f'relation {text!r} (normalised {key!r}) is not in the '
                   f'vocabulary of {len(self)} relations')

  def decode(self, index: int) -> str:
    """The relation string of class id ``index`` (0 ≤ index < len)."""
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f'relation id {index} is outside [0, {len(self)})')
    return self._relations[index]

  def save(self, path: str) -> str:
    """Writes the vocabulary as JSON (atomically); returns the path."""
    payload = {'format': VOCAB_FORMAT, 'min_count': self.min_count,
               'relations': [{'relation': r, 'count': c}
                             for r, c in zip(self._relations, self._counts)]}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
      json.dump(payload, f, indent=1, ensure_ascii=False)
    os.replace(tmp, path)
    return path

  @classmethod
  def load(cls, path: str) -> RelationVocab:
    """Reads a vocabulary written by :meth:`save`.

    Raises:
      FileNotFoundError: if there is no file.
      ValueError: naming the file and key, if the JSON is not a vocabulary.
    """
    with open(path, encoding='utf-8') as f:
      try:
        payload = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}: not JSON: {e}') from e
    if not isinstance(payload, dict) or payload.get('format') != VOCAB_FORMAT:
      raise ValueError(f'{path}: not a relation vocabulary (key "format" '
                       f'must be {VOCAB_FORMAT!r})')
    entries = []
    for i, item in enumerate(payload.get('relations') or []):
      if not isinstance(item, dict) or set(item) != {'relation', 'count'}:
        raise ValueError(f'{path}: relations[{i}] must be {{"relation": str, '
                         f'"count": int}}, got {item!r}')
      entries.append((item['relation'], item['count']))
    try:
      return cls(entries, payload.get('min_count', 1))
    except ValueError as e:
      raise ValueError(f'{path}: {e}') from e


# ---------------------------------------------------------------------------
# Triplet records.


def _field(rel: Mapping[str, Any], key: str, i: int):
  try:
    return rel[key]
  except (KeyError, TypeError):
    raise ValueError(f'relation #{i} has no {key!r}: {rel!r}') from None


def _box(rel: Mapping[str, Any], key: str, i: int) -> np.ndarray:
  box = np.asarray(_field(rel, key, i), np.float32)
  if box.shape != (4,) or not np.all(np.isfinite(box)):
    raise ValueError(f'relation #{i}: {key} must be 4 finite numbers '
                     f'(cx, cy, w, h), got {box!r}')
  return box


def _words(text: str, rel_index: int, key: str) -> str:
  try:
    return ops.pre_caption(text, max_words=10_000)
  except (ops.BadExampleError, AttributeError, TypeError):
    raise ops.BadExampleError(f'relation #{rel_index}: {key} {text!r} is '
                              'empty after normalisation') from None


@dataclasses.dataclass(frozen=True)
class VerbalisedGraph:
  """K triplets of a scene graph, in text order.

  ``text`` joins ``triplets`` with ``' [SEP] '`` (the tokenizer's closing
  [SEP] ends the last one); ``relations`` are the sampled records behind
  them, in the same order.
  """
  text: str
  triplets: tuple[str, ...]
  relations: tuple[Mapping[str, Any], ...]


def verbalise_scene_graph(relations: Sequence[Mapping[str, Any]], k: int,
                          rng: np.random.Generator, sort: bool = True,
                          band: float = 0.1) -> VerbalisedGraph:
  """Samples and verbalises K scene-graph triplets (docs/objectives.md §4).

  ``min(k, n)`` triplets are drawn without replacement with ``rng``; with
  ``sort`` they are put in raster order of the subject's box centre —
  horizontal bands of height ``band`` (normalised) top to bottom, left to
  right inside a band, ties in sampled order — else kept in sampled order
  (the paper's unsorted ablation). Each triplet reads ``subject relation
  object``, every part normalised as captions are (``ops.pre_caption``:
  lower case, no punctuation), so that the tokenizer sees the text it was
  trained on and a literal ``[SEP]`` stays the separator.

  Args:
    relations: the image's triplet records (see the module docstring).
    k: triplets per text (the paper: 8; ablation 3).
    rng: the example's generator.
    sort: raster-sort by subject centre (True) or keep sampled order.
    band: band height for the raster order, in (0, 1].

  Returns:
    A :class:`VerbalisedGraph`.

  Raises:
    ops.BadExampleError: if the image has no triplet or a label or relation
      is empty after normalisation; ValueError on a missing field.
  """
  if k < 1:
    raise ValueError(f'k must be >= 1, got {k}')
  if not 0 < band <= 1:
    raise ValueError(f'band must be in (0, 1], got {band}')
  n = len(relations)
  if n == 0:
    raise ops.BadExampleError('no relation to verbalise: images without a '
                              'scene graph must not reach VSG')
  order = [int(i) for i in rng.choice(n, size=min(k, n), replace=False)]
  if sort:
    def raster_key(i):
      cx, cy = _box(relations[i], 'subject_box', i)[:2]
      return math.floor(float(cy) / band + _BAND_SNAP), float(cx)
    order.sort(key=raster_key)  # Stable: ties keep the sampled order.
  triplets = tuple(
      ' '.join(_words(_field(relations[i], key, i), i, key)
               for key in ('subject_label', 'predicate', 'object_label'))
      for i in order)
  return VerbalisedGraph(' [SEP] '.join(triplets), triplets,
                         tuple(relations[i] for i in order))


def _body_ids(tokenizer: tokenizer_lib.Tokenizer, text: str) -> np.ndarray:
  """Token ids of ``text`` without [CLS]/[SEP], never truncated."""
  # A piece covers at least one character, plus at most one lone '▁'.
  ids, mask = tokenizer.encode(text, 2 * len(text) + 4)
  return ids[1:int(mask.sum()) - 1]


def encode_vsg(tokenizer: tokenizer_lib.Tokenizer,
               graph: VerbalisedGraph | Sequence[str], max_len: int
               ) -> tuple[np.ndarray, np.ndarray]:
  """Ids ``[CLS] t1 [SEP] t2 [SEP] ... tK [SEP] [PAD] ...`` of a VSG text.

  Each triplet is tokenised on its own and the [SEP] ids are inserted
  between them (tokenising the joined text would add a lone '▁' piece
  before every [SEP]). Whole triplets are kept while they fit in
  ``max_len``; only when the first alone is too long is it cut, like
  ``Tokenizer.encode``, to ``[CLS] pieces [SEP]``.

  Args:
    tokenizer: vlg's tokenizer (fixed special ids).
    graph: :func:`verbalise_scene_graph`'s result or the triplet strings.
    max_len: sequence length (paper: 112 for VSG, docs/objectives.md §4).

  Returns:
    ``(ids, mask)``, int32 [max_len] each; mask is 1 on real tokens.
  """
  triplets = graph.triplets if isinstance(graph, VerbalisedGraph) else graph
  if isinstance(triplets, str) or not triplets:
    raise ValueError('encode_vsg needs a non-empty sequence of triplet '
                     f'strings, got {triplets!r}')
  if max_len < 3:
    raise ValueError(f'max_len must be >= 3, got {max_len}')
  cls_id = getattr(tokenizer, 'cls_id', tokenizer_lib.CLS_ID)
  sep_id = getattr(tokenizer, 'sep_id', tokenizer_lib.SEP_ID)
  seq = [cls_id]
  for j, text in enumerate(triplets):
    body = list(_body_ids(tokenizer, text))
    if len(seq) + len(body) + 1 > max_len:
      if j == 0:
        seq += body[:max_len - 2] + [sep_id]
      break
    seq += body + [sep_id]
  ids = np.full((max_len,), getattr(tokenizer, 'pad_id', tokenizer_lib.PAD_ID),
                np.int32)
  ids[:len(seq)] = seq
  mask = np.zeros((max_len,), np.int32)
  mask[:len(seq)] = 1
  return ids, mask


def sample_mrc_pairs(relations: Sequence[Mapping[str, Any]],
                     num_relations: int = 2, *, rng: np.random.Generator,
                     vocab: RelationVocab | None = None) -> dict[str, Any]:
  """Samples up to ``num_relations`` MRC triplets (docs/objectives.md §5).

  Drawn without replacement in random order, padded to ``num_relations``
  rows (padding: whole-image boxes, empty strings, mask 0). With a
  ``vocab``, only triplets whose relation it knows are eligible — those
  below its ``min_count`` are not classes — and their number is returned
  as ``num_skipped``.

  Args:
    relations: the image's triplet records.
    num_relations: rows Q (the paper: 2 per image).
    rng: the example's generator.
    vocab: optional vocabulary; adds the ``label`` ids.

  Returns:
    ``subject_box``, ``object_box`` float32 [Q, 4]; ``subject_label``,
    ``object_label``, ``relation`` (normalised) lists of Q strings;
    ``mask`` int32 [Q]; with ``vocab`` also ``label`` int32 [Q] (0 on
    padding) and ``num_skipped`` int.
  """
  if num_relations < 1:
    raise ValueError(f'num_relations must be >= 1, got {num_relations}')
  eligible = list(range(len(relations)))
  if vocab is not None:
    eligible = [i for i in eligible
                if _field(relations[i], 'predicate', i) in vocab]
  q = num_relations
  out = {'subject_box': np.tile(PAD_BOX, (q, 1)),
         'object_box': np.tile(PAD_BOX, (q, 1)),
         'subject_label': [''] * q, 'object_label': [''] * q,
         'relation': [''] * q, 'mask': np.zeros((q,), np.int32)}
  picked = rng.choice(len(eligible), size=min(q, len(eligible)),
                      replace=False) if eligible else []
  for row, e in enumerate(picked):
    i = eligible[int(e)]
    rel = relations[i]
    out['subject_box'][row] = _box(rel, 'subject_box', i)
    out['object_box'][row] = _box(rel, 'object_box', i)
    out['subject_label'][row] = str(_field(rel, 'subject_label', i))
    out['object_label'][row] = str(_field(rel, 'object_label', i))
    out['relation'][row] = normalise_relation(_field(rel, 'predicate', i))
    out['mask'][row] = 1
  if vocab is not None:
    out['label'] = np.array(
        [vocab.encode(r) if m else 0
         for r, m in zip(out['relation'], out['mask'])], np.int32)
    out['num_skipped'] = len(relations) - len(eligible)
  return out
