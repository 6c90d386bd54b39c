"""Which captions of a synthetic caption batch are true of which images.

A caption batch (``vlg/data/pipeline.py``) names, for every example, its
image (``image_id``), which of the record's captions was drawn
(``caption_index``) and whether the example was mirrored (``flipped``).
From these the world's scenes and raw captions can be rebuilt and every
(image, caption) pair of the batch checked against the ground truth
(``vlg/synthetic/truth.py``): how often a "negative" the objectives draw
is in fact a true caption. Readers: ``vlg.tools.validate`` (held-out
false-negative shares) and ``vlg.false_negatives`` (the same during
training).

Mirroring is a symmetry of the world: a mirrored image with its caption's
left and right swapped is as true as the original pair. So caption j, as
the model saw it, is true of image i as the model saw it exactly when the
raw caption j, with left and right swapped if one of the two was mirrored
and the other not, is true of the raw scene i. Crops keep every object
(``ops.random_square_crop``) and brightness changes no colour name, so
neither changes a caption's truth.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from vlg.data import ops
from vlg.synthetic import source as synthetic_source
from vlg.synthetic import truth as truth_lib
from vlg.synthetic import world


def caption_world(input_cfg: ml_collections.ConfigDict
                  ) -> world.WorldConfig | None:
  """The world configuration of every caption source of ``input.data``, as
  ``vlg.data.sources`` builds it; None if a source is not synthetic or the
  sources differ (a batch does not say which source an example came
  from)."""
  sources = list(input_cfg.data.values())
  if not sources or any(s.get('source', 'synthetic') != 'synthetic'
                        for s in sources):
    return None
  worlds = [world.WorldConfig(**dict(s.get('world', {}))) for s in sources]
  return worlds[0] if all(w == worlds[0] for w in worlds) else None


def batch_truth(batch: dict[str, np.ndarray], cfg: world.WorldConfig,
                split: str, tokenizer, input_cfg: ml_collections.ConfigDict
                ) -> np.ndarray:
  """[B, B] bool: the caption of example j is true of the image of i.

  Rebuilds each example's scene from its image id and its caption from
  ``caption_index`` (the record's captions are drawn by
  ``source.scene_record``, as ``source.make_record`` does), and checks that
  the rebuilt caption, swapped where ``flipped``, tokenises to the batch's
  ``text_ids``. Truth is of the whole caption, also where the model sees
  it truncated to ``max_text_len`` tokens; a borderline statement counts
  as not true.

  Raises:
    ValueError: ``input.augment`` has ``flip`` and the batch has no
      ``flipped`` slot, an image id is not of ``split``, or a rebuilt
      caption is not the batch's text.
    truth.ParseError: a caption is not in the world's grammar.
  """
  return _pairwise(truth_lib.truth_matrix,
                   *_rebuild(batch, cfg, split, tokenizer, input_cfg))


def batch_negative_kinds(batch: dict[str, np.ndarray], cfg: world.WorldConfig,
                         split: str, tokenizer,
                         input_cfg: ml_collections.ConfigDict) -> np.ndarray:
  """int8 [B, B]: ``truth.kind_matrix`` of the batch as the model saw it
  (the index in ``truth.NEGATIVE_KINDS`` of why caption j is, or is not,
  true of image i), rebuilt and checked as :func:`batch_truth` does.

  Raises:
    As :func:`batch_truth`.
  """
  return _pairwise(truth_lib.kind_matrix,
                   *_rebuild(batch, cfg, split, tokenizer, input_cfg))


def _pairwise(matrix, scenes, texts, flipped: np.ndarray) -> np.ndarray:
  """``matrix(scenes, texts)``, with left and right swapped in caption j
  where exactly one of example i and example j was mirrored."""
  same = matrix(scenes, texts)
  if not flipped.any():
    return same
  swapped = matrix(scenes, [ops.swap_left_right(t) for t in texts])
  return np.where(flipped[:, None] != flipped[None, :], swapped, same)


def _rebuild(batch, cfg, split, tokenizer, input_cfg):
  """(scenes, raw captions, flipped [B] bool) of a caption batch."""
  n = len(batch['image_id'])
  if 'flipped' in batch:
    flipped = np.asarray(batch['flipped']).astype(bool).reshape(n)
  elif 'flip' in tuple(input_cfg.augment):
    raise ValueError('input.augment has flip but the batch has no "flipped" '
                     'slot: which captions had left and right swapped is '
                     'unknown')
  else:
    flipped = np.zeros(n, bool)
  base = world.image_id(split, 0)
  scenes, texts = [], []
  for b, (image_id, k, ids) in enumerate(zip(
      np.asarray(batch['image_id']), np.asarray(batch['caption_index']),
      np.asarray(batch['text_ids']))):
    index = int(image_id) - base
    if not 0 <= index < 10**9:
      raise ValueError(f'image id {int(image_id)} is not of the {split!r} '
                       'split of the synthetic world')
    scene, record = synthetic_source.scene_and_record(split, index, cfg)
    captions = record['captions']
    text = captions[int(k)]
    seen = ops.swap_left_right(text) if flipped[b] else text
    want, _ = tokenizer.encode(
        ops.pre_caption(seen, int(input_cfg.max_words)),
        int(input_cfg.max_text_len))
    if not np.array_equal(want, ids):
      raise ValueError(
          f'caption {int(k)} of {split} image {index}, {seen!r}, does not '
          'tokenise to the batch\'s text: the batch was not drawn from this '
          'world configuration and split')
    scenes.append(scene)
    texts.append(text)
  return scenes, texts, flipped
