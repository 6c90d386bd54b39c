"""The grain input pipeline and the batch contract.

Chain (grain Dataset API, top-level ``import grain``)::

  source (one per entry of config.input.data, bad-input policy applied)
    → per-process slice [process_index::process_count]
    → seed / shuffle / repeat
    → weighted mixture of sources (``weight`` of each entry)
    → random_map: numpy/PIL example transform (crop keeping boxes, flip that
      swaps left/right words and mirrors boxes, brightness jitter, caption
      normalisation, tokenisation, MLM masking), under the bad-input policy
      (``sources_lib.CheckedTransform``: a bad example is named, and raised
      or skipped and counted in ``_num_bad``)
    → batch (per-process batch = global batch / process count)
    → to_iter_dataset → mp_prefetch (``input.num_workers`` > 0)
  and, in the train loop, :func:`to_global` → global jax arrays.

Batch contract (caption kind, ``input.kind='caption'``; numpy, leading dim
is the per-process batch B)::

  image          uint8 [B, R, R, 3]  raw pixels; the model normalises them
  image_id       int32 [B]           equal ids = same image (never ITM
                                     negatives)
  caption_index  int32 [B]           which of the record's ``captions`` was
                                     drawn (tools rebuild the raw text)
  flipped        int32 [B]           1 where the example was mirrored (its
                                     caption's left/right swapped)
  text_ids       int32 [B, L]        [CLS] pieces [SEP] [PAD]...
  text_mask      int32 [B, L]        1 on real tokens
  mlm_ids        int32 [B, L]        text_ids with 15% of tokens masked
                                     (80/10/10)
  mlm_labels     int32 [B, L]        original id where masked, -100 elsewhere
  _num_bad       int32 [B]           bad examples (unreadable, or rejected
                                     by the transform) skipped to produce
                                     this one

Evaluation streams add ``_mask`` (1 real, 0 padding). The typed parts of
``config.input.parts`` (entities for X-VLM, MRC triplets, VSG texts; see
``vlg/data/parts/`` for their slots) are separate streams with their own
batch sizes, zipped into the same dict under the prefixes ``ent_``,
``mrc_`` and ``vsg_`` (plus ``_num_bad_<part>``); each objective reads only
the slots it needs. Every transform declares its slots' shapes and dtypes
(``example_spec``), from which ``vlg.data.batch_spec`` gives a config's
global batch without reading any data.

The iterator is checkpointable (``get_state``/``set_state``, saved by orbax
with ``grain.checkpoint.CheckpointSave``): restoring it reproduces the next
batches bit for bit, with or without worker processes, because every random
draw comes from grain's per-index generator.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from typing import Any

import grain
import ml_collections
import numpy as np

from vlg.data import masking
from vlg.data import ops
from vlg.data import parts as parts_lib
from vlg.data.parts import common as parts_common
from vlg.data import sources as sources_lib
from vlg.data import tokenizer as tokenizer_lib
from vlg.synthetic import world

AUGMENTATIONS = ('crop', 'flip', 'brightness')
KINDS = ('caption',)


def _int32_id(image_id: int) -> np.int32:
  return np.int32(int(image_id) % (2**31 - 1))


class CaptionTransform(grain.transforms.RandomMap):
  """Record → one (image, caption) training example of the batch contract."""

  def __init__(self, tokenizer: tokenizer_lib.Tokenizer,
               input_cfg: ml_collections.ConfigDict):
    unknown = set(input_cfg.augment) - set(AUGMENTATIONS)
    if unknown:
      raise ValueError(f'input.augment names unknown ops {sorted(unknown)}; '
                       f'valid: {list(AUGMENTATIONS)}')
    self.tokenizer = tokenizer
    self.resolution = int(input_cfg.resolution)
    self.max_len = int(input_cfg.max_text_len)
    self.max_words = int(input_cfg.max_words)
    self.augment = tuple(input_cfg.augment)
    self.crop_scale = tuple(input_cfg.crop_scale)
    self.mlm_probability = float(input_cfg.mlm_probability)

  def random_map(self, record: dict[str, Any],
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = ops.to_square(record['image'])
    if not record.get('captions'):
      raise ops.BadExampleError(
          f'record {record.get("image_id")} has no caption: box- or '
          'graph-only data (coco_instances, vg_*, gqa, openimages) belongs in '
          'input.parts.<part>.data, not in the caption mixture input.data')
    caption_index = int(rng.integers(len(record['captions'])))
    caption = record['captions'][caption_index]
    # Boxes of every object, so a crop never cuts away what a caption names.
    boxes = ops.box_array([o.get('box') for o in record.get('objects', [])],
                          'object box')
    if 'crop' in self.augment:
      image, boxes, _ = ops.random_square_crop(image, boxes, rng,
                                               self.crop_scale)
    texts = [caption]
    # A contrast pair's images are mirrored together (``mirror``), so a
    # mirror never makes one twin's caption true of the other.
    flipped = 'flip' in self.augment and (
        record['mirror'] if 'mirror' in record else rng.random() < 0.5)
    if flipped:
      image, boxes, texts = ops.hflip(image, boxes, texts)
    image = ops.resize(image, self.resolution)
    if 'brightness' in self.augment:
      image = ops.brightness(image, rng)
    text = ops.pre_caption(texts[0], self.max_words)
    ids, mask = self.tokenizer.encode(text, self.max_len)
    mlm_ids, mlm_labels = masking.mask_tokens(
        ids, rng, vocab_size=self.tokenizer.vocab_size,
        mask_id=self.tokenizer.mask_id,
        special_ids=self.tokenizer.special_ids,
        pad_id=self.tokenizer.pad_id, p=self.mlm_probability)
    return {
        'image': image,
        'image_id': _int32_id(record['image_id']),
        'caption_index': np.int32(caption_index),
        'flipped': np.int32(flipped),
        'text_ids': ids,
        'text_mask': mask,
        'mlm_ids': mlm_ids.astype(np.int32),
        'mlm_labels': mlm_labels.astype(np.int32),
        '_num_bad': np.int32(record.get('_num_bad', 0)),
    }

  @staticmethod
  def example_spec(input_cfg: ml_collections.ConfigDict
                   ) -> dict[str, tuple[tuple[int, ...], type]]:
    """(shape, dtype) of every slot :meth:`random_map` returns, for one
    example (the batch contract above without its batch dimension);
    ``vlg.data.batch_spec`` stacks them into a batch's spec."""
    res, length = int(input_cfg.resolution), int(input_cfg.max_text_len)
    scalar, text = ((), np.int32), ((length,), np.int32)
    return {'image': ((res, res, 3), np.uint8), 'image_id': scalar,
            'caption_index': scalar, 'flipped': scalar, 'text_ids': text,
            'text_mask': text, 'mlm_ids': text, 'mlm_labels': text,
            '_num_bad': scalar}


