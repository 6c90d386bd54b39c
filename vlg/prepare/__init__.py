"""Data preparation: readers of pretraining annotation formats, by ``--format``
name, and their conversion into vlg's records.

Each reader takes the ``--src`` paths and yields one item per image
(:mod:`vlg.prepare.base`); readers of scene graphs also list their
relation strings (``predicates()``) for the relation vocabulary.
:mod:`vlg.prepare.finalise` turns an item into a record. Used by
``python -m vlg.tools.prepare`` (its docstring documents every format),
which writes the records into the shards that ``vlg.data.prepared_source``
reads. This package builds on the record contract of ``vlg.data``
(``ops``, ``records``, ``relations``); training never imports it.
"""

from __future__ import annotations

from vlg.prepare import albef
from vlg.prepare import coco
from vlg.prepare import gqa
from vlg.prepare import openimages
from vlg.prepare import visual_genome
from vlg.prepare import xvlm

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
