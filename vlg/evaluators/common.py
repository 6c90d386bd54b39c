"""Shared evaluator machinery: the factory and batched, padded runners.

``config.evals.<name> = dict(type='valse', log_steps=..., **kwargs)`` builds
``vlg.evaluators.<type>.Evaluator(scorer, **kwargs)``. Each evaluator's
``run(params)`` returns a flat dict of metrics (prefixed with ``<name>/`` by
the loop), always including how many examples were evaluated out of how many
are in the annotation file (``num_evaluated`` / ``num_in_file``) and the
chance level of its headline metrics under ``chance/<metric>``.

The scorer an evaluator gets is a :class:`PairScorer` over the
``image_text_scores`` predict function, unless its module defines
``make_scorer(predict_fns, tokenizer, *, mesh, rules, **settings)`` (retrieval
needs feature-level functions, RefCOCOg ``predict_box``).

:class:`PairScorer` scores (image file, text) pairs through
``batching.BatchRunner`` (batched, padded, texts cut to their batch's
longest): it loads every distinct image once and tokenises with the
training tokenizer. Every row is computed independently, so results do not
depend on the batch size or device count.

Synthetic sets: ``synthetic=True`` in an eval's config makes the factory
write every synthetic benchmark set once (``vlg.synthetic.benchmarks.
write_all``) into a cache folder keyed by (resolution, seed, num) and
replace ``{synthetic}`` in the eval's string arguments by that folder::

  config.evals.svo = dict(type='svo_probes', synthetic=True, log_steps=500,
                          file='{synthetic}/svo_probes/svo_probes.jsonl',
                          image_root='{synthetic}/svo_probes/images')

Options: ``synthetic_num`` (200), ``synthetic_seed`` (0),
``synthetic_resolution`` (the eval resolution) and ``synthetic_cache``
(``$VLG_CACHE_DIR`` or ``~/.cache/vlg``).
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from scipy import stats
from PIL import Image

from vlg import cache_root
from vlg.data import ops
from vlg.data import tokenizer as tokenizer_lib
from vlg.evaluators import batching
from vlg.synthetic import benchmarks as synthetic_benchmarks

SCORERS = ('itm', 'itc')
# Eval options that configure the scorer rather than the evaluator.
SCORER_SETTINGS = ('resolution', 'max_text_len', 'batch_size', 'max_words')
SYNTHETIC_PLACEHOLDER = '{synthetic}'

class ImageCache:
  """Loads each image file once, square-resized to ``resolution``."""

  def __init__(self, resolution: int):
    self.resolution = resolution
    self._images: dict[str, np.ndarray] = {}

  def __call__(self, image: str | np.ndarray) -> np.ndarray:
    """The resized image of a file path (cached) or an HxWx3 uint8 array."""
    if not isinstance(image, str):
      return ops.resize(ops.to_square(np.asarray(image)), self.resolution)
    if image not in self._images:
      try:
        with Image.open(image) as img:
          arr = np.asarray(img.convert('RGB'), np.uint8)
      except (OSError, ValueError) as e:
        raise ops.BadExampleError(f'Cannot read image {image}: {e}') from e
      self._images[image] = ops.resize(ops.to_square(arr), self.resolution)
    return self._images[image]


def encode_texts(tokenizer: tokenizer_lib.Tokenizer, texts: Sequence[str],
                 max_text_len: int, max_words: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """``pre_caption`` then tokenise: ids and mask, int32 [len(texts), L]."""
  ids, masks = [], []
  for t in texts:
    i, m = tokenizer.encode(ops.pre_caption(t, max_words), max_text_len)
    ids.append(i)
    masks.append(m)
  if not ids:
    return (np.zeros((0, max_text_len), np.int32),) * 2
  return np.stack(ids), np.stack(masks)


# The predict functions a PairScorer scores with when each distinct image
# and text should be encoded once (``image_text_scores`` split in three).
FEATURE_FNS = ('image_features', 'text_features', 'itm_from_embeds')


class PairScorer:
  """Scores aligned (image file, text) rows with one predict function.

  With ``feature_fns`` (the :data:`FEATURE_FNS` predict functions) it
  computes what ``image_text_scores`` computes (``itm``, ``itm_logit`` and
  ``itc``) but encodes each distinct image and each distinct text of a
  chunk of rows once, then fuses the rows from the stored embeddings:
  VALSE scores every image with a caption and a foil, Winoground each
  image with two captions, so this halves their vision encoder passes (it
  is used when at most ``DISTINCT_IMAGES_FOR_FEATURES`` of the rows have
  distinct images). Rows are grouped by image into chunks of ``CHUNK_BATCHES``
  batches, which bounds the embeddings held at once. Every row is still
  computed independently: the scores equal the single function's up to
  float rounding.
  """

  CHUNK_BATCHES = 16
  # The feature path runs three programs and moves the embeddings through
  # the host; it pays when images repeat (VALSE and Winoground: half the
  # rows), not when nearly every row has its own image (VSR, SVO-Probes),
  # where it is slower than the single function (docs/results.md).
  DISTINCT_IMAGES_FOR_FEATURES = 0.75

  def __init__(self, predict_fn, tokenizer: tokenizer_lib.Tokenizer, *,
               resolution: int, max_text_len: int, batch_size: int, mesh,
               rules, max_words: int = 30, feature_fns=None):
    self.predict_fn, self.tokenizer = predict_fn, tokenizer
    self.resolution, self.max_text_len = resolution, max_text_len
    self.max_words = max_words
    self.batch_size, self.mesh, self.rules = batch_size, mesh, rules
    self.runner = batching.BatchRunner(predict_fn, batch_size=batch_size,
                                       mesh=mesh, rules=rules)
    self.load_image = ImageCache(resolution)
    self._feature_runners = None
    if feature_fns is not None:
      self._feature_runners = {
          name: batching.BatchRunner(feature_fns[name],
                                     batch_size=batch_size, mesh=mesh,
                                     rules=rules)
          for name in FEATURE_FNS}

  def score(self, params, images: Sequence[str | np.ndarray],
            texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Row i = (images[i], texts[i]); returns the predict fn's outputs,
    e.g. {'itm': [N], 'itm_logit': [N], 'itc': [N]} (an empty dict for no
    rows)."""
    if len(images) != len(texts):
      raise ValueError('images and texts must align')
    n = len(texts)
    if (self._feature_runners is not None and n and
        all(isinstance(i, str) for i in images) and
        len(set(images)) <= self.DISTINCT_IMAGES_FOR_FEATURES * n):
      return self._score_from_features(params, images, texts)
    ids, masks = encode_texts(self.tokenizer, texts, self.max_text_len,
                              self.max_words)
    return self.runner.run(
        params, n, lambda rows: {
            'image': np.stack([self.load_image(images[r]) for r in rows]),
            'text_ids': ids[rows], 'text_mask': masks[rows]},
        text_lengths=batching.text_lengths(masks))

  def _score_from_features(self, params, images: Sequence[str],
                           texts: Sequence[str]) -> dict[str, np.ndarray]:
    """``itm``, ``itm_logit`` and ``itc`` of every row, each distinct
    image and text of a chunk encoded once."""
    runners = self._feature_runners
    order = sorted(range(len(texts)), key=lambda r: (images[r], texts[r]))
    chunk = self.CHUNK_BATCHES * self.batch_size
    itm, itm_logit, itc = (np.zeros(len(texts), np.float32)
                           for _ in range(3))
    for start in range(0, len(order), chunk):
      rows = order[start:start + chunk]
      image_keys = list(dict.fromkeys(images[r] for r in rows))
      text_keys = list(dict.fromkeys(texts[r] for r in rows))
      image_of = {k: i for i, k in enumerate(image_keys)}
      text_of = {k: i for i, k in enumerate(text_keys)}
      img_idx = np.array([image_of[images[r]] for r in rows])
      txt_idx = np.array([text_of[texts[r]] for r in rows])
      img = runners['image_features'].run(
          params, len(image_keys), lambda picked: {'image': np.stack(
              [self.load_image(image_keys[i]) for i in picked])})
      ids, masks = encode_texts(self.tokenizer, text_keys,
                                self.max_text_len, self.max_words)
      lengths = batching.text_lengths(masks)
      txt = runners['text_features'].run(
          params, len(text_keys),
          lambda picked: {'text_ids': ids[picked],
                          'text_mask': masks[picked]}, text_lengths=lengths)
      fused = runners['itm_from_embeds'].run(
          params, len(rows), lambda picked: {
              'image_embeds': img['image_embeds'][img_idx[picked]],
              'fusion_text': txt['fusion_text'][txt_idx[picked]],
              'text_mask': masks[txt_idx[picked]]},
          text_lengths=lengths[txt_idx])
      itm[rows], itm_logit[rows] = fused['itm'], fused['itm_logit']
      itc[rows] = np.sum(img['image_feat'][img_idx].astype(np.float32) *
                         txt['text_feat'][txt_idx].astype(np.float32), -1)
    return {'itm': itm, 'itm_logit': itm_logit, 'itc': itc}


