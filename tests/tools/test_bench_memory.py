"""``vlg.tools.bench_memory``: one parseable RSS line per requested step,
from the real train loop; bad ``--steps`` are refused; ``--help`` works."""

import os
import re
import subprocess
import sys

import pytest

from test_train import tiny_test_config
from vlg.tools import bench_memory

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
BEFORE = re.compile(r'RSS before training: ([\d.]+) MiB')
AT = re.compile(r'RSS at step (\d+): ([\d.]+) MiB'
                r'(?: \(([+-][\d.]+) MiB since step (\d+), '
                r'([+-][\d.]+) KiB/step\))?')


def test_prints_rss_before_training_and_at_each_step(tmp_path, capsys,
                                                     fast_compile):
  # The train tests' 6-step config: steps 3 and 6 keep its total, so the
  # step is the program they compile (the persistent cache serves it).
  workdir = tmp_path / 'run'
  out = bench_memory.measure(tiny_test_config(), [3, 6], str(workdir))
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 3, lines
  before = BEFORE.fullmatch(lines[0])
  first, second = AT.fullmatch(lines[1]), AT.fullmatch(lines[2])
  assert before and first and second, lines
  assert first.group(1) == '3' and first.group(3) is None
  assert second.group(1) == '6' and second.group(4) == '3'
  printed = [float(before.group(1)), float(first.group(2)),
             float(second.group(2))]
  assert printed == [round(out[s] / 2**20, 1) for s in (0, 3, 6)], printed
  assert all(10 < mib < 100_000 for mib in printed), printed
  # No ordering between 'before' and step 3: in a pytest worker the RSS
  # before training includes what earlier tests left, which the collector
  # may return to the OS during training.
  growth = (out[6] - out[3]) / 2**20
  assert float(second.group(3)) == round(growth, 1)
  assert float(second.group(5)) == round(growth * 1024 / 3, 1)
  # It was the real loop: the final checkpoint is there.
  assert (workdir / 'checkpoints' / '6').is_dir()


def test_rss_is_read_from_proc_or_getrusage():
  rss, source = bench_memory.rss_bytes()
  assert source in ('VmRSS', 'peak RSS') and rss > 10 * 2**20


@pytest.mark.parametrize('steps', [['2000', '200'], ['0', '5'], ['a'], []])
def test_bad_steps_are_refused(steps):
  with pytest.raises(ValueError, match='--steps='):
    bench_memory.parse_steps(steps)


def test_help():
  proc = subprocess.run([sys.executable, '-m', 'vlg.tools.bench_memory',
                         '--help'], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode in (0, 1), proc.stderr  # absl's --help exits 1.
  assert '--steps' in proc.stdout and '--workdir' in proc.stdout
