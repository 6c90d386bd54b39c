r"""Evaluation throughput: pairwise scoring and two-stage retrieval.

  python -m vlg.tools.bench_eval [--config=configs/albef.py:tiny] \
      [--pairs=4096] [--images=1000] [--captions_per_image=5] \
      [--k_test=128] [--batch_size=64] [--loop_pairs=64]

Builds the config's model with random parameters (no checkpoint) on every
device there is, and times, after an untimed first pass over the same
rows (which compiles every shape the timed pass runs: the runner cuts each
batch's texts to one of a few widths, ``vlg.evaluators.batching``):

* VALSE-style pairwise scoring: ``--pairs`` (image, text) rows through the
  ITM scorer (``common.PairScorer``); prints rows/s and examples/s (one
  VALSE example is a caption and a foil: two rows);
* the same scoring one pair at a time (``--loop_pairs`` calls of one row,
  as the fine-grained evaluation notebooks loop over examples), and the
  batched rate's ratio to it;
* retrieval over ``--images`` images × ``--captions_per_image`` captions
  each, ITC over all pairs and the top ``--k_test`` per query re-scored with
  ITM (``retrieval.evaluate``, as ALBEF); prints seconds end to end, per
  stage, and the recalls (chance level for random parameters).

Images are random pixels and captions random phrases (the tokenizer is
trained on them), so nothing is read from disk: the figures are the model's
and the evaluator's, not the image decoder's.
"""

from __future__ import annotations

import time

import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from vlg import config_lib

_CONFIG = None
_PAIRS = None
_IMAGES = None
_CAPTIONS = None
_K_TEST = None
_BATCH = None
_MAX_TEXT_LEN = None
_SEED = None
_LOOP_PAIRS = None


def define_flags() -> None:
  """Defines the flags; called only when run as a program, so that
  tests can import several tools into one process."""
  global _CONFIG, _PAIRS, _IMAGES, _CAPTIONS, _K_TEST, _BATCH, _MAX_TEXT_LEN, _SEED
  global _LOOP_PAIRS
  _CONFIG = config_flags.DEFINE_config_file(
      'config', 'configs/albef.py:tiny',
      'Config whose model is benchmarked (random parameters).',
      lock_config=True)
  _PAIRS = flags.DEFINE_integer('pairs', 4096, 'Pairwise rows to score.')
  _IMAGES = flags.DEFINE_integer('images', 1000, 'Retrieval images.')
  _CAPTIONS = flags.DEFINE_integer('captions_per_image', 5,
                                   'Retrieval captions per image.')
  _K_TEST = flags.DEFINE_integer('k_test', 128,
                                 'Candidates per query re-scored with ITM.')
  _BATCH = flags.DEFINE_integer('batch_size', 64,
                                'Eval batch size (global, over the devices).')
  _MAX_TEXT_LEN = flags.DEFINE_integer('max_text_len', 30, 'Token limit.')
  _SEED = flags.DEFINE_integer('seed', 0, 'Random images, captions, params.')
  _LOOP_PAIRS = flags.DEFINE_integer(
      'loop_pairs', 64, 'Pairs scored one at a time (0: skip the loop).')

_WORDS = ('a', 'the', 'red', 'blue', 'green', 'small', 'large', 'circle',
          'square', 'star', 'cross', 'left', 'of', 'above', 'below', 'near',
          'two', 'three', 'objects', 'image', 'with', 'and', 'is', 'arrow')


def random_captions(n: int, rng: np.random.Generator) -> list[str]:
  """``n`` phrases of 4 to 12 random words."""
  return [' '.join(rng.choice(_WORDS, rng.integers(4, 13))) for _ in range(n)]


def run(config, *, pairs: int, images: int, captions_per_image: int,
        k_test: int, batch_size: int, max_text_len: int, seed: int = 0,
        loop_pairs: int = 0) -> dict[str, float]:
  """Runs both measurements; returns the figures that :func:`main` prints."""
  import jax  # pylint: disable=g-import-not-at-top
  from vlg import sharding  # pylint: disable=g-import-not-at-top

  mesh = sharding.make_mesh(config.mesh)
  rules = [tuple(r) for r in config.sharding_rules]
  # Scoped, so a caller (a test) keeps its own mesh and rules afterwards.
  with jax.set_mesh(mesh), sharding.rules_context(rules):
    return _measure(config, mesh, rules, pairs=pairs, images=images,
                    captions_per_image=captions_per_image, k_test=k_test,
                    batch_size=batch_size, max_text_len=max_text_len,
                    seed=seed, loop_pairs=loop_pairs)


