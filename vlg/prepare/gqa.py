"""GQA scene graphs (``gqa_scene_graphs``): ``{train,val}_sceneGraphs.json``.

``{image_id: {"width", "height", "objects": {obj_id: {"name", "x", "y",
"w", "h", "attributes": [str], "relations": [{"name", "object"}]}}}}`` →
one record per image: ``objects`` [{label, box, attributes, object_id}] and
``relations`` (subject = the object listing the relation, object = its
target; GQA has 310 relation strings), ``has_graph`` set. Images are
``{image_id}.jpg`` in ``--images``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from vlg.data import relations as relations_lib
from vlg.prepare import base


class GqaSceneGraphs:
  """Reads one or more GQA scene-graph files, in order."""

  has_relations = True

  def __init__(self, srcs: list[str]):
    if not srcs:
      raise ValueError('gqa_scene_graphs needs at least one --src JSON file')
    self.srcs = srcs
    self._loaded: dict[str, dict[str, Any]] = {}

  def _load(self, path: str) -> dict[str, Any]:
    if path not in self._loaded:
      self._loaded[path] = base.require(base.load_json(path), dict, path,
                                        'the top level')
    return self._loaded[path]

  def predicates(self) -> Iterator[str]:
    """Every relation name of every object (for the vocabulary)."""
    for path in self.srcs:
      for graph in self._load(path).values():
        objects = graph.get('objects') if isinstance(graph, dict) else None
        if not isinstance(objects, dict):
          continue
        for obj in objects.values():
          rels = obj.get('relations') if isinstance(obj, dict) else None
          for rel in rels if isinstance(rels, list) else ():
            name = rel.get('name') if isinstance(rel, dict) else None
            if isinstance(name, str) and name.strip():
              yield name

  def items(self) -> Iterator[base.Item]:
    for path in self.srcs:
      for raw_id, graph in self._load(path).items():
        where = f'{path} image {raw_id}'
        if not isinstance(graph, dict) or not isinstance(
            graph.get('objects'), dict):
          yield base.Problem(where, 'malformed_entry',
                             'needs an "objects" mapping')
          continue
        if not graph['objects']:
          yield base.Problem(where, 'no_annotations', 'no objects',
                             benign=True)
          continue
        yield self._example(raw_id, graph, where)

  def _example(self, raw_id: str, graph: dict[str, Any],
               where: str) -> base.Example:
    example = base.Example(where=where, image_id=base.image_id_of(raw_id),
                           image_path=f'{raw_id}.jpg',
                           size=base.annotated_size(graph), has_graph=True)
    index = {}
    for obj_id, obj in graph['objects'].items():
      at = f'{where} object {obj_id}'
      box = base.box_from_fields(obj) if isinstance(obj, dict) else None
      name = obj.get('name') if isinstance(obj, dict) else None
      if box is None or not isinstance(name, str) or base.empty_text_problem(
          name, at):
        example.problems.append(base.Problem(
            at, 'malformed_annotation', 'needs "name" (not empty after '
            'normalisation) and numeric x, y, w, h'))
        continue
      attributes = obj.get('attributes')
      index[obj_id] = len(example.objects)
      example.objects.append({
          'label': name.strip(), 'object_id': obj_id, 'xyxy': box,
          'where': at,
          'attributes': [a.strip() for a in attributes if isinstance(a, str)
                         and a.strip()] if isinstance(attributes, list) else []
      })
    for obj_id, obj in graph['objects'].items():
      if obj_id not in index:
        continue
      rels = obj.get('relations', [])
      for j, rel in enumerate(rels if isinstance(rels, list) else [None]):
        at = f'{where} object {obj_id} relations[{j}]'
        name = rel.get('name') if isinstance(rel, dict) else None
        target = rel.get('object') if isinstance(rel, dict) else None
        if not isinstance(name, str) or not name.strip():
          example.problems.append(base.Problem(
              at, 'malformed_annotation', f'bad relation "name" {name!r}'))
        elif target not in index:
          example.problems.append(base.Problem(
              at, 'malformed_annotation',
              f'relation target {target!r} is not a usable object'))
        else:
          example.relations.append({
              'subject': index[obj_id], 'object': index[target],
              'predicate': relations_lib.normalise_relation(name),
              'where': at})
    return example
