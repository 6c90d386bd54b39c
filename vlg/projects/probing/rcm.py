"""Region Cell Matching (RCM): does the expression's object lie in a cell?

Built from RefCOCOg-style referring expressions (docs/probing.md §3), by one
code path for real RefCOCOg and the synthetic look-alike set: both are read by
``vlg.benchmarks.load_refcocog`` into ``RefExample`` rows, and
:func:`build_rcm` takes any sequence of those::

  refs = benchmarks.load_refcocog('.../refcocog', split='val')
  rcm_set = rcm.build_rcm(refs, seed=0)
  rcm.write_rcm_jsonl('rcm_val.jsonl', rcm_set.examples)

Construction, within one split:

1. Grid: the image is cut into 3x3 equal cells in pixel coordinates, indexed
   ``row * 3 + col`` from the top left (:data:`CELL_NAMES`).
2. Cell of a box: the cell whose centre is nearest to the box centre; on a
   uniform grid each axis is decided alone, and a centre exactly on a border
   (equally near two cell centres) goes to the lower index. The comparison
   is ``3 * (2x + w) > 2kW`` for border ``k``, which is exact for the integer
   and half-pixel boxes of COCO.
3. Balance: every cell keeps N positives (label 1, claimed cell = true cell),
   N the rarest cell's count rounded down to a multiple of 8 (so that N/8 is
   whole), optionally capped by ``max_per_cell``.
4. Negatives: for each claimed cell i, N/8 expressions whose true cell is j,
   for each of the 8 cells j != i (label 0). Cell j thus gives N negatives in
   all; they are drawn without replacement from its expressions that are not
   positives, and only when there are fewer than N of those are positives of
   cell j reused (each at most once) as negatives elsewhere.
5. Text: ``template.format(expression=..., cell=CELL_NAMES[claimed])``,
   default :data:`DEFAULT_TEMPLATE` (§3.1 item 7). The paper's own wording
   ("The phrase '...' refers to the middle right part of the image", §5) is
   :data:`PAPER_TEMPLATE` with :data:`PAPER_CELL_NAMES`.

Every claimed cell then has N positives and N negatives: 18N examples, 50%
positive overall and per claimed cell. Input order does not matter (rows are
sorted by (ref_id, sent_id) first); the output depends only on the input set
and ``seed``. Boxes outside their image, non-positive sizes and mixed splits
are errors that name the ref; ``skip_bad=True`` skips bad rows and counts
them instead. Plain Python and NumPy: no jax.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from vlg.benchmarks import common
from vlg.benchmarks.refcocog import RefExample

GRID = 3
NUM_CELLS = GRID * GRID
CELL_NAMES: tuple[str, ...] = (
    'top left', 'top', 'top right', 'left', 'centre', 'right', 'bottom left',
    'bottom', 'bottom right')
DEFAULT_TEMPLATE = '{expression} is in the {cell} of the image.'
PAPER_CELL_NAMES: tuple[str, ...] = (
    'top left', 'top', 'top right', 'middle left', 'middle', 'middle right',
    'bottom left', 'bottom', 'bottom right')
PAPER_TEMPLATE = ("The phrase '{expression}' refers to the {cell} part of "
                  'the image.')
# A box may overhang its image by this much (COCO rounds to 1/100 pixel).
BOX_TOLERANCE_PX = 1.0

Box = tuple[float, float, float, float]


class RcmError(ValueError):
  """A referring expression cannot become RCM rows (message names the ref)."""


@dataclasses.dataclass(frozen=True)
class RcmExample:
  """One RCM item: does ``expression``'s object lie in ``claimed_cell``?

  Attributes:
    image_file: the image file name (as in the RefExample).
    expression: the referring expression.
    claimed_cell: the cell the text names, 0..8 (``row * 3 + col``).
    true_cell: the cell of the object's box centre, 0..8.
    label: 1 iff ``claimed_cell == true_cell``.
    text: the statement fed to the model (template filled in).
    box: the object's box ``(x, y, w, h)`` in pixels.
    width: image width in pixels.
    height: image height in pixels.
    ref_id: the source ref id.
    sent_id: the source sentence id.
    image_id: the image id (-1 if unknown).
    ann_id: the annotation id (-1 if unknown).
    category_id: the object's COCO category, if known.
    split: the source split.
  """
  image_file: str
  expression: str
  claimed_cell: int
  true_cell: int
  label: int
  text: str
  box: Box
  width: int
  height: int
  ref_id: int
  sent_id: int
  image_id: int = -1
  ann_id: int = -1
  category_id: int | None = None
  split: str = ''

  def image_files(self) -> tuple[str, ...]:
    return (self.image_file,)


@dataclasses.dataclass(frozen=True)
class RcmSet:
  """The rows :func:`build_rcm` made, and how they were made.

  Attributes:
    examples: the RCM rows in a seeded random order.
    per_cell: N, the positives (and negatives) per claimed cell.
    available: expressions per true cell before balancing (9 counts).
    num_source: expressions given to the builder.
    skipped: one message per bad expression skipped (``skip_bad`` only).
    num_reused: negatives that reuse a positive's expression.
    seed: the seed.
    template: the text template.
    cell_names: the cell names used in the text.
  """
  examples: tuple[RcmExample, ...]
  per_cell: int
  available: tuple[int, ...]
  num_source: int
  skipped: tuple[str, ...]
  num_reused: int
  seed: int
  template: str
  cell_names: tuple[str, ...]

  def card(self) -> dict[str, Any]:
    """The dataset card: settings and counts, JSON-ready."""
    splits = sorted({e.split for e in self.examples if e.split})
    return {
        'task': 'rcm', 'grid': GRID, 'seed': self.seed,
        'template': self.template, 'cell_names': list(self.cell_names),
        'splits': splits, 'num_examples': len(self.examples),
        'per_cell': self.per_cell, 'available_per_cell': list(self.available),
        'num_source': self.num_source, 'num_skipped': len(self.skipped),
        'num_reused_negatives': self.num_reused,
        'grid_overlay': False,
    }


def _describe(ref: RefExample) -> str:
  return f'ref_id {ref.ref_id} sent_id {ref.sent_id} ({ref.image_file})'


def _check(ref: RefExample) -> None:
  """Raises RcmError if ``ref`` has no valid box inside a valid image."""
  if not (isinstance(ref.width, (int, float)) and ref.width > 0 and
          isinstance(ref.height, (int, float)) and ref.height > 0):
    raise RcmError(f'{_describe(ref)}: image size {ref.width}x{ref.height} '
                   'is not positive')
  if len(ref.box) != 4 or not all(
      isinstance(v, (int, float)) and not isinstance(v, bool) and
      math.isfinite(v) for v in ref.box):
    raise RcmError(f'{_describe(ref)}: box {ref.box} is not 4 finite numbers')
  x, y, w, h = ref.box
  if w <= 0 or h <= 0:
    raise RcmError(f'{_describe(ref)}: box {ref.box} has a non-positive size')
  tol = BOX_TOLERANCE_PX
  if (x < -tol or y < -tol or x + w > ref.width + tol or
      y + h > ref.height + tol):
    raise RcmError(f'{_describe(ref)}: box (x, y, w, h) = {ref.box} lies '
                   f'outside the {ref.width}x{ref.height} image')


def _axis_cell(start: float, size: float, extent: float) -> int:
  twice_centre = 2 * start + size
  return sum(GRID * twice_centre > 2 * k * extent for k in range(1, GRID))


def cell_of_box(box: Sequence[float], width: float, height: float) -> int:
  """The grid cell (``row * 3 + col``) nearest to the centre of a pixel box.

  Args:
    box: ``(x, y, w, h)`` in pixels, top-left origin.
    width: image width in pixels.
    height: image height in pixels.

  Returns:
    0..8; a centre on a cell border goes to the lower index.
  """
  x, y, w, h = box
  return _axis_cell(y, h, height) * GRID + _axis_cell(x, w, width)


def fill_template(template: str, expression: str, cell_name: str) -> str:
  """The RCM text; the expression loses surrounding blanks and a final '.'."""
  return template.format(expression=expression.strip().rstrip('.').strip(),
                         cell=cell_name)


def _check_template(template: str, cell_names: Sequence[str]) -> None:
  if len(cell_names) != NUM_CELLS:
    raise ValueError(f'need {NUM_CELLS} cell names, got {len(cell_names)}')
  try:
    text = template.format(expression='\0', cell='\1')
  except (KeyError, IndexError, ValueError) as e:
    raise ValueError(f'template {template!r} must use only {{expression}} '
                     f'and {{cell}}: {e!r}') from None
  if '\0' not in text or '\1' not in text:
    raise ValueError(f'template {template!r} must contain {{expression}} '
                     'and {cell}')


def _make(ref: RefExample, claimed: int, true: int, template: str,
          cell_names: Sequence[str]) -> RcmExample:
  return RcmExample(
      image_file=ref.image_file, expression=ref.expression,
      claimed_cell=claimed, true_cell=true, label=int(claimed == true),
      text=fill_template(template, ref.expression, cell_names[claimed]),
      box=tuple(float(v) for v in ref.box), width=ref.width,
      height=ref.height, ref_id=ref.ref_id, sent_id=ref.sent_id,
      image_id=ref.image_id, ann_id=ref.ann_id, category_id=ref.category_id,
      split=ref.split)


def build_rcm(refs: Iterable[RefExample], seed: int = 0, *,
              template: str = DEFAULT_TEMPLATE,
              cell_names: Sequence[str] = CELL_NAMES,
              max_per_cell: int | None = None,
              skip_bad: bool = False) -> RcmSet:
  """Builds a balanced RCM set from the expressions of ONE split.

  Args:
    refs: RefCOCOg-style expressions (real or synthetic), one split.
    seed: the seed of every random choice.
    template: the text template with ``{expression}`` and ``{cell}``.
    cell_names: the 9 cell names, row-major from the top left.
    max_per_cell: cap on N (positives per cell, then rounded down to a
      multiple of 8); None: no cap.
    skip_bad: skip (and count) expressions with a bad box or image size
      instead of raising.

  Returns:
    An :class:`RcmSet` of 18N rows (module docstring).

  Raises:
    RcmError: a box outside its image, a non-positive box or image size
      (unless ``skip_bad``), expressions from more than one split, or a
      cell with fewer than 8 expressions (N would be 0); the message names
      the ref or gives the per-cell counts.
  """
  _check_template(template, cell_names)
  if max_per_cell is not None and max_per_cell < NUM_CELLS - 1:
    raise ValueError(f'max_per_cell={max_per_cell}; need at least '
                     f'{NUM_CELLS - 1} (N/8 negatives per other cell)')
  refs = sorted(refs, key=lambda r: (r.ref_id, r.sent_id))
  splits = sorted({r.split for r in refs if r.split})
  if len(splits) > 1:
    raise RcmError(f'expressions from splits {splits}: build each split '
                   'separately (docs/probing.md §3.1 item 6)')
  by_cell: list[list[RefExample]] = [[] for _ in range(NUM_CELLS)]
  skipped = []
  for ref in refs:
    try:
      _check(ref)
    except RcmError as e:
      if not skip_bad:
        raise
      skipped.append(str(e))
      continue
    by_cell[cell_of_box(ref.box, ref.width, ref.height)].append(ref)
  available = tuple(len(c) for c in by_cell)
  per_cell = min(available)
  if max_per_cell is not None:
    per_cell = min(per_cell, max_per_cell)
  per_cell -= per_cell % (NUM_CELLS - 1)
  if per_cell == 0:
    counts = ', '.join(f'{n} {c}' for n, c in zip(available, CELL_NAMES))
    raise RcmError(f'too few expressions to balance the cells: need at least '
                   f'{NUM_CELLS - 1} per cell, have {counts}')
  rng = np.random.default_rng(seed)
  share = per_cell // (NUM_CELLS - 1)
  examples, num_reused = [], 0
  for true, members in enumerate(by_cell):
    order = rng.permutation(len(members))
    positives = [members[k] for k in order[:per_cell]]
    rest = [members[k] for k in order[per_cell:]]
    if len(rest) >= per_cell:
      negatives = rest[:per_cell]
    else:
      refill = rng.permutation(per_cell)[:per_cell - len(rest)]
      negatives = rest + [positives[k] for k in refill]
      num_reused += len(refill)
      # Spread the reused expressions over the claimed cells.
      negatives = [negatives[k] for k in rng.permutation(per_cell)]
    examples += [_make(r, true, true, template, cell_names) for r in positives]
    others = [c for c in range(NUM_CELLS) if c != true]
    for n, claimed in enumerate(others):
      examples += [_make(r, claimed, true, template, cell_names)
                   for r in negatives[n * share:(n + 1) * share]]
  examples = [examples[k] for k in rng.permutation(len(examples))]
  return RcmSet(examples=tuple(examples), per_cell=per_cell,
                available=available, num_source=len(refs),
                skipped=tuple(skipped), num_reused=num_reused, seed=seed,
                template=template, cell_names=tuple(cell_names))


def write_rcm_jsonl(path: str | os.PathLike,
                    examples: Iterable[RcmExample]) -> int:
  """Writes one JSON object per example (``dataclasses.asdict``).

  Returns:
    The number of lines written.
  """
  n = 0
  with open(path, 'w', encoding='utf-8') as f:
    for example in examples:
      f.write(json.dumps(dataclasses.asdict(example)) + '\n')
      n += 1
  return n


def _cell(record: Any, key: str) -> int:
  value = common.get_int(record, key)
  if not 0 <= value < NUM_CELLS:
    raise common.FieldError(f'field {key!r} must be a cell 0..8, got {value}')
  return value


def _parse(record: Any) -> RcmExample:
  record = common.require_dict(record)
  box = record.get('box')
  if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(
      isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
    raise common.FieldError(f"field 'box' must be 4 numbers, got {box!r}")
  example = RcmExample(
      image_file=common.get_str(record, 'image_file'),
      expression=common.get_str(record, 'expression'),
      claimed_cell=_cell(record, 'claimed_cell'),
      true_cell=_cell(record, 'true_cell'),
      label=common.get_int(record, 'label'),
      text=common.get_str(record, 'text'),
      box=tuple(float(v) for v in box),
      width=common.get_int(record, 'width'),
      height=common.get_int(record, 'height'),
      ref_id=common.get_int(record, 'ref_id'),
      sent_id=common.get_int(record, 'sent_id'),
      image_id=common.get_int(record, 'image_id', required=False, default=-1),
      ann_id=common.get_int(record, 'ann_id', required=False, default=-1),
      category_id=common.get_int(record, 'category_id', required=False),
      split=common.get_str(record, 'split', required=False, default='',
                           allow_empty=True))
  if example.label != int(example.claimed_cell == example.true_cell):
    raise common.FieldError(
        f'label {example.label} contradicts claimed_cell '
        f'{example.claimed_cell} / true_cell {example.true_cell}')
  return example


def load_rcm_jsonl(path: str | os.PathLike, skip_bad: bool = False
                   ) -> common.Loaded[RcmExample]:
  """Reads a file written by :func:`write_rcm_jsonl`.

  Args:
    path: the JSON-lines file.
    skip_bad: skip (and count) bad lines instead of raising.

  Returns:
    The examples in file order.

  Raises:
    BenchmarkFormatError: (unless ``skip_bad``) a line that is not JSON, a
      missing or mistyped field, a cell outside 0..8, or a label that
      contradicts the cells; names the file and line.
  """
  collector = common.Collector(os.fspath(path), skip_bad)
  examples = [ex for _, ex in common.parse_jsonl(collector, _parse)]
  return common.make_loaded(examples, [collector])
