"""Metric writers: CLU's default writer plus ``WORKDIR/metrics.jsonl``.

The JSONL file holds one JSON object per write, ``{"step": s, name: value,
...}`` with flat metric names (``train/loss``, ``valse/acc_r``, ...), so
colabs and analysis tools read it without TensorFlow. Only process 0 writes
files; other processes only log (CLU's ``just_logging``).

CLU's writers import TensorFlow (for TensorBoard), which takes seconds, so
this module imports CLU only when :func:`create_writer` makes a writer: the
tools that only read ``metrics.jsonl`` and every command's ``--help`` start
without it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np


def _plain(value: Any) -> Any:
  if isinstance(value, (str, bool)) or value is None:
    return value
  arr = np.asarray(value)
  if arr.ndim == 0:
    v = arr.item()
    if isinstance(v, float) and not math.isfinite(v):
      return str(v)  # JSON has no NaN/Inf; keep them visible as strings.
    return v
  return arr.tolist()


class JsonlWriter:
  """Appends ``{"step": step, **scalars}`` lines to a file.

  It implements every method of CLU's ``MetricWriter`` interface (which
  ``MultiWriter`` calls) without inheriting from it, since importing the
  interface imports TensorFlow; ``tests/test_writers.py`` checks the two
  stay in step.
  """

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    self._f = open(path, 'a', buffering=1)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    self._write(step, scalars)

  def write_summaries(self, step, values, metadata=None):
    self._write(step, values)

  def write_texts(self, step: int, texts: Mapping[str, str]):
    self._write(step, texts)

  def _write(self, step, values):
    record = {'step': int(step)}
    record.update({k: _plain(v) for k, v in values.items()})
    self._f.write(json.dumps(record) + '\n')

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams: Mapping[str, Any]):
    pass

  def flush(self):
    self._f.flush()

  def close(self):
    if not self._f.closed:
      self._f.close()


def create_writer(workdir: str, process_index: int) -> Any:
  """CLU default writer (TensorBoard + log) and JSONL, on process 0 only.

  Returns a ``clu.metric_writers.MetricWriter``.
  """
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  clu_writer = metric_writers.create_default_writer(
      workdir, just_logging=process_index > 0, asynchronous=False)
  if process_index > 0:
    return clu_writer
  jsonl = JsonlWriter(os.path.join(workdir, 'metrics.jsonl'))
  return metric_writers.MultiWriter([clu_writer, jsonl])


def read_metrics(workdir_or_path: str) -> list[dict[str, Any]]:
  """Reads ``metrics.jsonl`` (a workdir or the file) into a list of dicts."""
  path = workdir_or_path
  if os.path.isdir(path):
    path = os.path.join(path, 'metrics.jsonl')
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def metric_curves(workdir_or_path: str) -> dict[str, dict[int, Any]]:
  """``{metric: {step: value}}``; a resumed run's later record of a step wins.

  After a crash, the steps between the last checkpoint and the crash are
  trained and logged again on resume; they reproduce the same values, and
  keeping the last record makes the curve the resumed run's.
  """
  curves: dict[str, dict[int, Any]] = {}
  for record in read_metrics(workdir_or_path):
    step = record['step']
    for key, value in record.items():
      if key != 'step':
        curves.setdefault(key, {})[step] = value
  return curves


OUTCOMES_DIR = 'outcomes'


def outcomes_path(workdir: str, step: int, eval_name: str) -> str:
  """``WORKDIR/outcomes/<eval name>/step_<step>.npz``."""
  return os.path.join(workdir, OUTCOMES_DIR, eval_name,
                      f'step_{int(step):09d}.npz')


def write_outcomes(workdir: str, step: int, eval_name: str,
                   results: Mapping[str, Any], process_index: int) -> None:
  """Stores an evaluation's per-example outcomes (process 0 only).

  ``results`` is what an evaluator's ``run`` returned; its ``outcomes``
  (``vlg.evaluators.common.Results``: ``{metric: [n]}``) are written to
  :func:`outcomes_path`, one array per metric, through a temporary file
  renamed into place, so a crash never leaves a half-written file. Results
  without outcomes (a skipped evaluator) write nothing.
  """
  outcomes = getattr(results, 'outcomes', None)
  if process_index > 0 or not outcomes:
    return
  path = outcomes_path(workdir, step, eval_name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + '.partial.npz'
  np.savez_compressed(tmp, **{k: np.asarray(v, np.float64)
                              for k, v in outcomes.items()})
  os.replace(tmp, path)


def read_outcomes(workdir: str) -> dict[str, dict[int, np.ndarray]]:
  """``{'<eval>/<metric>': {step: [n] outcomes}}`` of every stored step.

  The keys match ``metrics.jsonl``'s, so a curve and its outcomes are
  looked up by one name; an empty dict when nothing was stored.
  """
  root = os.path.join(workdir, OUTCOMES_DIR)
  out: dict[str, dict[int, np.ndarray]] = {}
  if not os.path.isdir(root):
    return out
  for eval_name in sorted(os.listdir(root)):
    folder = os.path.join(root, eval_name)
    for fname in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
      if not (fname.startswith('step_') and fname.endswith('.npz')) or (
          fname.endswith('.partial.npz')):
        continue
      step = int(fname[len('step_'):-len('.npz')])
      with np.load(os.path.join(folder, fname)) as arrays:
        for metric in arrays.files:
          out.setdefault(f'{eval_name}/{metric}', {})[step] = arrays[metric]
  return out


def progress_line(step: int, total: int, metrics: Mapping[str, float],
                  steps_per_sec: float, eta_s: float,
                  keys: tuple[str, ...]) -> str:
  """The training progress line: the ``keys`` of ``metrics`` that are
  present (``pretrain.progress_keys``), steps/s and the ETA."""
  eta = time.strftime('%H:%M:%S', time.gmtime(max(eta_s, 0)))
  parts = [f'step {step}/{total}']
  for key in keys:
    if key in metrics:
      parts.append(f'{key} {metrics[key]:.4f}')
  parts.append(f'{steps_per_sec:.2f} steps/s')
  parts.append(f'ETA {eta}')
  return ' | '.join(parts)


def log_compiled_memory(compiled: Any, what: str) -> None:
  """Logs a compiled program's per-device memory (XLA's memory analysis)."""
  mem = compiled.memory_analysis()
  if mem is None:  # Not every backend reports it.
    return
  gib = lambda n: f'{n / 2**30:.3f} GiB'
  logging.info(
      'Compiled %s, per device: arguments %s, outputs %s, temporaries %s, '
      'generated code %s', what,
      gib(mem.argument_size_in_bytes), gib(mem.output_size_in_bytes),
      gib(mem.temp_size_in_bytes), gib(mem.generated_code_size_in_bytes))
