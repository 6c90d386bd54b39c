"""Synthetic benchmark sets in each real benchmark's own file layout.

``write_all(out_dir, resolution, seed, num, sets)`` writes, from vlg's
synthetic world (``vlg.synthetic``), look-alikes of the evaluation
benchmarks that ``vlg.benchmarks`` reads unchanged:

* ``valse`` (module ``valse``): ``valse/<instrument>.json`` and
  ``valse/images/``; read by ``load_valse``.
* ``vsr`` (``vsr``): ``vsr/{random,zeroshot}/{dev,test}.jsonl``,
  ``vsr/rel_meta_category_dict.txt``, ``vsr/images/``; ``load_vsr``,
  ``load_vsr_categories``.
* ``svo_probes`` (``svo_probes``): ``svo_probes/svo_probes.jsonl``,
  ``svo_probes/images/``; ``load_svo_probes``.
* ``winoground`` (``winoground``): ``winoground/data/examples.jsonl``,
  ``winoground/data/images/``; ``load_winoground``.
* ``retrieval`` (``retrieval``): ``retrieval/{test,val}.json``,
  ``retrieval/images/``; ``load_retrieval``.
* ``paragraphs`` (``retrieval``): ``paragraphs/paragraphs_v1.json``,
  ``paragraphs/test_split.json``, ``paragraphs/images/<image_id>.jpg``;
  ``load_paragraphs``.
* ``refcocog`` (``refcocog``): ``refcocog/refs(umd).p``,
  ``refcocog/instances.json``, ``refcocog/images/``; ``load_refcocog``.

plus ``README.md`` (sets, chance levels, settings) and ``manifest.json``
(counts per file). Every caption, foil and label is checked against the
scene (``relation_truth``, object counts) before it is written; candidates
that fail are replaced deterministically (``common.retry``), so the output
depends only on the arguments. Scenes come from the world's 'test'/'val'
splits or from benchmark streams disjoint from training (``common``).
Sets built from specifications (VALSE, VSR random, SVO-Probes, Winoground)
avoid the held-out compositions; VSR zero-shot always names one; sets taken
from the world's splits (retrieval, paragraphs, RefCOCOg) show what those
splits show. No jax here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from vlg.synthetic import world
from vlg.synthetic.benchmarks import common
from vlg.synthetic.benchmarks import readme
from vlg.synthetic.benchmarks import refcocog
from vlg.synthetic.benchmarks import retrieval
from vlg.synthetic.benchmarks import svo_probes
from vlg.synthetic.benchmarks import valse
from vlg.synthetic.benchmarks import vsr
from vlg.synthetic.benchmarks import winoground

Builder = Callable[[str, world.WorldConfig, int], dict[str, Any]]

BUILDERS: dict[str, Builder] = {
    'valse': valse.build,
    'vsr': vsr.build,
    'svo_probes': svo_probes.build,
    'winoground': winoground.build,
    'retrieval': retrieval.build_captions,
    'paragraphs': retrieval.build_paragraphs,
    'refcocog': refcocog.build,
}
SETS: tuple[str, ...] = tuple(BUILDERS)
# The sets' generation version: part of the cache folder's name
# (``vlg.evaluators.common.synthetic_root``), raised whenever the same
# settings would write different files, so a cache of older sets is never
# read as current ones. 2: the world's captions name 3–4 objects by colour
# or in full (retrieval captions). 3: a fifth of them are statements of
# "there" clauses and half the relation captions are sentences.
VERSION = 3


def parse_sets(sets: str | Sequence[str] | None) -> tuple[str, ...]:
  """Set names from a comma list, a sequence, 'all' or None (all), in the
  canonical order.

  Raises:
    ValueError: an unknown set name.
  """
  if sets is None:
    return SETS
  names = sets.split(',') if isinstance(sets, str) else list(sets)
  names = [n.strip() for n in names if n.strip()]
  if not names or names == ['all']:
    return SETS
  unknown = sorted(set(names) - set(SETS))
  if unknown:
    raise ValueError(f'unknown set(s) {unknown}; known: {list(SETS)}')
  return tuple(s for s in SETS if s in names)


def write_all(out_dir: str, resolution: int = 64, seed: int = 0,
              num: int = 200, sets: str | Sequence[str] | None = None,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Writes the chosen synthetic benchmark sets under ``out_dir``.

  Args:
    out_dir: the output folder (created if needed; files are overwritten).
    resolution: image side in pixels (>= 48).
    seed: world and benchmark seed.
    num: examples per file (VALSE instrument, VSR split, SVO, Winoground,
      retrieval split, paragraphs, RefCOCOg expressions per split).
    sets: which sets (see :data:`SETS`); None or 'all' for every one.
    log: called with one line per finished set (e.g. ``print``).

  Returns:
    The manifest (also written to ``out_dir/manifest.json``).
  """
  if num < 1:
    raise ValueError(f'num={num}; need at least 1 example per set')
  names = parse_sets(sets)
  cfg = world.WorldConfig(resolution=resolution, seed=seed)
  os.makedirs(out_dir, exist_ok=True)
  manifest = {
      'generator': 'python -m vlg.tools.synth',
      'version': VERSION,
      'settings': {'resolution': resolution, 'seed': seed, 'num': num,
                   'sets': list(names),
                   'heldout': [list(h) for h in cfg.heldout]},
      'sets': {}, 'chance': readme.CHANCE,
  }
  for name in names:
    manifest['sets'][name] = BUILDERS[name](out_dir, cfg, num)
    if log is not None:
      files = ', '.join(f'{f} {n}' for f, n in
                        manifest['sets'][name]['files'].items())
      note = manifest['sets'][name].get('note')
      log(f'{name}: {files}; {manifest["sets"][name]["images"]} images'
          + (f' ({note})' if note else ''))
  common.write_json(os.path.join(out_dir, 'manifest.json'), manifest)
  with open(os.path.join(out_dir, 'README.md'), 'w', encoding='utf-8') as f:
    f.write(readme.render(manifest))
  return manifest
