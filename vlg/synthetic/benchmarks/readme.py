"""The README.md written beside the synthetic benchmark sets."""

from __future__ import annotations

import json
from typing import Any

from vlg.synthetic.benchmarks import vsr

# Chance level of each metric for a scorer that ignores the image (or gives
# random scores); written into manifest.json and the README.
CHANCE: dict[str, str] = {
    'valse': 'acc_r 50% (per instrument, piece and overall)',
    'vsr': ('accuracy 50% (for an even num, labels are balanced overall '
            'and per relation)'),
    'svo_probes': 'pairwise accuracy 50% (overall and per negative type)',
    'winoground': ('each pairwise comparison 50%; text score 25%, image '
                   'score 25%, group score 1/6 = 16.7% for random scores'),
    'retrieval': 'R@1 = 1/N (N images), R@K about K/N, TR and IR',
    'paragraphs': 'R@1 = 1/N (N images), R@K = K/N, TR and IR',
    'refcocog': ('no fixed chance; picking a random object box scores '
                 '"random_object_baseline" in manifest.json'),
}

_SETS = {
    'valse': (
        'VALSE-style foils, one file per instrument (existence, plurals, '
        'counting-small-quant, counting-hard, relations, action-replacement, '
        'actant-swap), every field of the real file of that name. Captions '
        'are true of the image and foils clearly false (checked on the '
        'scene). `mturk` is `{"foil": 0, "caption": 3, "other": 0}` (all '
        'valid); `nli_scores` / `grammaticality_scores` are constants '
        '(contradiction, grammatical) by construction, not model outputs. '
        'Images: `valse/images/`.'),
    'vsr': (
        'VSR-style true/false statements ("The red circle is left of the '
        'blue square."), one scene per line; relations cycle and each gets '
        'a true and a false statement in turn. The random split never shows '
        'a held-out (colour, shape) composition; in the zero-shot split the '
        'subject or the object is always one (`subj` / `obj` name them). '
        '`rel_meta_category_dict.txt` is the real file. Images: '
        '`vsr/images/`.'),
    'svo_probes': (
        'SVO-Probes JSON lines: a sentence ("the red circle points at the '
        'blue square") with a positive image and a negative one that differs '
        'in the subject, the verb (arrow vs line; covering vs touching) or '
        'the object, cycling. Images: `svo_probes/images/`.'),
    'winoground': (
        'Winoground-style pairs: two captions with the same words in a '
        'different order and two images, caption_i true of image_i only. '
        'Kinds cycle by id: colour swap, size swap, noun swap (positions '
        'swapped), noun swap of a drawn verb (arrow reversed / other shape '
        'on top). Images: `winoground/data/images/<stem>.png`.'),
    'retrieval': (
        "ALBEF's Karpathy layout: `retrieval/test.json` and `val.json`, "
        'lists of `{"image": "images/<name>.png", "caption": [5 strings]}` '
        "with the world's captions of its test / val split images. Image "
        'root: `retrieval/`.'),
    'paragraphs': (
        'Stanford image paragraphs layout: `paragraphs/paragraphs_v1.json` '
        '(`image_id`, `paragraph`, `url`) and `test_split.json`; the reader '
        'names images `<image_id>.jpg`, so they are real JPEGs (quality 95) '
        "under `paragraphs/images/`. Paragraphs are the world's dense "
        'descriptions.'),
    'refcocog': (
        'The refer toolkit layout: `refcocog/refs(umd).p` (pickled refs, '
        'splits val and test) and `instances.json` (COCO images, '
        'annotations with pixel `[x, y, w, h]` boxes, categories). '
        "Expressions are the world's unique referring expressions and "
        'relation phrases. Images: `refcocog/images/`.'),
}

_READERS = {
    'valse': "load_valse('valse')",
    'vsr': "load_vsr('vsr/random/test.jsonl'), load_vsr_categories("
           "'vsr/rel_meta_category_dict.txt')",
    'svo_probes': "load_svo_probes('svo_probes/svo_probes.jsonl')",
    'winoground': "load_winoground('winoground')",
    'retrieval': "load_retrieval('retrieval/test.json')",
    'paragraphs': "load_paragraphs('paragraphs/paragraphs_v1.json', "
                  "'paragraphs/test_split.json')",
    'refcocog': "load_refcocog('refcocog', split='val')",
}


def render(manifest: dict[str, Any]) -> str:
  """The README text for a manifest written by ``write_all``."""
  s = manifest['settings']
  lines = [
      '# vlg synthetic benchmarks', '',
      'Written by `python -m vlg.tools.synth` from vlg\'s synthetic world, '
      "each set in its real benchmark's file layout, so the readers of "
      '`vlg.benchmarks` load them unchanged. Settings: resolution '
      f'{s["resolution"]} px, seed {s["seed"]}, {s["num"]} examples per '
      f'file; held-out compositions {s["heldout"]}. The same settings give '
      'byte-identical files. Scenes come from the world\'s test / val splits '
      'or from benchmark seed streams disjoint from training; every text '
      'was checked true (or clearly false) of its scene before writing. '
      'The sets built from specifications (VALSE, VSR random, SVO-Probes, '
      'Winoground) never show a held-out composition, VSR zero-shot always '
      'does, and the sets taken from the world\'s test / val splits '
      '(retrieval, paragraphs, RefCOCOg) show them as those splits do.', '']
  for name, info in manifest['sets'].items():
    lines += [f'## {name}', '', _SETS[name], '',
              f'Reader: `vlg.benchmarks.{_READERS[name]}`.', '',
              f'Chance: {CHANCE[name]}.', '', 'Counts: ' + ', '.join(
                  f'`{f}` {n}' for f, n in info['files'].items()) +
              f'; {info["images"]} images.', '']
    if name == 'vsr':
      lines += ['| VSR relation | world predicate | VSR category |',
                '| --- | --- | --- |']
      categories = _categories()
      lines += [f'| {r} | {p} | {categories[r]} |'
                for r, p in vsr.VSR_RELATIONS.items()]
      lines += ['', 'Not used (no VSR relation): ' +
                ', '.join(vsr.DROPPED) + '.', '']
    if name == 'refcocog':
      lines += ['Per split: `' + json.dumps(info['splits']) + '`.', '']
  lines += ['## Chance levels', '', '| set | chance |', '| --- | --- |']
  lines += [f'| {n} | {CHANCE[n]} |' for n in manifest['sets']]
  return '\n'.join(lines) + '\n'


def _categories() -> dict[str, str]:
  out = {}
  for line in vsr.CATEGORY_TEXT.splitlines():
    category, _, names = line.partition(':')
    for n in names.split(','):
      out[n.strip()] = category.strip()
  return out
