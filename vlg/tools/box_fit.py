r"""Can a run's fusion find the object a text names when asked directly?

  python -m vlg.tools.box_fit --workdir=workdirs/xvlm_tiny [--step=N] \
      [--scenes=4000] [--val_scenes=300] [--steps=3000] [--batch_size=64] \
      [--lr=3e-4] [--eval_every=250] [--fusion_posemb=none|sincos2d] \
      [--out=FILE]

X-VLM's box head predicts where the object a text names is, from the fused
[CLS] of the whole image and the text (docs/objectives.md §3.2). In
pretraining it shares the step with everything else; this tool asks
nothing but boxes. It freezes the run's vision tower, renders ``--scenes``
scenes of the world's ``train`` split, embeds them once, and trains the
text encoder, fusion and box head on X-VLM's L1 + GIoU losses over every
object that has a unique name ('the large red circle',
``synthetic.referring_expression``) against its exact box. Every
``--eval_every`` steps it scores the objects of ``--val_scenes`` held-out
``val`` scenes: ``val_iou`` (mean IoU), ``val_iou50`` (share with IoU ≥ 0.5)
and, for scale, ``mean_box_iou`` (the IoU of the training boxes' mean box
on the same objects, what a head that ignores the image reaches), and
``fit_iou`` on the first 256 training objects (is it learning at all?).

What it tells: whether the fusion, reading this tower's tokens, can learn
where a named object is, and how fast — a ceiling on the box objectives'
reach in pretraining on the same architecture (docs/results.md, "Where
the fusion reads position": 0.24 held-out IoU without the fusion's
position table, 0.52 with it). ``--fusion_posemb`` sets what the fusion adds
to the image tokens (``model.fusion_posemb``; default: the run's), so a run
trained without the position table can be asked with it. The run needs a
box head (``model.box_head``: X-VLM, ReX-VLM). Its checkpoints are never
written; the curve goes to stdout and, as JSON lines, to ``--out``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from flax import nnx

from vlg import restore
from vlg.data import batch_truth
from vlg.data import ops
from vlg.evaluators import batching
from vlg.models import albef
from vlg.objectives import boxes
from vlg.synthetic import language
from vlg.synthetic import layout
from vlg.synthetic import render
from vlg.synthetic import world
from vlg.tools import twin_fit

_FLAGS = {}


@dataclasses.dataclass(frozen=True)
class Referrals:
  """Named objects of ``n`` scenes: the images [n, R, R, 3] (or their
  tower tokens), and per object the index of its image, the tokenized
  'the <unique name>' (``ids`` / ``mask`` [m, L]) and its box [m, 4]
  (normalised cx, cy, w, h)."""
  images: np.ndarray
  image_index: np.ndarray
  ids: np.ndarray
  mask: np.ndarray
  boxes: np.ndarray


def referrals(world_cfg: world.WorldConfig, tokenizer, *, num_scenes: int,
              split: str, max_words: int, max_len: int,
              resolution: int) -> Referrals:
  """Every object with a unique name in the first ``num_scenes`` scenes
  of ``split``, rendered at ``resolution`` pixels (an object whose name
  would fit another object too is left out: its box is ambiguous)."""
  images, index, ids, masks, targets = [], [], [], [], []
  side = float(world_cfg.resolution)
  for i in range(num_scenes):
    scene = layout.generate_scene(split, i, world_cfg)
    images.append(ops.resize(render.render_scene(scene, world_cfg),
                             resolution))
    for k, obj in enumerate(scene.objects):
      name = language.referring_expression(scene, k)
      if name is None:
        continue
      x0, y0, x1, y1 = obj.box
      ids_k, mask_k = tokenizer.encode(
          ops.pre_caption(f'the {name}', max_words), max_len)
      index.append(i)
      ids.append(ids_k)
      masks.append(mask_k)
      targets.append([(x0 + x1) / 2 / side, (y0 + y1) / 2 / side,
                      (x1 - x0) / side, (y1 - y0) / side])
  if not index:
    raise ValueError(f'no named object in the first {num_scenes} scenes '
                     f'of {split!r}')
  return Referrals(np.stack(images), np.array(index, np.int32),
                   np.stack(ids), np.stack(masks),
                   np.array(targets, np.float32))


def predict_boxes(model: albef.Model, tokens, ids, mask) -> jax.Array:
  """float32 [B, 4]: the box head's (cx, cy, w, h) for texts fused with
  image tokens."""
  text = model.embed_text(ids, mask)['text_embeds']
  return model.predict_box(model.fuse_cls(text, mask, tokens))


def box_loss(model: albef.Model, rows) -> tuple[jax.Array, jax.Array]:
  """X-VLM's L1 + GIoU loss (``objectives.boxes.box_losses``, every row a
  real box) of (tokens, ids, mask, boxes) rows, and their mean IoU."""
  tokens, ids, mask, target = rows
  l1, giou, metrics = boxes.box_losses(
      predict_boxes(model, tokens, ids, mask), target,
      jnp.ones(target.shape[:1], jnp.float32))
  return l1 + giou, metrics['mean_iou']


def box_ious(pred, target) -> np.ndarray:
  """IoU of [n, 4] (cx, cy, w, h) boxes, row by row."""
  iou, _ = boxes.box_iou_giou(boxes.cxcywh_to_xyxy(jnp.asarray(pred)),
                              boxes.cxcywh_to_xyxy(jnp.asarray(target)))
  return np.asarray(iou)


def fit_model(model: albef.Model, world_cfg: world.WorldConfig, tokenizer,
              *, max_words: int, max_len: int, resolution: int, mesh,
              rules, scenes: int = 4000, val_scenes: int = 300,
              steps: int = 3000, batch_size: int = 64, lr: float = 3e-4,
              eval_every: int = 250, seed: int = 0,
              log: Callable[[str], None] = print
              ) -> list[dict[str, float]]:
  """:func:`fit` on a model (its tower frozen; ``model`` itself is left
  unchanged)."""
  if not hasattr(model, 'box_head'):
    raise ValueError('box_fit needs a model with a box head '
                     '(model.box_head: an X-VLM or ReX-VLM run)')
  kw = dict(max_words=max_words, max_len=max_len, resolution=resolution)
  start = time.time()
  train = referrals(world_cfg, tokenizer, num_scenes=scenes, split='train',
                    **kw)
  held_out = referrals(world_cfg, tokenizer, num_scenes=val_scenes,
                       split='val', **kw)
  with jax.set_mesh(mesh):
    tokens = twin_fit.tower_tokens(model, mesh=mesh, rules=rules,
                                   batch_size=256)
    train = dataclasses.replace(train, images=tokens(train.images))
    held_out = dataclasses.replace(held_out, images=tokens(held_out.images))
    log(f'{len(train.ids)} training objects ({scenes} scenes) and '
        f'{len(held_out.ids)} held-out objects embedded in '
        f'{time.time() - start:.0f} s')
    mean_box = np.broadcast_to(train.boxes.mean(0), held_out.boxes.shape)
    mean_box_iou = float(box_ious(mean_box, held_out.boxes).mean())
    trainer = twin_fit.TwinFit(model, lr=lr, steps=steps, loss=box_loss)
    runner = batching.BatchRunner(
        lambda params, batch: {'box': predict_boxes(
            nnx.merge(trainer.graphdef, params, trainer.rest),
            batch['image'], batch['text_ids'], batch['text_mask'])},
        batch_size=256, mesh=mesh, rules=rules)

    def ious_of(objects: Referrals, n: int) -> np.ndarray:
      """IoUs of the first n objects' predicted boxes."""
      pred = runner.run(trainer.params, n, lambda rows: {
          'image': objects.images[objects.image_index[list(rows)]],
          'text_ids': objects.ids[list(rows)],
          'text_mask': objects.mask[list(rows)]})['box']
      return box_ious(pred, objects.boxes[:n])

    rng = np.random.default_rng(seed)
    history, losses, ious = [], [], []
    start = time.time()
    for step in range(steps + 1):
      if step:
        idx = rng.integers(0, len(train.ids), batch_size)
        loss, iou = trainer.step((train.images[train.image_index[idx]],
                                  train.ids[idx], train.mask[idx],
                                  train.boxes[idx]))
        if not np.isfinite(loss):
          raise FloatingPointError(
              f'box_fit: box loss {loss} at step {step} (lr {lr}); '
              'lower --lr')
        losses.append(loss)
        ious.append(iou)
      if step % eval_every and step != steps:
        continue
      val = ious_of(held_out, len(held_out.ids))
      row = {'step': float(step), 'val_iou': float(val.mean()),
             'val_iou50': float((val >= 0.5).mean()),
             'mean_box_iou': mean_box_iou, 'val_num': float(len(val)),
             'fit_iou': float(ious_of(train, min(256, len(train.ids))
                                      ).mean())}
      if losses:
        row.update(loss=float(np.mean(losses)),
                   train_iou=float(np.mean(ious)))
        losses, ious = [], []
      history.append(row)
      eta = (time.time() - start) / max(step, 1) * (steps - step)
      log(f'step {step}/{steps} (ETA {eta / 60:.1f} min): ' + ', '.join(
          f'{k} {v:.3f}' for k, v in sorted(row.items()) if k != 'step'))
  return history


