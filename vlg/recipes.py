"""The four pretraining recipes of vlg: ALBEF, X-VLM, ReALBEF, ReX-VLM.

``configs/{albef,xvlm,realbef,rexvlm}.py`` are thin ``get_config`` files
over these builders, so the four share every default and differ only where
the papers do (docs/objectives.md §2.4, §3.3, §5b):

| | caption style | parts (batch, ratio) | AdamW betas (base) |
| --- | --- | --- | --- |
| ALBEF | momentum distillation + queues | — | (0.9, 0.999) (ALBEF 4M) |
| ReALBEF | as ALBEF | mrc, vsg | (0.9, 0.995) |
| X-VLM | in-batch ITC, plain MLM | entity | (0.9, 0.95) |
| ReX-VLM | as X-VLM | entity, mrc, vsg | (0.9, 0.95) |

A part's ``ratio`` is the paper's sampling ratio relative to captions
(Table 4: captions 2, entities 1.5, MRC 1, VSG 1 → 0.75, 0.5, 0.5): vlg runs
every part in every step and weights its loss by the ratio, the same
objective in expectation as sampling one type per step
(docs/objectives.md §3.3).
Ablations are one override each: ``--config.input.parts.entity.objects=False``
(w/o object), ``...entity.regions=False`` (w/o region),
``--config.loss.bbox=0 --config.loss.giou=0`` (w/o bbox),
``--config.input.parts.mrc.enabled=False`` (VSG only),
``--config.input.parts.vsg.enabled=False`` (MRC only),
``--config.input.parts.vsg.k=3`` (K = 3), ``...vsg.sort=False`` (unsorted).

Variant ``base_4m`` is ``base`` on ALBEF's 4M real data, prepared with
``python -m vlg.tools.prepare`` into folders under ``config.data_dir``
(:func:`real_data` lists them and the prepare commands)::

  python -m vlg.main --config=configs/xvlm.py:base_4m \
      --config.data_dir=/data/vlg --workdir=gs://.../xvlm_4m

The papers start these runs from pretrained towers, which vlg leaves to
``model.init`` (empty by default: from scratch; docs/weights.md): ALBEF and
X-VLM from DeiT-B/16 and BERT-base (``--config.model.init.vision=
deit_base_patch16_224-b5f2ef4d.pth --config.model.init.text=
bert-base-uncased/ --config.input.tokenizer.path=bert-base-uncased/
--config.model.vocab_size=30522``), ReALBEF and ReX-VLM from an AugReg
ViT-B/16 ImageNet-21k ``.npz`` (with ``model.image_mean`` and
``model.image_std`` at 0.5) and BERT-base.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from vlg import config_lib
from vlg import vision_pretrain
from vlg.evaluators import synthetic as synthetic_evals
from vlg.data import records
from vlg.synthetic import world
from vlg.models import sizes

# Variants that train a model size on real data: variant → model size.
REAL_DATA_VARIANTS = {'base_4m': 'base'}

# ALBEF's 4M caption sets (prepared ``albef_json`` folders under
# config.data_dir) weighted by their number of image-text pairs, in millions
# (ALBEF's statistics: COCO 567K, VG 769K, SBU 860K, CC3M 2.95M), so the
# mixture samples pairs uniformly as ALBEF's concatenated data set does.
CAPTION_SETS_4M = {'coco': 0.567, 'vg_captions': 0.769, 'sbu': 0.860,
                   'cc3m': 2.95}
# X-VLM's box data: objects of COCO and VG, regions of VG. Equal weights:
# the three have about the same number of images (~110K each).
ENTITY_SETS_4M = ('coco_objects', 'vg_objects', 'vg_regions')
# Scene graphs of MRC and VSG, with the relation vocabulary prepare writes.
GRAPH_SET_4M = 'gqa'
# Relations in the vocabulary that prepare writes for GQA's train scene
# graphs (its summary prints the count); model.mrc_classes must equal the
# vocabulary's size, which vlg.train.check_parts verifies.
GQA_RELATIONS = 310


def _world(resolution: int) -> dict[str, object]:
  """Every ``WorldConfig`` field at its default, so that each can be set
  from the command line (``--config.input.data.synthetic.world.X=...``)."""
  return dataclasses.asdict(world.WorldConfig(resolution=resolution))


def _input(resolution: int, max_text_len: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      kind='caption',
      data=dict(
          synthetic=dict(source='synthetic', weight=1.0, split='train',
                         num_examples=100_000,
                         world=_world(resolution)),
      ),
      resolution=resolution,
      max_text_len=max_text_len,
      max_words=30,
      augment=('crop', 'flip', 'brightness'),
      crop_scale=(0.5, 1.0),
      mlm_probability=0.15,
      skip_bad_examples=False,
      num_workers=0,
      num_threads=2,
      prefetch=2,
      # BPE: SentencePiece's unigram trainer, on a corpus as small in words
      # as the synthetic world's (~60 distinct words), stops at ~100 pieces
      # and spells colour words letter by letter ('b l u e'); BPE keeps
      # every word whole (~460 pieces).
      tokenizer=dict(path='', vocab_size=1024, num_texts=5000,
                     model_type='bpe'),
  ))


def _parse(arg: str | None) -> tuple[ml_collections.ConfigDict, str]:
  """The parsed ``arg`` and the model size of its variant."""
  arg = config_lib.parse_arg(arg, variant='tiny', runlocal=False, evals=True)
  size = REAL_DATA_VARIANTS.get(arg.variant, arg.variant)
  if size not in sizes.SIZES:
    raise ValueError(f'variant={arg.variant!r}; valid: '
                     f'{sorted(sizes.SIZES) + sorted(REAL_DATA_VARIANTS)}')
  return arg, size


def albef_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The ALBEF config for ``variant`` (tiny by default); see configs/albef.py."""
  c = _albef_config(arg)
  if _parse(arg)[0].variant in REAL_DATA_VARIANTS:
    real_data(c)
  return c


