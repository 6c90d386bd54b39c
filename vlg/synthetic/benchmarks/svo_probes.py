"""SVO-Probes-style set: ``svo_probes/svo_probes.jsonl`` + ``images/``.

The JSON-lines layout of Bugliarello et al. 2023: ``caption``,
``pos_image``, ``neg_image`` (PNG names under ``svo_probes/images/``),
``svo_index``, ``pos_triplet`` / ``neg_triplet`` ('subject,verb,object',
verbs as lemmas: 'point at', 'connect to', 'cover', 'touch'), ``subj_neg``,
``verb_neg``, ``obj_neg`` (exactly one true).

The sentence is a drawn action between two objects named by colour and
category, 'the red circle points at the blue square', true of the positive
image. Negative types cycle subject, verb, object; verbs cycle 'points at'
(an arrow), 'is connected to' (a line) and 'covers'. The negative image is a
minimal edit of the positive one where the world allows it: the subject or
object recoloured or changed in shape in place (``edit_object``), the arrow
drawn as a line or the line as an arrow (``with_actions``); a covering pair
becomes a touching pair (a new layout of the same objects). The sentence must
be false of the negative image for every object its noun phrases could name,
and the negative triplet true of it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from vlg import synthetic as sy
from vlg.synthetic import geometry
from vlg.synthetic import language
from vlg.synthetic import world
from vlg.synthetic.benchmarks import common

NEG_TYPES = ('subject', 'verb', 'object')
FLAGS = {'subject': 'subj_neg', 'verb': 'verb_neg', 'object': 'obj_neg'}
LEMMAS = {'points at': 'point at', 'is connected to': 'connect to',
          'covers': 'cover', 'touching': 'touch'}
VERB_SWAP = {'points at': 'is connected to', 'is connected to': 'points at',
             'covers': 'touching'}


def _edit_role(rng: np.random.Generator, cfg: world.WorldConfig,
               scene: world.Scene, i: int, verb: str) -> world.Scene:
  """Object ``i`` with a new colour or shape (one the role allows)."""
  obj = scene.objects[i]
  categories = world.CATEGORIES
  if verb == 'covers':
    categories = (geometry.COVER_SHAPES if i == 0 else geometry.TOUCH_SHAPES)
  taken = {common.composition(o) for o in scene.objects}
  if rng.random() < 0.5:
    options = [c for c in common.colours_for(obj.category, cfg, False)
               if (c, obj.category) not in taken]
    return sy.edit_object(scene, i, rng, colour=common.pick(rng, options))
  options = [k for k in categories if k != obj.category and
             obj.colour in common.colours_for(k, cfg, False) and
             (obj.colour, k) not in taken]
  return sy.edit_object(scene, i, rng, category=common.pick(rng, options))


def _negative(rng: np.random.Generator, cfg: world.WorldConfig,
              scene: world.Scene, specs: list[world.ObjectSpec], verb: str,
              neg_type: str) -> tuple[world.Scene, str]:
  """The negative scene and the predicate that holds of its pair."""
  if neg_type == 'subject':
    return _edit_role(rng, cfg, scene, 0, verb), verb
  if neg_type == 'object':
    return _edit_role(rng, cfg, scene, 1, verb), verb
  other = VERB_SWAP[verb]
  if verb == 'covers':
    return common.layout(specs, rng, cfg, [(0, other, 1)]), other
  return sy.with_actions(scene, [world.Action(other, 0, 1)], rng), other


def _filter(obj: world.SceneObject) -> dict[str, str]:
  return {'colour': obj.colour, 'category': obj.category}


def _triplet(scene: world.Scene, verb: str) -> str:
  s, o = (common.phrase(_filter(scene.objects[k])) for k in (0, 1))
  return f'{s},{LEMMAS[verb]},{o}'


def make_example(cfg: world.WorldConfig, k: int
                 ) -> tuple[dict[str, Any], world.Scene, world.Scene]:
  """Example ``k``: (record, positive scene, negative scene)."""
  code = common.CODES['svo_probes']
  neg_type = NEG_TYPES[k % 3]
  verb = common.cycle(cfg.seed, code, k // 3, common.ACTION_PREDICATES)

  def make(rng: np.random.Generator):
    subject, obj = common.pair_specs(rng, cfg, verb)
    others = common.fillers(rng, cfg, int(rng.integers(0, 3)),
                            avoid=[common.composition(subject),
                                   common.composition(obj)])
    specs = [subject, obj] + others
    pos = common.layout(specs, rng, cfg, [(0, verb, 1)])
    neg, neg_verb = _negative(rng, cfg, pos, specs, verb, neg_type)
    s, o = _filter(pos.objects[0]), _filter(pos.objects[1])
    common.require(common.matching(pos, s) == [0] and
                   common.matching(pos, o) == [1], 'names not unique')
    common.require(common.exists(pos, s, verb, o) is True, 'pos not true')
    common.require(common.exists(neg, s, verb, o) is False, 'neg not false')
    ns, no = _filter(neg.objects[0]), _filter(neg.objects[1])
    common.require(common.matching(neg, ns) == [0] and
                   common.matching(neg, no) == [1] and
                   sy.relation_truth(neg, 0, neg_verb, 1) is True,
                   'negative triplet not true')
    return pos, neg, neg_verb

  pos, neg, neg_verb = common.retry(make, cfg.seed, code, k)
  caption = (f'the {common.phrase(_filter(pos.objects[0]))} '
             f'{language.VERBS[verb]} the '
             f'{common.phrase(_filter(pos.objects[1]))}')
  record = {
      'caption': caption, 'pos_image': f'svo_{k:06d}_pos.png',
      'neg_image': f'svo_{k:06d}_neg.png', 'svo_index': k,
      'pos_triplet': _triplet(pos, verb),
      'neg_triplet': _triplet(neg, neg_verb),
      **{flag: neg_type == t for t, flag in FLAGS.items()}}
  return record, pos, neg


def build(out_dir: str, cfg: world.WorldConfig, num: int) -> dict[str, Any]:
  """Writes ``svo_probes.jsonl`` and the positive and negative images."""
  root = os.path.join(out_dir, 'svo_probes')
  images = os.path.join(root, 'images')
  common.makedirs(images)
  rows = []
  for k in range(num):
    record, pos, neg = make_example(cfg, k)
    common.save_image(pos, cfg, os.path.join(images, record['pos_image']))
    common.save_image(neg, cfg, os.path.join(images, record['neg_image']))
    rows.append(record)
  n = common.write_jsonl(os.path.join(root, 'svo_probes.jsonl'), rows)
  info = {'files': {'svo_probes.jsonl': n}, 'images': 2 * n,
          'neg_types': {t: sum(r[flag] for r in rows)
                        for t, flag in FLAGS.items()}}
  info['note'] = 'negatives: ' + ', '.join(
      f'{t} {n}' for t, n in info['neg_types'].items())
  return info
