r"""How much of the contrast pairs can a run's fusion learn when asked directly?

  python -m vlg.tools.twin_fit --workdir=workdirs/albef_tiny [--step=N] \
      [--pairs=8000] [--steps=3000] [--batch_size=32] [--lr=3e-4] \
      [--eval_every=250] [--twins=200] [--edits=swap,reverse] [--reinit] \
      [--caption=first|longest] [--fusion_posemb=none|sincos2d] \
      [--benchmarks] [--out=FILE]

Pretraining asks ITM about an image's twin only when its hard-negative
sampler happens to draw the twin's caption (a few per step at most, see
``vlg.tools.validate``'s ``hard_neg_kind``). This tool asks every time: it
freezes the run's vision tower, embeds ``--pairs`` contrast pairs of the
world's ``train`` split once (``vlg/synthetic/contrast.py``: two images one
edit apart, each with a caption true of it and false of the other), and
trains the text encoder, fusion and ITM head on ITM's cross-entropy over
the four rows of each pair: (a, caption a) and (b, caption b) match,
(a, caption b) and (b, caption a) do not. Every ``--eval_every`` steps it
scores the held-out pairs of the ``val`` split as ``vlg.tools.validate``
does (``twin_itm_{text,image,group,pair_acc}`` and ``pair_acc/<edit>``;
chance 0.5 for ``pair_acc``, 0.25 for text and image) and the first
``--twins`` training pairs (``fit_pair_acc``: is it learning at all?);
``fit_tflop`` is the compute spent so far (XLA's counts: the tower over
every pair's images, then each step), for budgets.

What it tells: whether the fusion, reading this tower's tokens, can learn
to bind colours to shapes (``recolour``) and to read where two shapes are
(``swap``, ``reverse``) with direct supervision, and after how many
supervised pairs — a ceiling on what the pretraining objectives can draw
out of the same architecture. ``--edits`` keeps to some edits (e.g.
``swap,reverse``: only where shapes are). ``--reinit`` starts the text side from a
fresh initialisation (the run's config and seed) to separate what
pretraining gave from what the architecture can learn.
``--caption=longest`` names every object by size, colour and shape
(``twin_probe.held_out_twins``), and ``--fusion_posemb=sincos2d`` adds the
fusion's position table (``model.fusion_posemb``) to a run trained without
it. ``--benchmarks`` also scores the run's synthetic VALSE-, SVO-,
Winoground- and VSR-style sets through ITM before and after the fit, to
see whether what the pairs teach transfers to them. The run's
checkpoints are never written; the curve goes to stdout and, as JSON
lines, to ``--out``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app
from absl import flags
from flax import nnx

from vlg import predict
from vlg import restore
from vlg import train_state
from vlg import vision_pretrain
from vlg.analysis import significance
from vlg.data import batch_truth
from vlg.evaluators import batching
from vlg.evaluators import synthetic as synthetic_evals
from vlg.models import albef
from vlg.tools import twin_probe

_FLAGS = {}


def fresh_text_params(run: restore.Run, seed: int):
  """``run``'s parameters with everything but the vision tower freshly
  initialised (the run's model config at ``seed``, in the run's
  shardings)."""
  shardings = jax.tree.map(lambda a: a.sharding, run.abstract_params)
  params = train_state.init_params(run.config.model, seed, shardings)
  params['vision'] = run.params['vision']
  return params


def _is_trained(path, value) -> bool:
  """Every parameter outside the vision tower is trained."""
  return isinstance(value, nnx.Param) and path[0] != 'vision'


def itm_rows(tokens_a, tokens_b, ids_a, mask_a, ids_b, mask_b):
  """The four ITM rows of each pair, stacked: (a, caption a) = 1,
  (a, caption b) = 0, (b, caption b) = 1, (b, caption a) = 0.

  Returns:
    image tokens, text ids, text mask and int32 labels, each with 4n rows
    in that order (so row k + n is row k's negative on the same image).
  """
  n = len(ids_a)
  tokens = np.concatenate([tokens_a, tokens_a, tokens_b, tokens_b])
  ids = np.concatenate([ids_a, ids_b, ids_b, ids_a])
  mask = np.concatenate([mask_a, mask_b, mask_b, mask_a])
  labels = np.repeat(np.array([1, 0, 1, 0], np.int32), n)
  return tokens, ids, mask, labels


def itm_logits(model: albef.Model, tokens, ids, mask) -> jax.Array:
  """float32 [B, 2]: ITM's logits of texts fused with image tokens."""
  text = model.embed_text(ids, mask)['text_embeds']
  return model.itm_logits(model.fuse_cls(text, mask, tokens))


def match_scores(model: albef.Model, tokens, ids, mask) -> jax.Array:
  """float32 [B]: ITM's match logit minus its no-match logit."""
  logits = itm_logits(model, tokens, ids, mask)
  return logits[:, 1] - logits[:, 0]


def pair_loss(model: albef.Model, rows) -> tuple[jax.Array, jax.Array]:
  """ITM's cross-entropy over :func:`itm_rows` and the share of pairs
  whose own caption beats the twin's on each image."""
  tokens, ids, mask, labels = rows
  logits = itm_logits(model, tokens, ids, mask)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                         labels).mean()
  s = (logits[:, 1] - logits[:, 0]).reshape(4, -1)
  acc = jnp.mean(jnp.concatenate([s[0] > s[1], s[2] > s[3]]))
  return loss, acc


