r"""vlg's train step side by side with ALBEF's own PyTorch step.

  python -m vlg.tools.bench_reference --config=configs/albef.py:tiny \
      --config.model.vision_stem=patch \
      --against_reference=/path/to/ALBEF \
      --reference_python=/path/to/venv/bin/python --rounds=3

Writes the config's shapes to a JSON file (:func:`reference_shapes`), then
runs ``--rounds`` rounds. A round times vlg's step (``vlg.tools.bench.run``:
compile, then ``--steps`` steps on one fixed batch) and ALBEF's step
(``benchmarks/reference/albef_step.py``, run by ``--reference_python`` on
the clone ``--against_reference``, random weights, the same shapes); odd
rounds run vlg first, even rounds ALBEF, so a drift in the machine's speed
during the run weighs on both. Each round prints both examples/s, their
ratio (vlg over ALBEF), and the float32 2048² matmul FLOP/s measured in
the round by each framework, the machine's speed at that moment; the end
prints the ratio's min, median and max over the rounds.

PyTorch is needed only in the reference's environment, never by vlg: the
reference is a subprocess. It inherits this process's environment, so
both sides run under the same huge-page setting (``vlg/huge_pages.py``;
``VLG_HUGE_PAGES=0`` turns it off for both). Setting up that environment
and the clone, and the shapes ALBEF's code cannot take:
benchmarks/reference/README.md.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Callable, Iterator

from absl import app
from absl import flags
from ml_collections import config_flags

from vlg import config_lib
from vlg import huge_pages

# benchmarks/reference/albef_step.py of the checkout this module is in.
DEFAULT_SCRIPT = str(pathlib.Path(__file__).resolve().parents[2] /
                     'benchmarks' / 'reference' / 'albef_step.py')
# ALBEF's ViT LayerNorm epsilon (models/model_pretrain.py).
ALBEF_VISION_LN_EPS = 1e-6

_CONFIG = None
_REFERENCE = None
_PYTHON = None
_SCRIPT = None
_ROUNDS = None
_STEPS = None
_WARMUP = None
_THREADS = None
_MATMUL = None
_TIMEOUT = None
_SHAPES_OUT = None
_DEVICE = None
_AUTOCAST = None


def define_flags() -> None:
  """Defines the flags; called only when run as a program, so that
  tests can import several tools into one process."""
  global _CONFIG, _REFERENCE, _PYTHON, _SCRIPT, _ROUNDS, _STEPS, _WARMUP
  global _THREADS, _MATMUL, _TIMEOUT, _SHAPES_OUT, _DEVICE, _AUTOCAST
  _CONFIG = config_flags.DEFINE_config_file(
      'config', None, 'Config file, e.g. configs/albef.py:tiny.',
      lock_config=True)
  _REFERENCE = flags.DEFINE_string(
      'against_reference', None, 'Clone of salesforce/ALBEF.')
  _PYTHON = flags.DEFINE_string(
      'reference_python', None, 'Python of the environment with PyTorch, '
      'transformers and timm (benchmarks/reference/README.md).')
  _SCRIPT = flags.DEFINE_string('reference_script', DEFAULT_SCRIPT,
                                'The reference step script.')
  _ROUNDS = flags.DEFINE_integer('rounds', 3, 'Rounds of both timings.')
  _STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps of each, a round.')
  _WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps before them.')
  _THREADS = flags.DEFINE_integer('threads', 2,
                                  "The reference's torch.set_num_threads.")
  _DEVICE = flags.DEFINE_string('reference_device', 'cpu',
                                 "The reference's torch device: 'cpu' or "
                                 "'cuda' (vlg runs on jax's devices).")
  _AUTOCAST = flags.DEFINE_enum(
      'reference_autocast', 'none', ['none', 'bfloat16'],
      "'bfloat16' runs the reference's forward under torch.autocast, to "
      'set beside a vlg step at --config.model.dtype=bfloat16 (ALBEF '
      'itself trains in float32).')
  _MATMUL = flags.DEFINE_integer('matmul_size', 2048,
                                 'Side of the float32 matmul read each round.')
  _TIMEOUT = flags.DEFINE_integer('reference_timeout', 1800,
                                  'Seconds one reference run may take.')
  _SHAPES_OUT = flags.DEFINE_string(
      'shapes_out', '', 'Where to write the shapes JSON (default: a '
      'temporary file), e.g. to rerun albef_step.py by hand.')
  flags.mark_flags_as_required(['config', 'against_reference',
                                'reference_python'])


def reference_shapes(config) -> dict:
  """The shapes and settings of ``config``'s step in albef_step.py's keys.

  ``notes`` lists what differs between the two steps without changing the
  model's shapes (precision, initialisation, vlg-only options).

  Raises:
    ValueError: the config's step is not one ALBEF's model can run (typed
      parts, X-VLM's heads, another patch stem, ...).
  """
  m, loss = config.model, config.loss
  problems = []
  if m.name != 'albef':
    problems.append(f'model.name={m.name!r} (ALBEF\'s model is \'albef\')')
  if config.input.get('kind', 'caption') != 'caption':
    problems.append(f'input.kind={config.input.kind!r} (captions only)')
  parts = config.input.get('parts') or {}
  enabled = sorted(k for k, v in parts.items() if v.get('enabled', True))
  if enabled:
    problems.append(f'typed parts {enabled} (ALBEF trains on captions only)')
  if not loss.get('momentum_distill', True):
    problems.append('loss.momentum_distill=False (ALBEF distils)')
  for name in ('itc', 'itm', 'mlm'):
    if not float(loss[name]) > 0:
      problems.append(f'loss.{name}={loss[name]} (ALBEF computes all three)')
  if m.itm_head != 'linear':
    problems.append(f'model.itm_head={m.itm_head!r} (ALBEF\'s is linear)')
  if m.box_head or int(m.mrc_classes):
    problems.append('model.box_head / model.mrc_classes (no such heads)')
  if m.vision_stem != 'patch':
    problems.append(f'model.vision_stem={m.vision_stem!r} (ALBEF\'s ViT '
                    'embeds patches linearly)')
  if float(m.vision_dropout):
    problems.append('model.vision_dropout > 0 (ALBEF\'s ViT has none)')
  if problems:
    raise ValueError('ALBEF\'s pretraining step cannot express this '
                     'config: ' + '; '.join(problems))

  shapes = dict(
      image_size=int(m.image_size), patch_size=int(m.patch_size),
      vision_width=int(m.vision_width), vision_depth=int(m.vision_depth),
      vision_heads=int(m.vision_heads), vision_mlp=int(m.vision_mlp),
      text_width=int(m.text_width), text_layers=int(m.text_layers),
      fusion_layers=int(m.fusion_layers), text_heads=int(m.text_heads),
      text_mlp=int(m.text_mlp), vocab_size=int(m.vocab_size),
      max_positions=int(m.max_positions), embed_dim=int(m.embed_dim),
      batch_size=int(config.batch_size), queue_size=int(config.queue_size),
      max_text_len=int(config.input.max_text_len),
      momentum=float(loss.momentum), alpha=float(loss.alpha),
      mlm_probability=float(config.input.mlm_probability),
      temp=float(m.temp_init), dropout=float(m.dropout),
      text_ln_eps=float(m.text_ln_eps), lr=float(config.optim.lr),
      weight_decay=float(config.optim.weight_decay),
      b1=float(config.optim.b1), b2=float(config.optim.b2),
      eps=float(config.optim.eps))
  notes = [
      'initialisation differs (ALBEF: BERT\'s and timm\'s random inits); '
      'speed does not depend on it',
      'ALBEF masks MLM tokens inside its step; vlg masks them in the input '
      'pipeline (the timed vlg step reuses one masked batch)']
  if m.dtype != 'float32':
    notes.append(f'model.dtype={m.dtype}: ALBEF computes in float32')
  if m.remat != 'none':
    notes.append(f'model.remat={m.remat}: ALBEF keeps every activation')
  if int(config.get('grad_accum_steps', 1)) != 1:
    notes.append('grad_accum_steps > 1: ALBEF takes the batch in one pass')
  if float(config.optim.get('grad_clip_norm', 0.0)):
    notes.append('optim.grad_clip_norm > 0: ALBEF does not clip')
  if loss.get('queue_mask_unfilled', False):
    notes.append('loss.queue_mask_unfilled: vlg masks queue rows not yet '
                 'written; ALBEF uses its random initial rows')
  if float(m.vision_ln_eps) != ALBEF_VISION_LN_EPS:
    notes.append(f'model.vision_ln_eps={m.vision_ln_eps}: ALBEF\'s ViT '
                 f'uses {ALBEF_VISION_LN_EPS}')
  return dict(shapes, notes=notes)


def check_reference(albef_dir: str, python: str, script: str) -> None:
  """Raises ValueError, saying what to do, for a missing ALBEF clone,
  reference Python or step script."""
  if not albef_dir or not os.path.isdir(albef_dir):
    raise ValueError(
        f'--against_reference={albef_dir!r}: no such directory; clone '
        'salesforce/ALBEF there (benchmarks/reference/README.md)')
  if not os.path.isfile(os.path.join(albef_dir, 'models',
                                     'model_pretrain.py')):
    raise ValueError(
        f'--against_reference={albef_dir!r}: not an ALBEF clone (no '
        'models/model_pretrain.py)')
  if not python or not shutil.which(python):
    raise ValueError(
        f'--reference_python={python!r}: not an executable; point it at '
        'the Python of the PyTorch environment '
        '(benchmarks/reference/README.md)')
  if not os.path.isfile(script):
    raise ValueError(f'--reference_script={script!r}: no such file')


def reference_command(python: str, script: str, albef_dir: str,
                      shapes_path: str, steps: int, warmup: int,
                      threads: int, matmul_size: int,
                      device: str = 'cpu', autocast: str = 'none'
                      ) -> list[str]:
  """The argv of one reference run."""
  return [python, script, f'--albef={albef_dir}', f'--shapes={shapes_path}',
          f'--steps={steps}', f'--warmup={warmup}', f'--threads={threads}',
          f'--matmul_size={matmul_size}', f'--device={device}'] + (
              [] if autocast == 'none' else [f'--autocast={autocast}'])


def parse_result(stdout: str) -> dict | None:
  """The last ``{"kind": "result", ...}`` JSON line of ``stdout``."""
  found = None
  for line in stdout.splitlines():
    line = line.strip()
    if not line.startswith('{'):
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(record, dict) and record.get('kind') == 'result':
      found = record
  return found


def _tail(text: str, lines: int = 20) -> str:
  return '\n'.join(text.strip().splitlines()[-lines:]) or '(nothing)'


def run_reference(cmd: list[str], timeout: float) -> dict:
  """Runs the reference once; its result line.

  Raises:
    RuntimeError: it failed, timed out, or printed no result line with a
      positive ``examples_per_s`` (the message holds its output's tail).
  """
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired as e:
    raise RuntimeError(f'reference run exceeded {timeout}s: '
                       f'{" ".join(cmd)}') from e
  where = (f'\n  command: {" ".join(cmd)}\n  stdout tail:\n'
           f'{_tail(proc.stdout)}\n  stderr tail:\n{_tail(proc.stderr)}')
  if proc.returncode:
    raise RuntimeError(f'reference run exited {proc.returncode}{where}')
  result = parse_result(proc.stdout)
  eps = result.get('examples_per_s') if result else None
  if not isinstance(eps, (int, float)) or not eps > 0:
    raise RuntimeError('reference run printed no result line with a '
                       f'positive examples_per_s{where}')
  return result


def alternate(rounds: int, run_vlg: Callable[[], dict],
              run_ref: Callable[[], dict]) -> Iterator[dict]:
  """Yields one row per round: both results and their ratio.

  ``run_vlg`` returns ``vlg.tools.bench.run``'s dict, ``run_ref``
  albef_step.py's result line. Odd rounds (1, 3, ...) run vlg first, even
  rounds the reference, so slow drift affects both alike.
  """
  if rounds < 1:
    raise ValueError(f'--rounds must be >= 1, got {rounds}')
  for i in range(rounds):
    if i % 2 == 0:
      vlg = run_vlg()
      ref = run_ref()
      order = 'vlg first'
    else:
      ref = run_ref()
      vlg = run_vlg()
      order = 'reference first'
    yield dict(round=i + 1, order=order, vlg=vlg, reference=ref,
               ratio=vlg['examples_per_s'] / ref['examples_per_s'])


def spread(values: list[float]) -> dict:
  """min, median and max of ``values``."""
  return dict(min=min(values), median=statistics.median(values),
              max=max(values))


def _gflops(value) -> str:
  return 'n/a' if value is None else f'{value / 1e9:.1f}'


def round_line(row: dict, rounds: int, matmul_size: int) -> str:
  """One round's line."""
  vlg, ref = row['vlg'], row['reference']
  return (f'round {row["round"]}/{rounds} ({row["order"]}): vlg '
          f'{vlg["examples_per_s"]:.2f} examples/s, ALBEF (PyTorch) '
          f'{ref["examples_per_s"]:.2f} examples/s, ratio vlg/ALBEF '
          f'{row["ratio"]:.3f}; float32 {matmul_size}^2 matmul: jax '
          f'{_gflops(vlg.get("matmul_flops"))} GFLOP/s, torch '
          f'{_gflops(ref.get("matmul_flops"))} GFLOP/s')


def params_line(row: dict, text_width: int) -> str:
  """Both models' trainable parameters (momentum copies excluded). Equal
  counts, but for BERT's token-type table (2 × text_width) that ALBEF keeps
  and vlg folds into its position embeddings (vlg/models/text.py), confirm
  that the shapes reached ALBEF's model as meant."""
  counts = [row[k].get('params_m') for k in ('vlg', 'reference')]
  if None in counts:
    return 'trainable parameters: n/a'
  vlg, ref = (round(c * 1e6) for c in counts)
  if ref - vlg == 2 * text_width:
    verdict = ('equal but for ALBEF\'s token-type table, 2 x text_width, '
               'which vlg folds into its position embeddings')
  else:
    verdict = f'DIFFER by {ref - vlg:+,} beyond the token-type table'
  return f'trainable parameters: vlg {vlg:,}, ALBEF {ref:,} ({verdict})'


def summary_lines(rows: list[dict]) -> list[str]:
  """The closing lines: min/median/max of the ratio and of each speed."""
  lines = []
  for label, values in (
      ('ratio vlg/ALBEF', [r['ratio'] for r in rows]),
      ('vlg examples/s', [r['vlg']['examples_per_s'] for r in rows]),
      ('ALBEF examples/s', [r['reference']['examples_per_s'] for r in rows])):
    s = spread(values)
    lines.append(f'{label} over {len(rows)} round(s): min {s["min"]:.3f}, '
                 f'median {s["median"]:.3f}, max {s["max"]:.3f}')
  return lines


def compare(config, albef_dir: str, python: str, script: str, rounds: int,
            steps: int, warmup: int, threads: int, matmul_size: int,
            timeout: float, shapes_out: str = '', device: str = 'cpu',
            run_vlg: Callable[[], dict] | None = None,
            autocast: str = 'none',
            emit: Callable[[str], None] = print) -> list[dict]:
  """Writes the shapes, runs the rounds, emits every line; the rows.

  ``run_vlg`` defaults to ``vlg.tools.bench.run`` on ``config`` (tests
  pass a stand-in).
  """
  check_reference(albef_dir, python, script)
  shapes = reference_shapes(config)
  if run_vlg is None:
    from vlg.tools import bench  # pylint: disable=g-import-not-at-top

    def run_vlg():
      return bench.run(config, steps, warmup, matmul_size)

  with tempfile.TemporaryDirectory(prefix='vlg_bench_reference_') as tmp:
    path = shapes_out or os.path.join(tmp, 'shapes.json')
    with open(path, 'w') as f:
      json.dump(shapes, f, indent=1)
    emit(f'shapes: {path}' + ('' if shapes_out else ' (temporary)'))
    for note in shapes['notes']:
      emit(f'note: {note}')
    if autocast != 'none':
      emit(f'note: the reference runs its forward under torch.autocast '
           f'({autocast}); ALBEF itself trains in float32')
    cmd = reference_command(python, script, os.path.abspath(albef_dir),
                            path, steps, warmup, threads, matmul_size,
                            device, autocast)
    rows = []
    for row in alternate(rounds, run_vlg,
                         lambda: run_reference(cmd, timeout)):
      rows.append(row)
      if len(rows) == 1:
        emit(params_line(row, shapes['text_width']))
      emit(round_line(row, rounds, matmul_size))
  for line in summary_lines(rows):
    emit(line)
  return rows


def main(argv):
  del argv
  try:
    compare(_CONFIG.value, _REFERENCE.value, _PYTHON.value, _SCRIPT.value,
            _ROUNDS.value, _STEPS.value, _WARMUP.value, _THREADS.value,
            _MATMUL.value, _TIMEOUT.value, _SHAPES_OUT.value,
            _DEVICE.value, autocast=_AUTOCAST.value)
  except (ValueError, RuntimeError) as e:
    sys.exit(f'bench_reference: {e}')


if __name__ == '__main__':
  huge_pages.restart_with_huge_pages()
  define_flags()
  app.run(main, flags_parser=config_lib.parse_flags)