def fit(run: restore.Run, *, fusion_posemb: str | None = None,
        **kw) -> list[dict[str, float]]:
  """Trains and evaluates as the module docstring says; returns one row
  of metrics per evaluation (step 0 first). ``kw``: :func:`fit_model`'s
  options.

  Raises:
    ValueError: the run's caption sources are not one synthetic world, it
      has no box head, or an unknown ``fusion_posemb``.
    FloatingPointError: the loss is not finite (nothing is written).
  """
  cfg = run.config
  world_cfg = batch_truth.caption_world(cfg.input)
  if world_cfg is None:
    raise ValueError(f'{run.workdir}: the caption sources are not one '
                     'synthetic world; box_fit needs its scenes')
  model = nnx.merge(run.graphdef, run.params)
  if fusion_posemb is not None:
    model.fusion_posemb = albef.checked_fusion_posemb(fusion_posemb)
  return fit_model(model, world_cfg, run.tokenizer,
                   max_words=int(cfg.input.max_words),
                   max_len=int(cfg.input.max_text_len),
                   resolution=int(cfg.input.resolution), mesh=run.mesh,
                   rules=run.rules, **kw)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  twin_fit.run_fit(_FLAGS, fit, ('scenes', 'val_scenes', 'steps',
                                 'batch_size', 'lr', 'eval_every', 'seed',
                                 'fusion_posemb'), labels=('fusion_posemb',))


def define_flags() -> None:
  """Defines the flags (only when run as a program)."""
  twin_fit.define_fit_flags(_FLAGS, batch_size=64,
                            batch_help='Named objects a step.',
                            asks='for boxes',
                            seed_help='Seed of the batch order.')
  flags.adopt_module_key_flags(twin_fit)  # So that --help lists them.
  _FLAGS['scenes'] = flags.DEFINE_integer(
      'scenes', 4000, "Scenes of the 'train' split whose named objects to "
      'learn from (about three objects a scene).')
  _FLAGS['val_scenes'] = flags.DEFINE_integer(
      'val_scenes', 300, "Held-out scenes of the 'val' split to score.")


if __name__ == '__main__':
  define_flags()
  app.run(main)
