"""RefCOCOg-style set in the refer toolkit's layout: ``refcocog/``.

* ``refs(umd).p``: a pickled (protocol 2) list of refs ``{'sent_ids',
  'file_name', 'ann_id', 'ref_id', 'image_id', 'split', 'sentences':
  [{'tokens', 'raw', 'sent_id', 'sent'}], 'category_id'}``; ``split`` is
  'val' or 'test' (umd has no synthetic 'train': training uses the world).
* ``instances.json``: COCO-style ``images`` (``id``, ``file_name``,
  ``width``, ``height``), ``annotations`` (every object: ``id``,
  ``image_id``, ``bbox`` ``[x, y, w, h]`` in pixels, exactly the object's
  box, ``category_id``, ``area``, ``iscrowd``) and ``categories`` (the
  world's shapes, ids 1..8).
* ``images/<file_name>``: the PNGs.

Scenes are the world's 'val' / 'test' split from index ``REF_OFFSET`` on.
Every object with a unique description is a ref; its expressions are 'the '
+ its shortest unique description ('the red circle') and, where the scene
graph relates it to another object with one, a relation phrase with it as
subject ('the star above the ring', the star's box), else its full label
('the large red circle'), which a unique description also makes unique.
Each split holds exactly ``num`` expressions. ``random_object_baseline``
(in the returned counts) is the accuracy of answering with a random object's
box: the mean of 1 / (objects in the image) over expressions.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np

from vlg import synthetic as sy
from vlg.synthetic import layout
from vlg.synthetic import world
from vlg.synthetic.benchmarks import common

REF_OFFSET = 2_000_000
SPLITS = ('val', 'test')
REFS_FILE = 'refs(umd).p'


def expressions(scene: world.Scene, i: int,
                rng: np.random.Generator) -> list[str]:
  """The expressions of object ``i`` ([] when it has no unique name)."""
  ref = sy.referring_expression(scene, i)
  if ref is None:
    return []
  out = [f'the {ref}']
  phrases = [sy.relation_phrase(scene, s, p, o)
             for s, p, o in scene.relations if s == i]
  phrases = [p for p in phrases if p is not None]
  full = f'the {scene.objects[i].label}'
  if phrases:
    out.append(common.pick(rng, phrases))
  elif full != out[0]:
    out.append(full)
  return out


def build(out_dir: str, cfg: world.WorldConfig, num: int) -> dict[str, Any]:
  """Writes ``refs(umd).p``, ``instances.json`` and the images."""
  root = os.path.join(out_dir, 'refcocog')
  common.makedirs(os.path.join(root, 'images'))
  refs, images, annotations = [], [], []
  counts = {}
  for split in SPLITS:
    n, k, baseline = 0, 0, 0.0
    while n < num:
      index = REF_OFFSET + k
      scene = layout.generate_scene(split, index, cfg)
      rng = common.rng_for(cfg.seed, common.CODES['refcocog'],
                           world.image_id(split, index))
      image_id = world.image_id(split, index)
      stem = f'refcocog_{split}_{k:06d}'
      images.append({'id': image_id, 'file_name': f'{stem}.png',
                     'width': cfg.resolution, 'height': cfg.resolution})
      common.save_image(scene, cfg, os.path.join(root, 'images',
                                                 f'{stem}.png'))
      for i, obj in enumerate(scene.objects):
        ann_id = len(annotations) + 1
        x0, y0, x1, y1 = obj.box
        category_id = world.CATEGORIES.index(obj.category) + 1
        annotations.append({'id': ann_id, 'image_id': image_id,
                            'bbox': [x0, y0, x1 - x0, y1 - y0],
                            'category_id': category_id,
                            'area': (x1 - x0) * (y1 - y0), 'iscrowd': 0})
        texts = expressions(scene, i, rng)[:num - n]
        if not texts:
          continue
        first = sum(len(r['sentences']) for r in refs)
        sentences = [{'tokens': t.split(), 'raw': t, 'sent_id': first + m,
                      'sent': t} for m, t in enumerate(texts)]
        refs.append({'sent_ids': [s['sent_id'] for s in sentences],
                     'file_name': f'{stem}_{ann_id}.png', 'ann_id': ann_id,
                     'ref_id': len(refs), 'image_id': image_id,
                     'split': split, 'sentences': sentences,
                     'category_id': category_id})
        n += len(texts)
        baseline += len(texts) / len(scene.objects)
      k += 1
    counts[split] = {'images': k, 'expressions': n,
                     'refs': sum(r['split'] == split for r in refs),
                     'random_object_baseline': round(baseline / n, 4)}
  with open(os.path.join(root, REFS_FILE), 'wb') as f:
    pickle.dump(refs, f, protocol=2)
  categories = [{'id': n + 1, 'name': c, 'supercategory': 'shape'}
                for n, c in enumerate(world.CATEGORIES)]
  common.write_json(os.path.join(root, 'instances.json'), {
      'info': {'description': 'vlg synthetic RefCOCOg-style set'},
      'images': images, 'annotations': annotations,
      'categories': categories})
  return {'files': {REFS_FILE: len(refs), 'instances.json': len(images)},
          'splits': counts, 'images': len(images),
          'note': ', '.join(f'{s} {c["expressions"]} expressions of '
                            f'{c["refs"]} refs' for s, c in counts.items())}