def _measure(config, mesh, rules, *, pairs, images, captions_per_image,
             k_test, batch_size, max_text_len, seed, loop_pairs
             ) -> dict[str, float]:
  """The body of :func:`run`, under its mesh and rules."""
  from vlg import predict  # pylint: disable=g-import-not-at-top
  from vlg import sharding  # pylint: disable=g-import-not-at-top
  from vlg import train_state  # pylint: disable=g-import-not-at-top
  from vlg.data import tokenizer  # pylint: disable=g-import-not-at-top
  from vlg.evaluators import common  # pylint: disable=g-import-not-at-top
  from vlg.evaluators import retrieval  # pylint: disable=g-import-not-at-top

  graphdef, _, specs = train_state.abstract_model(config.model, rules)
  params = train_state.init_params(config.model, seed, sharding.named(mesh, specs))
  fns = predict.make_predict_fns(graphdef)
  rng = np.random.default_rng(seed)
  res = int(config.input.resolution)
  num_texts = images * captions_per_image
  texts = random_captions(max(pairs, num_texts), rng)
  tok = tokenizer.train_tokenizer(texts,
                                  min(256, int(config.model.vocab_size)))
  pool = rng.integers(0, 256, (max(images, 1), res, res, 3), np.uint8)
  settings = dict(resolution=res, max_text_len=max_text_len,
                  batch_size=batch_size, mesh=mesh, rules=rules)
  out = {'devices': float(mesh.size), 'batch_size': float(batch_size)}

  scorer = common.PairScorer(fns['image_text_scores'], tok, **settings)
  pair_images = [pool[i % len(pool)] for i in range(pairs)]
  # An untimed first pass over the same rows compiles every text width the
  # runner cuts their batches to (evaluators.batching).
  t = time.perf_counter()
  scorer.score(params, pair_images, texts[:pairs])
  out['pairs_compile_s'] = time.perf_counter() - t
  t = time.perf_counter()
  scorer.score(params, pair_images, texts[:pairs])
  elapsed = time.perf_counter() - t
  out.update(pairs=float(pairs), pairs_s=elapsed,
             pairs_per_s=pairs / elapsed, valse_examples_per_s=pairs / elapsed
             / 2)
  if loop_pairs:
    # One pair a call (padded to one row a device), compiled first.
    one = common.PairScorer(fns['image_text_scores'], tok,
                            **{**settings, 'batch_size': mesh.size})
    for i in range(loop_pairs):  # Compiles each text width once.
      one.score(params, pair_images[i:i + 1], texts[i:i + 1])
    t = time.perf_counter()
    for i in range(loop_pairs):
      one.score(params, pair_images[i:i + 1], texts[i:i + 1])
    loop_s = time.perf_counter() - t
    out.update(loop_pairs=float(loop_pairs), loop_pairs_per_s=loop_pairs /
               loop_s, batched_over_loop=out['pairs_per_s'] * loop_s /
               loop_pairs)

  r_scorer = retrieval.RetrievalScorer(fns, tok, **settings)
  txt2img = np.repeat(np.arange(images), captions_per_image)
  imgs = list(pool[:images])
  t = time.perf_counter()  # An untimed first pass, as above.
  retrieval.evaluate(r_scorer, params, imgs, texts[:num_texts], txt2img,
                     k_test=k_test)
  out['retrieval_compile_s'] = time.perf_counter() - t
  timings = {}
  t = time.perf_counter()
  metrics = retrieval.evaluate(r_scorer, params, imgs, texts[:num_texts],
                               txt2img, k_test=k_test, timings=timings)
  out['retrieval_s'] = time.perf_counter() - t
  out.update({f'retrieval_{k}': v for k, v in timings.items()})
  out.update({f'retrieval/{k}': v for k, v in metrics.items()})
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  r = run(config, pairs=_PAIRS.value, images=_IMAGES.value,
          captions_per_image=_CAPTIONS.value, k_test=_K_TEST.value,
          batch_size=_BATCH.value, max_text_len=_MAX_TEXT_LEN.value,
          seed=_SEED.value, loop_pairs=_LOOP_PAIRS.value)
  print(f'model {config.model.name}, random params, {int(r["devices"])} '
        f'device(s), eval batch {int(r["batch_size"])}')
  print(f'pairwise (ITM): {int(r["pairs"])} rows in {r["pairs_s"]:.2f}s = '
        f'{r["pairs_per_s"]:.1f} rows/s = {r["valse_examples_per_s"]:.1f} '
        f'VALSE examples/s (first pass, compiling: '
        f'{r["pairs_compile_s"]:.1f}s)')
  if 'loop_pairs' in r:
    print(f'one pair at a time: {int(r["loop_pairs"])} rows at '
          f'{r["loop_pairs_per_s"]:.1f} rows/s; batched is '
          f'{r["batched_over_loop"]:.1f}x that')
  n, m = int(r['retrieval/num_evaluated']), int(r['retrieval/num_texts'])
  print(f'retrieval {n} images x {m} texts, k_test {_K_TEST.value}: '
        f'{r["retrieval_s"]:.2f}s end to end (features '
        f'{r["retrieval_features_s"]:.2f}s, ITC + ITM re-rank '
        f'{r["retrieval_rank_s"]:.2f}s; first pass, compiling: '
        f'{r["retrieval_compile_s"]:.1f}s)')
  print('recalls (chance for random params): ' + ', '.join(
      f'{k} {100 * r[f"retrieval/{k}"]:.1f} (chance '
      f'{100 * r[f"retrieval/chance/{k}"]:.1f})'
      for k in ('tr_r1', 'tr_r5', 'tr_r10', 'ir_r1', 'ir_r5', 'ir_r10')))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=config_lib.parse_flags)