class Results(dict):
  """An evaluator's metrics, ``{name: float}``, with the per-example
  outcomes behind them.

  ``outcomes[name]`` is a [n] array (0/1 for a right-or-wrong metric, a
  value such as an IoU otherwise) whose mean *is* ``self[name]``, in the
  evaluator's fixed example order, so two checkpoints' outcomes on one
  benchmark pair example by example: bootstrap bands and paired tests
  (``vlg.analysis.confidence``) resample them. Metrics that are not a mean
  over examples (AUROC, means of per-instrument means) have none. The
  training loop and ``vlg.tools.eval`` store them beside ``metrics.jsonl``
  (``vlg.writers.write_outcomes``). A plain dict everywhere else.

  Raises:
    ValueError: an outcome has no metric, or its mean is not the metric's
      value (an evaluator bug, caught where it is made).
  """

  def __init__(self, metrics: dict[str, float],
               outcomes: dict[str, Any]):
    super().__init__(metrics)
    self.outcomes = {}
    for name, values in outcomes.items():
      values = np.asarray(values, np.float64).ravel()
      if name not in metrics:
        raise ValueError(f'outcomes for {name!r}, which is not a metric')
      value = float(metrics[name])
      if values.size and not np.isclose(values.mean(), value, rtol=1e-9,
                                        atol=1e-12):
        raise ValueError(f'outcomes of {name!r} average {values.mean()}, '
                         f'the metric is {value}')
      self.outcomes[name] = values


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
  """Area under the ROC curve: P(pos > neg) + 0.5 P(pos == neg).

  The Mann–Whitney U of the mid-ranks (ties share their mean rank) over
  the number of (positive, negative) pairs; NaN if either side is empty.
  """
  pos, neg = np.asarray(positive, np.float64).ravel(), np.asarray(
      negative, np.float64).ravel()
  if not len(pos) or not len(neg):
    return float('nan')
  ranks = stats.rankdata(np.concatenate([pos, neg]))
  u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
  return float(u / (len(pos) * len(neg)))