class TwinFit:
  """The trainer: frozen tower tokens in, text side trained on ``loss``
  (ITM's cross-entropy over :func:`itm_rows` by default; ``loss(model,
  rows)`` returns the loss and one metric, as :func:`pair_loss` does)."""

  def __init__(self, model: albef.Model, *, lr: float, steps: int,
               warmup: int = 100, weight_decay: float = 0.02,
               loss: Callable[..., tuple[jax.Array, jax.Array]] = pair_loss):
    self.graphdef, params, self.rest = nnx.split(model, _is_trained, ...)
    # A copy: the step donates its parameters, and ``model``'s may be a
    # restored run's, still in use.
    self.params = jax.tree.map(jnp.copy, params)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, lr, min(warmup, max(steps - 1, 1)), max(steps, 2))
    self.tx = optax.adamw(schedule, weight_decay=weight_decay)
    self.opt_state = self.tx.init(self.params)

    def loss_fn(params, rows):
      return loss(nnx.merge(self.graphdef, params, self.rest), rows)

    def step(params, opt_state, rows):
      (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, rows)
      updates, opt_state = self.tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss, acc

    self._step = jax.jit(step, donate_argnums=(0, 1))

  def step(self, rows) -> tuple[float, float]:
    """One optimiser step on ``rows``; returns (loss, metric)."""
    self.params, self.opt_state, loss, acc = self._step(
        self.params, self.opt_state, rows)
    return float(loss), float(acc)

  def step_flops(self, rows) -> float | None:
    """XLA's FLOPs of one :meth:`step` on ``rows`` (compiled, not run)."""
    return vision_pretrain.compiled_flops(self._step, self.params,
                                          self.opt_state, rows)

  def scorer(self, mesh, rules, batch_size: int) -> twin_probe.RowScorer:
    """A ``twin_probe.twin_metrics`` scorer of the current parameters over
    pre-embedded tokens (the rows' ``image`` are image tokens), batched and
    padded by ``evaluators.batching.BatchRunner``; returns {'itm': scores}."""
    runner = batching.BatchRunner(
        lambda params, batch: {'itm': match_scores(
            nnx.merge(self.graphdef, params, self.rest), batch['image'],
            batch['text_ids'], batch['text_mask'])},
        batch_size=batch_size, mesh=mesh, rules=rules)
    return lambda n, build_rows: runner.run(self.params, n, build_rows)


def tower_tokens(model: albef.Model, *, mesh, rules, batch_size: int
                 ) -> Callable[[np.ndarray], np.ndarray]:
  """A function from images [n, R, R, 3] to the frozen tower's tokens
  [n, 1 + N, Dv] (one compiled tower pass, batched and padded)."""
  graphdef, state = nnx.split(model)
  runner = batching.BatchRunner(
      lambda s, batch: {'tokens': nnx.merge(graphdef, s).embed_image(
          batch['image'])['image_embeds']},
      batch_size=batch_size, mesh=mesh, rules=rules)
  return lambda images: runner.run(state, len(images), lambda rows: {
      'image': images[list(rows)]})['tokens']


