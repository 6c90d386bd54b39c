"""Shared evaluator machinery: the factory and a batched, padded pair scorer.

``config.evals.<name> = dict(type='valse', log_steps=..., **kwargs)`` builds
``vlg.evaluators.<type>.Evaluator(predict_fns, scorer_factory=..., **kwargs)``.
Each evaluator's ``run(params)`` returns a flat dict of metrics (prefixed
with ``<name>/`` by the loop), always including how many examples were
evaluated out of how many are in the annotation file and the scorer used.

:class:`PairScorer` scores (image, text) pairs: it loads every distinct image
once, tokenises with the training tokenizer, pads the stream to a multiple of
the global batch with a ``_mask`` so every host runs the same number of
steps, and runs one jitted predict function over the mesh. Scores do not
depend on the batch size or device count (each row is scored independently).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from PIL import Image

from vlg import sharding
from vlg.data import ops
from vlg.data import pipeline
from vlg.data import tokenizer as tokenizer_lib

SCORERS = ('itm', 'itc')


class PairScorer:
  """Scores aligned (image file, text) pairs with ``image_text_scores``."""

  def __init__(self, predict_fn, tokenizer: tokenizer_lib.Tokenizer, *,
               resolution: int, max_text_len: int, batch_size: int, mesh,
               rules):
    self.tokenizer = tokenizer
    self.resolution, self.max_text_len = resolution, max_text_len
    self.batch_size, self.mesh, self.rules = batch_size, mesh, rules
    n = mesh.shape['data'] * mesh.shape['fsdp']
    if batch_size % max(n, 1) or batch_size % jax.process_count():
      raise ValueError(f'eval batch_size {batch_size} must divide over '
                       f'{n} data shards and {jax.process_count()} processes')
    self._fn = jax.jit(predict_fn,
                       out_shardings=sharding.replicated(mesh))
    self._images: dict[str, np.ndarray] = {}

  def load_image(self, path: str) -> np.ndarray:
    if path not in self._images:
      try:
        with Image.open(path) as img:
          arr = np.asarray(img.convert('RGB'), np.uint8)
      except (OSError, ValueError) as e:
        raise ops.BadExampleError(f'Cannot read image {path}: {e}') from e
      self._images[path] = ops.resize(ops.to_square(arr), self.resolution)
    return self._images[path]

  def score(self, params, images: Sequence[str | np.ndarray],
            texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Scores row i = (images[i], texts[i]); returns {'itm': [N], 'itc': [N]}."""
    if len(images) != len(texts):
      raise ValueError('images and texts must align')
    n, bs = len(texts), self.batch_size
    total = -(-n // bs) * bs
    pc, pi = jax.process_count(), jax.process_index()
    local = bs // pc
    out: dict[str, list[np.ndarray]] = {}
    for start in range(0, total, bs):
      rows = range(start + pi * local, start + (pi + 1) * local)
      batch = self._local_batch(images, texts, rows, n)
      res = jax.device_get(self._fn(
          params, pipeline.to_global(batch, self.mesh, self.rules)))
      for k, v in res.items():
        out.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v)[:n] for k, v in out.items()}

  def _local_batch(self, images, texts, rows, n) -> dict[str, np.ndarray]:
    imgs, ids, masks, valid = [], [], [], []
    for r in rows:
      real = r < n
      j = r if real else 0  # Padding repeats row 0 and is masked out.
      img = images[j]
      imgs.append(self.load_image(img) if isinstance(img, str) else
                  ops.resize(ops.to_square(img), self.resolution))
      t_ids, t_mask = self.tokenizer.encode(ops.pre_caption(texts[j]),
                                            self.max_text_len)
      ids.append(t_ids)
      masks.append(t_mask)
      valid.append(int(real))
    return {'image': np.stack(imgs), 'text_ids': np.stack(ids),
            'text_mask': np.stack(masks),
            '_mask': np.asarray(valid, np.int32)}


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
  """Area under the ROC curve: P(pos > neg) + 0.5 P(pos == neg)."""
  pos, neg = np.asarray(positive, np.float64), np.asarray(negative,
                                                         np.float64)
  if not len(pos) or not len(neg):
    return float('nan')
  allv = np.concatenate([pos, neg])
  order = allv.argsort(kind='mergesort')
  ranks = np.empty(len(allv), np.float64)
  sorted_v = allv[order]
  i = 0
  while i < len(allv):  # Average ranks over ties.
    j = i
    while j + 1 < len(allv) and sorted_v[j + 1] == sorted_v[i]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2 + 1
    i = j + 1
  u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
  return float(u / (len(pos) * len(neg)))


def from_config(evals: ml_collections.ConfigDict, *, predict_fns, tokenizer,
                mesh, rules, defaults: dict[str, Any]) -> dict[str, Any]:
  """Builds ``{name: (evaluator, log_steps)}`` from ``config.evals``."""
  out = {}
  for name, cfg in evals.items():
    cfg = dict(cfg)
    kind = cfg.pop('type', None)
    log_steps = cfg.pop('log_steps', None)
    try:
      module = importlib.import_module(f'vlg.evaluators.{kind}')
    except ModuleNotFoundError as e:
      raise ValueError(f'evals.{name}.type={kind!r} is not an evaluator '
                       'module in vlg/evaluators/') from e
    opts = {**defaults, **cfg}
    scorer = PairScorer(
        predict_fns['image_text_scores'], tokenizer,
        resolution=opts.pop('resolution'),
        max_text_len=opts.pop('max_text_len'),
        batch_size=opts.pop('batch_size'), mesh=mesh, rules=rules)
    out[name] = (module.Evaluator(scorer, **opts), log_steps)
  return out
