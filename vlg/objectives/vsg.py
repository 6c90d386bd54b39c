"""VSG — verbalised scene graphs: image–text losses (docs/objectives.md §4).

VSG (Bugliarello et al., EMNLP 2023) turns an image's scene graph into a
text, ``s1 r1 o1 [SEP] s2 r2 o2 [SEP] ...`` (K sampled triplets sorted by
the subject's centre), and trains the *same* image–text losses as for
captions on (image, VSG text) pairs: ``L_VSG = L_itc + L_itm + L_mlm``.
It adds no parameters and no formula of its own:

- the text: ``vlg.data.relations.verbalise_scene_graph`` (sampling,
  raster sort, formatting) and ``vlg.data.relations.encode_vsg`` (ids
  ``[CLS] t1 [SEP] ... tK [SEP]``, truncated at a triplet boundary), in the
  data workers;
- the losses: the ITC/ITM/MLM functions of ``itc.py``, ``itm.py`` and
  ``mlm.py`` as combined for caption pairs (``albef.albef_loss`` with
  momentum, ``pairs.image_text_losses`` in-batch), applied in-batch to the
  ``vsg_*`` batch slots by :func:`vsg_loss` and logged under a ``vsg_``
  prefix.
"""

from __future__ import annotations

import jax

from vlg.objectives import pairs
from vlg.objectives import part


def vsg_loss(model, batch: dict[str, jax.Array], *, rng, temp, weights,
             dropout_rngs, options=None
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """In-batch ITC + ITM + MLM on (image, verbalised graph) pairs.

  Returns:
    (weighted total, metrics prefixed ``vsg_``, with the total as
    ``vsg_loss``).
  """
  del options
  total, metrics = pairs.whole_image_losses(
      model, batch, 'vsg_', rng=rng, temp=temp, weights=weights,
      dropout_rngs=dropout_rngs)
  metrics = {f'vsg_{k}': v for k, v in metrics.items()}
  metrics['vsg_loss'] = total
  return total, metrics


PART = part.PartObjective(loss=vsg_loss, rng_stream=2,
                          progress=('vsg_itm_loss',))