TRANSFORMS = {'caption': CaptionTransform}


def caption_transform_class(input_cfg: ml_collections.ConfigDict) -> type:
  """The transform of the caption stream (``input.kind``)."""
  if input_cfg.kind not in TRANSFORMS:
    raise ValueError(f'input.kind={input_cfg.kind!r}; valid: '
                     f'{sorted(TRANSFORMS)}')
  return TRANSFORMS[input_cfg.kind]


def build_sources(input_cfg: ml_collections.ConfigDict,
                  data_cfg: ml_collections.ConfigDict | None = None):
  """``{name: (CheckedSource, weight)}`` for every entry of ``data_cfg``
  (default ``input.data``)."""
  data_cfg = input_cfg.data if data_cfg is None else data_cfg
  if 'data_dir' in input_cfg and not input_cfg.data_dir:
    raise ValueError(
        'config.data_dir is empty, but this config reads its prepared data '
        'from folders under it (see vlg/recipes.py:real_data): pass '
        '--config.data_dir=DIR, the folder holding coco/, gqa/, ...')
  if not data_cfg:
    raise ValueError('config.input.data names no source')
  out = {}
  for name, cfg in data_cfg.items():
    weight = float(cfg.get('weight', 1.0))
    if weight <= 0:
      raise ValueError(f'input.data.{name}.weight must be > 0, got {weight}')
    out[name] = (sources_lib.build_source(name, cfg, input_cfg), weight)
  return out


