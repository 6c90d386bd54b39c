r"""Prepares real pretraining data: annotation files → ArrayRecord shards.

  python -m vlg.tools.prepare --format=NAME --src=PATH[,PATH...] \
      --images=DIR[,DIR...] --out=DIR [--shard_size=1000] [--store=bytes] \
      [--reencode_size=0 --reencode_side=shorter] \
      [--skip_bad [--max_bad_fraction=0.01]] [--min_relation_count=1] \
      [--num_workers=0]

Reads the official annotation files of a data set, finds each image in the
``--images`` folders and writes records of vlg's record contract (see
``vlg/data/sources.py``) into ArrayRecord shards under ``--out``. Train on
them with one entry per prepared folder (weights mix them)::

  config.input.data = {
      'coco': {'source': 'prepared', 'dir': '/data/vlg/coco', 'weight': 1},
      'vg': {'source': 'prepared', 'dir': '/data/vlg/vg', 'weight': 1},
  }

and, for MRC on a scene-graph folder, ``input.parts.mrc.vocab =
'/data/vlg/gqa/relations.json'``.

Formats (``--format``) and what ``--src`` takes
------------------------------------------------
============================ ==============================================
``albef_json``               ALBEF caption JSON lists ``[{"image": path,
                             "caption": str or [str]}]``, one record per
                             entry; image id hashed from the path
``coco_captions``            ``captions_*.json`` (one record per image,
                             all its captions); images ``file_name``
``coco_instances``           ``instances_*.json``: objects {label = category
                             name, category_id, iscrowd, box}
``objects365``               Objects365 JSON (COCO-instances layout)
``vg_regions``               ``region_descriptions.json[,image_data.json]``
                             → regions {text, box}
``vg_objects``               ``objects.json`` or ``attributes.json``
                             ``[,image_data.json]`` → objects {label,
                             attributes, box}
``vg_relationships``         ``relationships.json[,image_data.json]`` →
                             objects + relations; writes ``relations.json``
``gqa_scene_graphs``         ``train_sceneGraphs.json[,val_...]`` → objects
                             (with attributes) + relations; writes
                             ``relations.json`` (GQA: 310 relations)
``xvlm_regions``             X-VLM JSON lines ``{"elems": [{"caption",
                             "bb": [x, y, w, h]}], "caption"?, image path
                             (image_rpath/image) or base64 "binary"}``
``openimages``               box CSV(s) + ``class-descriptions-boxable.csv``
                             → objects {label, label_id, flags, box}
============================ ==============================================

Visual Genome and GQA images are ``{image_id}.jpg``: pass both VG folders,
``--images=/data/vg/VG_100K,/data/vg/VG_100K_2``. Open Images images are
``{ImageID}.jpg``. ``image_data.json`` gives VG image sizes without opening
the images; without it the size is read from each image.

What it does
------------
- Boxes are converted once to normalised ``(cx, cy, w, h)`` relative to the
  original image. A box partly outside the image is clipped (counted as
  ``boxes clipped``); a box with no area, or entirely outside, is bad input.
- Every image is fully decoded once; a missing or corrupt image is bad
  input. ``--store=bytes`` (default) keeps the encoded file in the record
  (``--reencode_size=S`` re-encodes it as JPEG so its ``--reencode_side``
  side is at most S; boxes stay valid as they are normalised);
  ``--store=path`` keeps only the path relative to its ``--images`` folder
  (the reader looks in the folders of the manifest, or in the ``image_dirs``
  of the source config if the images moved).
- Relation strings (``vg_relationships``, ``gqa_scene_graphs``) are
  lower-cased, stripped and whitespace-collapsed; the vocabulary of those
  seen at least ``--min_relation_count`` times in the annotations is saved
  as ``relations.json`` (``vlg.data.relations.RelationVocab``) and relations
  outside it are dropped (counted ``rare_relation``), as are relations
  whose left/right mirror (what a training flip makes of them) is outside
  it (``mirror_relation_missing``), so MRC never meets an unknown relation.

Bad input. By default the first bad entry stops the run with an error that
names the file and entry (e.g. ``relationships.json image_id=7
relationships[3].subject: ... [box_outside_image]``). With ``--skip_bad``
bad entries are dropped and counted by reason: a bad image or malformed
entry drops the record, a bad box or annotation drops that annotation (and
the relations that use the box). Expected gaps (an image without
annotations, rare relations) are always skipped and counted, never errors.
An unreadable annotation file is always an error.

The kinds of bad input and their reasons: missing images
(``missing_image``), corrupt images (``corrupt_image``), malformed JSON
lines or entries (``malformed_json``, ``malformed_entry``,
``malformed_annotation``, ``unknown_image``), captions or texts that
training's normalisation (``vlg.data.ops.pre_caption``) empties, e.g.
``'?!...'`` (``empty_text``), boxes outside the image or without area
(``box_outside_image``, ``degenerate_box``). The summary prints each
reason's count and names its first ``3`` examples (file and entry or line).

``--max_bad_fraction`` bounds how much bad input ``--skip_bad`` accepts:
the fraction of input items (images, or entries for ``albef_json``) with
at least one bad problem. It defaults to ``0.01`` with ``--skip_bad`` (a
real download loses a few images; losing more than 1% usually means a
wrong ``--images`` folder or a truncated download) and must stay ``0``
without it (the first bad input fails). Above it, prepare writes every
shard, prints the report, leaves the folder unfinished (training refuses
it) and fails. Accept the loss by re-running the same command with a
larger ``--max_bad_fraction`` (the finished shards are reused, so this
costs seconds), or fix the input and prepare into a new ``--out``.
``--skip_bad --max_bad_fraction=0`` reports every bad input, then fails.

Streaming and resuming. Annotations are read into memory (as the official
JSON files need), images one at a time (``--num_workers`` processes read
and check them in parallel). Shard ``k`` holds input items ``[k *
shard_size, (k + 1) * shard_size)``; it is written under a ``.tmp`` name,
renamed when complete and then listed in ``manifest.json``. Re-running the
same command skips the finished shards and rewrites only missing or
unfinished ones, so a crash loses at most the shard in progress. A re-run
with other options or changed input files into the same ``--out`` is an
error. The layout of records and manifest is documented in
``vlg/data/records.py``.

At the end a summary prints records, shards (written / already there),
the fraction of items with bad input, bad counts by reason with their first
examples, skipped counts by reason, boxes clipped and seconds.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from absl import app
from absl import flags

from vlg import prepare as formats
from vlg.data import records
from vlg.data import relations as relations_lib
from vlg.prepare import base
from vlg.prepare import finalise

_FORMAT = None
_SRC = None
_IMAGES = None
_OUT = None
_SHARD_SIZE = None
_STORE = None
_REENCODE_SIZE = None
_REENCODE_SIDE = None
_JPEG_QUALITY = None
_SKIP_BAD = None
_MAX_BAD_FRACTION = None
_MIN_RELATION_COUNT = None
_NUM_WORKERS = None


def define_flags() -> None:
  """Defines the flags; called only when run as a program, so that
  tests can import several tools into one process."""
  global _FORMAT, _SRC, _IMAGES, _OUT, _SHARD_SIZE, _STORE, _REENCODE_SIZE
  global _REENCODE_SIDE, _JPEG_QUALITY, _SKIP_BAD, _MAX_BAD_FRACTION
  global _MIN_RELATION_COUNT, _NUM_WORKERS
  _FORMAT = flags.DEFINE_enum('format', None, sorted(formats.FORMATS),
                              'Annotation format of --src.')
  _SRC = flags.DEFINE_list('src', None, 'Annotation file(s), comma-separated '
                           '(see the formats table in --helpfull / the module '
                           'docstring).')
  _IMAGES = flags.DEFINE_list('images', ['.'], 'Image folder(s), searched in '
                              'order for each image path.')
  _OUT = flags.DEFINE_string('out', None, 'Output folder of shards and '
                             'manifest.json.')
  _SHARD_SIZE = flags.DEFINE_integer('shard_size', 1000,
                                     'Input items (images) per shard.')
  _STORE = flags.DEFINE_enum('store', 'bytes', list(finalise.STORES),
                             'Keep encoded image bytes in the records, or only '
                             'their paths.')
  _REENCODE_SIZE = flags.DEFINE_integer(
      'reencode_size', 0, 'With --store=bytes: re-encode images as JPEG so '
      'the --reencode_side side is at most this many pixels (0: keep the '
      'original bytes).')
  _REENCODE_SIDE = flags.DEFINE_enum('reencode_side', 'shorter',
                                     list(finalise.SIDES),
                                     'Which side --reencode_size bounds.')
  _JPEG_QUALITY = flags.DEFINE_integer('jpeg_quality', 95,
                                       'JPEG quality of re-encoded images.')
  _SKIP_BAD = flags.DEFINE_bool('skip_bad', False, 'Skip and count bad input '
                                'instead of stopping at the first.')
  _MAX_BAD_FRACTION = flags.DEFINE_float(
      'max_bad_fraction', None, 'With --skip_bad: fail (after the report) '
      'when more than this fraction of the input items has bad input. '
      f'Default {DEFAULT_MAX_BAD_FRACTION} with --skip_bad; without it only '
      '0 is allowed (any bad input fails at once).', lower_bound=0.0,
      upper_bound=1.0)
  _MIN_RELATION_COUNT = flags.DEFINE_integer(
      'min_relation_count', 1, 'Scene-graph formats: keep relations seen at '
      'least this often (the vocabulary written to relations.json).')
  _NUM_WORKERS = flags.DEFINE_integer('num_workers', 0, 'Processes reading and '
                                      'checking images (0: in this process).')
  flags.mark_flags_as_required(['format', 'src', 'out'])

_MAX_LOGGED = 20
# Bad-input examples kept per reason (per shard in the manifest, and in the
# summary).
EXAMPLES_PER_REASON = 3
DEFAULT_MAX_BAD_FRACTION = 0.01


class BadInputError(ValueError):
  """Bad input met without ``--skip_bad``, or more than
  ``--max_bad_fraction`` of it with; the message names the entries."""


class _ShardRun:
  """Writes shards, applying the bad-input policy and counting."""

  def __init__(self, manifest: records.Manifest, opts: finalise.Options,
               skip_bad: bool, num_workers: int):
    self.manifest, self.skip_bad = manifest, skip_bad
    self.fn = functools.partial(finalise.serialised, opts=opts)
    self.pool = (multiprocessing.get_context('spawn').Pool(num_workers)
                 if num_workers > 0 else None)
    self.logged = 0

  def close(self) -> None:
    if self.pool is not None:
      self.pool.terminate()
      self.pool.join()

  def _results(self, chunk):
    if self.pool is None:
      return map(self.fn, chunk)
    return self.pool.imap(self.fn, chunk, chunksize=4)

  def _count(self, problem: base.Problem, stats: dict[str, Any]) -> None:
    if problem.benign:
      stats['skipped'][problem.reason] += 1
      return
    if not self.skip_bad:
      raise BadInputError(
          f'{problem.message()}\nPass --skip_bad to skip and count bad '
          'input; finished shards are kept and a re-run resumes.')
    stats['bad'][problem.reason] += 1
    examples = stats['bad_examples'].setdefault(problem.reason, [])
    if len(examples) < EXAMPLES_PER_REASON:
      examples.append(problem.message())
    if self.logged < _MAX_LOGGED:
      self.logged += 1
      logging.warning('skipping bad input: %s', problem.message())

  def write(self, index: int, chunk: list[base.Item]) -> None:
    """Writes shard ``index`` from its input items."""
    writer = records.ShardWriter(self.manifest.shard_path(index))
    stats = {'items': len(chunk), 'bad': collections.Counter(),
             'skipped': collections.Counter(), 'boxes_clipped': 0,
             'bad_items': 0, 'bad_examples': {}}
    try:
      for data, problems, clipped in self._results(chunk):
        for problem in problems:
          self._count(problem, stats)
        stats['bad_items'] += any(not p.benign for p in problems)
        stats['boxes_clipped'] += clipped
        if data is not None:
          writer.write(data)
    except BaseException:
      writer.abort()
      raise
    stats['records'] = writer.count
    stats['bytes'] = writer.commit()
    stats['bad'], stats['skipped'] = dict(stats['bad']), dict(
        stats['skipped'])
    self.manifest.add_shard(index, stats)


def _remove_stale_tmp(out: str, log: Callable[[str], None]) -> None:
  for name in sorted(os.listdir(out)):
    if name.endswith('.array_record.tmp'):
      log(f'removing unfinished shard {name} of an interrupted run')
      os.remove(os.path.join(out, name))


def _relation_vocab(reader, out: str, min_count: int,
                    manifest: records.Manifest) -> frozenset[str] | None:
  if not getattr(reader, 'has_relations', False):
    if min_count != 1:
      raise ValueError('--min_relation_count applies only to the scene-graph '
                       'formats (vg_relationships, gqa_scene_graphs)')
    return None
  vocab = relations_lib.RelationVocab.build(reader.predicates(), min_count)
  vocab.save(os.path.join(out, records.VOCAB_FILE))
  manifest.payload['relation_vocab'] = records.VOCAB_FILE
  manifest.save()
  return frozenset(vocab.relations)


def prepare(format_name: str, srcs: list[str], images: list[str], out: str,
            *, shard_size: int = 1000, store: str = 'bytes',
            reencode_size: int = 0, reencode_side: str = 'shorter',
            jpeg_quality: int = 95, skip_bad: bool = False,
            max_bad_fraction: float | None = None,
            min_relation_count: int = 1, num_workers: int = 0,
            log: Callable[[str], None] = print) -> dict[str, Any]:
  """Writes (or resumes) the prepared folder ``out``; returns the summary.

  ``max_bad_fraction`` (None: ``DEFAULT_MAX_BAD_FRACTION`` with
  ``skip_bad``, else 0) is not a preparation option: a re-run with another
  value reuses the finished shards (see the module docstring).

  Raises:
    BadInputError: on bad input without ``skip_bad`` (names file and entry),
      or with it when more than ``max_bad_fraction`` of the items has bad
      input (after logging the summary; the folder is left unfinished).
    base.AnnotationError: if an annotation file is unreadable.
    ValueError: on bad options, or an ``out`` prepared with other options.
  """
  start = time.perf_counter()
  max_bad_fraction = _max_bad_fraction(skip_bad, max_bad_fraction)
  if shard_size < 1:
    raise ValueError(f'--shard_size={shard_size} must be >= 1')
  if min_relation_count < 1:
    raise ValueError(f'--min_relation_count={min_relation_count} must be >= 1')
  for path in srcs:
    if not os.path.isfile(path):
      raise FileNotFoundError(f'--src file {path} does not exist')
  reader = formats.reader(format_name, srcs)
  image_dirs = [os.path.abspath(d) for d in images or ['.']]
  options = {'format': format_name, 'src': [os.path.abspath(p) for p in srcs],
             'images': image_dirs, 'store': store,
             'reencode_size': reencode_size, 'reencode_side': reencode_side,
             'jpeg_quality': jpeg_quality, 'shard_size': shard_size,
             'min_relation_count': min_relation_count}
  inputs = [{'path': os.path.abspath(p), 'bytes': os.path.getsize(p)}
            for p in srcs]
  opts = finalise.Options(tuple(image_dirs), store, reencode_size,
                          reencode_side, jpeg_quality)
  manifest = records.Manifest.open(out, options, inputs, image_dirs)
  manifest.payload['complete'] = False
  manifest.save()
  _remove_stale_tmp(out, log)
  opts = dataclasses.replace(opts, relation_vocab=_relation_vocab(
      reader, out, min_relation_count, manifest))
  run = _ShardRun(manifest, opts, skip_bad, num_workers)
  items, index, written = reader.items(), 0, 0
  try:
    while chunk := list(itertools.islice(items, shard_size)):
      if not manifest.finished(index):
        run.write(index, chunk)
        written += 1
      index += 1
  finally:
    run.close()
  manifest.finish(index, complete=False)
  summary = summarise(manifest, written, time.perf_counter() - start)
  summary['max_bad_fraction'] = max_bad_fraction
  log(format_summary(summary, out))
  if summary['bad_fraction'] > max_bad_fraction:
    raise BadInputError(too_much_bad_input(summary, out))
  manifest.finish(index)
  return summary


def _max_bad_fraction(skip_bad: bool, value: float | None) -> float:
  """The ``--max_bad_fraction`` in force (see the module docstring)."""
  if value is None:
    return DEFAULT_MAX_BAD_FRACTION if skip_bad else 0.0
  if not 0.0 <= value <= 1.0:
    raise ValueError(f'--max_bad_fraction={value} must be in [0, 1]')
  if value > 0 and not skip_bad:
    raise ValueError(f'--max_bad_fraction={value} needs --skip_bad (without '
                     'it the first bad input stops the run)')
  return value


def too_much_bad_input(summary: dict[str, Any], out: str) -> str:
  """The error of a run over ``--max_bad_fraction``: counts by reason and
  the first examples of each, then what to do."""
  lines = [
      f'{out}: {summary["bad_items"]} of {summary["items"]} input items '
      f'({summary["bad_fraction"]:.2%}) had bad input, more than '
      f'--max_bad_fraction={summary["max_bad_fraction"]:g}:']
  lines += _bad_report(summary)
  lines.append(
      'The shards are kept but the folder is left unfinished (training '
      'refuses it). To accept this loss, re-run the same command with a '
      'larger --max_bad_fraction (finished shards are reused); otherwise fix '
      'the input and prepare into a new --out.')
  return '\n'.join(lines)


def _bad_report(summary: dict[str, Any]) -> list[str]:
  """``reason count`` lines, each followed by its first examples."""
  lines = []
  for reason, n in summary['bad'].items():
    lines.append(f'    {reason} {n}, first:')
    lines += [f'      {m}' for m in summary['bad_examples'].get(reason, [])]
  return lines


def summarise(manifest: records.Manifest, written: int,
              seconds: float) -> dict[str, Any]:
  """Totals over every shard of a finished folder."""
  shards = manifest.payload['shards'].values()
  bad, skipped = collections.Counter(), collections.Counter()
  examples: dict[str, list[str]] = {}
  for _, s in sorted(manifest.payload['shards'].items()):
    bad.update(s['bad'])
    skipped.update(s['skipped'])
    for reason, messages in s.get('bad_examples', {}).items():
      kept = examples.setdefault(reason, [])
      kept += messages[:EXAMPLES_PER_REASON - len(kept)]
  items = sum(s['items'] for s in shards)
  # Shards listed before bad_items was recorded: at most one bad item per
  # bad problem.
  bad_items = sum(s.get('bad_items', sum(s['bad'].values())) for s in shards)
  vocab_size = None
  if manifest.payload.get('relation_vocab'):
    vocab_size = len(relations_lib.RelationVocab.load(os.path.join(
        manifest.directory, manifest.payload['relation_vocab'])))
  return {'records': sum(s['records'] for s in shards),
          'items': items,
          'shards': len(manifest.payload['shards']),
          'shards_written': written,
          'bad_items': bad_items,
          'bad_fraction': bad_items / items if items else 0.0,
          'bad': dict(sorted(bad.items())),
          'bad_examples': dict(sorted(examples.items())),
          'skipped': dict(sorted(skipped.items())),
          'boxes_clipped': sum(s['boxes_clipped'] for s in shards),
          'relations': vocab_size, 'seconds': seconds}


def format_summary(summary: dict[str, Any], out: str) -> str:
  """The human-readable summary printed at the end."""
  def counts(c):
    return ', '.join(f'{k} {v}' for k, v in c.items()) or 'none'
  lines = [
      f'prepared {out}: {summary["records"]} records from '
      f'{summary["items"]} items in {summary["shards"]} shards '
      f'({summary["shards_written"]} written now, '
      f'{summary["shards"] - summary["shards_written"]} already there) in '
      f'{summary["seconds"]:.1f}s',
      f'  items with bad input: {summary["bad_items"]} '
      f'({summary["bad_fraction"]:.2%})' + (
          f', limit --max_bad_fraction={summary["max_bad_fraction"]:g}'
          if 'max_bad_fraction' in summary else ''),
      f'  bad (dropped): {counts(summary["bad"])}',
      *_bad_report(summary),
      f'  skipped: {counts(summary["skipped"])}',
      f'  boxes clipped to the image: {summary["boxes_clipped"]}']
  if summary['relations'] is not None:
    lines.append(f'  relation vocabulary: {summary["relations"]} relations '
                 f'in {os.path.join(out, records.VOCAB_FILE)}')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    prepare(_FORMAT.value, _SRC.value, _IMAGES.value, _OUT.value,
            shard_size=_SHARD_SIZE.value, store=_STORE.value,
            reencode_size=_REENCODE_SIZE.value,
            reencode_side=_REENCODE_SIDE.value,
            jpeg_quality=_JPEG_QUALITY.value, skip_bad=_SKIP_BAD.value,
            max_bad_fraction=_MAX_BAD_FRACTION.value,
            min_relation_count=_MIN_RELATION_COUNT.value,
            num_workers=_NUM_WORKERS.value)
  except (ValueError, OSError) as e:  # Bad input, files or options.
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
