"""Pure predict functions that evaluators receive (never the model class).

Each is ``fn(params, batch) -> dict`` of per-example arrays, built once from
the model's graphdef and jitted by the caller with replicated outputs:

- ``image_text_scores``: ``itm`` (ITM "match" probability, the default
  image–text score s(i, t)) and ``itc`` (cosine similarity of the ITC
  features) for aligned (image, text) rows of a batch.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

PredictFn = Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]]


def make_predict_fns(graphdef) -> dict[str, PredictFn]:
  """Predict functions for an ALBEF-family model's graphdef."""

  def image_text_scores(params, batch):
    model = nnx.merge(graphdef, params)
    img = model.embed_image(batch['image'])
    txt = model.embed_text(batch['text_ids'], batch['text_mask'])
    fused = model.fuse(txt['text_embeds'], batch['text_mask'],
                       img['image_embeds'])
    logits = model.itm_logits(fused['fused_cls']).astype(jnp.float32)
    return {
        'itm': jax.nn.softmax(logits, axis=-1)[:, 1],
        'itc': jnp.sum(img['image_feat'] * txt['text_feat'], axis=-1),
    }

  return {'image_text_scores': image_text_scores}