def enabled_parts(input_cfg: ml_collections.ConfigDict
                  ) -> dict[str, ml_collections.ConfigDict]:
  """The typed parts (``input.parts``) that are enabled, by name."""
  parts = input_cfg.get('parts') or {}
  for name in parts:
    parts_lib.part_module(name)  # A clear error for an unknown part.
  return {k: v for k, v in sorted(parts.items()) if v.get('enabled', True)}


def part_flag(name: str, part_cfg: ml_collections.ConfigDict) -> str | None:
  """The annotation flag part ``name`` reads its records by
  (``input.parts.<name>.flagged_only``: ``has_graph`` for MRC and VSG,
  ``has_boxes`` for entity), or None when it reads every record that has
  its annotation (the default)."""
  if not part_cfg.get('flagged_only', False):
    return None
  flag = getattr(parts_lib.part_module(name).Transform, 'flag', None)
  if flag is None:
    raise ValueError(f'input.parts.{name}.flagged_only=True, but part '
                     f'{name!r} names no annotation flag to read by')
  return flag


def stream_batch_sizes(input_cfg: ml_collections.ConfigDict,
                       global_batch: int) -> dict[str, int]:
  """Global batch size of each stream a step zips: ``caption`` (the
  ``global_batch``) and each enabled part (its ``batch_size``)."""
  sizes = {'caption': int(global_batch)}
  sizes.update({k: int(v.batch_size) for k, v in
                enabled_parts(input_cfg).items()})
  return sizes


class GroupedOrder(grain.MapDataset):
  """Indices into a source in the order of a shuffled dataset of *group*
  indices, each group ``g`` expanded to ``g * size, ..., g * size + size - 1``
  in turn: a shuffle that keeps the records of a group adjacent (the
  synthetic world's contrast pairs, so twins land in one batch)."""

  def __init__(self, groups: grain.MapDataset, size: int):
    super().__init__(groups)
    self._size = int(size)

  def __len__(self) -> int:
    n = len(self._parent)
    return n if n >= sys.maxsize // self._size else n * self._size

  def __str__(self) -> str:
    return f'GroupedOrder(size={self._size})'

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    group, member = divmod(index, self._size)
    return self._parent[group] * self._size + member


def _shuffled(source, seed: int, process_index: int, process_count: int
              ) -> grain.MapDataset:
  """This process's share of ``source``, shuffled anew each epoch and
  repeated; by groups of ``source.group_size`` records where that is > 1
  (each group whole, whole groups dealt to processes)."""
  size = int(getattr(source, 'group_size', 1))
  if size <= 1:
    ds = grain.MapDataset.source(source)[process_index::process_count]
    if len(ds) == 0:
      return ds
    return ds.seed(seed).shuffle().repeat()
  groups = grain.MapDataset.range(len(source) // size)[
      process_index::process_count]
  if len(groups) == 0:
    return groups
  order = GroupedOrder(groups.seed(seed).shuffle().repeat(), size)
  return order.map(source.__getitem__)


def _mixture(input_cfg, data_cfg, seed: int, process_index: int,
             process_count: int, requires: tuple[str, ...] = (),
             flag: str | None = None
             ) -> tuple[grain.MapDataset, dict[str, Any]]:
  """This process's infinite, shuffled, weighted mixture of sources (of the
  records having one of the ``requires`` fields, and the ``flag`` where
  given), and the sources it reads by name (what
  :class:`sources_lib.CheckedTransform` reads a replacement of a bad record
  from)."""
  parts, weights, views = [], [], {}
  for k, (name, (source, weight)) in enumerate(
      sorted(build_sources(input_cfg, data_cfg).items())):
    if requires:
      source = parts_common.RecordsWith(source, requires, flag=flag)
    views[name] = source
    ds = _shuffled(source, seed + 1000 * k, process_index, process_count)
    if len(ds) == 0:
      raise ValueError(f'source {name!r} has no examples for process '
                       f'{process_index} of {process_count}')
    parts.append(ds)
    weights.append(weight)
  mixed = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts,
                                                                weights)
  return mixed, views


