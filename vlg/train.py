"""The vlg training loop: one readable function, top to bottom.

``train_and_evaluate(config, workdir)`` sets up the mesh, data, model and
optimizer, resumes from ``WORKDIR/checkpoints`` if a checkpoint is there, and
trains. The train state is the pytree of :mod:`vlg.train_state`, and one jitted, donated ``train_step(state, batch)`` updates it: EMA first,
then the online model's loss and gradients, AdamW, temperature clamp, and the
queue update with the momentum features. Every random draw is derived from
``fold_in(rng, step)``, and the grain iterator state is checkpointed, so an
interrupted-and-resumed run logs the same losses as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import periodic_actions
from jax.experimental import multihost_utils
from flax import nnx

from vlg import checkpointing
from vlg import config_lib
from vlg import false_negatives
from vlg import optim
from vlg import predict
from vlg import sharding
from vlg import train_state
from vlg import vision_pretrain
from vlg import writers
from vlg.data import batch_spec
from vlg.data import parts as data_parts
from vlg.data import pipeline
from vlg.evaluators import common as eval_common
from vlg.objectives import albef as albef_objective
from vlg.objectives import itc
from vlg.objectives import part as part_lib
from vlg.objectives import pretrain
from vlg.weights import init as weights_init


class NonFiniteLossError(RuntimeError):
  """Raised when the loss or gradients become NaN/Inf."""


class EvaluationError(RuntimeError):
  """An evaluator failed and ``config.eval_failure`` is ``'stop'``; the
  checkpoint of the step it evaluated is saved first."""


# config.eval_failure: what a failing evaluator (config.evals) does to the
# run. 'stop' raises EvaluationError naming it, after the step's checkpoint;
# 'skip' logs a warning naming it, writes nothing for it at that step and
# trains on.
EVAL_FAILURE = ('stop', 'skip')


# The train step
# ---------------------------------------------------------------------------


def check_parts(config) -> None:
  """Fails early when the typed parts do not fit the model (each part's
  ``check_model``, ``vlg/data/parts/``) or have no objective."""
  for name, part in pipeline.enabled_parts(config.input).items():
    module = data_parts.part_module(name)
    patch = part.get('patch_size')
    if patch is not None and int(patch) != int(config.model.patch_size):
      raise ValueError(f'input.parts.{name}.patch_size={patch} differs from '
                       f'model.patch_size={config.model.patch_size}')
    if hasattr(module, 'check_model'):
      module.check_model(config.model, part)
    part_lib.part_objective(name)


def make_train_step(config, graphdef, tx, schedule):
  """Returns the pure ``train_step(state, batch) -> (state, metrics)``.

  ``metrics`` are scalars, plus (without gradient accumulation) the [B]
  vectors of the drawn caption ITM negatives, ``itm_neg_image`` and
  ``itm_neg_text`` (``vlg.false_negatives`` reads them).
  """
  check_parts(config)
  pretrain_loss = pretrain.make_loss_fn(config)
  momentum = float(config.loss.momentum)
  distill = bool(config.loss.get('momentum_distill', True))
  # ITC leaves the queue rows not yet written out (itc.itc_loss).
  mask_unfilled = bool(config.loss.get('queue_mask_unfilled', False))
  use_dropout = float(config.model.get('dropout', 0.0)) > 0

  accum = int(config.get('grad_accum_steps', 1))
  if accum < 1:
    raise ValueError(f'grad_accum_steps must be >= 1, got {accum}')

  def grads_and_metrics(params, ema, queues, batch, rng, step):
    """Loss gradients, metrics and momentum features of one (micro-)batch."""
    itm_rng, dropout_rng = jax.random.split(rng)
    alpha = itc.alpha_at(step, config.loss.alpha, config.alpha_warmup_steps)
    mom = (albef_objective.momentum_outputs(nnx.merge(graphdef, ema), batch)
           if distill else None)

    if mask_unfilled and distill:
      queues = dict(queues, filled=itc.queue_filled(
          step, int(config.batch_size), int(config.queue_size)))

    def loss_fn(params):
      model = nnx.merge(graphdef, params)
      rngs = nnx.Rngs(dropout=dropout_rng) if use_dropout else None
      return pretrain_loss(model, batch, momentum=mom, queues=queues,
                           rng=itm_rng, alpha=alpha, dropout_rngs=rngs)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    feats = ({'image': mom['image_feat'], 'text': mom['text_feat']}
             if distill else {})
    return grads, metrics, feats

  def accumulated(params, ema, queues, batch, rng, step):
    """Mean gradients and metrics over ``accum`` strided micro-batches.

    Micro-batch ``i`` holds examples ``i, i + accum, ...`` of every batch
    slot, so each data shard keeps its own examples. In-batch negatives (ITC,
    ITM) come from the micro-batch, as on a device with less memory; the
    queues see every momentum feature of the step.
    """
    micro = jax.tree.map(lambda x: _strided_split(x, accum), batch)

    def body(grads_sum, xs):
      micro_batch, i = xs
      grads, metrics, feats = grads_and_metrics(
          params, ema, queues, micro_batch, jax.random.fold_in(rng, i), step)
      return jax.tree.map(jnp.add, grads_sum, grads), (metrics, feats)

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads_sum, (metrics, feats) = jax.lax.scan(
        body, zeros, (micro, jnp.arange(accum)))
    grads = jax.tree.map(lambda g: g / accum, grads_sum)
    # Scalars only: a per-example vector (e.g. the drawn ITM negatives)
    # indexes its own micro-batch, so a mean of them means nothing.
    metrics = {k: jnp.mean(m, axis=0) for k, m in metrics.items()
               if m.ndim == 1}
    feats = jax.tree.map(lambda f: f.reshape(-1, f.shape[-1]), feats)
    return grads, metrics, feats

  def train_step(state, batch):
    step = state['step']
    rng = jax.random.fold_in(state['rng'], step)
    # EMA first, then the momentum forward (docs/objectives.md §2.1, step 2).
    ema = jax.tree.map(lambda e, p: momentum * e + (1 - momentum) * p,
                       state['ema'], state['params'])
    compute = grads_and_metrics if accum == 1 else accumulated
    grads, metrics, feats = compute(state['params'], ema, state['queues'],
                                    batch, rng, step)
    updates, opt = tx.update(grads, state['opt'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    params['temp'] = itc.clamp_temp(params['temp'])

    if distill:
      image_q, ptr = itc.update_queue(state['queues']['image'],
                                      feats['image'], state['queues']['ptr'])
      text_q, _ = itc.update_queue(state['queues']['text'], feats['text'],
                                   state['queues']['ptr'])
      queues = {'image': image_q, 'text': text_q, 'ptr': ptr}
    else:
      queues = state['queues']

    loss = metrics['loss']
    grad_norm = optax.tree.norm(grads)
    bad = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
    nonfinite = {
        'count': state['nonfinite']['count'] + bad.astype(jnp.int32),
        'first_step': jnp.where(
            bad & (state['nonfinite']['first_step'] < 0), step + 1,
            state['nonfinite']['first_step']),
    }
    num_bad = state['num_bad_examples'] + sum(
        jnp.sum(v) for k, v in batch.items() if k.startswith('_num_bad'))
    metrics.update(lr=schedule(step), grad_norm=grad_norm,
                   param_norm=optax.tree.norm(params),
                   num_bad_examples_total=num_bad.astype(jnp.float32))
    new_state = {
        'params': params, 'ema': ema, 'opt': opt,
        'queues': queues,
        'step': step + 1, 'rng': state['rng'], 'nonfinite': nonfinite,
        'num_bad_examples': num_bad,
    }
    return new_state, metrics

  return train_step


def _strided_split(x: jax.Array, parts: int) -> jax.Array:
  """[N, ...] → [parts, N / parts, ...]; row ``i`` holds ``x[i::parts]``."""
  if x.ndim == 0 or x.shape[0] % parts:
    raise ValueError(f'A batch slot of shape {x.shape} does not split into '
                     f'grad_accum_steps={parts} micro-batches')
  return jnp.swapaxes(x.reshape(x.shape[0] // parts, parts, *x.shape[1:]),
                      0, 1)


def build_step(config, mesh, rules) -> dict[str, Any]:
  """Model, optimizer, state shardings and the jitted step for ``config``.

  Returns a dict with ``graphdef``, ``tx``, ``schedule``, ``shardings``
  (of the train state), ``abstract_state``, ``init_fn`` (creates a fresh
  sharded state) and ``train_step`` (jitted with explicit shardings and the
  state donated). The batch's shardings come with the batch arrays
  (``pipeline.to_global``).
  """
  graphdef, abstract_params, specs = train_state.abstract_model(
      config.model, rules)
  param_shardings = sharding.named(mesh, specs)
  tx, schedule = optim.make_optimizer(config.optim, config.total_steps)
  abstract_state = jax.eval_shape(
      lambda p: train_state.init_state(config, p, tx), abstract_params)
  shardings = train_state.state_shardings(mesh, param_shardings,
                                          abstract_state, tx)
  n_params = sum(int(np.prod(x.shape))
                 for x in jax.tree.leaves(abstract_params))
  logging.info('Model %s: %.2fM parameters', config.model.name,
               n_params / 1e6)

  def init_fn():
    # Pretrained towers (model.init) replace the fresh ones; the EMA below
    # starts equal to the result.
    params = train_state.start_params(config.model, config.seed,
                                      param_shardings)
    return jax.jit(lambda p: train_state.init_state(config, p, tx),
                   out_shardings=shardings)(params)

  train_step = jax.jit(
      make_train_step(config, graphdef, tx, schedule),
      in_shardings=(shardings, None),
      out_shardings=(shardings, sharding.replicated(mesh)),
      donate_argnums=0)
  return dict(graphdef=graphdef, tx=tx, schedule=schedule,
              shardings=shardings, abstract_state=abstract_state,
              init_fn=init_fn, train_step=train_step, num_params=n_params)


# The loop
# ---------------------------------------------------------------------------


def _split_for_checkpoint(state):
  params = {'params': state['params'], 'ema': state['ema']}
  rest = {k: v for k, v in state.items() if k not in ('params', 'ema')}
  return params, rest


def _metadata(config, workdir, tokenizer, step) -> dict[str, Any]:
  return {
      'config': json.loads(config.to_json_best_effort()),
      'meta': {
          'step': int(step), 'workdir': os.path.abspath(workdir),
          'tokenizer_fingerprint': tokenizer.fingerprint,
          'tokenizer_vocab_size': tokenizer.vocab_size,
          'image_resolution': int(config.input.resolution),
          'image_mean': list(config.model.image_mean),
          'image_std': list(config.model.image_std),
          'jax_version': jax.__version__,
          'process_count': jax.process_count(),
      },
  }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices=None,
                       on_step: Callable[[int], None] | None = None
                       ) -> dict[str, float]:
  """Trains ``config`` in ``workdir`` (resuming if a checkpoint exists).

  The mesh ``config.mesh`` is built over ``devices`` (default: the first
  ``config.num_devices``, 0 = all) and set for the duration of the call
  only (``jax.set_mesh`` as a context), and so are the logical sharding
  rules ``config.sharding_rules`` (``sharding.rules_context``), so a caller
  can evaluate on another mesh afterwards. A checkpoint written on
  any mesh resumes on any other: orbax restores each array straight into
  the shardings of this run's mesh. ``on_step(step)``, if given, is called
  after each step's logging, checkpoint and evaluations (tools measure the
  loop with it, e.g. ``vlg.tools.bench_memory``).

  Returns:
    The last logged training metrics.
  """
  # A fresh run may first train its vision tower on the world's labels
  # (config.vision_pretrain), outside the run's mesh; it then starts from it.
  config = vision_pretrain.prepare(config, workdir,
                                   process_index=jax.process_index())
  if devices is None:
    devices = sharding.mesh_devices(int(config.get('num_devices', 0)))
  mesh = sharding.make_mesh(config.mesh, devices=devices)
  rules = [tuple(r) for r in config.sharding_rules]
  with jax.set_mesh(mesh), sharding.rules_context(rules):
    return _train_and_evaluate(config, workdir, mesh, on_step)


def _train_and_evaluate(config, workdir, mesh, on_step) -> dict[str, float]:
  """The body of :func:`train_and_evaluate`, under its mesh."""
  # --- Set up: rules, writer -------------------------------------------------
  eval_failure = config.get('eval_failure', 'stop')
  if eval_failure not in EVAL_FAILURE:
    raise ValueError(f'eval_failure={eval_failure!r}; valid: '
                     f'{list(EVAL_FAILURE)}')
  os.makedirs(workdir, exist_ok=True)
  rules = [tuple(r) for r in config.sharding_rules]  # Set by the caller.
  process_index, process_count = jax.process_index(), jax.process_count()
  writer = writers.create_writer(workdir, process_index)
  if process_index == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  logging.info('Mesh %s over %d devices', dict(mesh.shape), mesh.size)

  # --- Input pipeline ---------------------------------------------------------
  # Process 0 trains (or loads) the tokenizer; the others load its result.
  if process_index != 0:
    pipeline.wait_for_tokenizer(config.input, workdir)
  tokenizer = pipeline.get_tokenizer(config.input, workdir)
  weights_init.check_tokenizer(config.model, tokenizer)
  if tokenizer.vocab_size > config.model.vocab_size:
    raise ValueError(f'Tokenizer has {tokenizer.vocab_size} pieces but '
                     f'model.vocab_size is {config.model.vocab_size}')
  batch_spec.check_divisible(config, mesh)
  dataset = pipeline.make_dataset(
      config.input, tokenizer, global_batch=config.batch_size,
      seed=config.seed, process_index=process_index,
      process_count=process_count)
  data_iter = iter(dataset)
  # On the synthetic world: how many drawn ITM negatives are true captions.
  fn_monitor = false_negatives.FalseNegativeMonitor.for_config(
      config, tokenizer, process_count)

  # --- Model, optimizer and sharded state -------------------------------------
  built = build_step(config, mesh, rules)
  train_step, shardings = built['train_step'], built['shardings']

  # --- Resume or initialise ----------------------------------------------------
  ckpt = checkpointing.Checkpointer(
      workdir, ckpt_steps=config.ckpt_steps,
      keep_every_steps=config.get('keep_every_steps'),
      keep_latest=config.get('keep_latest', 2))
  latest = ckpt.latest_step()
  abstract_with_shardings = train_state.with_shardings(
      built['abstract_state'], shardings)
  if latest is not None:
    a_params, a_rest = _split_for_checkpoint(abstract_with_shardings)
    params, rest, meta = ckpt.restore(
        latest, abstract_params=a_params, abstract_train_state=a_rest,
        data_iter=data_iter)
    saved_fp = meta.get('meta', {}).get('tokenizer_fingerprint')
    if saved_fp and saved_fp != tokenizer.fingerprint:
      raise ValueError('The checkpoint was trained with another tokenizer '
                       f'({saved_fp} != {tokenizer.fingerprint})')
    state = {**params, **rest}
    logging.info('Resumed from step %d (%s)', latest, meta.get('meta'))
  else:
    state = built['init_fn']()
    logging.info('Initialised from scratch (seed %d)', config.seed)
  first_step = int(jax.device_get(state['step']))
  total = int(config.total_steps)

  # --- Evaluators (config.evals), built once ---------------------------------
  evaluators = eval_common.from_config(
      config.get('evals', {}), predict_fns=predict.make_predict_fns(
          built['graphdef'],
          box_head=bool(config.model.get('box_head', False))),
      tokenizer=tokenizer, mesh=mesh, rules=rules,
      defaults=eval_common.run_defaults(config))

  def run_evals(step, force=False):
    """Runs the evaluators due at ``step`` under ``config.eval_failure``."""
    for name, (evaluator, log_steps) in evaluators.items():
      if force or config_lib.itstime(step, log_steps, total):
        t = time.time()
        try:
          results = evaluator.run(state['params'])
        except Exception as e:  # pylint: disable=broad-except
          kind = (config.get('evals') or {}).get(name, {}).get('type')
          what = f'evals.{name}' + (f' (type {kind!r})' if kind else '')
          cause = f'{type(e).__name__}: {e}'
          if eval_failure == 'skip':
            logging.warning('Evaluation %s failed at step %d, skipped '
                            '(eval_failure=skip; nothing written for it at '
                            'this step): %s', what, step, cause)
            continue
          latest = ckpt.latest_step()
          raise EvaluationError(
              f'Evaluation {what} failed at step {step}: {cause}. '
              + (f'The checkpoint of step {latest} is saved in '
                 f'{ckpt.directory}; the same command resumes from it. '
                 if latest is not None else '')
              + 'Fix the benchmark, or set --config.eval_failure=skip to '
              'log failing evaluations and keep training.') from e
        results['seconds'] = time.time() - t
        writer.write_scalars(step, {f'{name}/{k}': v
                                    for k, v in results.items()})
        writers.write_outcomes(workdir, step, name, results,
                               jax.process_index())
        logging.info('eval %s at step %d: %s', name, step,
                     {k: round(v, 4) for k, v in results.items()
                      if '/' not in k})

  def save(step, force):
    params, rest = _split_for_checkpoint(state)
    ckpt.save(step, params=params, train_state=rest, data_iter=data_iter,
              config=_metadata(config, workdir, tokenizer, step), force=force)

  # --- Preemption: SIGTERM asks for a checkpoint and a clean exit -----------
  stop_requested = []
  previous_handler = signal.signal(
      signal.SIGTERM, lambda *_: stop_requested.append(True))

  # --- Train loop ---------------------------------------------------------------
  report = periodic_actions.ReportProgress(
      num_train_steps=total, writer=writer if process_index == 0 else None,
      every_steps=config.log_training_steps)
  last_metrics: dict[str, float] = {}
  window_start, window_steps = time.time(), 0
  step = first_step
  try:
    while step < total:
      host_batch = next(data_iter)
      batch = pipeline.to_global(host_batch, mesh, rules)
      if step == first_step:
        # Ahead-of-time compile on the first batch, so the per-device memory
        # the step needs is in the log before it runs.
        train_step = train_step.lower(state, batch).compile()
        writers.log_compiled_memory(train_step, 'train step')
      state, metrics = train_step(state, batch)
      step += 1
      window_steps += 1
      report(step)
      log_now = config_lib.itstime(step, config.log_training_steps, total,
                                   first=True)
      stop = bool(stop_requested)
      if process_count > 1:
        # Every process must stop at the same step, or one would enter the
        # save (a collective) while another runs the next step.
        stop = bool(np.any(multihost_utils.process_allgather(
            np.int32(stop))))
      # Orbax's preemption notice (already agreed on by every process).
      stop = stop or ckpt.reached_preemption(step)
      save_now = ckpt.should_save(step) or stop
      if log_now or save_now:
        nonfinite = jax.device_get(state['nonfinite'])
        if int(nonfinite['count']):
          raise NonFiniteLossError(
              f'Non-finite loss or gradients at step '
              f'{int(nonfinite["first_step"])}; stopping without saving. '
              f'Last good checkpoint: step {ckpt.latest_step()} in '
              f'{ckpt.directory}.')
      if log_now:
        host = jax.device_get(metrics)
        vectors = {k: v for k, v in host.items() if np.ndim(v)}
        host = {k: float(v) for k, v in host.items() if not np.ndim(v)}
        if fn_monitor is not None:
          host.update(fn_monitor(host_batch, vectors))
        elapsed = time.time() - window_start
        sps = window_steps / max(elapsed, 1e-9)
        writer.write_scalars(step, {f'train/{k}': v for k, v in host.items()})
        line = writers.progress_line(step, total, host, sps,
                                     (total - step) / max(sps, 1e-9),
                                     pretrain.progress_keys(config))
        if step == first_step + 1:
          line += ' (first step: includes compilation)'
        logging.info(line)
        window_start, window_steps = time.time(), 0
        last_metrics = host
      # The step's checkpoint comes first, so a failing evaluation never
      # costs it (config.eval_failure says what the failure does).
      if save_now or step == total:
        save(step, force=stop or step == total)
      run_evals(step)
      if on_step is not None:
        on_step(step)
      if stop:
        logging.warning('Preempted (SIGTERM or orbax notice): saved step %d, '
                        'exiting; the same command resumes', step)
        break
  finally:
    ckpt.close()
    writer.flush()
    signal.signal(signal.SIGTERM, previous_handler)
    close = getattr(data_iter, 'close', None)
    if close is not None:
      close()
  return last_metrics
