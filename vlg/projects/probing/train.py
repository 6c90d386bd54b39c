"""Training probes on a frozen or jointly trained encoder.

  encoder = train.model_encoder(restore.load_run(workdir))
  spec = taps.parse_spec('tap=fused_cls,reduce=cls')
  result = train.train_probe(encoder, spec, tasks.get_task('vsr'), splits,
                             inputs, hp, regime='frozen', cache_dir=cache)

Two regimes, one loop (docs/probing.md §2.5, §6.3 item 4):

* **frozen**: the encoder runs once per split, without dropout, to extract
  the tap after its fixed reducer (``attn_pool``: the tokens and mask) into
  ``vlg.projects.probing.feature_cache`` (bfloat16 on disk, keyed by
  encoder weights = checkpoint path and step, tap spec, dataset
  fingerprint). Then a tiny
  jitted loop trains only the probe on the cached arrays, converted to
  float32 per batch; the encoder's parameters are never in the optimizer. A
  second run (another seed, another HPO trial) reads the cache.
* **unfrozen**: one jitted step over ``{'probe', 'encoder'}`` parameters with
  ``optax.multi_transform``, labels from NNX path filters: ``probe`` →
  AdamW(lr); the resampler (for a vlg Model its text and fusion layers) →
  AdamW(lr · lr_mult); ``vision`` (the image tower) and ``frozen`` (heads
  the tap does not pass through) → ``optax.set_to_zero()``. Their
  parameters also get ``stop_gradient``, so no gradient is computed for
  them. Dropout runs as configured in the encoder. Texts are padded only
  to the longest text of the task (``Inputs.text_len``), not to
  ``max_text_len``: the same taps for a fraction of the compute.

Both: AdamW, weight decay on matrices only (``vlg.optim.decay_mask``), wd
0.01, linear warm-up over the first 10% of steps then linear (or cosine)
decay to 0, batch 128 (the last batch of an epoch is padded with weight-0
rows), validation after every epoch, early stopping after ``patience``
epochs without a strictly better validation metric, and the best epoch's
parameters evaluated on validation and test. :class:`ProbeResult` holds the
metrics, per-example predictions (for ``vlg.projects.probing.analysis``)
and history.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vlg import optim
from vlg.evaluators import common as eval_common
from vlg.projects.probing import feature_cache
from vlg.projects.probing import heads
from vlg.projects.probing import taps
from vlg.projects.probing import tasks as tasks_lib

PyTree = Any
TapFn = Callable[[nnx.Module, dict[str, jax.Array], tuple[str, ...],
                  nnx.Rngs | None], dict[str, taps.Tap]]
REGIMES = ('frozen', 'unfrozen')
# Parts of a vlg Model that no tap passes through: kept fixed when unfrozen.
MODEL_HEADS = ('vision_proj', 'text_proj', 'itm_head', 'box_head', 'mrc_head',
               'mlm_head', 'temp')


@dataclasses.dataclass(frozen=True)
class HParams:
  """Probe training settings (docs/probing.md §2.5; the HPO searches some)."""
  head: str = 'linear'
  hidden: int = 768
  pre_norm: bool = False
  dropout: float = 0.0
  lr: float = 1e-4
  lr_mult: float = 0.1
  epochs: int = 20
  batch_size: int = 128
  eval_batch_size: int = 256
  weight_decay: float = 0.01
  warmup_fraction: float = 0.1
  schedule: str = 'linear'  # 'linear' | 'cosine' decay after warm-up.
  patience: int | None = 10  # Epochs; None: no early stopping.
  l1_weight: float = 5.0
  giou_weight: float = 2.0
  seed: int = 0


@dataclasses.dataclass
class Encoder:
  """What a probe reads: a model's graphdef, parameters and tap function.

  Attributes:
    graphdef: ``nnx.split`` graphdef.
    params: the parameters as a pure dict.
    tap_fn: ``(model, batch, names, rngs) -> {name: (tokens, mask)}``.
    cache_id: identifies the weights (e.g. ``'/abs/workdir@600'``); part of
      the feature-cache key.
    vision_filter: NNX filter of the image tower's parameters.
    frozen_filter: NNX filter of other parameters kept fixed when unfrozen.
  """
  graphdef: Any
  params: PyTree
  tap_fn: TapFn
  cache_id: str
  vision_filter: Any = nnx.PathContains('vision')
  frozen_filter: Any = nnx.Nothing()


def model_encoder(run: Any) -> Encoder:
  """An :class:`Encoder` over a ``vlg.restore.Run`` of an ALBEF-family model."""
  return Encoder(
      graphdef=run.graphdef, params=run.params,
      tap_fn=lambda m, b, names, rngs: taps.model_taps(m, b, names, rngs=rngs),
      cache_id=f'{run.workdir}@{run.step}',
      frozen_filter=nnx.Any(*(nnx.PathContains(k) for k in MODEL_HEADS)))


def resampler_encoder(module: taps.VisionResampler, cache_id: str
                      ) -> Encoder:
  """An :class:`Encoder` over a :class:`taps.VisionResampler`; the
  resampler's stage-1 heads stay fixed when unfrozen."""
  graphdef, state = nnx.split(module, nnx.Param)
  return Encoder(
      graphdef=graphdef, params=nnx.to_pure_dict(state),
      tap_fn=lambda m, b, names, rngs: m.taps(b, names, rngs),
      cache_id=cache_id, frozen_filter=nnx.Any(
          *(nnx.PathContains(k) for k in MODEL_HEADS + ('lm_head',))))


