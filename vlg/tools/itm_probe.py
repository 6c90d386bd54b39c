"""The held-out ITM probe of ``vlg.tools.validate``: uniform negatives and
ground-truth false negatives.

Training scores ITM on hard negatives drawn from the model's own ITC
similarities, so under a sharp ITC a perfect matcher scores below the 1:2
prior and the logged ITM accuracy cannot show ITM learning. This module
draws, once per held-out caption batch, one uniform negative each way
(:func:`uniform_negatives`), rebuilds the batch's synthetic scenes and
captions to know which pairs are in fact true (``vlg/data/batch_truth.py``),
and pools what the jitted metrics function of ``validate`` returns into
``itm_random_acc``, ``itm_random_auroc`` and the false-negative shares
(``validate``'s module docstring defines each). All on the host, after
the jitted step.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np

from vlg import false_negatives
from vlg.data import batch_truth as batch_truth_lib
from vlg.evaluators import common as eval_common
from vlg.objectives import itm as itm_lib
from vlg.synthetic import contrast
from vlg.synthetic import truth as truth_lib
from vlg.synthetic import world

# Accuracy of always answering "not matched" on 1 positive : 2 negatives.
ITM_PRIOR = 2 / 3


def uniform_negatives(image_ids: np.ndarray, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One negative image per text and one negative text per image, uniform.

  Each is drawn uniformly among the batch entries of another image (equal
  ids are never negatives, as in training's ITM).

  Returns:
    ``(neg_image, neg_text, has_negative)``: int32 [B] the negative image of
    each text and the negative text of each image, bool [B] whether entry b
    has any (a row without one gets its own index and is left out of the
    ITM probe).
  """
  ids = np.asarray(image_ids).reshape(-1)
  allowed = ids[:, None] != ids[None, :]
  neg_image = np.arange(ids.size, dtype=np.int32)
  neg_text = np.arange(ids.size, dtype=np.int32)
  for b in range(ids.size):
    candidates = np.flatnonzero(allowed[b])
    if candidates.size:
      neg_image[b] = rng.choice(candidates)
      neg_text[b] = rng.choice(candidates)
  return neg_image, neg_text, allowed.any(axis=1)


@dataclasses.dataclass(frozen=True)
class CaptionProbe:
  """The fixed ITM probe of one held-out caption batch.

  Attributes:
    image_ids: [B] the batch's image ids.
    neg_image, neg_text, has_negative: :func:`uniform_negatives`.
    truth: [B, B] bool, True where caption j is true of image i, or None
      where the captions could not be checked (see :func:`caption_probes`).
    kinds: [B, B] int8, ``batch_truth.batch_negative_kinds`` (why caption j
      is or is not true of image i), or None as ``truth``.
    twins: [B, B] bool, True where entry j is entry i's contrast twin
      (:func:`twin_mask`), or None where the world has no contrast pairs.
  """
  image_ids: np.ndarray
  neg_image: np.ndarray
  neg_text: np.ndarray
  has_negative: np.ndarray
  truth: np.ndarray | None
  kinds: np.ndarray | None = None
  twins: np.ndarray | None = None


def twin_mask(image_ids: np.ndarray, cfg: world.WorldConfig,
              split: str) -> np.ndarray:
  """[B, B] bool: entry j's image is entry i's contrast twin (images 2k
  and 2k + 1 of ``split`` drawn as a contrast pair, ``contrast.pair``)."""
  index = np.asarray(image_ids).reshape(-1) - world.image_id(split, 0)
  paired = np.array([contrast.pair(split, int(k), cfg) is not None
                     for k in index])
  return ((index[:, None] ^ 1) == index[None, :]) & paired[:, None]


def caption_probes(data: Sequence[dict[str, np.ndarray]],
                   input_cfg: ml_collections.ConfigDict, tokenizer,
                   split: str, seed: int,
                   log: Callable[[str], None] = print) -> list[CaptionProbe]:
  """The ITM probe of every held-out batch: uniform negatives from one
  generator seeded with ``seed`` and, where the captions can be checked
  (one world configuration, captions in its grammar), their truth."""
  rng = np.random.default_rng(seed)
  cfg = batch_truth_lib.caption_world(input_cfg)
  if cfg is None:
    log('The caption sources are not one synthetic world configuration: '
        'the false-negative metrics are left out')
  kinds = [None] * len(data)
  if cfg is not None:
    try:
      kinds = [batch_truth_lib.batch_negative_kinds(b, cfg, split, tokenizer,
                                                    input_cfg)
               for b in data]
    except truth_lib.ParseError as e:
      log(f'A held-out caption is not in the world\'s grammar ({e}): the '
          'false-negative metrics are left out')
      kinds = [None] * len(data)
  true = truth_lib.NEGATIVE_KINDS.index('true')
  probes = []
  for batch, kind in zip(data, kinds):
    ids = np.asarray(batch['image_id'])
    twins = (twin_mask(ids, cfg, split)
             if cfg is not None and cfg.contrast_rate > 0 else None)
    probes.append(CaptionProbe(ids, *uniform_negatives(ids, rng),
                               None if kind is None else kind == true, kind,
                               twins))
  return probes


