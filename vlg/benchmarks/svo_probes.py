"""SVO-Probes (Hendricks and Nematzadeh, 2021), in both published layouts.

1. The published CSV, ``svo_probes.csv`` (google-deepmind/svo_probes), one row
   per (sentence, positive image, negative image), with a header naming
   ``sentence, pos_triplet, neg_triplet, subj_neg, verb_neg, obj_neg,
   pos_url, neg_url, pos_image_id, neg_image_id`` (other columns, e.g. a
   pandas index, are ignored). Booleans are written ``True``/``False``;
   triplets as ``"girl,stand,grass"``; image ids are integers. The images are
   fetched by the user from the URLs, so the CSV has no file names: the file
   name is derived from the image id, ``'<image_id>.jpg'`` by default (the
   naming common downloader scripts use); ``image_template`` changes it, and
   may use ``{id}`` and ``{url_name}`` (the last path component of the URL).
   The example's ``index`` is the row's 0-based position among the data rows.
2. The JSON-lines file of Bugliarello et al. 2023 (e-bug/fine-grained-evals,
   ``annotations/test.jsonl``): ``caption``, ``pos_image``, ``neg_image``
   (file names), ``svo_index``, ``pos_triplet``, ``neg_triplet``,
   ``subj_neg``, ``verb_neg``, ``obj_neg`` (JSON booleans there; strings are
   accepted). ``index`` is ``svo_index``.

The same rows in either layout give equal examples, field for field, when the
JSONL names images ``<image_id>.jpg`` and numbers rows as the CSV does.

Negative type: the DeepMind analysis notebook assigns a row to the subject,
verb or object group only when exactly that one flag is set; vlg does the same
(``neg_type``), and a row with no or several flags set gets
``neg_type=None``: it counts in the overall accuracy but in no per-type group.
(Bugliarello et al.'s notebook instead checks subj, then verb, else object.)
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from vlg.benchmarks import common

CSV_COLUMNS: tuple[str, ...] = (
    'sentence', 'pos_triplet', 'neg_triplet', 'subj_neg', 'verb_neg',
    'obj_neg', 'pos_url', 'neg_url', 'pos_image_id', 'neg_image_id')

NEG_TYPES: tuple[str, ...] = ('subject', 'verb', 'object')

Triplet = tuple[str, str, str]


@dataclasses.dataclass(frozen=True)
class SvoExample:
  """One sentence with a matching and a non-matching image.

  Attributes:
    index: the row number (CSV) or ``svo_index`` (JSONL).
    sentence: the sentence (``caption`` in the JSONL layout).
    pos_image: file name of the image the sentence describes.
    neg_image: file name of the image that differs in one of S, V, O.
    pos_triplet: (subject, verb, object) of the positive image.
    neg_triplet: (subject, verb, object) of the negative image.
    subj_neg: the negative differs in the subject.
    verb_neg: the negative differs in the verb.
    obj_neg: the negative differs in the object.
    neg_type: 'subject', 'verb' or 'object' when exactly one flag is set,
      else None (see the module docstring).
  """
  index: int
  sentence: str
  pos_image: str
  neg_image: str
  pos_triplet: Triplet
  neg_triplet: Triplet
  subj_neg: bool
  verb_neg: bool
  obj_neg: bool
  neg_type: str | None

  @property
  def caption(self) -> str:
    """The sentence, under the JSONL layout's name."""
    return self.sentence

  def image_files(self) -> tuple[str, ...]:
    return (self.pos_image, self.neg_image)


def _triplet(record: Mapping[str, Any], key: str) -> Triplet:
  value = record.get(key)
  if value is None:
    raise common.FieldError(f'missing required field {key!r}')
  parts = value.split(',') if isinstance(value, str) else value
  if not isinstance(parts, (list, tuple)) or len(parts) != 3 or not all(
      isinstance(p, str) and p.strip() for p in parts):
    raise common.FieldError(f'field {key!r} must be "subject,verb,object", '
                            f'got {value!r}')
  return tuple(p.strip() for p in parts)


