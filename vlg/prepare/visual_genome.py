"""Visual Genome JSON: ``vg_regions``, ``vg_objects``, ``vg_relationships``.

``--src=ANNOTATIONS[,image_data.json]``: the annotation file first, then
optionally ``image_data.json`` ([{image_id, width, height, ...}]), which
gives each image's size without opening it. Images are ``{image_id}.jpg``
in the ``--images`` folders (pass both ``VG_100K`` and ``VG_100K_2``).

- ``region_descriptions.json`` [{id, regions: [{phrase, x, y, width,
  height}]}] → ``regions`` [{text, box}];
- ``objects.json`` (or ``attributes.json``, the same objects with
  ``attributes``) [{image_id, objects: [{object_id, x, y, w, h, names}]}]
  → ``objects`` [{label = names[0], box, attributes}];
- ``relationships.json`` [{image_id, relationships: [{predicate, subject:
  {object_id, x, y, w, h, name|names}, object: {...}}]}] → ``objects`` (the
  distinct subjects and objects) and ``relations``; ``has_graph`` is set.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from vlg.data import relations as relations_lib
from vlg.prepare import base


def _label(entry: dict[str, Any]) -> str | None:
  names = entry.get('names')
  if isinstance(names, list) and names and isinstance(names[0], str):
    label = names[0]
  else:
    label = entry.get('name')
  if not isinstance(label, str) or base.empty_text_problem(label, ''):
    return None  # Missing, or empty after training's normalisation.
  return label.strip()


def _object(entry: Any, where: str) -> dict[str, Any] | base.Problem:
  if not isinstance(entry, dict):
    return base.Problem(where, 'malformed_annotation', 'not a JSON object')
  label, box = _label(entry), base.box_from_fields(entry)
  if label is None or box is None:
    return base.Problem(where, 'malformed_annotation',
                        'needs "names" (or "name", not empty after '
                        'normalisation) and numeric x, y, w, h')
  obj = {'label': label, 'xyxy': box, 'where': where}
  attributes = entry.get('attributes')
  if isinstance(attributes, list):
    obj['attributes'] = [a.strip() for a in attributes
                         if isinstance(a, str) and a.strip()]
  if 'object_id' in entry:
    obj['object_id'] = entry['object_id']
  return obj


class _VisualGenome:
  """Shared loading: the annotation list, the optional image sizes."""

  has_relations = False
  name = ''
  list_key = ''

  def __init__(self, srcs: list[str]):
    if not 1 <= len(srcs) <= 2:
      raise ValueError(f'{self.name} takes --src=ANNOTATIONS.json'
                       f'[,image_data.json], got {len(srcs)} paths')
    self.srcs = srcs
    self._data = None

  def _load(self) -> list[Any]:
    if self._data is None:
      path = self.srcs[0]
      self._data = base.require(base.load_json(path), list, path,
                                'the top level')
    return self._data

  def _sizes(self) -> dict[Any, tuple[int, int]]:
    if len(self.srcs) < 2:
      return {}
    path = self.srcs[1]
    sizes = {}
    for i, entry in base.json_list_entries(path, 'the top level'):
      size = base.annotated_size(entry) if isinstance(entry, dict) else None
      image_id = entry.get('image_id', entry.get('id')) if isinstance(
          entry, dict) else None
      if size is None or image_id is None:
        raise base.AnnotationError(
            f'{path} entry {i}: an image_data.json entry needs "image_id", '
            f'"width" and "height" (is the second --src image_data.json?)')
      sizes[base.image_id_of(image_id)] = size
    return sizes

  def _fill(self, entry: dict[str, Any], example: base.Example,
            where: str) -> None:
    raise NotImplementedError

  def items(self) -> Iterator[base.Item]:
    path = self.srcs[0]
    sizes = self._sizes()
    for i, entry in enumerate(self._load()):
      where = f'{path} entry {i}'
      if not isinstance(entry, dict) or not isinstance(
          entry.get(self.list_key), list):
        yield base.Problem(where, 'malformed_entry',
                           f'needs a "{self.list_key}" list')
        continue
      raw_id = entry.get('image_id', entry.get('id'))
      if raw_id is None and entry[self.list_key]:
        first = entry[self.list_key][0]
        raw_id = first.get('image_id') if isinstance(first, dict) else None
      if raw_id is None:
        yield base.Problem(where, 'malformed_entry', 'no "image_id" or "id"')
        continue
      image_id = base.image_id_of(raw_id)
      where = f'{path} image_id={raw_id}'
      if not entry[self.list_key]:
        yield base.Problem(where, 'no_annotations',
                           f'empty "{self.list_key}"', benign=True)
        continue
      example = base.Example(where=where, image_id=image_id,
                             image_path=f'{image_id}.jpg',
                             size=sizes.get(image_id))
      self._fill(entry, example, where)
      yield example


class VgRegions(_VisualGenome):
  """``region_descriptions.json``: region phrases with boxes."""

  name, list_key = 'vg_regions', 'regions'

  def _fill(self, entry, example, where):
    for j, region in enumerate(entry['regions']):
      at = f'{where} regions[{j}]'
      box = base.box_from_fields(region) if isinstance(region, dict) else None
      phrase = region.get('phrase') if isinstance(region, dict) else None
      if box is None or not isinstance(phrase, str):
        example.problems.append(base.Problem(
            at, 'malformed_annotation', 'needs "phrase" and numeric x, y, '
            'width, height'))
        continue
      empty = base.empty_text_problem(phrase, at)
      if empty is not None:
        example.problems.append(empty)
        continue
      example.regions.append({'text': phrase.strip(), 'xyxy': box,
                              'where': at})


class VgObjects(_VisualGenome):
  """``objects.json`` / ``attributes.json``: labelled object boxes."""

  name, list_key = 'vg_objects', 'objects'

  def _fill(self, entry, example, where):
    for j, raw in enumerate(entry['objects']):
      obj = _object(raw, f'{where} objects[{j}]')
      if isinstance(obj, base.Problem):
        example.problems.append(obj)
      else:
        example.objects.append(obj)


class VgRelationships(_VisualGenome):
  """``relationships.json``: scene-graph triplets with subject/object boxes."""

  name, list_key = 'vg_relationships', 'relationships'
  has_relations = True

  def predicates(self) -> Iterator[str]:
    """Every well-formed relationship's predicate (for the vocabulary)."""
    for entry in self._load():
      if isinstance(entry, dict) and isinstance(entry.get(self.list_key),
                                                list):
        for rel in entry[self.list_key]:
          predicate = rel.get('predicate') if isinstance(rel, dict) else None
          if isinstance(predicate, str) and predicate.strip():
            yield predicate

  def _fill(self, entry, example, where):
    index: dict[Any, int] = {}

    def add(raw, at):
      obj = _object(raw, at)
      if isinstance(obj, base.Problem):
        return obj
      key = obj.get('object_id', (obj['label'], obj['xyxy']))
      if key not in index:
        index[key] = len(example.objects)
        example.objects.append(obj)
      return index[key]

    example.has_graph = True
    for j, rel in enumerate(entry['relationships']):
      at = f'{where} relationships[{j}]'
      if not isinstance(rel, dict):
        example.problems.append(base.Problem(at, 'malformed_annotation',
                                             'not a JSON object'))
        continue
      predicate = rel.get('predicate')
      if not isinstance(predicate, str) or not predicate.strip():
        example.problems.append(base.Problem(
            at, 'malformed_annotation', f'bad "predicate" {predicate!r}'))
        continue
      ends = [add(rel.get(role), f'{at}.{role}')
              for role in ('subject', 'object')]
      bad = [e for e in ends if isinstance(e, base.Problem)]
      if bad:
        example.problems.extend(bad)
        continue
      example.relations.append({
          'subject': ends[0], 'object': ends[1],
          'predicate': relations_lib.normalise_relation(predicate),
          'where': at})
