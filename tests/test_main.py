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


def test_misspelt_override_is_one_line_with_path_and_nearest_field(tmp_path):
  r = _run('--config=configs/albef.py:tiny', '--config.optim.lrr=1',
           f'--workdir={tmp_path}')
  assert r.returncode != 0
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1, r.stderr
  assert 'Traceback' not in r.stderr
  assert "'optim.lrr'" in lines[0] and "'optim.lr'" in lines[0], lines[0]
  assert not os.listdir(tmp_path)


def test_unknown_override_names_path_and_nearest_valid_field():
  from vlg import config_lib  # pylint: disable=g-import-not-at-top
  import configs.albef as albef_config  # pylint: disable=g-import-not-at-top
  c = albef_config.get_config('tiny')
  assert config_lib.unknown_field(c, 'optim.lr') is None
  assert config_lib.unknown_field(
      c, 'input.data.synthetic.num_examples') is None
  message = config_lib.unknown_field(c, 'optim.lrr')
  assert "'optim.lrr'" in message and "did you mean 'optim.lr'" in message
  # A misspelt parent: the nearest field keeps the rest of the path.
  assert "did you mean 'optim.lr'" in config_lib.unknown_field(c, 'optimm.lr')
  # A field in another section is found by its full path.
  assert "did you mean 'optim.lr'" in config_lib.unknown_field(c, 'lr')
  # A path into a leaf value is not a field either.
  assert 'batch_size' in config_lib.unknown_field(c, 'batch_size.x')