def tower_flops(model: albef.Model, resolution: int) -> float | None:
  """XLA's FLOPs of the tower's forward pass over one image."""
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda s, x: nnx.merge(graphdef, s).embed_image(x)[
      'image_embeds'])
  return vision_pretrain.compiled_flops(
      fn, state, jnp.zeros((1, resolution, resolution, 3), jnp.float32))


def embed_twins(model: albef.Model, all_twins: Sequence[twin_probe.Twins],
                *, mesh, rules, batch_size: int) -> list[twin_probe.Twins]:
  """Each of ``all_twins`` with its images replaced by their tower tokens
  [1 + N, Dv] (one compiled tower pass for all of them)."""
  tokens = tower_tokens(model, mesh=mesh, rules=rules, batch_size=batch_size)
  return [dataclasses.replace(t, image_a=tokens(t.image_a),
                              image_b=tokens(t.image_b)) for t in all_twins]


def benchmark_scores(run: restore.Run, model: albef.Model,
                     names: Sequence[str] = synthetic_evals.PAIRWISE
                     ) -> dict[str, float]:
  """``model`` (e.g. the fitted text side on ``run``'s tower) scored on
  ``run``'s evaluation sets ``names`` (its ``config.evals`` entries; by
  default the synthetic sets read through ITM: VALSE-, SVO-, Winoground-
  and VSR-style), as ``<eval>/<metric>`` with their chance levels, so
  ``vlg.analysis.significance`` reads them.

  Raises:
    ValueError: none of ``names`` is among the run's evaluations.
  """
  evals = {n: run.config.evals[n] for n in names if n in run.config.evals}
  if not evals:
    raise ValueError(f'{run.workdir}: none of {list(names)} is in the '
                     "run's config.evals")
  graphdef, state = nnx.split(model, nnx.Param)
  params = nnx.to_pure_dict(state)
  scored = dataclasses.replace(run, graphdef=graphdef, params=params,
                               predict_fns=predict.make_predict_fns(
                                   graphdef, box_head=bool(
                                       run.config.model.get('box_head'))))
  metrics = {}
  for name, (evaluator, _) in restore.build_evaluators(
      scored, evals).items():
    metrics.update({f'{name}/{k}': float(v)
                    for k, v in evaluator.run(params).items()})
  return metrics


def skills_line(metrics: dict[str, float]) -> str:
  """Each benchmark's metric furthest above chance, in binomial SDs."""
  best = significance.best_per_benchmark(significance.above_chance(metrics))
  return '; '.join(f'{r.name} {r.value:.3f} ({r.z:+.1f} SD)'
                   for _, r in sorted(best.items()))


