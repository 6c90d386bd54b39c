"""COCO-style JSON: ``coco_captions``, ``coco_instances``, ``objects365``.

``captions_*.json``: ``images`` [{id, file_name, height, width}] and
``annotations`` [{id, image_id, caption}] → one record per image with all
its captions. ``instances_*.json`` (and Objects365, same layout) add
``categories`` [{id, name}]; ``annotations`` [{image_id, category_id, bbox
[x, y, w, h] in pixels, iscrowd}] → one record per image with one object per
box (``label`` = the category name, plus ``category_id`` and ``iscrowd``).
Images without annotations are skipped and counted (``no_annotations``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from vlg.prepare import base


def _load(path: str, keys: tuple[str, ...]) -> dict[str, Any]:
  data = base.require(base.load_json(path), dict, path, 'the top level')
  for key in keys:
    if key not in data:
      raise base.AnnotationError(f'{path}: missing top-level key "{key}" '
                                 f'(a COCO-style file has {list(keys)})')
    base.require(data[key], list, path, f'"{key}"')
  return data


class _CocoStyle:
  """Shared walk over ``images`` grouping ``annotations`` by image."""

  has_relations = False
  keys: tuple[str, ...] = ('images', 'annotations')
  name = ''

  def __init__(self, srcs: list[str]):
    if not srcs:
      raise ValueError(f'{self.name} needs at least one --src JSON file')
    self.srcs = srcs

  def _annotation(self, ann: dict[str, Any], example: base.Example,
                  where: str, context: dict[str, Any]) -> None:
    raise NotImplementedError

  def _context(self, data: dict[str, Any], path: str) -> dict[str, Any]:
    del data, path
    return {}

  def items(self) -> Iterator[base.Item]:
    for path in self.srcs:
      data = _load(path, self.keys)
      context = self._context(data, path)
      by_image: dict[Any, list[tuple[int, dict[str, Any]]]] = {}
      orphans = []
      for i, ann in enumerate(data['annotations']):
        if not isinstance(ann, dict) or 'image_id' not in ann:
          orphans.append(base.Problem(f'{path} annotation {i}',
                                      'malformed_annotation',
                                      'not an object with "image_id"'))
          continue
        by_image.setdefault(ann['image_id'], []).append((i, ann))
      known = set()
      for i, image in enumerate(data['images']):
        where = f'{path} images[{i}]'
        if (not isinstance(image, dict) or 'id' not in image or
            not isinstance(image.get('file_name'), str)):
          yield base.Problem(where, 'malformed_entry',
                             'needs "id" and "file_name"')
          continue
        where = f'{path} image id={image["id"]}'
        known.add(image['id'])
        anns = by_image.get(image['id'], [])
        if not anns:
          yield base.Problem(where, 'no_annotations',
                             'no annotation of this image', benign=True)
          continue
        example = base.Example(where=where,
                               image_id=base.image_id_of(image['id']),
                               image_path=image['file_name'],
                               size=base.annotated_size(image))
        for j, ann in anns:
          self._annotation(ann, example, f'{path} annotation {j}', context)
        yield example
      for image_id, anns in by_image.items():
        if image_id not in known:
          orphans.append(base.Problem(
              f'{path} annotation {anns[0][0]}', 'unknown_image',
              f'{len(anns)} annotation(s) of image_id={image_id!r}, which '
              'is not in "images"'))
      yield from orphans


class CocoCaptions(_CocoStyle):
  """COCO caption files (one or more, e.g. train and val)."""

  name = 'coco_captions'

  def _annotation(self, ann, example, where, context):
    del context
    caption = ann.get('caption')
    if not isinstance(caption, str):
      example.problems.append(base.Problem(where, 'malformed_annotation',
                                           '"caption" must be a string'))
      return
    example.captions += base.clean_texts([caption], where, example.problems)


class CocoInstances(_CocoStyle):
  """COCO instance files: one object per box, labelled by category name."""

  name = 'coco_instances'
  keys = ('images', 'annotations', 'categories')

  def _context(self, data, path):
    names = {}
    for i, cat in enumerate(data['categories']):
      if not isinstance(cat, dict) or 'id' not in cat or not isinstance(
          cat.get('name'), str):
        raise base.AnnotationError(f'{path}: categories[{i}] needs "id" and '
                                   f'"name", got {cat!r}')
      names[cat['id']] = cat['name']
    return {'names': names}

  def _annotation(self, ann, example, where, context):
    label = context['names'].get(ann.get('category_id'))
    if label is None:
      example.problems.append(base.Problem(
          where, 'malformed_annotation',
          f'unknown category_id {ann.get("category_id")!r}'))
      return
    box = base.xywh_box(ann.get('bbox'))
    if box is None:
      example.problems.append(base.Problem(
          where, 'malformed_annotation',
          f'"bbox" must be [x, y, w, h] numbers, got {ann.get("bbox")!r}'))
      return
    example.objects.append({'label': label,
                            'category_id': ann['category_id'],
                            'iscrowd': bool(ann.get('iscrowd', 0)),
                            'xyxy': box, 'where': where})


class Objects365(CocoInstances):
  """Objects365 (COCO-instances layout)."""

  name = 'objects365'
