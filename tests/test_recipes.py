"""The recipes: tiny's labelled vision stage; the ``base_4m`` variants'
ALBEF 4M folders under ``config.data_dir``."""

import dataclasses
import json
import os

from absl import flags
import ml_collections
import numpy as np
import pytest
from ml_collections import config_flags
from PIL import Image

from vlg import recipes
from vlg import train
from vlg.data.parts import common as parts_common
from vlg.data import pipeline
from vlg.data import relations
from vlg.data import sources
from vlg.data import tokenizer as tok_lib
from vlg.synthetic import world
from vlg.tools import prepare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ('albef', 'xvlm', 'realbef', 'rexvlm')
# ALBEF's statistics of its 4M image-text pairs (thousands), the weights'
# reference.
PAIRS_4M = {'coco': 567, 'vg_captions': 769, 'sbu': 860, 'cc3m': 2950}


def _command_line_config(family, *overrides):
  """The config of ``--config=configs/FAMILY.py:base_4m OVERRIDES``, parsed
  by ml_collections' flags as vlg.main parses it."""
  argv = ['main', f'--config={REPO}/configs/{family}.py:base_4m', *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=values,
                                  lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


def _data_free(config):
  """The config as a dict without the fields base_4m points at data."""
  d = config.to_dict()
  for key in ('data_dir',):
    d.pop(key, None)
  d['input'].pop('data_dir', None)
  d['input'].pop('data')
  for part in d['input'].get('parts', {}).values():
    part.pop('data')
    part.pop('vocab', None)
  d['model'].pop('mrc_classes', None)
  return d


def _recipe(family, arg):
  return (recipes.albef_config(arg) if family == 'albef' else
          recipes.family_config(family, arg))


@pytest.mark.parametrize('family', FAMILIES)
def test_tiny_starts_from_the_labelled_vision_stage(family):
  c = _recipe(family, 'tiny')
  assert c.vision_pretrain.steps == recipes.TINY_PRETRAIN_STEPS > 0
  assert c.model.vision_stem == 'conv_image'
  assert c.model.fusion_posemb == 'sincos2d'
  assert c.total_steps == recipes.TINY_STEPS[family]
  # Four evaluations, the last at the end.
  assert {e.log_steps for e in c.evals.values()} == {c.total_steps // 4}
  # runlocal runs the stage's path in a few steps; small and base have none.
  local = _recipe(family, 'tiny,runlocal')
  assert (local.vision_pretrain.steps, local.vision_pretrain.warmup_steps) == (
      10, 2)
  for variant in ('small', 'base'):
    assert _recipe(family, variant).vision_pretrain.steps == 0
    # The papers' fusion (no position table) beyond tiny.
    assert _recipe(family, variant).model.fusion_posemb == 'none'


def test_every_world_field_can_be_set_from_the_command_line():
  # docs/synthetic-world.md §6 promises --config.input.data.synthetic.world.X
  # for every WorldConfig field; the source must then build that world.
  argv = ['main', f'--config={REPO}/configs/albef.py:tiny',
          '--config.input.data.synthetic.world.caption_relation_rate=0.4',
          '--config.input.data.synthetic.world.max_objects=4']
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=values,
                                  lock_config=True, sys_argv=argv)
  values(argv)
  entry = values.config.input.data.synthetic
  expected = dataclasses.asdict(world.WorldConfig(
      resolution=64, caption_relation_rate=0.4, max_objects=4))
  assert set(entry.world.keys()) == set(expected)
  # The source the pipeline reads.
  built = sources.build_source('synthetic', entry, values.config.input).source
  assert dataclasses.asdict(built.cfg) == expected


@pytest.mark.parametrize('family', FAMILIES)
def test_base_4m_names_the_prepared_folders_under_data_dir(family):
  c = _command_line_config(family, '--config.data_dir=/data/vlg')
  assert c.data_dir == '/data/vlg'
  data = c.input.data
  assert sorted(data) == sorted(PAIRS_4M)
  total = sum(e.weight for e in data.values())
  for name, entry in data.items():
    assert entry.source == 'prepared' and entry.dir == f'/data/vlg/{name}'
    assert entry.weight / total == pytest.approx(
        PAIRS_4M[name] / sum(PAIRS_4M.values()), rel=1e-3)
  parts = c.input.get('parts', {})
  want_parts = {'albef': [], 'xvlm': ['entity'], 'realbef': ['mrc', 'vsg'],
                'rexvlm': ['entity', 'mrc', 'vsg']}[family]
  assert sorted(parts) == want_parts
  if 'entity' in parts:
    assert {k: (v.source, v.dir, v.weight)
            for k, v in parts.entity.data.items()} == {
                k: ('prepared', f'/data/vlg/{k}', 1.0)
                for k in ('coco_objects', 'vg_objects', 'vg_regions')}
  for name in ('mrc', 'vsg'):
    if name in parts:
      assert {k: (v.source, v.dir) for k, v in parts[name].data.items()} == {
          'gqa': ('prepared', '/data/vlg/gqa')}
  if 'mrc' in parts:
    # The file prepare writes next to a scene-graph folder's shards.
    assert parts.mrc.vocab == (
        f'/data/vlg/gqa/{prepare.records.VOCAB_FILE}') == (
            '/data/vlg/gqa/relations.json')
    assert c.model.mrc_classes == recipes.GQA_RELATIONS == 310
  else:
    assert c.model.mrc_classes == 0
  # Apart from where the data is, base_4m is the base recipe.
  base = (recipes.albef_config('base') if family == 'albef' else
          recipes.family_config(family, 'base'))
  assert _data_free(c) == _data_free(base)


def test_data_dir_is_resolved_lazily_and_one_folder_can_move():
  c = recipes.family_config('rexvlm', 'base_4m')
  c.data_dir = '/a'
  assert c.input.data.sbu.dir == '/a/sbu'
  c.input.data.sbu.dir = '/elsewhere/sbu'
  c.data_dir = '/b'
  assert c.input.data.coco.dir == '/b/coco' and c.input.data_dir == '/b'
  assert c.input.data.sbu.dir == '/elsewhere/sbu'
  assert c.input.parts.vsg.data.gqa.dir == '/b/gqa'
  resolved = c.copy_and_resolve_references()
  assert resolved.input.parts.mrc.vocab == '/b/gqa/relations.json'
  with pytest.raises(ValueError, match='variant=.base_5m.*base_4m'):
    recipes.albef_config('base_5m')


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('data_dir', [None, ''])
def test_empty_data_dir_fails_with_a_clear_message(family, data_dir):
  overrides = [] if data_dir is None else [f'--config.data_dir={data_dir}']
  c = _command_line_config(family, *overrides)
  assert c.data_dir == ''
  message = r'config.data_dir is empty.*--config.data_dir=DIR'
  with pytest.raises(ValueError, match=message):
    pipeline.build_sources(c.input)
  for part in c.input.get('parts', {}).values():
    with pytest.raises(ValueError, match=message):
      pipeline.build_sources(c.input, part.data)


def _image(path, seed):
  rng = np.random.default_rng(seed)
  Image.fromarray(rng.integers(0, 256, (24, 32, 3), np.uint8)).save(path)


def _prepare_tiny_4m(root):
  """Tiny prepared folders of every base_4m name under ``root``."""
  images = root / 'images'
  images.mkdir()
  for i in range(4):
    _image(images / f'{i}.png', i)
  captions = root / 'captions.json'
  captions.write_text(json.dumps([
      {'image': f'{i}.png', 'caption': f'a photo of thing {i} on a table'}
      for i in range(4)]))
  instances = root / 'instances.json'
  instances.write_text(json.dumps({
      'images': [{'id': i, 'file_name': f'{i}.png', 'width': 32,
                  'height': 24} for i in range(4)],
      'categories': [{'id': 1, 'name': 'dog'}],
      'annotations': [{'id': i, 'image_id': i, 'category_id': 1,
                       'bbox': [2, 2, 10, 8]} for i in range(4)]}))
  graphs = root / 'train_sceneGraphs.json'
  graphs.write_text(json.dumps({str(i): {'width': 32, 'height': 24,
                                         'objects': {
      '1': {'name': 'cup', 'x': 0, 'y': 0, 'w': 10, 'h': 10,
            'relations': [{'name': 'to the left of', 'object': '2'}]},
      '2': {'name': 'plate', 'x': 16, 'y': 0, 'w': 10, 'h': 10,
            'relations': [{'name': 'to the right of', 'object': '1'},
                          {'name': 'near', 'object': '1'}]}}}
                                for i in range(4)}))
  (images / 'gqa').mkdir()
  for i in range(4):
    _image(images / 'gqa' / f'{i}.jpg', 10 + i)
  quiet = dict(log=lambda _: None)
  prepare.prepare('albef_json', [str(captions)], [str(images)],
                  str(root / 'coco'), **quiet)
  prepare.prepare('coco_instances', [str(instances)], [str(images)],
                  str(root / 'coco_objects'), **quiet)
  prepare.prepare('gqa_scene_graphs', [str(graphs)], [str(images / 'gqa')],
                  str(root / 'gqa'), **quiet)
  for name in ('vg_captions', 'sbu', 'cc3m'):
    os.symlink(root / 'coco', root / name)
  for name in ('vg_objects', 'vg_regions'):
    os.symlink(root / 'coco_objects', root / name)


def test_rexvlm_base_4m_reads_prepared_folders(tmp_path):
  _prepare_tiny_4m(tmp_path)
  c = _command_line_config('rexvlm', f'--config.data_dir={tmp_path}')
  c.input.resolution = 32
  c.batch_size = 2
  for part in c.input.parts.values():
    part.batch_size = 2
  c.input.parts.vsg.max_text_len = 32
  tok = tok_lib.train_tokenizer(pipeline.training_texts(c.input, 4), 64)
  it = iter(pipeline.make_dataset(c.input, tok, global_batch=2, seed=0))
  batch = next(it)
  assert batch['image'].shape == (2, 32, 32, 3)
  for key in ('ent_', 'mrc_', 'vsg_'):
    assert any(k.startswith(key) for k in batch), key
  vocab = relations.RelationVocab.load(str(tmp_path / 'gqa' /
                                           'relations.json'))
  assert sorted(vocab.relations) == ['near', 'to the left of',
                                     'to the right of']
  labels = batch['mrc_label']
  kept = labels[labels != parts_common.IGNORE].tolist()
  assert kept and set(kept) <= set(range(len(vocab)))
  # model.mrc_classes (310 for the real GQA) must match the vocabulary.
  with pytest.raises(ValueError, match='has 3 relations but '
                     'model.mrc_classes=310'):
    train.check_parts(c)
  c.model.mrc_classes = 3
  train.check_parts(c)