def _albef_config(arg: str | None) -> ml_collections.ConfigDict:
  """ALBEF's config on the synthetic world (every variant's model size)."""
  arg, size = _parse(arg)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = sizes.model_config(size, name='albef', itm_head='linear')
  res = int(c.model.image_size)
  # Labelled pretraining of the vision tower on the world before a fresh
  # run (vlg/vision_pretrain.py); 0 steps = off.
  c.vision_pretrain = vision_pretrain.default_config()

  if size == 'base':
    c.batch_size = 512
    c.total_steps = 30 * 7_800  # 30 epochs of the 4M set at batch 512.
    c.input = _input(res, max_text_len=25)
    c.input.tokenizer.vocab_size = 32_000
    c.optim = dict(lr=1e-4, warmup_init_lr=1e-5, min_lr=1e-5,
                   warmup_steps=2_000, weight_decay=0.02, b1=0.9, b2=0.999,
                   eps=1e-8, grad_clip_norm=0.0, temp_lr_scale=1.0)
    c.queue_size = 65_536
    c.alpha_warmup_steps = 7_800
    c.ckpt_steps = 2_000
    c.keep_every_steps = 10_000
    c.log_training_steps = 50
  else:
    tiny = arg.variant == 'tiny'
    # Tiny: batch 16 (at equal compute it learned more than batch 32:
    # held-out ITM, retrieval; docs/results.md) for TINY_STEPS, within ~40
    # TFLOP of training compute with the vision stage below.
    c.batch_size = 16 if tiny else 32
    c.total_steps = TINY_STEPS['albef'] if tiny else 2_000
    c.input = _input(res, max_text_len=25)
    # The temperature at a tenth of the learning rate, i.e. ALBEF's 1e-4
    # (and ALBEF's pace relative to its schedule): at 1e-3 it fell from
    # 0.07 to ~0.012 in 250 steps, and ITC and ITM learned less
    # (docs/results.md).
    c.optim = dict(lr=1e-3, warmup_init_lr=1e-5, min_lr=1e-5,
                   warmup_steps=20, weight_decay=0.02, b1=0.9, b2=0.999,
                   eps=1e-8, grad_clip_norm=0.0, temp_lr_scale=0.1)
    c.queue_size = 256
    c.alpha_warmup_steps = 100
    c.ckpt_steps = 50
    c.keep_every_steps = c.total_steps // 4  # Every evaluation's step.
    c.log_training_steps = 10
    if tiny:
      # A tiny tower trained from scratch on captions alone does not learn
      # the objects' shapes within the budget, and ITM stays near its 1:2
      # prior; the papers start from towers pretrained on labelled images,
      # and the world's counterpart is the labelled stage (its steps count
      # in the budget: TINY_STEPS). The convolutional stem over the whole
      # image learned shapes faster than the linear patch map
      # (docs/results.md).
      c.model.vision_stem = 'conv_image'
      c.vision_pretrain.steps = TINY_PRETRAIN_STEPS
      # The fusion reads each patch's position from a fixed table added to
      # the image tokens: without it the tiny fusion never learned where a
      # named object is (held-out boxes at 1.3x the mean box's IoU, spatial
      # minimal pairs at chance even when trained on nothing else); with
      # it, tiny X-VLM's boxes reached 6x (docs/results.md, "Where the
      # fusion reads position").
      c.model.fusion_posemb = 'sincos2d'
  c.model.vocab_size = max(int(c.model.vocab_size),
                           int(c.input.tokenizer.vocab_size))

  c.loss = dict(itc=1.0, itm=1.0, mlm=1.0, alpha=0.4, momentum=0.995,
                # ITC ignores the queue's rows until they hold momentum
                # features: with ALBEF's random initial rows a model
                # trained from scratch collapses its features (itc.py).
                queue_mask_unfilled=True)
  # Split each step's batch into this many micro-batches whose gradients
  # are averaged (in-batch ITC/ITM negatives then come from a micro-batch).
  c.grad_accum_steps = 1
  c.mesh = (-1, 1, 1)  # ('data', 'fsdp', 'tensor'); -1 fills.
  # The mesh spans the first num_devices of jax.devices(); 0 = all of them
  # (one process only: a multi-process run needs every device).
  c.num_devices = 0
  c.sharding_rules = (
      ('batch', ('data', 'fsdp')),
      ('embed', 'fsdp'),
      ('mlp', 'tensor'),
      ('heads', 'tensor'),
      ('vocab', 'tensor'),
  )
  c.keep_latest = 2
  # Tiny and small evaluate on every synthetic benchmark set (written once
  # to a cache, see vlg/evaluators/synthetic.py) four times a run, the last
  # at the end; ``:tiny,evals=False`` turns them off. The sets scored per
  # example (VALSE, VSR, SVO, Winoground) hold 200 examples a file, so one
  # accuracy's binomial std is 3.5 points (7 at 50); retrieval, paragraphs
  # and RefCOCOg 50 (retrieval's ITM re-scoring grows with images x
  # k_test). Base runs name their (real) benchmarks in config.evals.
  c.evals = ml_collections.ConfigDict()
  # A failing evaluator: 'stop' (after the step's checkpoint) or 'skip'
  # (log it, train on); see vlg/train.py:EVAL_FAILURE.
  c.eval_failure = 'stop'
  if arg.evals and size != 'base':
    c.evals = synthetic_evals.default_evals(
        log_steps=int(c.total_steps) // 4, num=8 if arg.runlocal else 50,
        pairwise_num=8 if arg.runlocal else 200)
  if arg.runlocal:
    c.batch_size = 8
    c.total_steps = 20
    c.queue_size = 64
    c.ckpt_steps = 10
    c.log_training_steps = 5
    if c.vision_pretrain.steps:  # The stage's path, in a few steps.
      c.vision_pretrain.update(steps=10, batch_size=8, warmup_steps=2)
  return c


