"""Retrieval sets: Karpathy-style captions and Stanford-style paragraphs.

* ``retrieval/test.json`` and ``retrieval/val.json``: ALBEF's layout, a JSON
  list of ``{"image": "images/<name>.png", "caption": [5 strings]}`` (paths
  relative to ``retrieval/``). Images ``i`` of the world's 'test' / 'val'
  splits, with their records' captions (``make_record``): the same scenes and
  texts the world serves for those splits.
* ``paragraphs/paragraphs_v1.json``: ``[{"image_id", "paragraph", "url"}]``,
  ``paragraphs/test_split.json``: the list of image ids. ``load_paragraphs``
  names each image ``<image_id>.jpg`` (Visual Genome's naming), so the images
  are real JPEGs (quality 95, no chroma subsampling) at
  ``paragraphs/images/<image_id>.jpg``; ``url`` is that relative path. The
  scenes are the world's 'test' split from index ``PARAGRAPH_OFFSET`` on
  (other scenes than the caption set's), with the world's dense paragraph;
  ``image_id`` is the world's id (``2 * 10**9 + index``).
"""

from __future__ import annotations

import os
from typing import Any

from vlg.synthetic import language
from vlg.synthetic import layout
from vlg.synthetic import world
from vlg.synthetic.benchmarks import common

PARAGRAPH_OFFSET = 1_000_000


def caption_entry(cfg: world.WorldConfig, split: str, k: int
                  ) -> tuple[dict[str, Any], world.Scene]:
  """Entry ``k`` of the caption set of ``split``: (entry, scene)."""
  scene = layout.generate_scene(split, k, cfg)
  # The captions of make_record(split, k, cfg): its text stream is 1.
  captions = language.captions(scene, world.scene_rng(split, k, cfg, 1), cfg)
  return {'image': f'images/{split}_{k:06d}.png',
          'caption': list(captions)}, scene


def paragraph_entry(cfg: world.WorldConfig, k: int
                    ) -> tuple[dict[str, Any], world.Scene]:
  """Paragraph ``k`` of the test split: (entry, scene)."""
  index = PARAGRAPH_OFFSET + k
  scene = layout.generate_scene('test', index, cfg)
  image_id = world.image_id('test', index)
  return {'image_id': image_id, 'paragraph': language.paragraph(scene),
          'url': f'images/{image_id}.jpg'}, scene


def build_captions(out_dir: str, cfg: world.WorldConfig,
                   num: int) -> dict[str, Any]:
  """Writes ``retrieval/{test,val}.json`` and their images."""
  root = os.path.join(out_dir, 'retrieval')
  common.makedirs(os.path.join(root, 'images'))
  files = {}
  for split in ('test', 'val'):
    entries = []
    for k in range(num):
      entry, scene = caption_entry(cfg, split, k)
      common.save_image(scene, cfg, os.path.join(root, entry['image']))
      entries.append(entry)
    common.write_json(os.path.join(root, f'{split}.json'), entries)
    files[f'{split}.json'] = len(entries)
  return {'files': files, 'images': sum(files.values()),
          'captions_per_image': cfg.num_captions}


def build_paragraphs(out_dir: str, cfg: world.WorldConfig,
                     num: int) -> dict[str, Any]:
  """Writes ``paragraphs/paragraphs_v1.json``, ``test_split.json`` and the
  JPEG images."""
  root = os.path.join(out_dir, 'paragraphs')
  common.makedirs(os.path.join(root, 'images'))
  entries = []
  for k in range(num):
    entry, scene = paragraph_entry(cfg, k)
    common.save_image(scene, cfg, os.path.join(root, entry['url']))
    entries.append(entry)
  common.write_json(os.path.join(root, 'paragraphs_v1.json'), entries)
  common.write_json(os.path.join(root, 'test_split.json'),
                    [e['image_id'] for e in entries])
  return {'files': {'paragraphs_v1.json': len(entries),
                    'test_split.json': len(entries)},
          'images': len(entries)}
