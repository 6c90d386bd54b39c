"""VSR, Visual Spatial Reasoning (Liu et al., TACL 2023).

Split files are JSON lines::

  {"image": "000000566575.jpg", "image_link": "http://images.cocodataset.org/
   train2017/000000566575.jpg", "caption": "The book is beside the pizza.",
   "label": 1, "relation": "beside", "annotator_id": 27,
   "vote_true_validator_id": [2, 24], "vote_false_validator_id": []}

What the real files contain (the copies in
``tests/testdata/real_benchmarks/vsr``): the random split (the version used by
Bugliarello et al. 2023, dev 1,012 / test 2,024) has no ``subj``/``obj`` and
writes the validator ids as JSON lists; the current zero-shot split (dev 340 /
test 1,222) adds ``subj``/``obj`` and writes the validator ids as *strings*
such as ``"[19, 2, 51]"``. The validator fields are not read. ``label`` is an
integer 0/1 in all four files; ``true``/``false`` is accepted too.

``rel_meta_category_dict.txt`` has one line per category,
``Category: rel, rel, ...``: 7 categories, 71 entries, 70 distinct relation
names, because ``among`` is listed under both Topological and Unallocated.
:func:`load_vsr_categories` lets the later line win, as the original analysis
script does (cambridgeltl/visual-spatial-reasoning,
``analysis_scripts/eval_compute_acc_by_rel_meta_cat.py`` fills its dict line
by line), so ``among`` is Unallocated and per-category numbers match theirs.

The relations: the full validated VSR corpus (``all_vsr_validated_data.jsonl``,
10,972 rows) uses 66 relation names; 65 of them have a category
(:data:`VSR_RELATIONS`), the 66th, ``congruent``, occurs once and has none.
Five category-file names never occur in the data (``up``, ``after``,
``deep down``, ``from``, ``to``). The four shipped split files use 63; the
current version of the random split (dev 1,097) holds the ``congruent``
example. :func:`categorise_relations` counts a relation without a category
under :data:`UNKNOWN_CATEGORY` (with a warning) rather than leaving it out
of every category figure.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from vlg.benchmarks import common

VSR_CATEGORIES: tuple[str, ...] = (
    'Adjacency', 'Directional', 'Orientation', 'Projective', 'Proximity',
    'Topological', 'Unallocated')

# The category of a relation rel_meta_category_dict.txt does not list.
UNKNOWN_CATEGORY = 'unknown'

# The 65 relations of the VSR corpus that have a category, in the order of
# rel_meta_category_dict.txt (first mention).
VSR_RELATIONS: tuple[str, ...] = (
    'adjacent to', 'alongside', 'at the side of', 'at the right side of',
    'at the left side of', 'attached to', 'at the back of', 'ahead of',
    'against', 'at the edge of', 'off', 'past', 'toward', 'down', 'away from',
    'along', 'around', 'into', 'across', 'across from', 'through',
    'down from', 'facing', 'facing away from', 'parallel to',
    'perpendicular to', 'on top of', 'beneath', 'beside', 'behind', 'left of',
    'right of', 'under', 'in front of', 'below', 'above', 'over',
    'in the middle of', 'by', 'close to', 'near', 'far from', 'far away from',
    'connected to', 'detached from', 'has as a part', 'part of', 'contains',
    'within', 'at', 'on', 'in', 'with', 'surrounding', 'among',
    'consists of', 'out of', 'between', 'inside', 'outside', 'touching',
    'beyond', 'next to', 'opposite to', 'enclosed by')


@dataclasses.dataclass(frozen=True)
class VsrExample:
  """One (image, caption, true/false) item of VSR.

  Attributes:
    image: the COCO 2017 image file name.
    caption: the statement about the image.
    label: 1 if the caption is true of the image, else 0.
    relation: the spatial relation the caption uses.
    subj: the subject concept (zero-shot files only; else None).
    obj: the object concept (zero-shot files only; else None).
    image_link: the COCO URL of the image, if given.
  """
  image: str
  caption: str
  label: int
  relation: str
  subj: str | None = None
  obj: str | None = None
  image_link: str | None = None

  def image_files(self) -> tuple[str, ...]:
    return (self.image,)


def vsr_relations() -> tuple[str, ...]:
  """The 65 VSR relations that have a category (see the module docstring)."""
  return VSR_RELATIONS


def _label(record: dict[str, Any]) -> int:
  if record.get('label') is None:
    raise common.FieldError("missing required field 'label'")
  value = record['label']
  if isinstance(value, bool):
    return int(value)
  if isinstance(value, int) and value in (0, 1):
    return value
  raise common.FieldError(f"field 'label' must be 0 or 1, got {value!r}")


def _parse(record: Any) -> VsrExample:
  record = common.require_dict(record)
  return VsrExample(
      image=common.get_str(record, 'image'),
      caption=common.get_str(record, 'caption'),
      label=_label(record),
      relation=common.get_str(record, 'relation'),
      subj=common.get_str(record, 'subj', required=False),
      obj=common.get_str(record, 'obj', required=False),
      image_link=common.get_str(record, 'image_link', required=False))


def load_vsr(jsonl_path: str | os.PathLike, skip_bad: bool = False
             ) -> common.Loaded[VsrExample]:
  """Reads one VSR split file (JSON lines).

  Args:
    jsonl_path: e.g. ``.../random/test.jsonl`` or ``.../zeroshot/dev.jsonl``.
    skip_bad: skip (and count) bad lines instead of raising.

  Returns:
    The examples in file order.

  Raises:
    BenchmarkFormatError: (unless ``skip_bad``) a line that is not JSON, or a
      record with a missing or wrongly typed field; names file and line.
  """
  collector = common.Collector(os.fspath(jsonl_path), skip_bad)
  examples = [ex for _, ex in common.parse_jsonl(collector, _parse)]
  return common.make_loaded(examples, [collector])


def load_vsr_categories(txt_path: str | os.PathLike) -> dict[str, str]:
  """Reads ``rel_meta_category_dict.txt`` into relation -> category.

  A relation listed under two categories (``among``) gets the later one, as
  in the original analysis script (module docstring). Any malformed line is
  an error naming the file and line.

  Args:
    txt_path: the category file.

  Returns:
    A dict from each listed relation (70 in the published file) to one of the
    7 categories.
  """
  path = os.fspath(txt_path)
  relation_to_category: dict[str, str] = {}
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      category, sep, relations = line.partition(':')
      category = category.strip()
      names = [r.strip() for r in relations.split(',') if r.strip()]
      if not sep or not category or not names:
        raise common.BenchmarkFormatError(
            path, f'line {number}', 'expected "Category: relation, ..."')
      for name in names:
        relation_to_category[name] = category
  if not relation_to_category:
    raise common.BenchmarkFormatError(path, '', 'no categories found')
  return relation_to_category


def categorise_relations(relations: Iterable[str],
                         categories: Mapping[str, str],
                         source: str = 'rel_meta_category_dict.txt'
                         ) -> dict[str, str]:
  """Relation → meta-category for each distinct relation of ``relations``.

  A relation ``categories`` does not list (VSR's ``congruent``) gets
  :data:`UNKNOWN_CATEGORY`, with one warning per relation name, so it is
  counted in a category figure of its own instead of silently in none.
  (The benchmark's own script, ``eval_compute_acc_by_rel_meta_cat.py``,
  prints each such example and leaves it out; the seven published
  categories are the same either way.)

  Args:
    relations: relation names, repeats allowed.
    categories: what :func:`load_vsr_categories` read.
    source: the category file, for the warning.
  """
  out: dict[str, str] = {}
  for relation in relations:
    if relation in out:
      continue
    out[relation] = categories.get(relation, UNKNOWN_CATEGORY)
    if relation not in categories:
      logging.warning('VSR relation %r has no category in %s: counted under '
                      '%r', relation, source, UNKNOWN_CATEGORY)
  return out
