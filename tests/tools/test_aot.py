"""vlg.tools.aot: the train step compiled for TPU topologies on a CPU machine.

The compiling tests need libtpu (``requirements-tpu-aot.txt``, which
``.ci/run`` installs) and are skipped without it. Two compiles: tiny ALBEF
on a v5e 2x2 slice (fits; its memory, FLOPs and report), and the same with
a batch of 16,384 (does not fit: the command says so and exits 1). XLA's
out-of-memory messages, its FLOP count of a loop, the choice among
``--suggest``'s alternatives and the one-line error for a mesh or batch the
slice cannot take are checked without compiling; the topology forms in
tests/tools/test_tpu_topology.py.
"""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from vlg.tools import aot
from vlg.tools import flops
from vlg.tools import tpu_topology

import configs.albef as albef_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec('libtpu') is None,
    reason='libtpu is not installed (pip install -r requirements-tpu-aot.txt;'
    ' CI installs it)')


def test_out_of_memory_messages_give_needed_and_available_bytes():
  temps = ('RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory '
           'required for HLO temporaries (15.85G) exceeds available HBM '
           '(15.75G).')
  assert aot.parse_out_of_memory(temps) == (int(15.85 * 2**30),
                                            int(15.75 * 2**30))
  used = ('RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of '
          'memory in memory space hbm. Used 20.50G of 15.48G hbm.')
  assert aot.parse_out_of_memory(used) == (int(20.5 * 2**30),
                                           int(15.48 * 2**30))
  assert aot.parse_out_of_memory('INTERNAL: something else') is None
  report = dict(needed_bytes=3 * 2**30, available_bytes=2**30,
                hbm_bytes=16 * 2**30)
  assert aot.does_not_fit(report) == 'does not fit: needs 3.00 GiB of 1.00 GiB'


def test_xla_counts_a_loop_body_once():
  # plan() scales the count by grad_accum_steps because of this: the
  # accumulation loop's body is nearly the whole step.
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def four_matmuls(x):
    return jax.lax.scan(lambda c, _: (c @ x, None), x, None, length=4)[0]

  x = jnp.ones((64, 64))
  compiled = jax.jit(four_matmuls).lower(x).compile()
  one_matmul = 2 * 64**3
  assert aot.xla_flops(compiled) == pytest.approx(one_matmul, rel=0.05)


def test_suggest_compiles_each_alternative_and_picks_the_fastest_that_fits():
  config = albef_config.get_config('tiny')
  seen = []

  def stand_in_plan(cfg, topology, num_slices, mfu):
    """Fits with remat (slower) or 4 micro-batches; FSDP does not."""
    seen.append((tuple(cfg.mesh), cfg.model.remat, cfg.grad_accum_steps))
    fits = cfg.model.remat == 'full' or cfg.grad_accum_steps == 4
    step_s = 1.3 if cfg.model.remat == 'full' else 1.05
    return dict(fits=fits, needed_bytes=2**30, temp_bytes=2**29,
                flops_per_device=1e12, step_s=step_s)

  rows = aot.suggest(config, tpu_topology.parse_topology('v5e:2x2'),
                     plan_fn=stand_in_plan)
  # The config has the all-data mesh, so one mesh alternative: FSDP.
  assert seen == [((1, -1, 1), 'none', 1), ((-1, 1, 1), 'full', 1),
                  ((-1, 1, 1), 'none', 2), ((-1, 1, 1), 'none', 4)]
  assert [r['label'] for r in rows] == [
      'mesh=1,-1,1', 'model.remat=full', 'grad_accum_steps=2',
      'grad_accum_steps=4']
  assert aot.best(rows)['label'] == 'grad_accum_steps=4'
  lines = aot.suggestion_lines(rows)
  assert lines[-1] == 'best: grad_accum_steps=4'
  assert lines[1].split()[:2] == ['mesh=1,-1,1', 'no']
  assert aot.best([dict(r, fits=False) for r in rows]) is None
  # Within 2% the earlier (preferred) row wins: all-data over an FSDP
  # step that XLA counts 1% fewer FLOPs for; 3% faster is faster.
  given = dict(label='as given', fits=True, step_s=1.0)
  assert aot.best([given, dict(rows[0], fits=True, step_s=0.99)]) is given
  assert aot.best([given, dict(rows[0], fits=True, step_s=0.97)]) is not given
  # The config itself is never changed.
  assert tuple(config.mesh) == (-1, 1, 1) and config.model.remat == 'none'