def false_negative_rates(probes: Sequence[CaptionProbe]) -> dict[str, float]:
  """``fn_pair_rate`` and ``fn_random_share`` (see the module docstring),
  pooled over batches; empty if a batch's truth is unknown."""
  if not probes or any(p.truth is None for p in probes):
    return {}
  total = collections.Counter()
  for p in probes:
    total.update(false_negatives.false_negative_counts(
        p.truth, p.image_ids, p.neg_image, p.neg_text))
  return false_negatives.shares(total, neg_key='fn_random_share')


def hard_negative_true_share(sim_i2t: np.ndarray, sim_t2i: np.ndarray,
                             image_ids: np.ndarray, truth: np.ndarray
                             ) -> tuple[float, int]:
  """Expected number of true captions among training's hard negatives.

  With ``w = itm.hard_negative_weights(sim_i2t, sim_t2i, image_ids)`` (the
  sampling distributions of the hard negatives), image b's negative text
  is true with probability ``Σ_j w_i2t[b, j] · truth[b, j]`` and text b's
  negative image with ``Σ_j w_t2i[b, j] · truth[j, b]``.

  Args:
    sim_i2t, sim_t2i: [B, B] in-batch ITC logits image → text, text → image.
    image_ids: [B] image ids.
    truth: [B, B] bool, caption j true of image i.

  Returns:
    ``(expected true negatives, negatives)`` summed over both directions
    and the entries that have a negative (training weights the others out).
  """
  return _expected_hard(sim_i2t, sim_t2i, image_ids,
                        [np.asarray(truth, bool)])[0]


def _expected_hard(sim_i2t, sim_t2i, image_ids, masks):
  """``[(expected hard negatives in mask, negatives)]`` per [B, B] mask
  (see :func:`hard_negative_true_share`)."""
  w_i2t, w_t2i = itm_lib.hard_negative_weights(
      jnp.asarray(sim_i2t, jnp.float32), jnp.asarray(sim_t2i, jnp.float32),
      jnp.asarray(image_ids))
  p_i2t = np.exp(np.asarray(w_i2t, np.float64))
  p_t2i = np.exp(np.asarray(w_t2i, np.float64))
  ids = np.asarray(image_ids).reshape(-1)
  has = (ids[:, None] != ids[None, :]).any(axis=1)
  out = []
  for mask in masks:
    expected = (p_i2t * mask).sum(axis=1) + (p_t2i * mask.T).sum(axis=1)
    out.append((float(expected[has].sum()), int(2 * has.sum())))
  return out