def mean_or_nan(values) -> float:
  """The mean of ``values`` as a float; NaN (not a warning) when empty."""
  values = np.asarray(values, np.float64)
  return float(values.mean()) if values.size else float('nan')


def check_scorer_name(scorer_name: str, benchmark: str) -> None:
  """Raises a clear error for an unknown ``scorer_name``."""
  if scorer_name not in SCORERS:
    raise ValueError(f'{benchmark}: scorer_name={scorer_name!r}; valid: '
                     f'{SCORERS}')


# Synthetic benchmark sets
# ---------------------------------------------------------------------------


def synthetic_root(resolution: int, seed: int = 0, num: int = 200,
                   cache_dir: str | None = None) -> str:
  """The folder of every synthetic benchmark set for these settings.

  Written once with ``synthetic_benchmarks.write_all`` into a temporary
  folder beside the final one and renamed into place, so a crash never
  leaves a half-written set where a later run would trust it.
  """
  cache_dir = cache_dir or cache_root.cache_root()
  parent = os.path.join(cache_dir, 'synthetic_benchmarks')
  version = synthetic_benchmarks.VERSION
  final = os.path.join(parent,
                       f'res{resolution}_seed{seed}_num{num}_v{version}')
  if os.path.isfile(os.path.join(final, 'manifest.json')):
    return final
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix='.partial-')
  try:
    logging.info('Writing synthetic benchmark sets to %s', final)
    synthetic_benchmarks.write_all(tmp, resolution=resolution, seed=seed,
                                   num=num)
    try:
      os.rename(tmp, final)
    except OSError:
      # Another process renamed its (identical) copy first.
      if not os.path.isfile(os.path.join(final, 'manifest.json')):
        raise
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return final