def fit(run: restore.Run, *, pairs: int = 8000, steps: int = 3000,
        batch_size: int = 32, lr: float = 3e-4, eval_every: int = 250,
        twins: int = 200, reinit: bool = False, seed: int = 0,
        edits: Sequence[str] | None = None, caption: str = 'first',
        fusion_posemb: str | None = None, benchmarks: bool = False,
        log: Callable[[str], None] = print) -> list[dict[str, float]]:
  """Trains and evaluates as the module docstring says; returns one row
  of metrics per evaluation (step 0 first).

  ``benchmarks``: the first and last rows also hold the run's synthetic
  benchmark sets read through ITM (:func:`benchmark_scores`), before and
  after the fit, so one sees whether what the pairs taught transfers.

  ``fusion_posemb`` (a ``model.fusion_posemb`` value; None: the run's)
  sets what the fusion adds to the image tokens it reads, so a run trained
  without the position table can be asked the pairs with it.

  Raises:
    ValueError: the run's caption sources are not one synthetic world, or
      an unknown ``fusion_posemb``.
    FloatingPointError: the loss is not finite (nothing is written).
  """
  cfg = run.config
  world_cfg = batch_truth.caption_world(cfg.input)
  if world_cfg is None:
    raise ValueError(f'{run.workdir}: the caption sources are not one '
                     'synthetic world; twin_fit needs its contrast pairs')
  model = nnx.merge(run.graphdef, fresh_text_params(run, seed) if reinit
                    else run.params)
  if fusion_posemb is not None:
    model.fusion_posemb = albef.checked_fusion_posemb(fusion_posemb)
  kw = dict(edits=edits, caption=caption,
            max_words=int(cfg.input.max_words),
            max_len=int(cfg.input.max_text_len),
            resolution=int(cfg.input.resolution))
  start = time.time()
  with jax.set_mesh(run.mesh):
    train, held_out = embed_twins(model, [
        twin_probe.held_out_twins(world_cfg, run.tokenizer, num=n,
                                  split=split, **kw)
        for n, split in ((pairs, 'train'), (twins, 'val'))],
                                  mesh=run.mesh, rules=run.rules,
                                  batch_size=256)
    log(f'{pairs} training and {twins} held-out pairs embedded in '
        f'{time.time() - start:.0f} s')
    trainer = TwinFit(model, lr=lr, steps=steps)
    score_rows = trainer.scorer(run.mesh, run.rules, 256)
    head = dataclasses.replace(train, **{
        f.name: getattr(train, f.name)[:twins]
        for f in dataclasses.fields(train)})
    rng = np.random.default_rng(seed)
    history, losses, accs = [], [], []
    # Compute spent, for budgets: the tower over both images of every
    # pair embedded, then each step's XLA count (None where XLA has none).
    per_image = tower_flops(model, kw['resolution'])
    embed_flops = None if per_image is None else per_image * 2 * (
        pairs + twins)
    step_flops = None
    start = time.time()
    for step in range(steps + 1):
      if step:
        idx = rng.integers(0, pairs, batch_size)
        rows = itm_rows(
            train.image_a[idx], train.image_b[idx], train.ids_a[idx],
            train.mask_a[idx], train.ids_b[idx], train.mask_b[idx])
        if step == 1:
          step_flops = trainer.step_flops(rows)
          log(f'{(step_flops or 0) / 1e9:.2f} GFLOP a step (XLA), tower '
              f'{(embed_flops or 0) / 1e12:.2f} TFLOP for the pairs')
        loss, acc = trainer.step(rows)
        if not np.isfinite(loss):
          raise FloatingPointError(
              f'twin_fit: ITM loss {loss} at step {step} (lr {lr}); '
              'lower --lr')
        losses.append(loss)
        accs.append(acc)
      if step % eval_every and step != steps:
        continue
      row = {'step': float(step)}
      if embed_flops is not None and (step == 0 or step_flops is not None):
        row['fit_tflop'] = (embed_flops + step * (step_flops or 0)) / 1e12
      if losses:
        row.update(loss=float(np.mean(losses)),
                   batch_pair_acc=float(np.mean(accs)))
        losses, accs = [], []
      row.update(twin_probe.twin_metrics(score_rows, held_out))
      row['fit_pair_acc'] = twin_probe.twin_metrics(
          score_rows, head)['twin_itm_pair_acc']
      scores = {}
      if benchmarks and step in (0, steps):
        scores = benchmark_scores(run, nnx.merge(
            trainer.graphdef, trainer.params, trainer.rest))
        log(f'step {step} benchmarks: {skills_line(scores)}')
      history.append({**row, **scores})
      eta = (time.time() - start) / max(step, 1) * (steps - step)
      log(f'step {step}/{steps} (ETA {eta / 60:.1f} min): ' + ', '.join(
          f'{k} {v:.3f}' for k, v in sorted(row.items())
          if k != 'step' and not k.startswith('twin_num')))
  return history


