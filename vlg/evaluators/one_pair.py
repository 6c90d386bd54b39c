"""One (image, text) pair a call: the loop the batched evaluation is measured
against.

The fine-grained evaluation notebooks score a benchmark one example at a
time: for every (image, text) pair an example asks about, one forward pass
of the model on that image and that text. :func:`loop_scorer` gives, for an
evaluator's scorer, a scorer with the same interface that does exactly that
— every row encoded from its pixels and words and fused in a call of its
own (one row a device of the mesh, so one pair a call on one device) — so
the evaluator's own code turns the loop's scores into its metrics. Nothing
is shared between rows: an image asked about with a caption and a foil is
encoded twice, as a per-example loop encodes it.

Retrieval has no per-example loop in those notebooks; its loop here
computes the similarity stage's features one image and one text a call and
re-scores each candidate pair from its pixels and words in a call of its
own (``image_text_scores``' ``itm_logit``, the logit ALBEF ranks by).

Decoded image files are shared with the batched scorer
(``common.ImageCache``), so a timed round of either side decodes nothing
the other did not, and the loop's calls go through the same runner
(``batching.BatchRunner``), which prepares the next call while one
computes: both favour the loop over a notebook's. ``python -m vlg.tools.bench_round`` times a round both
ways; ``tests/evaluators/test_one_pair.py`` checks that the metrics agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vlg.evaluators import batching
from vlg.evaluators import common
from vlg.evaluators import retrieval


def loop_scorer(scorer):
  """The one-pair-a-call counterpart of an evaluator's ``scorer``
  (a ``common.PairScorer`` or a ``retrieval.RetrievalScorer``)."""
  if isinstance(scorer, retrieval.RetrievalScorer):
    return OnePairRetrievalScorer(scorer)
  if isinstance(scorer, common.PairScorer):
    return _one_pair_scorer(scorer, scorer.predict_fn)
  raise TypeError(f'No one-pair loop for a {type(scorer).__name__}; '
                  'expected a PairScorer or a RetrievalScorer')


def _one_pair_scorer(scorer, predict_fn) -> common.PairScorer:
  """A PairScorer over ``predict_fn`` with ``scorer``'s settings, one row
  a device a call, without the feature path (every row encoded alone)."""
  one = common.PairScorer(
      predict_fn, scorer.tokenizer, resolution=scorer.resolution,
      max_text_len=scorer.max_text_len,
      batch_size=batching.batch_multiple(scorer.mesh), mesh=scorer.mesh,
      rules=scorer.rules, max_words=scorer.max_words)
  one.load_image = scorer.load_image
  return one


class OnePairRetrievalScorer(retrieval.RetrievalScorer):
  """``retrieval.RetrievalScorer``'s interface, one item or pair a call.

  :meth:`image_features` and :meth:`text_features` run one image or text a
  call (a batch of the mesh's minimum size) and remember what they
  encoded; :meth:`itm_logits` scores each (image index, text index) pair
  from that image's pixels and that text's words in a call of its own.
  """

  def __init__(self, scorer: retrieval.RetrievalScorer):
    super().__init__(scorer.predict_fns, scorer.tokenizer,
                     resolution=scorer.resolution,
                     max_text_len=scorer.max_text_len,
                     batch_size=batching.batch_multiple(scorer.mesh),
                     mesh=scorer.mesh, rules=scorer.rules,
                     max_words=scorer.max_words)
    self.load_image = scorer.load_image
    self._pairs = _one_pair_scorer(self,
                                   scorer.predict_fns['image_text_scores'])
    self._encoded_images: list = []
    self._encoded_texts: list[str] = []

  def image_features(self, params, images: Sequence[str | np.ndarray]
                     ) -> dict[str, np.ndarray]:
    self._encoded_images = list(images)
    return super().image_features(params, images)

  def text_features(self, params, texts: Sequence[str]
                    ) -> dict[str, np.ndarray]:
    self._encoded_texts = list(texts)
    return super().text_features(params, texts)

  def itm_logits(self, params, image_embeds: np.ndarray,
                 fusion_text: np.ndarray, text_mask: np.ndarray,
                 pairs: np.ndarray) -> np.ndarray:
    """ITM "match" logits of ``pairs`` [P, 2] (indices into the last
    :meth:`image_features` and :meth:`text_features` calls), one pair a
    call from pixels and words; the embeddings are not used."""
    del image_embeds, fusion_text, text_mask
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    images, texts = self._encoded_images, self._encoded_texts
    if len(pairs) and (pairs[:, 0].max() >= len(images) or
                       pairs[:, 1].max() >= len(texts)):
      raise ValueError('pairs index images or texts this scorer has not '
                       'encoded; call image_features and text_features '
                       'first')
    out = self._pairs.score(params, [images[i] for i in pairs[:, 0]],
                            [texts[t] for t in pairs[:, 1]])
    return out.get('itm_logit', np.zeros(0, np.float32))