@pytest.fixture(scope='module')
def tiny_on_v5e_2x2():
  """The tool's plan of tiny ALBEF on a 2x2 v5e slice (one compile)."""
  config = albef_config.get_config('tiny')
  return config, aot.plan(config, tpu_topology.parse_topology('v5e:2x2'), mfu=0.4)


@needs_libtpu
def test_tiny_albef_fits_a_v5e_slice_with_its_memory_and_flops(
    tiny_on_v5e_2x2):
  config, r = tiny_on_v5e_2x2
  assert r['fits'] is True
  assert r['devices'] == 4 and r['mesh'] == {'data': 4, 'fsdp': 1,
                                             'tensor': 1}
  assert r['device_kind'] == 'TPU v5 lite' and r['hbm_bytes'] == 16 * 2**30
  for key in ('argument_bytes', 'output_bytes', 'temp_bytes', 'code_bytes'):
    assert r[key] > 0, key
  # The state is donated: its outputs reuse the arguments' buffers.
  assert 0 < r['alias_bytes'] <= r['output_bytes']
  assert r['needed_bytes'] == (r['argument_bytes'] + r['output_bytes'] -
                               r['alias_bytes'] + r['temp_bytes'] +
                               r['code_bytes'])
  assert r['needed_bytes'] < r['hbm_bytes']
  # XLA's count of every op against the analytic matmul count
  # (vlg.tools.flops; tests/tools/test_flops.py: 1.0-1.25x on CPU).
  # The batch is split 4 ways: ITM's keys and values are computed per pair.
  assert r['analytic_flops'] == flops.train_step_flops(config, 4)['total']
  assert 1.0 <= r['flops'] / r['analytic_flops'] <= 1.25
  assert r['flops'] == pytest.approx(4 * r['flops_per_device'])
  assert r['step_s'] == pytest.approx(r['flops_per_device'] /
                                      (197e12 * 0.4))
  lines = aot.report_lines(r, tpu_topology.parse_topology('v5e:2x2'))
  assert lines[2].startswith('fits: needs 0.')
  assert 'of 16.00 GiB' in lines[2]


@needs_libtpu
def test_a_batch_too_large_does_not_fit_and_exits_1():
  proc = subprocess.run(
      [sys.executable, '-m', 'vlg.tools.aot',
       '--config=configs/albef.py:tiny', '--topology=v5e:2x2',
       # 6,144 examples a chip: about 21 GiB of temporaries (16,384 in
       # all, 97% of the chip since the ITM fusion's last layer runs for
       # [CLS] alone, no longer fails reliably).
       '--config.batch_size=24576', '--config.queue_size=24576'],
      cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 1, proc.stderr[-3000:]
  m = re.search(r'does not fit: needs ([\d.]+) GiB of ([\d.]+) GiB',
                proc.stdout)
  assert m, proc.stdout + proc.stderr[-3000:]
  needed, available = float(m.group(1)), float(m.group(2))
  # XLA states the HBM it can use: a little under the chip's 16 GiB.
  assert 14 < available <= 16 and needed > available
  assert 'XLA: ' in proc.stdout


def test_bad_topology_on_the_command_line_is_one_clear_error():
  proc = subprocess.run(
      [sys.executable, '-m', 'vlg.tools.aot',
       '--config=configs/albef.py:tiny', '--topology=v5e-3'],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2
  assert "FATAL --topology='v5e-3'" in proc.stderr
  assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('mfu', ['0', '1.5', '-0.2'])
def test_an_mfu_outside_zero_to_one_is_one_clear_error(mfu):
  proc = subprocess.run(
      [sys.executable, '-m', 'vlg.tools.aot',
       '--config=configs/albef.py:tiny', '--topology=v5e:2x2', f'--mfu={mfu}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert f'FATAL --mfu must be in (0, 1], got {float(mfu)}' in proc.stderr
  assert 'Traceback' not in proc.stderr


@needs_libtpu
@pytest.mark.parametrize('override, expected', [
    ('--config.batch_size=6',
     'FATAL batch_size=6 does not divide over the 4 data shards'),
    ('--config.mesh=3,1,1', 'FATAL Mesh [3, 1, 1] needs 3 devices but 4 are'),
])
def test_a_mesh_or_batch_the_slice_cannot_take_is_one_clear_error(
    override, expected):
  proc = subprocess.run(
      [sys.executable, '-m', 'vlg.tools.aot',
       '--config=configs/albef.py:tiny', '--topology=v5e:2x2', override],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert expected in proc.stderr, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
