"""VALSE-style instrument files: ``valse/<instrument>.json`` + ``images/``.

Each file is one JSON object keyed by example id, with every field of the
real instrument file of that name and in its order (checked against
``tests/testdata/real_benchmarks/valse``): ``dataset`` is 'synthetic',
``image_file`` names a PNG under ``valse/images/``, ``mturk`` is
``{'foil': 0, 'caption': 3, 'other': 0}`` (every example valid: the truth of
caption and foil is checked, not voted). Fields that hold model scores in
the real files (``nli_scores``, ``grammaticality_scores``) hold constants
saying "contradiction, grammatical" by construction; they are not model
outputs. ``dataset_idx`` has the real file's type (a string or an integer).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from vlg.synthetic import world
from vlg.synthetic.benchmarks import common
from vlg.synthetic.benchmarks import valse_counts
from vlg.synthetic.benchmarks import valse_relations

Maker = Callable[[np.random.Generator, world.WorldConfig, int, int],
                 tuple[world.Scene, dict[str, Any]]]

INSTRUMENTS: dict[str, Maker] = {
    'existence': valse_counts.existence,
    'plurals': valse_counts.plurals,
    'counting-small-quant': valse_counts.counting_small_quant,
    'counting-hard': valse_counts.counting_hard,
    'relations': valse_relations.relations,
    'action-replacement': valse_relations.action_replacement,
    'actant-swap': valse_relations.actant_swap,
}

_COUNTING = ('dataset', 'dataset_idx', 'image_file', 'linguistic_phenomena',
             'caption', 'answer', 'classes', 'split', 'original_split',
             'classes_foil', 'mturk', 'foil')
# The fields of each real instrument file, in its order.
FIELDS: dict[str, tuple[str, ...]] = {
    'existence': (
        'dataset', 'dataset_idx', 'image_file', 'linguistic_phenomena',
        'caption', 'answer', 'classes', 'split', 'original_split',
        'classes_foil', 'declarative_statement', 'declarative_statement_foils',
        'provenance_of_foils', 'mturk', 'foil'),
    'plurals': (
        'dataset', 'original_split', 'dataset_idx', 'image_file',
        'linguistic_phenomena', 'foil_method', 'classes', 'classes_foil',
        'grammaticality_scores', 'nli_scores', 'orig_caption', 'caption',
        'mturk', 'foil'),
    'counting-small-quant': _COUNTING,
    'counting-hard': _COUNTING,
    'relations': (
        'dataset', 'original_split', 'dataset_idx', 'image_file',
        'linguistic_phenomena', 'foil_method', 'caption', 'classes',
        'classes_foil', 'grammaticality_scores', 'nli_scores', 'key',
        'mturk', 'foil'),
    'action-replacement': (
        'dataset', 'original_split', 'dataset_idx', 'linguistic_phenomena',
        'foiling_method', 'image_file', 'caption', 'classes', 'classes_foil',
        'nli_scores', 'mturk', 'foil'),
    'actant-swap': (
        'dataset', 'original_split', 'dataset_idx', 'linguistic_phenomena',
        'image_file', 'caption', 'classes', 'classes_foil', 'mturk', 'foil'),
}
# Example ids in the style of each real file.
KEYS = {'existence': 'existence_synthetic_{}',
        'plurals': 'plurals:synthetic:{}',
        'counting-small-quant': 'counting_synthetic_{}',
        'counting-hard': 'counting_synthetic_{}',
        'relations': 'relations:synthetic:{}',
        'action-replacement': 'actions_test_{}',
        'actant-swap': 'actions_test_{}'}
PHENOMENA = {'existence': 'existence', 'plurals': 'plurals',
             'counting-small-quant': 'counting', 'counting-hard': 'counting',
             'relations': 'relations', 'action-replacement': 'actions',
             'actant-swap': 'actions'}
_INT_IDX = ('plurals', 'relations')  # dataset_idx is an integer there.


def image_name(instrument: str, k: int) -> str:
  """The image file name of example ``k`` of ``instrument``."""
  return f'{instrument}_{k:06d}.png'


def make_example(cfg: world.WorldConfig, instrument: str, k: int
                 ) -> tuple[str, dict[str, Any], world.Scene]:
  """Example ``k`` of ``instrument``: (key, record, scene)."""
  maker = INSTRUMENTS[instrument]
  scene, texts = common.retry(
      lambda rng: maker(rng, cfg, cfg.seed, k), cfg.seed,
      common.CODES[f'valse/{instrument}'], k)
  image = image_name(instrument, k)
  key = KEYS[instrument].format(k)
  values = dict(
      dataset='synthetic', original_split='test', split='test',
      dataset_idx=k if instrument in _INT_IDX else (
          image if instrument.startswith('act') else str(k)),
      image_file=image, linguistic_phenomena=PHENOMENA[instrument],
      foil_method='swap the relation for one that is false of the image',
      foiling_method='change_action', key=key,
      mturk={'foil': 0, 'caption': 3, 'other': 0},
      grammaticality_scores=common.GRAMMATICALITY_BY_CONSTRUCTION,
      nli_scores=common.NLI_BY_CONSTRUCTION,
      declarative_statement=texts['caption'],
      declarative_statement_foils=[texts['foil']])
  values.update(texts)
  if texts['caption'] == texts['foil']:
    raise AssertionError(f'{instrument} {k}: caption equals foil')
  return key, {f: values[f] for f in FIELDS[instrument]}, scene


def build(out_dir: str, cfg: world.WorldConfig, num: int) -> dict[str, Any]:
  """Writes every instrument file and its images under ``out_dir/valse``.

  Returns:
    ``{'files': {file name: examples}, 'images': count}``.
  """
  root = os.path.join(out_dir, 'valse')
  images = os.path.join(root, 'images')
  common.makedirs(images)
  files, num_images = {}, 0
  for instrument in INSTRUMENTS:
    data = {}
    for k in range(num):
      key, record, scene = make_example(cfg, instrument, k)
      common.save_image(scene, cfg, os.path.join(images, record['image_file']))
      data[key] = record
      num_images += 1
    common.write_json(os.path.join(root, f'{instrument}.json'), data)
    files[f'{instrument}.json'] = len(data)
  return {'files': files, 'images': num_images}
