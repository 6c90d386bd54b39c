"""VSR-style splits: ``vsr/{random,zeroshot}/{dev,test}.jsonl`` + ``images/``.

Lines have the real files' fields and types: ``image`` (a PNG under
``vsr/images/``), ``image_link`` (its relative path; the reader rejects an
empty string), ``caption`` ('The red circle is left of the blue square.'),
``label`` (1/0), ``relation`` (a real VSR relation name), ``annotator_id``
(0: the generator) and the validator votes (lists in the random split,
strings such as ``"[0]"`` in the zero-shot split, as in the real files);
zero-shot lines also carry ``subj`` / ``obj`` (the compositions, e.g.
'red star'). ``rel_meta_category_dict.txt`` is the real file, verbatim.

World predicate -> VSR relation (:data:`VSR_RELATIONS`): left of, right of,
above, below, near, far from, inside, contains and touching keep their
names; 'is connected to' -> 'connected to' (a drawn line); 'covers' ->
'in front of' (the covering shape hides part of the other). Dropped, having
no VSR relation: 'bigger than', 'smaller than', 'same colour as'
(comparatives, not spatial) and 'points at' (VSR's 'toward'/'facing' are
about an object's heading; an arrow is neither).

Each example is its own scene. Relations cycle in random order, each with a
true and a false statement in turn, so labels are balanced overall and per
relation and no text prior helps. A false statement is *clearly* false: the
scene is built with the converse ('right of' for 'left of', 'far from' for
'near'), a near-miss ('near' for 'touching'/'inside'), the reverse covering,
or no drawn path at all between the two (for 'connected to', sometimes with a
line from one of them to a third shape); then ``relation_truth`` must give
exactly the label. The random split avoids the held-out compositions
entirely; in the zero-shot split the subject or the object is always one of
them (``WorldConfig.heldout``), which training never shows.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from vlg import synthetic as sy
from vlg.synthetic import world
from vlg.synthetic.benchmarks import common

# VSR relation -> the world predicate it is made from.
VSR_RELATIONS: dict[str, str] = {
    'left of': 'left of', 'right of': 'right of', 'above': 'above',
    'below': 'below', 'near': 'near', 'far from': 'far from',
    'inside': 'inside', 'contains': 'contains', 'touching': 'touching',
    'connected to': 'is connected to', 'in front of': 'covers',
}
DROPPED = ('bigger than', 'smaller than', 'same colour as', 'points at')
# How a false scene is laid out: the world relation that makes it false.
FALSE_LAYOUT: dict[str, tuple[str, ...]] = {
    'left of': ('right of',), 'right of': ('left of',), 'above': ('below',),
    'below': ('above',), 'near': ('far from',), 'far from': ('near',),
    'inside': ('near', 'left of', 'right of', 'above', 'below'),
    'contains': ('near', 'left of', 'right of', 'above', 'below'),
    'touching': ('near',), 'is connected to': (), 'covers': ('covered',),
}
SPLITS = ('random/dev', 'random/test', 'zeroshot/dev', 'zeroshot/test')
CATEGORY_FILE = 'rel_meta_category_dict.txt'
# The real rel_meta_category_dict.txt (cambridgeltl/visual-spatial-reasoning,
# Apache-2.0), verbatim, trailing spaces included.
CATEGORY_TEXT = (
    'Adjacency: adjacent to, alongside, at the side of, at the right side of, '
    'at the left side of, attached to, at the back of, ahead of, against, at '
    'the edge of\n'
    'Directional: off, past, toward, down, deep down, up, away from, along, '
    'around, from, into, to, across, across from, through, down from \n'
    'Orientation: facing, facing away from, parallel to, perpendicular to\n'
    'Projective: on top of, beneath, beside, behind, left of, right of, '
    'under, in front of, below, above, over, in the middle of\n'
    'Proximity: by, close to, near, far from, far away from \n'
    'Topological: connected to, detached from, has as a part, part of, '
    'contains, within, at, on, in, with, surrounding, among, consists of, '
    'out of, between, inside, outside, touching\n'
    'Unallocated: beyond, next to, opposite to, after, among, enclosed by \n')


def _roles(rng: np.random.Generator, cfg: world.WorldConfig, predicate: str,
           zeroshot: bool) -> tuple[world.ObjectSpec, world.ObjectSpec]:
  """(subject, object) specs; in the zero-shot split one is held out."""
  both_ways = predicate == 'covers'
  if not zeroshot:
    return common.pair_specs(rng, cfg, predicate, both_ways=both_ways)
  role = int(rng.integers(2))
  fixed = [None, None]
  fixed[role] = common.pick(rng, cfg.heldout)
  return common.pair_specs(rng, cfg, predicate, heldout_ok=True,
                           subject=fixed[0], obj=fixed[1],
                           both_ways=both_ways)


def _scene(rng: np.random.Generator, cfg: world.WorldConfig, predicate: str,
           label: int, zeroshot: bool) -> world.Scene:
  """Objects 0 and 1 for which '0 <predicate> 1' has truth ``label``."""
  subject, obj = _roles(rng, cfg, predicate, zeroshot)
  others = common.fillers(rng, cfg, int(rng.integers(0, 4)),
                          avoid=[common.composition(subject),
                                 common.composition(obj)],
                          heldout_ok=zeroshot)
  relations = [(0, predicate, 1)]
  if not label:
    layout = FALSE_LAYOUT[predicate]
    relations = []
    if layout == ('covered',):
      relations = [(1, 'covers', 0)]
    elif layout:
      relations = [(0, common.pick(rng, layout), 1)]
    elif others and rng.random() < 0.5:  # A line, but not between 0 and 1.
      relations = [(2, 'is connected to', int(rng.integers(2)))]
  scene = common.layout([subject, obj] + others, rng, cfg, relations)
  truth = sy.relation_truth(scene, 0, predicate, 1)
  common.require(truth is bool(label), f'truth {truth} != label {label}')
  if predicate == 'is connected to' and not label:
    common.require(not any({a.subject, a.object} == {0, 1}
                           for a in scene.actions), 'a path joins them')
  return scene


def make_example(cfg: world.WorldConfig, split: str, k: int
                 ) -> tuple[dict[str, Any], world.Scene]:
  """Line ``k`` of ``split`` (e.g. 'zeroshot/dev'): (record, scene)."""
  zeroshot = split.startswith('zeroshot')
  code = common.CODES[f'vsr/{split}']
  names = tuple(VSR_RELATIONS)
  relation = common.cycle(cfg.seed, code, k // 2, names)
  predicate = VSR_RELATIONS[relation]
  label = 1 - k % 2

  def make(rng: np.random.Generator):
    scene = _scene(rng, cfg, predicate, label, zeroshot)
    filters = [common.unique_filter(scene, i) for i in (0, 1)]
    common.require(None not in filters, 'no unique names')
    return scene, filters

  scene, (subj, obj) = common.retry(make, cfg.seed, code, k)
  verb = 'contains' if relation == 'contains' else f'is {relation}'
  caption = common.sentence(
      f'the {common.phrase(subj)} {verb} the {common.phrase(obj)}')
  image = f"{split.replace('/', '_')}_{k:06d}.png"
  votes = ([0], []) if label else ([], [0])
  record = {'image': image, 'image_link': f'images/{image}',
            'caption': caption, 'label': label, 'relation': relation}
  if zeroshot:
    record.update(subj=f'{subj["colour"]} {subj["category"]}',
                  obj=f'{obj["colour"]} {obj["category"]}')
    votes = tuple(str(v) for v in votes)
  record.update(annotator_id=0, vote_true_validator_id=votes[0],
                vote_false_validator_id=votes[1])
  return record, scene


def build(out_dir: str, cfg: world.WorldConfig, num: int) -> dict[str, Any]:
  """Writes the four split files, the category file and the images."""
  root = os.path.join(out_dir, 'vsr')
  images = os.path.join(root, 'images')
  common.makedirs(images, os.path.join(root, 'random'),
                  os.path.join(root, 'zeroshot'))
  with open(os.path.join(root, CATEGORY_FILE), 'w', encoding='utf-8') as f:
    f.write(CATEGORY_TEXT)
  files, labels = {}, {}
  for split in SPLITS:
    rows = []
    for k in range(num):
      record, scene = make_example(cfg, split, k)
      common.save_image(scene, cfg, os.path.join(images, record['image']))
      rows.append(record)
    files[f'{split}.jsonl'] = common.write_jsonl(
        os.path.join(root, f'{split}.jsonl'), rows)
    labels[f'{split}.jsonl'] = sum(r['label'] for r in rows)
  return {'files': files, 'true_labels': labels,
          'images': sum(files.values()),
          'relations': dict(VSR_RELATIONS),
          'note': ', '.join(f'{f} {n} true' for f, n in labels.items())}