def _parts(variant: str, patch_size: int, names: tuple[str, ...]
           ) -> ml_collections.ConfigDict:
  """The typed parts ``names`` with base (Table 4), small or tiny batch
  sizes (tiny: half of small's, as its caption batch is)."""
  base = variant == 'base'
  scale = 2 if variant == 'tiny' else 1
  all_parts = dict(
      entity=dict(enabled=True, batch_size=256 if base else 8 // scale,
                  max_pairs=4,
                  ratio=0.75, objects=True, regions=True,
                  whole_image_caption=True, group_by_box=True,
                  patch_size=patch_size, flagged_only=False, data={}),
      mrc=dict(enabled=True, batch_size=64 if base else 8 // scale,
               num_relations=2,
               ratio=0.5, max_text_len=12, vocab='',
               patch_size=patch_size, flagged_only=False,
               data={}),
      vsg=dict(enabled=True, batch_size=128 if base else 16 // scale, k=8,
               sort=True,
               max_text_len=112 if base else 64, ratio=0.5,
               flagged_only=False, data={}),
  )
  return ml_collections.ConfigDict({k: all_parts[k] for k in names})


# Tiny steps of each family within ~40 TFLOP of training compute (XLA's
# count per step at batch 16, ``python -m vlg.tools.bench``): the labelled
# vision stage's ~10.6 TFLOP (its ``tower.json`` records them), then ALBEF
# at 18.5 GFLOP a step, X-VLM 26.1, ReALBEF 38.9, ReX-VLM 46.5 (~26 TFLOP
# each; docs/results.md).
TINY_STEPS = dict(albef=1_460, xvlm=980, realbef=680, rexvlm=550)
# Steps of the tiny recipes' labelled vision stage (vlg/vision_pretrain.py).
TINY_PRETRAIN_STEPS = 1_500