def _merge(batches: tuple[dict[str, np.ndarray], ...]) -> dict[str, Any]:
  out = {}
  for b in batches:
    out.update(b)
  return out


def make_dataset(input_cfg: ml_collections.ConfigDict,
                 tokenizer: tokenizer_lib.Tokenizer, *, global_batch: int,
                 seed: int, process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
  """The training stream of this process: infinite, shuffled, batched.

  The caption batch (``global_batch`` examples) and one batch per enabled
  part of ``input.parts`` (each ``batch_size`` examples, from ``data`` or
  ``input.data``) are zipped into one dict per step.
  """
  caption_cls = caption_transform_class(input_cfg)
  streams = []
  sizes = stream_batch_sizes(input_cfg, global_batch)
  for name, size in sizes.items():
    if size % process_count:
      raise ValueError(f'{name} batch size {size} is not divisible by the '
                       f'{process_count} processes')
  # Every per-example step runs under the bad-input policy
  # (sources_lib.CheckedTransform); good examples draw what the bare
  # transform draws.
  skip_bad = bool(input_cfg.get('skip_bad_examples', False))
  caption = caption_cls(tokenizer, input_cfg)
  ds, views = _mixture(input_cfg, None, seed, process_index, process_count)
  caption = sources_lib.CheckedTransform(caption, views, skip_bad)
  streams.append(ds.random_map(caption, seed=seed).batch(
      global_batch // process_count, drop_remainder=True))
  for i, (name, part_cfg) in enumerate(enabled_parts(input_cfg).items()):
    part_seed = seed + 7919 * (i + 1)
    transform_cls = parts_lib.part_module(name).Transform
    ds, views = _mixture(input_cfg, part_cfg.get('data') or None, part_seed,
                         process_index, process_count, transform_cls.requires,
                         part_flag(name, part_cfg))
    transform = sources_lib.CheckedTransform(
        transform_cls(tokenizer, input_cfg, part_cfg), views, skip_bad)
    streams.append(ds.random_map(transform, seed=part_seed).batch(
        int(part_cfg.batch_size) // process_count, drop_remainder=True))
  if len(streams) == 1:
    ds = streams[0]
  else:
    n = min(len(s) for s in streams)
    ds = grain.experimental.ZipMapDataset([s[:n] for s in streams]).map(
        _merge)
  it = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=int(input_cfg.get('num_threads', 2)),
      prefetch_buffer_size=int(input_cfg.get('prefetch', 2))))
  workers = int(input_cfg.get('num_workers', 0))
  if workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return it


# Tokenizer
# ---------------------------------------------------------------------------


def training_texts(input_cfg: ml_collections.ConfigDict,
                   max_records: int) -> list[str]:
  """Normalised texts of the first records of each source, for the tokenizer.

  Only text fields are read; sources decode images on access, so file-backed
  sources read their image too — keep ``max_records`` modest.
  """
  texts = []
  for name, (source, _) in sorted(build_sources(input_cfg).items()):
    for i in range(min(len(source), max_records)):
      rec = source[i]
      raw = list(rec['captions']) + [r['text'] for r in rec['regions']]
      raw += [o['label'] for o in rec['objects']]
      raw += [r['predicate'] for r in rec['relations']]
      if rec['paragraph']:
        raw.append(rec['paragraph'])
      for t in raw:
        try:
          texts.append(ops.pre_caption(t, 10_000))
        except ops.BadExampleError:
          continue
    del name
  return texts


def get_tokenizer(input_cfg: ml_collections.ConfigDict,
                  cache_dir: str) -> tokenizer_lib.Tokenizer:
  """Loads ``input.tokenizer.path`` or trains one and caches it."""
  tcfg = input_cfg.tokenizer
  if tcfg.get('path'):
    return tokenizer_lib.load(tcfg.path)
  model_type = str(tcfg.get('model_type', 'unigram'))
  return tokenizer_lib.load_or_train(
      os.path.join(cache_dir, 'tokenizer'),
      lambda: training_texts(input_cfg, int(tcfg.num_texts)),
      int(tcfg.vocab_size), key=tokenizer_key(input_cfg),
      model_type=model_type)


def tokenizer_key(input_cfg: ml_collections.ConfigDict) -> str:
  """What a cached tokenizer was trained for: the caption sources, the
  number of texts and the model type, hashed."""
  tcfg = input_cfg.tokenizer
  data = input_cfg.data.to_dict()
  # A world without contrast pairs keeps the key it had before
  # ``contrast_rate`` existed (and before any of ``world.ADDED_FIELDS``), so
  # the tokenizers cached for such runs still match when they resume.
  for entry in data.values():
    world_cfg = entry.get('world') if isinstance(entry, dict) else None
    if isinstance(world_cfg, dict):
      entry['world'] = world_cfg = world.settings_for_key(world_cfg)
      if not world_cfg.get('contrast_rate'):
        world_cfg.pop('contrast_rate', None)
  spec = json.dumps(data, sort_keys=True, default=str)
  model_type = str(tcfg.get('model_type', 'unigram'))
  # The unigram key keeps the form it had before model_type existed, so
  # cached unigram tokenizers still match.
  suffix = '' if model_type == 'unigram' else f'|{model_type}'
  return hashlib.sha256(
      f'{spec}|{tcfg.num_texts}{suffix}'.encode()).hexdigest()[:16]


def wait_for_tokenizer(input_cfg: ml_collections.ConfigDict, cache_dir: str,
                       *, timeout_s: float = 3600.0,
                       poll_s: float = 2.0) -> None:
  """Blocks until another process has written the run's tokenizer.

  In a multi-process job process 0 trains the tokenizer (minutes for a
  large vocabulary) while the others wait here on the shared workdir rather
  than in a collective, whose timeout would kill the job.

  Raises:
    TimeoutError: the tokenizer did not appear within ``timeout_s``.
  """
  if input_cfg.tokenizer.get('path'):
    return
  key_path = os.path.join(cache_dir, 'tokenizer', tokenizer_lib.KEY_FILE)
  start = last_log = time.time()
  while not os.path.exists(key_path):
    now = time.time()
    if now - start > timeout_s:
      raise TimeoutError(
          f'{key_path} did not appear within {timeout_s:.0f} s. Process 0 '
          'trains the tokenizer into the (shared) workdir: check its log, '
          'and that every process sees the same workdir.')
    if now - last_log > 60:
      logging.info('Waiting for process 0 to write %s (%.0f s)', key_path,
                   now - start)
      last_log = now
    time.sleep(poll_s)


# Host → device
# ---------------------------------------------------------------------------


def to_global(batch: dict[str, np.ndarray], mesh, rules) -> dict[str, Any]:
  """Stitches each process's local batch into global jax arrays.

  The leading dimension is sharded by the ``batch`` rule; every process
  passes its own slice (``jax.make_array_from_process_local_data``). In a
  single process the local batch is the global one, and one
  ``jax.device_put`` of the whole dict places it (0.43 against 0.68 ms for
  an evaluation batch of four arrays on a 2-core CPU, where the evaluation
  runners place about a thousand batches a round).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from vlg import sharding  # pylint: disable=g-import-not-at-top
  arrays = {k: np.asarray(v) for k, v in batch.items()}
  shardings = {k: sharding.batch_sharding(mesh, v.ndim, rules)
               for k, v in arrays.items()}
  if jax.process_count() == 1:
    return jax.device_put(arrays, shardings)
  return {k: jax.make_array_from_process_local_data(shardings[k], v)
          for k, v in arrays.items()}
