"""Readers of pretraining annotation formats, by ``--format`` name.

Each reader takes the ``--src`` paths and yields one item per image
(:mod:`vlg.data.formats.base`); readers of scene graphs also list their
relation strings (``predicates()``) for the relation vocabulary.
:mod:`vlg.data.formats.finalise` turns an item into a record. Used by
``python -m vlg.tools.prepare`` (its docstring documents every format).
"""

from __future__ import annotations

from vlg.data.formats import albef
from vlg.data.formats import coco
from vlg.data.formats import gqa
from vlg.data.formats import openimages
from vlg.data.formats import visual_genome
from vlg.data.formats import xvlm

FORMATS = {
    'albef_json': albef.AlbefJson,
    'coco_captions': coco.CocoCaptions,
    'coco_instances': coco.CocoInstances,
    'vg_regions': visual_genome.VgRegions,
    'vg_objects': visual_genome.VgObjects,
    'vg_relationships': visual_genome.VgRelationships,
    'gqa_scene_graphs': gqa.GqaSceneGraphs,
    'xvlm_regions': xvlm.XvlmRegions,
    'objects365': coco.Objects365,
    'openimages': openimages.OpenImages,
}


def reader(name: str, srcs: list[str]):
  """The reader of format ``name`` over ``srcs``."""
  if name not in FORMATS:
    raise ValueError(f'unknown format {name!r}; valid: {sorted(FORMATS)}')
  return FORMATS[name](list(srcs))
