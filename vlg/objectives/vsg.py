"""VSG — verbalised scene graphs (spec §4) needs no loss code of its own.

VSG (Bugliarello et al., EMNLP 2023) turns an image's scene graph into a
text, ``s1 r1 o1 [SEP] s2 r2 o2 [SEP] ...`` (K sampled triplets sorted by
the subject's centre), and trains the *same* image–text losses as for
captions on (image, VSG text) pairs: ``L_VSG = L_itc + L_itm + L_mlm``.
It adds no parameters and no formula, so this module deliberately holds
no code. The pieces live where they run:

- the text: ``vlg.data.relations.verbalise_scene_graph`` (sampling,
  raster sort, formatting) and ``vlg.data.relations.encode_vsg`` (ids
  ``[CLS] t1 [SEP] ... tK [SEP]``, truncated at a triplet boundary), in the
  data workers;
- the losses: the ITC/ITM/MLM functions of ``itc.py``, ``itm.py`` and
  ``mlm.py`` as combined for caption pairs (``albef.albef_loss`` with
  momentum, ``pairs.image_text_losses`` in-batch), applied to the VSG batch
  slots by ``pretrain.vsg_loss`` and logged under a ``vsg_`` prefix.
"""