def itm_probe_metrics(per_batch: Sequence[dict[str, np.ndarray]],
                      probes: Sequence[CaptionProbe]) -> dict[str, float]:
  """The uniform-negative ITM metrics and ``fn_hard_share`` of one step.

  ``per_batch`` are the metrics function's outputs on the batches of
  ``probes``. Accuracy and AUROC pool every scored pair (B positives and
  the 2B negatives of the entries that have one); the AUROC ranks the
  match-minus-mismatch logit, which orders the pairs as p(match) does
  without its float32 saturation to exact ties.
  """
  scores, labels, correct, row_kinds = [], [], [], []
  hard_true = hard_num = hard_twin = 0.0
  hard_kinds = collections.Counter()
  for out, probe in zip(per_batch, probes):
    logits = np.asarray(out['itm_random_logits'], np.float64)
    b = probe.image_ids.size
    keep = np.concatenate([np.ones(b, bool), probe.has_negative,
                           probe.has_negative])
    label = np.asarray(itm_lib.itm_labels(b))
    scores.append((logits[:, 1] - logits[:, 0])[keep])
    labels.append(label[keep])
    correct.append((np.argmax(logits, axis=-1) == label)[keep])
    if probe.kinds is not None:  # Each row's pair, in itm_pairs' order.
      ar = np.arange(b)
      row_kinds.append(np.concatenate([
          probe.kinds[ar, ar], probe.kinds[probe.neg_image, ar],
          probe.kinds[ar, probe.neg_text]])[keep])
    if probe.truth is not None:
      # One pass over the hard-negative weights: the truth, then each kind.
      kind_masks = [] if probe.kinds is None else [
          probe.kinds == k for k in range(len(truth_lib.NEGATIVE_KINDS))]
      twin_masks = [] if probe.twins is None else [probe.twins]
      (true, num), *by_kind = _expected_hard(
          out['itm_sim_i2t'], out['itm_sim_t2i'], probe.image_ids,
          [np.asarray(probe.truth, bool)] + kind_masks + twin_masks)
      if twin_masks:
        hard_twin += by_kind.pop()[0]
      hard_true += true
      hard_num += num
      for kind, (expected, _) in zip(truth_lib.NEGATIVE_KINDS, by_kind):
        hard_kinds[kind] += expected
  correct = np.concatenate(correct)
  scores = np.concatenate(scores)
  labels = np.concatenate(labels).astype(bool)
  res = {
      'itm_random_acc': float(correct.mean()) if correct.size else float(
          'nan'),
      'itm_random_auroc': eval_common.auroc(scores[labels], scores[~labels]),
      'itm_random_prior': ITM_PRIOR,
      # Where the errors are: the share of true pairs answered "matched"
      # and of negatives answered "not matched" (a head that only says
      # "matched" when sure has a low recall and a high specificity).
      'itm_random_recall': _mean(correct[labels]),
      'itm_random_specificity': _mean(correct[~labels]),
      # The accuracy at the best threshold on the logit margin, in place
      # of the head's own 0 (p = 0.5): a diagnostic of calibration, not a
      # score (the threshold is chosen on these very pairs).
      'itm_random_acc_best_threshold': _best_threshold_accuracy(
          scores, labels),
  }
  if probes and all(p.truth is not None for p in probes):
    res['fn_hard_share'] = hard_true / hard_num if hard_num else float('nan')
  if probes and len(row_kinds) == len(probes):
    # The uniform negatives answered "not matched", by what rejecting each
    # takes: does the head read bindings and relations, or words only?
    # The AUROC of the positives against the negatives of one kind is free
    # of the head's threshold.
    kinds = np.concatenate(row_kinds)[~labels]
    for i, kind in enumerate(truth_lib.NEGATIVE_KINDS):
      res[f'itm_random_num/{kind}'] = float((kinds == i).sum())
      res[f'itm_random_specificity/{kind}'] = _mean(correct[~labels][
          kinds == i])
      res[f'itm_random_auroc/{kind}'] = eval_common.auroc(
          scores[labels], scores[~labels][kinds == i])
  if probes and all(p.twins is not None for p in probes) and hard_num:
    # How often the hard-negative sampler draws an entry's contrast twin
    # (a question only the edit's relation or binding answers), and how
    # many entries have their twin in the batch to be drawn.
    res['hard_neg_twin'] = hard_twin / hard_num
    res['twin_in_batch'] = float(np.mean(np.concatenate(
        [p.twins.any(axis=1) for p in probes])))
  if probes and all(p.kinds is not None for p in probes) and hard_num:
    # What the hard negatives ask of the ITM head: the expected share of
    # each reason a drawn negative is false (truth.negative_kind).
    for kind in truth_lib.NEGATIVE_KINDS:
      res[f'hard_neg_kind/{kind}'] = hard_kinds[kind] / hard_num
  return res


def _mean(values: np.ndarray) -> float:
  return float(values.mean()) if values.size else float('nan')


def _best_threshold_accuracy(scores: np.ndarray, labels: np.ndarray
                             ) -> float:
  """The best accuracy of answering "matched" for ``scores > t`` over
  every threshold ``t`` (below all scores, between two, above all)."""
  if not scores.size:
    return float('nan')
  order = np.argsort(scores, kind='stable')
  s, y = scores[order], labels[order]
  # Cut k: the k lowest scores answer "not matched". Only cuts between
  # distinct scores are thresholds.
  negatives_below = np.concatenate([[0], np.cumsum(~y)])
  positives_above = np.concatenate([[0], np.cumsum(y[::-1])])[::-1]
  valid = np.concatenate([[True], s[1:] > s[:-1], [True]])
  correct = (negatives_below + positives_above)[valid]
  return float(correct.max() / s.size)

