"""Winoground-style set: ``winoground/data/examples.jsonl`` + ``data/images``.

Lines as the release: ``id``, ``image_0`` / ``image_1`` (stems of PNGs
under ``data/images/``), ``caption_0`` / ``caption_1`` (the same words in a
different order), ``tag``, ``secondary_tag`` ('' here), ``num_main_preds``
(1) and ``collapsed_tag``. Four kinds cycle by id:

* colour (tag Adjective-Color, collapsed Relation): 'a red circle above
  a blue square' / 'a blue circle above a red square'; image 1 is image 0
  with both shapes recoloured in place.
* size (Adjective-Size, Relation): 'a large circle left of a small star' /
  'a small circle left of a large star'; both shapes resized in place.
* noun (Noun, Object): 'a red circle above a blue square' / 'a blue square
  above a red circle'; the two shapes swap positions.
* action (Noun, Object): 'a red circle pointing at a blue square' / 'a blue
  square pointing at a red circle'; the arrow reversed, or the other shape
  drawn on top ('covering').

Captions use the world's caption grammar (indefinite noun phrases and a
relation phrase). All four (caption, image) pairs are checked: caption_i is
true of image_i and clearly false of the other image for every pair of
objects its noun phrases could name; distractor shapes never share a
category with the pair.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from vlg import synthetic as sy
from vlg.synthetic import language
from vlg.synthetic import world
from vlg.synthetic.benchmarks import common

KINDS = ('colour', 'size', 'noun', 'action')
TAGS = {'colour': ('Adjective-Color', 'Relation'),
        'size': ('Adjective-Size', 'Relation'),
        'noun': ('Noun', 'Object'), 'action': ('Noun', 'Object')}
PREDICATES = {
    'colour': ('left of', 'right of', 'above', 'below', 'near', 'far from',
               'touching', 'inside', 'points at', 'covers'),
    'size': ('left of', 'right of', 'above', 'below'),
    'noun': ('left of', 'right of', 'above', 'below'),
    'action': ('points at', 'covers'),
}
Caption = tuple[dict[str, str], str, dict[str, str]]


def _text(caption: Caption) -> str:
  s, predicate, o = caption
  return (f'{language.with_article(common.phrase(s))} '
          f'{language.PHRASES[predicate]} '
          f'{language.with_article(common.phrase(o))}')


def _pair(rng: np.random.Generator, cfg: world.WorldConfig, kind: str,
          predicate: str) -> tuple[world.Scene, world.Scene, Caption, Caption]:
  """Image 0, image 1 and their captions (noun-phrase filters)."""
  subject, obj = common.pair_specs(rng, cfg, predicate)
  common.require(subject.category != obj.category, 'same category')
  if kind == 'size':
    common.require(subject.size != obj.size, 'same size')
  others = common.fillers(rng, cfg, int(rng.integers(0, 3)),
                          avoid_categories=[subject.category, obj.category])
  scene0 = common.layout([subject, obj] + others, rng, cfg,
                         [(0, predicate, 1)])
  a, b = scene0.objects[0], scene0.objects[1]
  if kind == 'colour':
    common.require(a.colour != b.colour, 'same colour')
    # Through a third colour: touching/covering shapes never share one.
    spare = common.pick(rng, [c for c in world.COLOURS
                              if c not in (a.colour, b.colour)])
    scene1 = sy.edit_object(scene0, 0, rng, colour=spare)
    scene1 = sy.edit_object(scene1, 1, rng, colour=a.colour)
    scene1 = sy.edit_object(scene1, 0, rng, colour=b.colour)
    keys = ('colour', 'category')
  elif kind == 'size':
    scene1 = sy.edit_object(scene0, 0, rng, size=b.size)
    scene1 = sy.edit_object(scene1, 1, rng, size=a.size)
    keys = ('size', 'category')
  elif kind == 'noun':
    scene1 = sy.swap_positions(scene0, 0, 1, rng)
    keys = ('colour', 'category')
  else:
    k = next(n for n, act in enumerate(scene0.actions)
             if (act.subject, act.object) == (0, 1))
    scene1 = sy.reverse_action(scene0, k, rng)
    keys = ('colour', 'category')
  f0 = [{key: getattr(o, key) for key in keys} for o in scene0.objects[:2]]
  f1 = [{key: getattr(o, key) for key in keys} for o in scene1.objects[:2]]
  if kind in ('colour', 'size'):
    captions = ((f0[0], predicate, f0[1]), (f1[0], predicate, f1[1]))
  else:
    captions = ((f0[0], predicate, f0[1]), (f0[1], predicate, f0[0]))
  for i, caption in enumerate(captions):
    for j, scene in enumerate((scene0, scene1)):
      common.require(common.exists(scene, *caption) is (i == j),
                     f'caption {i} on image {j}')
  texts = [_text(c) for c in captions]
  common.require(texts[0] != texts[1] and sorted(texts[0].split()) == sorted(
      texts[1].split()), 'not the same words')
  return scene0, scene1, captions[0], captions[1]


def make_example(cfg: world.WorldConfig, k: int
                 ) -> tuple[dict[str, Any], world.Scene, world.Scene]:
  """Example ``k`` (its id): (record, image_0 scene, image_1 scene)."""
  code = common.CODES['winoground']
  kind = KINDS[k % len(KINDS)]
  predicate = common.cycle(cfg.seed, common.CODES[f'winoground/{kind}'],
                           k // len(KINDS), PREDICATES[kind])
  scene0, scene1, c0, c1 = common.retry(
      lambda rng: _pair(rng, cfg, kind, predicate), cfg.seed, code, k)
  tag, collapsed = TAGS[kind]
  record = {'id': k, 'caption_0': _text(c0), 'caption_1': _text(c1),
            'image_0': f'ex_{k}_img_0', 'image_1': f'ex_{k}_img_1',
            'tag': tag, 'secondary_tag': '', 'num_main_preds': 1,
            'collapsed_tag': collapsed}
  return record, scene0, scene1


def build(out_dir: str, cfg: world.WorldConfig, num: int) -> dict[str, Any]:
  """Writes ``data/examples.jsonl`` and ``data/images/*.png``."""
  root = os.path.join(out_dir, 'winoground', 'data')
  images = os.path.join(root, 'images')
  common.makedirs(images)
  rows = []
  for k in range(num):
    record, scene0, scene1 = make_example(cfg, k)
    for stem, scene in ((record['image_0'], scene0),
                        (record['image_1'], scene1)):
      common.save_image(scene, cfg, os.path.join(images, stem + '.png'))
    rows.append(record)
  n = common.write_jsonl(os.path.join(root, 'examples.jsonl'), rows)
  kinds = {kind: sum(1 for r in rows if KINDS[r['id'] % 4] == kind)
           for kind in KINDS}
  return {'files': {'data/examples.jsonl': n}, 'images': 2 * n,
          'kinds': kinds,
          'note': ', '.join(f'{k} {v}' for k, v in kinds.items())}