def _resolve_synthetic(name: str, opts: dict[str, Any]) -> dict[str, Any]:
  """Pops the ``synthetic*`` options and fills in ``{synthetic}`` paths."""
  use = bool(opts.pop('synthetic', False))
  seed = int(opts.pop('synthetic_seed', 0))
  num = int(opts.pop('synthetic_num', 200))
  resolution = int(opts.pop('synthetic_resolution', 0) or
                   opts['resolution'])
  cache = opts.pop('synthetic_cache', None)
  uses_placeholder = [k for k, v in opts.items()
                      if isinstance(v, str) and SYNTHETIC_PLACEHOLDER in v]
  if not use:
    if uses_placeholder:
      raise ValueError(f'evals.{name}: {uses_placeholder} use '
                       f'{SYNTHETIC_PLACEHOLDER} but synthetic is not set')
    return opts
  root = synthetic_root(resolution, seed, num, cache)
  return {k: (v.replace(SYNTHETIC_PLACEHOLDER, root) if isinstance(v, str)
              else v) for k, v in opts.items()}


def _plain(value: Any) -> Any:
  if isinstance(value, ml_collections.ConfigDict):
    return value.to_dict()
  return value


def run_defaults(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """A run's scorer defaults for :func:`from_config`: the input resolution,
  ``eval_max_text_len`` (30 tokens) and ``eval_batch_size``, else the train
  batch."""
  return dict(resolution=int(config.input.resolution),
              max_text_len=int(config.get('eval_max_text_len', 30)),
              batch_size=int(config.get('eval_batch_size', config.batch_size)))


def from_config(evals: ml_collections.ConfigDict, *, predict_fns, tokenizer,
                mesh, rules, defaults: dict[str, Any]) -> dict[str, Any]:
  """Builds ``{name: (evaluator, log_steps)}`` from ``config.evals``.

  Args:
    evals: ``config.evals``; each entry has ``type`` (a module of
      ``vlg/evaluators``), ``log_steps`` and the evaluator's arguments, plus
      optional scorer settings (``resolution``, ``max_text_len``,
      ``batch_size``, ``max_words``) overriding ``defaults`` and the
      ``synthetic*`` options (module docstring).
    predict_fns: ``vlg.predict.make_predict_fns(...)``.
    tokenizer: the training tokenizer.
    mesh: the device mesh.
    rules: the logical sharding rules.
    defaults: ``resolution``, ``max_text_len`` and ``batch_size``
      (:func:`run_defaults`).

  Returns:
    The evaluators and their ``log_steps``, by name.
  """
  out = {}
  for name, cfg in evals.items():
    cfg = {k: _plain(v) for k, v in dict(cfg).items()}
    kind = cfg.pop('type', None)
    log_steps = cfg.pop('log_steps', None)
    try:
      module = importlib.import_module(f'vlg.evaluators.{kind}')
    except ModuleNotFoundError as e:
      raise ValueError(f'evals.{name}.type={kind!r} is not an evaluator '
                       'module in vlg/evaluators/') from e
    opts = _resolve_synthetic(name, {**defaults, **cfg})
    settings = {k: opts.pop(k) for k in SCORER_SETTINGS if k in opts}
    make_scorer = getattr(module, 'make_scorer', None)
    if make_scorer is not None:
      scorer = make_scorer(predict_fns, tokenizer, mesh=mesh, rules=rules,
                           **settings)
    else:
      features = (predict_fns if all(k in predict_fns for k in FEATURE_FNS)
                  else None)
      scorer = PairScorer(predict_fns['image_text_scores'], tokenizer,
                          mesh=mesh, rules=rules, feature_fns=features,
                          **settings)
    out[name] = (module.Evaluator(scorer, **opts), log_steps)
  return out