def _example(index: int, sentence: str, pos_image: str, neg_image: str,
             record: Mapping[str, Any]) -> SvoExample:
  flags = [common.get_bool(record, k)
           for k in ('subj_neg', 'verb_neg', 'obj_neg')]
  neg_type = NEG_TYPES[flags.index(True)] if sum(flags) == 1 else None
  return SvoExample(
      index=index, sentence=sentence, pos_image=pos_image,
      neg_image=neg_image, pos_triplet=_triplet(record, 'pos_triplet'),
      neg_triplet=_triplet(record, 'neg_triplet'), subj_neg=flags[0],
      verb_neg=flags[1], obj_neg=flags[2], neg_type=neg_type)


def _parse_jsonl(record: Any) -> SvoExample:
  record = common.require_dict(record)
  return _example(common.get_int(record, 'svo_index', allow_str=True),
                  common.get_str(record, 'caption'),
                  common.get_str(record, 'pos_image'),
                  common.get_str(record, 'neg_image'), record)


def _csv_image(row: Mapping[str, Any], side: str, template: str) -> str:
  image_id = common.get_str(row, f'{side}_image_id').strip()
  url = row.get(f'{side}_url') or ''
  url_name = url.rstrip('/').rsplit('/', 1)[-1]
  if '{url_name}' in template and not url_name:
    raise common.FieldError(f'field {side + "_url"!r} is empty')
  return template.format(id=image_id, url_name=url_name)


def _read_csv(collector: common.Collector, template: str) -> list[SvoExample]:
  examples = []
  with open(collector.path, encoding='utf-8-sig', newline='') as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    absent = [c for c in CSV_COLUMNS if c not in header]
    if absent:
      collector.fail('line 1', f'the CSV header lacks column(s) {absent}; '
                     f'expected {list(CSV_COLUMNS)}')
    for index, row in enumerate(reader):
      collector.num_records += 1
      where = f'line {reader.line_num}'
      try:
        if None in row or None in row.values():
          raise common.FieldError('the row does not have as many cells as '
                                  f'the header ({len(header)})')
        examples.append(_example(index, common.get_str(row, 'sentence'),
                                 _csv_image(row, 'pos', template),
                                 _csv_image(row, 'neg', template), row))
      except common.FieldError as e:
        collector.bad(where, str(e))
  return examples


def _is_csv(path: str) -> bool:
  if path.lower().endswith('.csv'):
    return True
  if path.lower().endswith(('.jsonl', '.json')):
    return False
  with open(path, encoding='utf-8-sig') as f:
    first = next((line for line in f if line.strip()), '')
  return not first.lstrip().startswith('{')


def load_svo_probes(path: str | os.PathLike, skip_bad: bool = False,
                    image_template: str = '{id}.jpg'
                    ) -> common.Loaded[SvoExample]:
  """Reads SVO-Probes from the published CSV or the JSON-lines layout.

  Args:
    path: ``svo_probes.csv`` or a ``.jsonl`` file; other names are sniffed
      (a first line starting with ``{`` means JSON lines).
    skip_bad: skip (and count) bad rows instead of raising.
    image_template: CSV only: how an image file name is made from the image
      id (``{id}``) or the URL's last component (``{url_name}``).

  Returns:
    The examples in file order.

  Raises:
    BenchmarkFormatError: a CSV header without a required column; or (unless
      ``skip_bad``) a row that is not JSON, lacks a field, or has a value of
      the wrong type (e.g. a flag that is not a boolean); names file and line.
  """
  collector = common.Collector(os.fspath(path), skip_bad)
  if _is_csv(collector.path):
    examples = _read_csv(collector, image_template)
  else:
    examples = [ex for _, ex in common.parse_jsonl(collector, _parse_jsonl)]
  return common.make_loaded(examples, [collector])
