"""Data sources: random-access record readers, one per format.

Every source returns *records* with one contract (see ``vlg/data/pipeline.py``
for the batch contract built from them)::

  {'image': uint8 [H, W, 3], 'image_id': int, 'captions': [str, ...],
   'objects': [{'label', 'box'}...], 'regions': [{'text', 'box'}...],
   'relations': [{'subject', 'object', 'predicate', ...}...],
   'paragraph': str, 'has_graph': bool, 'has_boxes': bool}

Sources are named in ``config.input.data.<name>.source``; :data:`SOURCES`
lists the valid names: ``synthetic``, ``albef_json``, ``prepared`` (what
``vlg.tools.prepare`` wrote) and ``tfds`` (a prepared TFDS dataset read with
``tfds.data_source``; see ``vlg/data/tfds_source.py``).
:class:`CheckedSource` applies the bad-input policy to reading and
:class:`CheckedTransform` to every per-example step after it (decode,
normalise, tokenise, crop, box conversion of the caption transform and of
the typed parts' transforms): by default a bad example (an
:class:`ops.BadExampleError`) raises an error naming the record (source
name, index, image id); with ``input.skip_bad_examples`` it is skipped (the
next index is read instead), logged with the same name and counted in the
record's ``_num_bad`` field, which the transforms carry into the batch
slots ``_num_bad`` / ``_num_bad_<part>`` and the loop sums and logs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

import grain
import ml_collections

from vlg.data import ops

Record = dict[str, Any]


class AlbefJsonSource:
  """ALBEF-style caption json: a list of ``{"image": path, "caption": ...}``.

  ``caption`` is a string or a list of strings; ``image`` is relative to
  ``image_root`` (or absolute). Images are decoded on access.
  """

  def __init__(self, path: str, image_root: str = ''):
    self.path, self.image_root = path, image_root
    try:
      with open(path) as f:
        entries = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: not valid JSON ({e})') from e
    if not isinstance(entries, list):
      raise ValueError(f'{path}: expected a JSON list of '
                       '{"image", "caption"} objects')
    self._entries = entries

  def __len__(self) -> int:
    return len(self._entries)

  def __getitem__(self, index: int) -> Record:
    entry = self._entries[index]
    where = f'{self.path} entry {index}'
    if not isinstance(entry, dict) or 'image' not in entry or (
        'caption' not in entry):
      raise ops.BadExampleError(f'{where}: needs "image" and "caption"')
    captions = entry['caption']
    captions = [captions] if isinstance(captions, str) else list(captions)
    if not captions or not all(isinstance(c, str) for c in captions):
      raise ops.BadExampleError(f'{where}: "caption" must be a string or a '
                                'non-empty list of strings')
    image_path = os.path.join(self.image_root, entry['image'])
    try:
      with open(image_path, 'rb') as f:
        data = f.read()
    except OSError as e:
      raise ops.BadExampleError(f'{where}: cannot read image {image_path} '
                                f'({e.strerror})') from e
    image = ops.decode_image(data, image_path)
    return {'image': image, 'image_id': index, 'captions': captions,
            'objects': [], 'regions': [], 'relations': [], 'paragraph': '',
            'has_graph': False, 'has_boxes': False}

  def __repr__(self) -> str:
    return f'AlbefJsonSource({self.path!r}, {len(self)} entries)'


SKIP_HINT = ('(set input.skip_bad_examples=True to skip and count bad '
             'examples)')


def record_name(source: str, index: int, image_id: Any = None) -> str:
  """How the bad-input policy names a record in errors and logs:
  ``[source 'coco' index 7 image_id 123]``."""
  where = f'[source {source!r} index {index}'
  if image_id is not None:
    where += f' image_id {image_id}'
  return where + ']'


def _bad_example(where: str, error: Exception, skip_bad: bool) -> None:
  """Raises ``error`` as a bad example named ``where``, or (skipping) logs
  it."""
  if not skip_bad:
    raise ops.BadExampleError(f'{where} {error} {SKIP_HINT}') from error
  logging.warning('%s skipping bad example: %s', where, error)


class CheckedSource:
  """Applies the bad-input policy around a source (see module docstring).

  Records read through it carry ``_num_bad`` (bad records skipped to reach
  it) and their name, ``_source`` and ``_index``, which
  :class:`CheckedTransform` uses to name a record a transform rejects and
  to read the next one.
  """

  def __init__(self, source, name: str, skip_bad: bool, max_tries: int = 100):
    self.source, self.name = source, name
    self.skip_bad, self.max_tries = skip_bad, max_tries
    # Records the pipeline keeps together (contrast pairs of the world).
    self.group_size = int(getattr(source, 'group_size', 1))

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> Record:
    num_bad = 0
    last = None
    for attempt in range(self.max_tries):
      i = (index + attempt) % len(self.source)
      try:
        record = self.source[i]
      except ops.BadExampleError as e:
        _bad_example(record_name(self.name, i), e, self.skip_bad)
        num_bad, last = num_bad + 1, e
        continue
      record['_num_bad'] = num_bad
      record['_source'], record['_index'] = self.name, i
      return record
    raise ops.BadExampleError(
        f'[source {self.name!r}] {self.max_tries} bad examples in a row from '
        f'index {index}; the data looks broken (the last: {last})')

  def annotation_flags(self, index: int) -> dict[str, bool] | None:
    """The wrapped source's cheap look at record ``index``'s annotation
    flags (``SyntheticSource.annotation_flags``), or None where it has
    none and the record must be read."""
    peek = getattr(self.source, 'annotation_flags', None)
    return None if peek is None else peek(index % len(self.source))

  def __repr__(self) -> str:
    return f'CheckedSource({self.source!r}, skip_bad={self.skip_bad})'


class CheckedTransform(grain.transforms.RandomMap):
  """Applies the bad-input policy around a per-example transform.

  ``transform.random_map(record, rng)`` runs on each record of the named
  :class:`CheckedSource` views ``sources`` (``{name: source}``, possibly
  wrapped, e.g. in ``parts.RecordsWith``). An :class:`ops.BadExampleError`
  it raises (an empty normalised text, a malformed box, a bad image) is
  named by the record's source, index and image id; without skipping it is
  raised, with skipping the record at the next index of its source is
  transformed instead (with the same, partly drawn, ``rng``) and the skip
  is counted in the ``_num_bad`` the transform reads. A good example is
  transformed exactly once with grain's ``rng`` of its index, so its random
  draws are those of the bare transform. Any other exception is raised
  with a note naming the record.
  """

  def __init__(self, transform, sources: dict[str, Any], skip_bad: bool,
               max_tries: int = 100):
    self.transform, self.sources = transform, sources
    self.skip_bad, self.max_tries = skip_bad, max_tries

  def random_map(self, record: Record, rng) -> Any:
    first = record.get('_source'), record.get('_index')
    last = None
    for _ in range(self.max_tries):
      name, index = record.get('_source'), record.get('_index')
      try:
        return self.transform.random_map(record, rng)
      except ops.BadExampleError as e:
        _bad_example(record_name(name, index, record.get('image_id')), e,
                     self.skip_bad)
        last = e
      except Exception as e:
        e.add_note('while transforming '
                   f'{record_name(name, index, record.get("image_id"))}')
        raise
      source = self.sources[name]
      skipped = int(record.get('_num_bad', 0)) + 1
      record = dict(source[(index + 1) % len(source)])
      record['_num_bad'] = int(record.get('_num_bad', 0)) + skipped
    raise ops.BadExampleError(
        f'{record_name(*first)} {self.max_tries} bad examples in a row for '
        f'{type(self.transform).__name__} from here on; the data looks broken '
        f'(the last: {last})')

  def __repr__(self) -> str:
    return (f'CheckedTransform({type(self.transform).__name__}, '
            f'{sorted(self.sources)}, skip_bad={self.skip_bad})')


def _synthetic(cfg: ml_collections.ConfigDict, input_cfg) -> Any:
  from vlg import synthetic  # pylint: disable=g-import-not-at-top
  world = synthetic.WorldConfig(**dict(cfg.get('world', {})))
  return synthetic.SyntheticSource(cfg.get('split', 'train'), world,
                                   num_examples=cfg.get('num_examples',
                                                        100_000))


def _albef_json(cfg: ml_collections.ConfigDict, input_cfg) -> Any:
  return AlbefJsonSource(cfg.path, cfg.get('image_root', ''))


def _prepared(cfg: ml_collections.ConfigDict, input_cfg) -> Any:
  from vlg.data import prepared_source  # pylint: disable=g-import-not-at-top
  return prepared_source.PreparedSource(cfg.dir, cfg.get('image_dirs'))


def _tfds(cfg: ml_collections.ConfigDict, input_cfg) -> Any:
  from vlg.data import tfds_source  # pylint: disable=g-import-not-at-top
  return tfds_source.from_config(cfg)


SOURCES: dict[str, Callable[..., Any]] = {
    'synthetic': _synthetic,
    'albef_json': _albef_json,
    'prepared': _prepared,
    'tfds': _tfds,
}


def build_source(name: str, cfg: ml_collections.ConfigDict,
                 input_cfg: ml_collections.ConfigDict) -> CheckedSource:
  """Builds the source named by ``cfg.source`` wrapped in the bad-input policy."""
  kind = cfg.get('source')
  if kind not in SOURCES:
    raise ValueError(f'input.data.{name}.source={kind!r} is not a known '
                     f'source; valid: {sorted(SOURCES)}')
  return CheckedSource(SOURCES[kind](cfg, input_cfg), name,
                       bool(input_cfg.get('skip_bad_examples', False)))