def family_config(family: str, arg: str | None = None
                  ) -> ml_collections.ConfigDict:
  """ALBEF's config turned into ``family`` ('xvlm' | 'realbef' | 'rexvlm')."""
  c = _albef_config(arg)
  arg, variant = _parse(arg)
  xvlm_style = family in ('xvlm', 'rexvlm')
  relations = family in ('realbef', 'rexvlm')
  names = (('entity',) if xvlm_style else ()) + (
      ('mrc', 'vsg') if relations else ())
  c.model.name = 'albef'  # One model class; heads come from the flags below.
  c.model.box_head = xvlm_style
  c.model.itm_head = 'mlp' if xvlm_style else 'linear'
  c.model.mrc_classes = len(world.RELATIONS) if relations else 0
  c.input.parts = _parts(variant, int(c.model.patch_size), names)
  c.loss.momentum_distill = not xvlm_style
  c.loss.bbox = 1.0
  c.loss.giou = 1.0
  c.loss.mrc = 1.0
  # MRC's concepts: 'masked' (each entity's ViT pass sees only its box) or
  # 'shared' (X-VLM's one pass per image); vlg/objectives/mrc.py.
  c.loss.mrc_concept = 'masked'
  if arg.variant == 'tiny' and not arg.runlocal:
    c.total_steps = TINY_STEPS[family]
    c.keep_every_steps = c.total_steps // 4
    for entry in c.evals.values():  # Four evaluations a run, as ALBEF's.
      entry.log_steps = c.total_steps // 4
  if variant == 'base':
    c.batch_size = 1024 if xvlm_style else 512
    c.input.max_text_len = 36
    c.optim.b2 = 0.95 if xvlm_style else 0.995
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 5_000
    c.total_steps = 200_000
  if arg.variant in REAL_DATA_VARIANTS:
    real_data(c)
  return c


def real_data(c: ml_collections.ConfigDict,
              data_dir: str = '') -> ml_collections.ConfigDict:
  """Points ``c``'s data at ALBEF's 4M, prepared under ``c.data_dir``.

  Adds the field ``c.data_dir`` (default ``data_dir``) and derives every
  folder from it lazily (a ``FieldReference``), so
  ``--config.data_dir=/data/vlg`` moves them all; one folder can still be
  overridden on its own (``--config.input.data.sbu.dir=...``).
  ``c.input.data_dir`` is the same reference: the input pipeline refuses
  to start while it is empty. The folders, each written by ``python -m
  vlg.tools.prepare --out={data_dir}/NAME``:

  ================ ==================== ================================
  NAME             --format             --src
  ================ ==================== ================================
  coco             albef_json           ALBEF's coco.json
  vg_captions      albef_json           ALBEF's vg.json
  sbu              albef_json           ALBEF's sbu.json
  cc3m             albef_json           ALBEF's cc3m json
  coco_objects     coco_instances       instances_train2014.json (keep
                                        evaluation images out)
  vg_objects       vg_objects           objects.json,image_data.json
  vg_regions       vg_regions           region_descriptions.json,
                                        image_data.json
  gqa              gqa_scene_graphs     train_sceneGraphs.json (writes
                                        relations.json)
  ================ ==================== ================================

  ``input.data`` mixes the four caption folders by size
  (``CAPTION_SETS_4M``); the entity part (X-VLM, ReX-VLM) mixes the three
  box folders equally; MRC and VSG (ReALBEF, ReX-VLM) read ``gqa`` and MRC
  its ``relations.json``. ``model.mrc_classes`` is set to
  ``GQA_RELATIONS``: if the vocabulary prepare printed has another size
  (e.g. with ``--min_relation_count``), pass
  ``--config.model.mrc_classes=N``; training checks that they agree
  (``vlg.train.check_parts``) before it builds the model.

  Returns:
    ``c``, changed in place.
  """
  c.data_dir = ml_collections.FieldReference(data_dir, field_type=str)
  root = c.get_ref('data_dir')
  c.input.data_dir = root

  def prepared(name: str, weight: float) -> dict[str, object]:
    return dict(source='prepared', dir=root + f'/{name}', weight=weight)

  c.input.data = ml_collections.ConfigDict(
      {name: prepared(name, w) for name, w in CAPTION_SETS_4M.items()})
  parts = c.input.get('parts') or {}
  if 'entity' in parts:
    parts.entity.data = ml_collections.ConfigDict(
        {name: prepared(name, 1.0) for name in ENTITY_SETS_4M})
  for name in ('mrc', 'vsg'):
    if name in parts:
      parts[name].data = ml_collections.ConfigDict(
          {GRAPH_SET_4M: prepared(GRAPH_SET_4M, 1.0)})
  if 'mrc' in parts:
    parts.mrc.vocab = root + f'/{GRAPH_SET_4M}/{records.VOCAB_FILE}'
    c.model.mrc_classes = GQA_RELATIONS
  return c
