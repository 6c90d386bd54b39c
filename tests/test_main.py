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


def test_every_command_with_a_config_flag_parses_overrides_alike():
  """A misspelt override gets the same one line from every command that
  takes ``--config``: each runs with config_lib.parse_flags."""
  import pathlib  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  found = []
  for path in sorted(pathlib.Path(ROOT, 'vlg').rglob('*.py')):
    text = path.read_text()
    if re.search(r"DEFINE_config_file\(\s*'config'", text):
      found.append(path.name)
      assert 'flags_parser=config_lib.parse_flags' in text, path
  assert {'main.py', 'bench.py', 'stage1.py'} <= set(found), found


def test_a_tool_reports_a_misspelt_override_in_one_line():
  r = subprocess.run(
      [sys.executable, '-m', 'vlg.tools.bench',
       '--config=configs/albef.py:tiny,evals=False', '--config.batch_sise=4'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode != 0
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and 'Traceback' not in r.stderr, r.stderr
  assert "'batch_sise'" in lines[0] and "'batch_size'" in lines[0], lines[0]
