"""Pure predict functions that evaluators receive (never the model class).

Each is ``fn(params, batch) -> dict`` of per-example arrays, built once from
the model's graphdef and jitted by the caller with replicated outputs. Every
row of a batch is computed independently of the others (``_mask`` marks
padding rows, whose outputs the caller drops).

- ``image_text_scores`` (``image``, ``text_ids``, ``text_mask``): ``itm``
  (ITM "match" probability, the default image–text score s(i, t)),
  ``itm_logit`` (its logit, which retrieval ranks by) and ``itc`` (cosine
  similarity of the ITC features) of aligned rows.
- ``image_features`` (``image``): ``image_feat`` [B, E] and
  ``image_embeds`` [B, 1 + N, Dv], for retrieval's similarity matrix.
- ``text_features`` (``text_ids``, ``text_mask``): ``text_feat`` [B, E]
  and ``fusion_text`` [B, L, Dt], the text's states after the fusion's
  first block (``Model.fusion_text``: the first fusion layer's
  self-attention, which reads the text alone), so a text fused with many
  images runs that block once.
- ``itm_from_embeds`` (``image_embeds``, ``fusion_text``, ``text_mask``):
  the rest of the fusion and the ITM head on precomputed states:
  ``itm_logit`` (the "match" logit, which ALBEF's retrieval ranks by) and
  ``itm`` (its probability). Retrieval re-scores its top-k candidates
  with it. With G images [G, 1 + N, Dv] and R G text rows [R G, L, Dt]
  (R > 1, read from the shapes), text rows ``g R .. g R + R - 1`` are
  scored against image g, whose cross-attention keys and values are then
  computed once, and both outputs are [G, R] (a batch of G groups, as the
  caller's runner counts rows).
- ``predict_box`` (``image``, ``text_ids``, ``text_mask``; models with a box
  head only): ``box`` [B, 4], normalised (cx, cy, w, h) of the region the
  text names, from the fused [CLS] (X-VLM).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

PredictFn = Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]]


def make_predict_fns(graphdef, *, box_head: bool = False
                     ) -> dict[str, PredictFn]:
  """Predict functions for an ALBEF-family model's graphdef.

  Args:
    graphdef: the model's graphdef (``nnx.split``).
    box_head: the model has a box head (``config.model.box_head``); adds
      ``predict_box``.

  Returns:
    The predict functions by name (module docstring).
  """

  def itm_outputs(model, image_embeds, text_embeds, text_mask,
                  rows_per_image=1, self_attended=False):
    logits = model.itm_logits(
        model.fuse_cls(text_embeds, text_mask, image_embeds,
                       rows_per_image=rows_per_image,
                       self_attended=self_attended)
    ).astype(jnp.float32)
    return {'itm_logit': logits[:, 1],
            'itm': jax.nn.softmax(logits, axis=-1)[:, 1]}

  def image_text_scores(params, batch):
    model = nnx.merge(graphdef, params)
    img = model.embed_image(batch['image'])
    txt = model.embed_text(batch['text_ids'], batch['text_mask'])
    itm = itm_outputs(model, img['image_embeds'], txt['text_embeds'],
                      batch['text_mask'])
    return {
        **itm,
        'itc': jnp.sum(img['image_feat'] * txt['text_feat'], axis=-1),
    }

  def image_features(params, batch):
    img = nnx.merge(graphdef, params).embed_image(batch['image'])
    return {'image_feat': img['image_feat'],
            'image_embeds': img['image_embeds']}

  def text_features(params, batch):
    model = nnx.merge(graphdef, params)
    txt = model.embed_text(batch['text_ids'], batch['text_mask'])
    return {'text_feat': txt['text_feat'],
            'fusion_text': model.fusion_text(txt['text_embeds'],
                                             batch['text_mask'])}

  def itm_from_embeds(params, batch):
    images = batch['image_embeds'].shape[0]
    per_image = batch['fusion_text'].shape[0] // images if images else 1
    out = itm_outputs(nnx.merge(graphdef, params), batch['image_embeds'],
                      batch['fusion_text'], batch['text_mask'], per_image,
                      self_attended=True)
    if per_image == 1:
      return out
    return {k: v.reshape(images, per_image) for k, v in out.items()}

  fns = {'image_text_scores': image_text_scores,
         'image_features': image_features, 'text_features': text_features,
         'itm_from_embeds': itm_from_embeds}

  if box_head:
    def predict_box(params, batch):
      model = nnx.merge(graphdef, params)
      img = model.embed_image(batch['image'])
      txt = model.embed_text(batch['text_ids'], batch['text_mask'])
      return {'box': model.predict_box(model.fuse_cls(
          txt['text_embeds'], batch['text_mask'], img['image_embeds']))}
    fns['predict_box'] = predict_box
  return fns