class Inputs:
  """Builds (image, text) model inputs for probe examples, images cached."""

  def __init__(self, tokenizer: Any, *, resolution: int,
               max_text_len: int = 64, max_words: int = 64):
    self.tokenizer, self.resolution = tokenizer, resolution
    self.max_text_len, self.max_words = max_text_len, max_words
    self.load_image = eval_common.ImageCache(resolution)

  def __call__(self, examples: Sequence[tasks_lib.ProbeExample],
               rows: Sequence[int], *, text_len: int | None = None
               ) -> dict[str, np.ndarray]:
    """Images and texts of ``examples[rows]``; texts padded to
    ``max_text_len``, or cut to ``text_len`` (from :meth:`text_len`)."""
    ids, masks = eval_common.encode_texts(
        self.tokenizer, [examples[r].text for r in rows], self.max_text_len,
        self.max_words)
    if text_len is not None:
      if masks[:, text_len:].any():
        raise ValueError(f'text_len={text_len} cuts real tokens; use '
                         'Inputs.text_len over every example fed')
      ids, masks = ids[:, :text_len], masks[:, :text_len]
    return {'image': np.stack([self.load_image(examples[r].image)
                               for r in rows]),
            'text_ids': ids, 'text_mask': masks}

  def text_len(self, examples: Sequence[tasks_lib.ProbeExample],
               multiple: int = 8) -> int:
    """The tokens of the longest text of ``examples``, rounded up to
    ``multiple`` and at most ``max_text_len``: the padding that suffices.

    Cutting only padding changes no tap (padded tokens are masked out of
    every attention), and an encoder trained through a 64-token padding
    mostly computes padding on short probe texts: the unfrozen regime pads
    to this length instead."""
    _, masks = eval_common.encode_texts(
        self.tokenizer, [e.text for e in examples], self.max_text_len,
        self.max_words)
    longest = int(masks.sum(1).max()) if len(masks) else 1
    return min(self.max_text_len, -(-longest // multiple) * multiple)

  def settings(self) -> dict[str, Any]:
    """What besides the examples decides the model inputs."""
    fp = getattr(self.tokenizer, 'fingerprint', '')
    return {'resolution': self.resolution, 'max_text_len': self.max_text_len,
            'max_words': self.max_words,
            'tokenizer': fp() if callable(fp) else str(fp)}


@dataclasses.dataclass
class ProbeResult:
  """A trained probe's metrics, per-example predictions and history."""
  metrics: dict[str, float]
  predictions: dict[str, np.ndarray]
  history: list[dict[str, float]]
  probe_params: PyTree
  encoder_params: PyTree | None  # The trained encoder (unfrozen only).
  cache_hits: dict[str, bool]


class EarlyStopping:
  """Stops after ``patience`` updates without a strictly better value."""

  def __init__(self, patience: int | None):
    self.patience = patience
    self.best = -np.inf
    self.best_epoch = -1
    self.bad_epochs = 0

  def update(self, epoch: int, value: float) -> tuple[bool, bool]:
    """Records ``value``; returns ``(improved, stop)``."""
    improved = bool(value > self.best)
    if improved:
      self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
    else:
      self.bad_epochs += 1
    stop = self.patience is not None and self.bad_epochs >= self.patience
    return improved, stop


# Optimizer
# ---------------------------------------------------------------------------


def probe_schedule(hp: HParams, total_steps: int) -> optax.Schedule:
  """Linear warm-up over ``warmup_fraction`` of the steps, then decay to 0."""
  warmup = max(1, int(round(hp.warmup_fraction * total_steps)))
  decay = max(1, total_steps - warmup)
  if hp.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, hp.lr, warmup,
                                              warmup + decay, 0.0)
  if hp.schedule != 'linear':
    raise ValueError(f"schedule={hp.schedule!r}; valid: 'linear', 'cosine'")
  return optax.join_schedules(
      [optax.linear_schedule(0.0, hp.lr, warmup),
       optax.linear_schedule(hp.lr, 0.0, decay)], [warmup])


def param_labels(params: PyTree, encoder: Encoder | None) -> PyTree:
  """``probe`` / ``resampler`` / ``vision`` / ``frozen`` per parameter of
  ``{'probe': ..., 'encoder': ...}``, the encoder's by its NNX filters."""
  if encoder is None:
    return jax.tree.map(lambda _: 'probe', params)
  is_vision = nnx.filterlib.to_predicate(encoder.vision_filter)
  is_frozen = nnx.filterlib.to_predicate(encoder.frozen_filter)

  def label(path, value):
    keys = tuple(getattr(k, 'key', getattr(k, 'idx', k)) for k in path)
    if keys[0] == 'probe':
      return 'probe'
    if is_vision(keys[1:], value):
      return 'vision'
    return 'frozen' if is_frozen(keys[1:], value) else 'resampler'
  return jax.tree_util.tree_map_with_path(label, params)


def probe_optimizer(hp: HParams, total_steps: int, labels: PyTree
                   ) -> optax.GradientTransformation:
  """AdamW(lr) on the probe, AdamW(lr · lr_mult) on the resampler, zero
  updates for the vision tower and the fixed heads."""
  schedule = probe_schedule(hp, total_steps)

  def adamw(scale):
    return optax.adamw(lambda step: scale * schedule(step),
                       weight_decay=hp.weight_decay, mask=optim.decay_mask)
  return optax.multi_transform(
      {'probe': adamw(1.0), 'resampler': adamw(hp.lr_mult),
       'vision': optax.set_to_zero(), 'frozen': optax.set_to_zero()},
      labels)


# Training
# ---------------------------------------------------------------------------


class Probe(nnx.Module):
  """The trained part: an optional ``attn_pool`` and the head."""

  def __init__(self, spec: taps.TapSpec, in_dim: int, out_dim: int,
               hp: HParams, *, rngs: nnx.Rngs):
    self.pool = (taps.AttnPool(in_dim, rngs=rngs)
                 if spec.reduce == 'attn_pool' else nnx.data(None))
    self.head = heads.create_head(hp.head, in_dim, out_dim, hidden=hp.hidden,
                                  pre_norm=hp.pre_norm,
                                  dropout_rate=hp.dropout, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array, *,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    if self.pool is not None:
      x = self.pool(x, mask)
    return self.head(x, rngs=rngs)


def init_probe(spec: taps.TapSpec, in_dim: int, out_dim: int, hp: HParams):
  """(graphdef, params) of a fresh probe, seeded by ``hp.seed``."""
  with nnx.use_eager_sharding(False):
    probe = Probe(spec, in_dim, out_dim, hp, rngs=nnx.Rngs(hp.seed))
  graphdef, state = nnx.split(probe, nnx.Param)
  return graphdef, nnx.to_pure_dict(state)


def _padded_rows(indices: np.ndarray, start: int, size: int
                 ) -> tuple[list[int], np.ndarray]:
  chunk = list(indices[start:start + size])
  weight = np.zeros(size, np.float32)
  weight[:len(chunk)] = 1.0
  return chunk + [chunk[0]] * (size - len(chunk)), weight


def train_probe(encoder: Encoder, spec: taps.TapSpec, task: tasks_lib.Task,
                splits: dict[str, Sequence[tasks_lib.ProbeExample]],
                inputs: Inputs, hp: HParams, *, regime: str = 'frozen',
                cache_dir: str | None = None,
                log: Callable[[str], None] | None = None) -> ProbeResult:
  """Trains one probe; see the module docstring.

  Args:
    encoder: the encoder to probe.
    spec: the tap and reducer.
    task: the probing task.
    splits: ``train`` and ``val`` (and optionally ``test``) examples.
    inputs: builds model inputs from examples.
    hp: training settings.
    regime: ``frozen`` or ``unfrozen``.
    cache_dir: the feature cache (frozen regime); None: no cache.
    log: called with one line per epoch.

  Returns:
    Metrics ``<split>/<metric>`` at the best validation epoch (plus
    ``best_epoch``, ``epochs_run``, ``stopped_early``), predictions per
    split, the per-epoch history and the trained parameters.
  """
  if regime not in REGIMES:
    raise ValueError(f'regime={regime!r}; valid: {list(REGIMES)}')
  for name in ('train', 'val'):
    if not splits.get(name):
      raise ValueError(f'train_probe needs a non-empty {name!r} split, got '
                       f'{ {k: len(v) for k, v in splits.items()} }')
  targets = {k: tasks_lib.targets_array(v) for k, v in splits.items() if v}
  loss_hp = {'l1_weight': hp.l1_weight, 'giou_weight': hp.giou_weight}
  hits: dict[str, bool] = {}

  if regime == 'frozen':
    feats = {}
    for name, examples in splits.items():
      if examples:
        feats[name], hits[name] = feature_cache.cached_features(
            encoder, spec, examples, inputs, cache_dir=cache_dir,
            batch_size=hp.eval_batch_size)
    in_dim = feats['train']['x'].shape[-1]

    def rows_of(split, rows):
      f = feats[split]
      return {'x': feature_cache.as_float32(f['x'][rows]),
              'mask': f['mask'][rows] if 'mask' in f else
                      np.ones((len(rows), 1), np.int32)}
  else:
    probe_rows = inputs(splits['train'], [0])  # For the tap's shape only.
    shape = jax.eval_shape(
        lambda p, b: encoder.tap_fn(nnx.merge(encoder.graphdef, p), b,
                                    (spec.tap,), None)[spec.tap][0],
        encoder.params, probe_rows)
    in_dim = taps.feature_dim(spec, shape.shape[1], shape.shape[2])
    if spec.reduce == 'attn_pool':
      in_dim = shape.shape[2]

    text_len = inputs.text_len([e for v in splits.values() for e in v])

    def rows_of(split, rows):
      return inputs(splits[split], rows, text_len=text_len)

  probe_graphdef, probe_params = init_probe(spec, in_dim, task.out_dim, hp)
  params = {'probe': probe_params}
  if regime == 'unfrozen':
    params['encoder'] = jax.tree.map(jnp.copy, encoder.params)
  labels = param_labels(params, encoder if regime == 'unfrozen' else None)
  fixed = jax.tree.map(lambda l: l in ('vision', 'frozen'), labels)

  def forward(params, batch, rngs):
    if regime == 'frozen':
      x, mask = batch['x'], batch['mask']
    else:
      enc = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p,
                         params['encoder'], fixed['encoder'])
      model = nnx.merge(encoder.graphdef, enc)
      x, mask = encoder.tap_fn(model, batch, (spec.tap,), rngs)[spec.tap]
      if spec.reduce != 'attn_pool':
        x = taps.reduce_fixed(spec.reduce, x, mask)
    probe = nnx.merge(probe_graphdef, params['probe'])
    return probe(x, mask, rngs=rngs)

  n_train = len(splits['train'])
  batch_size = min(hp.batch_size, n_train)
  steps_per_epoch = -(-n_train // batch_size)
  tx = probe_optimizer(hp, hp.epochs * steps_per_epoch, labels)

  @jax.jit
  def train_step(state, batch):
    rng = jax.random.fold_in(state['rng'], state['step'])

    def loss_fn(p):
      out = forward(p, batch, nnx.Rngs(dropout=rng))
      return task.loss(out, batch['target'], batch['weight'], loss_hp)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state['params'])
    updates, opt = tx.update(grads, state['opt'], state['params'])
    return ({'params': optax.apply_updates(state['params'], updates),
             'opt': opt, 'step': state['step'] + 1, 'rng': state['rng']},
            {'loss': loss, **metrics})

  @jax.jit
  def predict_step(params, batch):
    return task.predict(forward(params, batch, None))

  def predict(params, split):
    n, size = len(splits[split]), hp.eval_batch_size
    out = []
    for start in range(0, n, size):
      rows, _ = _padded_rows(np.arange(n), start, size)
      out.append(np.asarray(predict_step(params, rows_of(split, rows)))[
          :n - start])
    return np.concatenate(out)

  state = {'params': params, 'opt': tx.init(params),
           'step': jnp.zeros((), jnp.int32),
           'rng': jax.random.PRNGKey(hp.seed)}
  order_rng = np.random.default_rng(hp.seed)
  stopper = EarlyStopping(hp.patience)
  best_params, history = jax.device_get(state['params']), []
  for epoch in range(1, hp.epochs + 1):
    order = order_rng.permutation(n_train)
    losses = []
    for start in range(0, n_train, batch_size):
      rows, weight = _padded_rows(order, start, batch_size)
      batch = dict(rows_of('train', rows), target=targets['train'][rows],
                   weight=weight)
      state, metrics = train_step(state, batch)
      losses.append(metrics['loss'])
    val = task.metrics(predict(state['params'], 'val'), targets['val'])
    record = {'epoch': epoch, 'train_loss': float(np.mean(losses)),
              f'val/{task.headline}': val[task.headline]}
    history.append(record)
    improved, stop = stopper.update(epoch, val[task.headline])
    if improved:
      best_params = jax.device_get(state['params'])
    if log is not None:
      log(', '.join(f'{k} {v:.4g}' for k, v in record.items()))
    if stop:
      break

  metrics = {'best_epoch': float(stopper.best_epoch),
             'epochs_run': float(len(history)),
             'stopped_early': float(len(history) < hp.epochs)}
  predictions = {}
  for split in splits:
    if splits[split]:
      predictions[split] = predict(best_params, split)
      meta = [e.meta for e in splits[split]]
      split_metrics = task.metrics(predictions[split], targets[split], meta)
      split_metrics.update(task.baseline(targets['train'], targets[split]))
      metrics.update({f'{split}/{k}': v for k, v in split_metrics.items()})
  return ProbeResult(
      metrics=metrics, predictions=predictions, history=history,
      probe_params=best_params['probe'],
      encoder_params=best_params.get('encoder'), cache_hits=hits)
