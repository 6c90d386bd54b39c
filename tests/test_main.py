"""The command line: --help and a clear error for a misspelt config field."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  return subprocess.run([sys.executable, '-m', 'vlg.main', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


def test_config_typo_fails_naming_the_key(tmp_path):
  r = _run('--config=configs/albef.py:tiny', '--config.optim.lrr=1',
           f'--workdir={tmp_path}')
  assert r.returncode != 0
  assert 'lrr' in r.stderr
  assert not os.listdir(tmp_path)  # Nothing was started.


def test_help_lists_flags():
  r = _run('--help')
  assert '--workdir' in r.stdout + r.stderr
  assert '--config' in r.stdout + r.stderr