def run_fit(store: dict, fit_fn: Callable[..., list[dict]],
            names: Sequence[str], labels: Sequence[str] = ()) -> None:
  """Loads ``--workdir`` at ``--step``, calls ``fit_fn(run, **flags)`` with
  the flags ``names`` of ``store`` (defined by ``define_fit_flags`` and the
  tool) and, with ``--out``, writes one JSON line per evaluation: the run,
  its step, the flags ``labels`` and the row. Shared with ``box_fit``."""
  run = restore.load_run(store['workdir'].value, store['step'].value)
  try:
    history = fit_fn(run, **{k: store[k].value for k in names})
  finally:
    run.close()
  if store['out'].value:
    with open(store['out'].value, 'w') as f:
      for row in history:
        f.write(json.dumps({'workdir': run.workdir, 'ckpt_step': run.step,
                            **{k: store[k].value for k in labels},
                            **row}) + '\n')


def define_fit_flags(store: dict, *, batch_size: int, batch_help: str,
                     asks: str, seed_help: str) -> None:
  """Defines into ``store`` the flags every fit on a frozen tower has: the
  run (``workdir``, ``step``), the schedule (``steps``, ``batch_size``,
  ``lr``, ``eval_every``, ``seed``), ``fusion_posemb`` (``asks``: what a
  run trained without the table is asked with it) and ``out``."""
  store['workdir'] = flags.DEFINE_string(
      'workdir', None, 'Training workdir (checkpoints/, config, tokenizer).')
  store['step'] = flags.DEFINE_integer(
      'step', None, 'Kept step to start from (default: the latest).')
  store['steps'] = flags.DEFINE_integer('steps', 3000, 'Optimiser steps.')
  store['batch_size'] = flags.DEFINE_integer(
      'batch_size', batch_size, batch_help)
  store['lr'] = flags.DEFINE_float(
      'lr', 3e-4, 'Peak AdamW learning rate (100 warm-up steps, cosine).')
  store['eval_every'] = flags.DEFINE_integer(
      'eval_every', 250, 'Steps between held-out evaluations.')
  store['fusion_posemb'] = flags.DEFINE_enum(
      'fusion_posemb', None, list(albef.FUSION_POSEMBS),
      "What the fusion adds to the image tokens (model.fusion_posemb; "
      "default: the run's): 'sincos2d' asks a run trained without the "
      f'position table {asks} with it.')
  store['seed'] = flags.DEFINE_integer('seed', 0, seed_help)
  store['out'] = flags.DEFINE_string(
      'out', '', 'Also write one JSON line per evaluation here.')
  flags.mark_flags_as_required(['workdir'])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  run_fit(_FLAGS, fit, ('pairs', 'steps', 'batch_size', 'lr', 'eval_every',
                        'twins', 'reinit', 'seed', 'edits', 'caption',
                        'fusion_posemb', 'benchmarks'),
          labels=('reinit', 'caption', 'fusion_posemb'))


def define_flags() -> None:
  """Defines the flags (only when run as a program)."""
  define_fit_flags(_FLAGS, batch_size=32,
                   batch_help='Pairs a step (four ITM rows each).',
                   asks='the pairs',
                   seed_help='Seed of the batch order and of --reinit.')
  _FLAGS['pairs'] = flags.DEFINE_integer(
      'pairs', 8000, "Contrast pairs of the 'train' split to learn from.")
  _FLAGS['twins'] = flags.DEFINE_integer(
      'twins', 200, "Held-out pairs of the 'val' split to score.")
  _FLAGS['reinit'] = flags.DEFINE_boolean(
      'reinit', False, 'Start the text encoder, fusion and heads afresh.')
  _FLAGS['edits'] = flags.DEFINE_list(
      'edits', None, 'Only pairs of these edits (swap, recolour, reverse; '
      'default: all), to train and to score.')
  _FLAGS['caption'] = flags.DEFINE_enum(
      'caption', 'first', list(twin_probe.CAPTIONS),
      "Each side's caption: the world's first (fewest words: often shapes "
      'alone) or the longest (size, colour and shape of every object).')
  _FLAGS['benchmarks'] = flags.DEFINE_boolean(
      'benchmarks', False, "Also score the run's synthetic VALSE-, SVO-, "
      'Winoground- and VSR-style sets through ITM before and after the fit.')


if __name__ == '__main__':
  define_flags()
  app.run(main)
