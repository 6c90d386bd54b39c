"""Image–text retrieval: Karpathy COCO / Flickr30K and Stanford paragraphs.

  config.evals.coco = dict(type='retrieval', file='.../coco_test.json',
                           image_root='.../coco', k_test=256, log_steps=5000)
  config.evals.paragraphs = dict(
      type='retrieval', format='paragraphs',
      file='.../paragraphs_v1.json', split_file='.../test_split.json',
      image_root='.../vg_images', max_text_len=128, max_words=200)

Two stages, as ALBEF: the ITC similarity of every image with every text
(from ``image_features`` / ``text_features``, each image and text encoded
once); then for each query (an image for text retrieval TR, a text for image
retrieval IR) the top ``k_test`` candidates by similarity (clamped to the
number of candidates) are re-scored with the ITM head's "match" logit
(``itm_from_embeds`` on the stored embeddings; a pair that is a candidate in
both directions is fused once) and ranked; candidates outside the top k rank
below every re-scored one. Where it saves work (:func:`choose_rows`: short
texts, many pairs an image) the re-scored pairs run in groups of R texts of
one width with one image (:func:`group_pairs`; R up to
:data:`ROWS_PER_IMAGE`), so the fusion's cross-attention projects each
image's keys and values once a group instead of once a pair; the scores
equal per-pair fusion to float rounding. With ``scorer_name='itc'`` the
similarity alone ranks (no ITM stage).

Metrics: ``tr_r1/5/10`` (an image hits at K if any of its texts is among its
top K), ``ir_r1/5/10`` (a text hits if its image is), ``r_mean`` (their
mean), ``chance/<metric>`` (the expected value for a random ranking:
1 - C(M - c, K) / C(M, K) for an image with c of the M texts, K / N for a
text), ``num_evaluated`` / ``num_in_file`` (images) and ``num_texts``.
Ties are broken against the query: a ground truth ranks below every other
candidate with an equal score. Images that are missing are left out with
their texts (logged).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import numpy as np

from vlg import benchmarks
from vlg.evaluators import batching
from vlg.evaluators import common

KS = (1, 5, 10)
FORMATS = ('karpathy', 'paragraphs')
# The most texts fused with one image in a call (a power of two). On the
# tiny model, a batch of 32 pairs of 16-token texts: 8.1 ms as 32 images,
# 6.2 ms as 8 images x 4, 5.7 ms as 2 x 16 (docs/results.md).
ROWS_PER_IMAGE = 16
# A BERT fusion layer with a 4x MLP spends about 7x the FLOPs on a text
# token (its self-attention projections, cross-attention query and output,
# MLP) as on one image token's cross-attention keys and values.
TEXT_TOKEN_COST = 7.0


class RetrievalScorer:
  """Features of images and texts, and ITM scores of (image, text) pairs."""

  def __init__(self, predict_fns, tokenizer, *, resolution: int,
               max_text_len: int, batch_size: int, mesh, rules,
               max_words: int = 30):
    def runner(name, size=batch_size):
      return batching.BatchRunner(predict_fns[name], batch_size=size,
                                  mesh=mesh, rules=rules)
    self.predict_fns, self.tokenizer = predict_fns, tokenizer
    self.resolution, self.max_text_len = resolution, max_text_len
    self.mesh, self.rules = mesh, rules
    # Groups of R pairs must split over the shards like single rows: R
    # divides each shard's (and process's) share of the batch.
    self._split = batching.batch_multiple(mesh)
    self._group_sizes = tuple(
        r for r in (2 ** i for i in range(1, ROWS_PER_IMAGE.bit_length()))
        if (batch_size // self._split) % r == 0)
    self._group_runners = {}
    self._rows = None  # The group size, chosen at the first re-ranking.
    self._runner = runner
    self.batch_size = batch_size
    self.max_words = max_words
    self.load_image = common.ImageCache(resolution)
    self._images = runner('image_features')
    self._texts = runner('text_features')
    self._itm = runner('itm_from_embeds')

  def image_features(self, params, images: Sequence[str | np.ndarray]
                     ) -> dict[str, np.ndarray]:
    """``image_feat`` [N, E] and ``image_embeds`` [N, T, Dv]."""
    return self._images.run(params, len(images), lambda rows: {
        'image': np.stack([self.load_image(images[r]) for r in rows])})

  def text_features(self, params, texts: Sequence[str]
                    ) -> dict[str, np.ndarray]:
    """``text_feat`` [M, E], ``fusion_text`` [M, L, Dt] (the states
    :meth:`itm_logits` fuses, ``vlg.predict``), ``text_mask``."""
    ids, masks = common.encode_texts(self.tokenizer, texts,
                                     self.max_text_len, self.max_words)
    out = self._texts.run(params, len(texts), lambda rows: {
        'text_ids': ids[rows], 'text_mask': masks[rows]},
        text_lengths=batching.text_lengths(masks))
    out['text_mask'] = masks
    return out

  def itm_logits(self, params, image_embeds: np.ndarray,
                 fusion_text: np.ndarray, text_mask: np.ndarray,
                 pairs: np.ndarray) -> np.ndarray:
    """ITM "match" logits of the (image index, text index) rows of
    ``pairs`` [P, 2], fused one pair a row or in groups of one image and
    one text width, whichever :func:`choose_rows` estimates cheaper for
    the first call's pairs; later calls keep that choice, so a round
    compiles no new shapes where the pairs' spread shifts (a step-1 and a
    step-2 round of the tiny run chose 1 and 2 for paragraphs)."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    lengths = batching.text_lengths(text_mask)[pairs[:, 1]]
    full = text_mask.shape[1]
    widths = np.array([batching.trimmed_width(w, full)
                       for w in range(full + 1)])[lengths]
    keys = pairs[:, 0] * (full + 1) + widths  # One image, one width.
    if self._rows is None:  # Chosen once: a new size would compile anew.
      self._rows = choose_rows(keys, widths, image_embeds.shape[1],
                               self._group_sizes)
    rows = self._rows
    if rows == 1:
      out = self._itm.run(params, len(pairs), lambda b: {
          'image_embeds': image_embeds[pairs[b, 0]],
          'fusion_text': fusion_text[pairs[b, 1]],
          'text_mask': text_mask[pairs[b, 1]]}, text_lengths=lengths)
      return out.get('itm_logit', np.zeros(0, np.float32))
    groups, valid = group_pairs(keys, rows)
    texts = pairs[groups, 1]

    def build(b):
      t = texts[b].reshape(-1)
      return {'image_embeds': image_embeds[pairs[groups[b, 0], 0]],
              'fusion_text': fusion_text[t], 'text_mask': text_mask[t]}

    runner = self._group_runner(rows, image_embeds.shape[1], full)
    out = runner.run(params, len(groups), build,
                     text_lengths=lengths[groups].max(axis=1))
    logits = np.zeros(len(pairs), np.float32)
    logits[groups[valid]] = out['itm_logit'][valid]
    return logits

  def _group_runner(self, rows: int, image_tokens: int, width: int
                    ) -> batching.BatchRunner:
    """The runner of ``rows``-pair groups, as many a call as hold about the
    activations of a batch of single pairs at the full text ``width``
    (groups of R need R width + ``image_tokens`` token rows against
    R (width + image_tokens)); fewer, larger calls cost less per pair."""
    scale = (width + image_tokens) / (width + image_tokens / rows)
    groups = self.batch_size // rows
    groups = max(int(groups * scale) // self._split * self._split, groups)
    if (rows, groups) not in self._group_runners:
      self._group_runners[rows, groups] = self._runner('itm_from_embeds',
                                                       groups)
    return self._group_runners[rows, groups]


def choose_rows(keys: np.ndarray, widths: np.ndarray, image_tokens: int,
                allowed) -> int:
  """The group size (1: one pair a row) with the least estimated fusion
  work for pairs grouped by ``keys`` (one image and one text width a key).

  Work is counted in text tokens through a fusion layer: a pair of width
  w costs w plus its image's keys and values, ``image_tokens`` /
  :data:`TEXT_TOKEN_COST`; a group of R costs R w plus one image's keys and
  values, and a key's last group is padded up to R. Short texts against
  many image tokens (captions) favour groups; long ones (paragraphs) do
  not.

  Args:
    keys: [P] the group key of each pair.
    widths: [P] each pair's text width (equal within a key).
    image_tokens: tokens an image gives the cross-attention.
    allowed: the group sizes the batch allows (besides 1).
  """
  if not len(keys):
    return 1
  _, first, counts = np.unique(keys, return_index=True, return_counts=True)
  width, kv = widths[first], image_tokens / TEXT_TOKEN_COST
  best, least = 1, float(np.sum(counts * (width + kv)))
  for rows in sorted(allowed):
    work = float(np.sum(-(-counts // rows) * (rows * width + kv)))
    if work < least:
      best, least = rows, work
  return best


def group_pairs(keys: np.ndarray, rows: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """Pairs in groups of ``rows`` with one key (an image and a text width).

  Returns:
    ``groups`` [G, rows]: pair indices, one key a group; a key's last group
    is filled up by repeating its last pair. ``valid`` [G, rows]: False on
    those repeats. Every pair is in exactly one valid slot.
  """
  keys = np.asarray(keys)
  order = np.argsort(keys, kind='stable')
  starts = np.flatnonzero(np.r_[True, keys[order][1:] != keys[order][:-1]])
  groups, valid = [], []
  for run in np.split(order, starts[1:]) if len(order) else []:
    fill = -len(run) % rows
    groups.append(np.concatenate([run, np.repeat(run[-1:], fill)]))
    valid.append(np.arange(len(run) + fill) < len(run))
  if not groups:
    return np.zeros((0, rows), np.int64), np.zeros((0, rows), bool)
  return (np.concatenate(groups).reshape(-1, rows),
          np.concatenate(valid).reshape(-1, rows))


def make_scorer(predict_fns, tokenizer, *, mesh, rules,
                **settings) -> RetrievalScorer:
  """The factory hook (``common.from_config``)."""
  return RetrievalScorer(predict_fns, tokenizer, mesh=mesh, rules=rules,
                         **settings)


def top_k(sim: np.ndarray, k: int) -> np.ndarray:
  """Indices [Q, k] of the k largest entries of each row (any order)."""
  k = min(k, sim.shape[1])
  if k == sim.shape[1]:
    return np.broadcast_to(np.arange(k), (sim.shape[0], k))
  return np.argpartition(-sim, k - 1, axis=1)[:, :k]


def two_stage_scores(sim: np.ndarray, k: int, itm_fn
                     ) -> tuple[np.ndarray, np.ndarray]:
  """ALBEF's score matrices: top-k by ``sim`` re-scored, the rest -inf.

  Args:
    sim: [N, M] image–text similarities.
    k: candidates per query (clamped to N or M).
    itm_fn: maps unique (image, text) index pairs [P, 2] to [P] scores.

  Returns:
    ``(score_i2t [N, M], score_t2i [M, N])``.
  """
  n, m = sim.shape
  i2t = top_k(sim, k)
  t2i = top_k(sim.T, k)
  codes = np.concatenate([
      (np.arange(n)[:, None] * m + i2t).ravel(),
      (t2i * m + np.arange(m)[:, None]).ravel()])
  unique, inverse = np.unique(codes, return_inverse=True)
  pairs = np.stack([unique // m, unique % m], axis=1)
  scores = np.asarray(itm_fn(pairs), np.float32)[inverse]
  score_i2t = np.full((n, m), -np.inf, np.float32)
  score_t2i = np.full((m, n), -np.inf, np.float32)
  n_i2t = i2t.size
  np.put_along_axis(score_i2t, i2t, scores[:n_i2t].reshape(i2t.shape), 1)
  np.put_along_axis(score_t2i, t2i, scores[n_i2t:].reshape(t2i.shape), 1)
  return score_i2t, score_t2i


def ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
  """0-based rank of each query's best relevant candidate.

  Args:
    scores: [Q, C] candidate scores per query.
    relevant: [Q, C] boolean, the ground truths of each query (at least one).

  Returns:
    [Q] int: how many irrelevant candidates score at least the best relevant
    one (ties are broken against the query).
  """
  best = np.where(relevant, scores, -np.inf).max(axis=1, keepdims=True)
  return np.sum((scores >= best) & ~relevant, axis=1)


def recall_chance(num_relevant: Sequence[int], num_candidates: int,
                  k: int) -> float:
  """Expected R@k of a random ranking: mean P(a relevant one in the top k)."""
  total = math.comb(num_candidates, k) if k <= num_candidates else 0
  if not total:
    return 1.0
  return float(np.mean([1 - math.comb(num_candidates - c, k) / total
                        for c in num_relevant]))


def metrics(score_i2t: np.ndarray, score_t2i: np.ndarray,
            txt2img: Sequence[int], num_in_file: int) -> common.Results:
  """TR@K, IR@K and their mean from full score matrices, with the per-query
  hits behind each recall (``r_mean`` mixes image and text queries and has
  none).

  Args:
    score_i2t: [N, M] scores of every text for each image query.
    score_t2i: [M, N] scores of every image for each text query.
    txt2img: [M] the image of each text.
    num_in_file: images in the annotation file.
  """
  txt2img = np.asarray(txt2img, np.int64)
  n, m = score_i2t.shape
  gt_t2i = np.zeros((m, n), bool)
  gt_t2i[np.arange(m), txt2img] = True
  tr = ranks(score_i2t, gt_t2i.T) if n else np.zeros(0, np.int64)
  ir = ranks(score_t2i, gt_t2i) if m else np.zeros(0, np.int64)
  captions_per_image = np.bincount(txt2img, minlength=n)
  out = {'num_evaluated': float(n), 'num_in_file': float(num_in_file),
         'num_texts': float(m)}
  outcomes = {}
  for k in KS:
    out[f'tr_r{k}'] = common.mean_or_nan(tr < k)
    out[f'ir_r{k}'] = common.mean_or_nan(ir < k)
    outcomes.update({f'tr_r{k}': tr < k, f'ir_r{k}': ir < k})
    out[f'chance/tr_r{k}'] = recall_chance(captions_per_image, m, k)
    out[f'chance/ir_r{k}'] = recall_chance([1] * m, n, k)
  for prefix in ('', 'chance/'):
    out[f'{prefix}r_mean'] = float(np.mean(
        [out[f'{prefix}{d}_r{k}'] for d in ('tr', 'ir') for k in KS]))
  return common.Results(out, outcomes)


class Evaluator:
  """Two-stage (ITC then ITM) retrieval recall in both directions."""

  def __init__(self, scorer: RetrievalScorer, *, file: str, image_root: str,
               format: str = 'karpathy',  # pylint: disable=redefined-builtin
               split_file: str | None = None, k_test: int = 256,
               scorer_name: str = 'itm'):
    common.check_scorer_name(scorer_name, 'retrieval')
    if format not in FORMATS:
      raise ValueError(f'retrieval: format={format!r}; valid: {FORMATS}')
    if k_test < 1:
      raise ValueError(f'retrieval: k_test={k_test} must be >= 1')
    self.scorer, self.scorer_name, self.k_test = scorer, scorer_name, k_test
    if format == 'karpathy':
      if split_file:
        raise ValueError('retrieval: split_file is for format=paragraphs')
      full = benchmarks.load_retrieval(file)
    else:
      full = benchmarks.paragraph_retrieval_set(
          benchmarks.load_paragraphs(file, split_file))
    present, missing = benchmarks.check_images(full.images, image_root,
                                               decode=True)
    if missing:
      logging.warning('retrieval %s: %d of %d images missing under %s, '
                      'e.g. %s; their texts are left out', file,
                      len(missing), len(full.images), image_root,
                      missing[:5])
    keep = set(present)
    kept = [i for i, name in enumerate(full.images) if name in keep]
    self.data = benchmarks.RetrievalSet.from_captions(
        [full.images[i] for i in kept],
        [[full.texts[t] for t in full.img2txt[i]] for i in kept])
    self.num_in_file = len(full.images)
    self.image_root = image_root

  def run(self, params) -> dict[str, float]:
    paths = [benchmarks.image_path(self.image_root, f)
             for f in self.data.images]
    return evaluate(self.scorer, params, paths, self.data.texts,
                    self.data.txt2img, k_test=self.k_test,
                    scorer_name=self.scorer_name,
                    num_in_file=self.num_in_file)


def evaluate(scorer: RetrievalScorer, params,
             images: Sequence[str | np.ndarray], texts: Sequence[str],
             txt2img: Sequence[int], *, k_test: int, scorer_name: str = 'itm',
             num_in_file: int | None = None,
             timings: dict[str, float] | None = None) -> dict[str, float]:
  """Encodes, scores and ranks; returns :func:`metrics`.

  Args:
    scorer: the retrieval scorer.
    params: the model parameters.
    images: image paths (or arrays), one per image.
    texts: every text; ``txt2img[t]`` is the image of text ``t``.
    txt2img: see above.
    k_test: ITM re-scored candidates per query.
    scorer_name: 'itm' (two stages) or 'itc' (similarity only).
    num_in_file: images in the file (default ``len(images)``).
    timings: if given, filled with the seconds of each stage.
  """
  timings = {} if timings is None else timings
  num_in_file = len(images) if num_in_file is None else num_in_file
  t = time.perf_counter()
  img = scorer.image_features(params, images)
  txt = scorer.text_features(params, list(texts))
  timings['features_s'] = time.perf_counter() - t
  if not len(images):
    empty = np.zeros((0, 0), np.float32)
    return metrics(empty, empty, [], num_in_file)
  t = time.perf_counter()
  sim = img['image_feat'].astype(np.float32) @ txt['text_feat'].astype(
      np.float32).T
  if scorer_name == 'itc':
    score_i2t, score_t2i = sim, sim.T
  else:
    score_i2t, score_t2i = two_stage_scores(
        sim, k_test, lambda pairs: scorer.itm_logits(
            params, img['image_embeds'], txt['fusion_text'],
            txt['text_mask'], pairs))
  timings['rank_s'] = time.perf_counter() - t
  return metrics(score_i2t, score_t2i, txt2img, num_in_file)
