"""The restart with glibc's huge-page tunable: when, with what, and once."""

import os
import platform
import subprocess
import sys

import pytest

from vlg import huge_pages

LINUX = dict(system='Linux', libc='glibc', mode='madvise')


def test_restart_env_adds_the_tunable_where_it_helps():
  env = huge_pages.restart_env({'HOME': '/h'}, **LINUX)
  assert env == {'HOME': '/h', 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
  kept = huge_pages.restart_env(
      {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, **LINUX)
  assert kept['GLIBC_TUNABLES'] == (
      'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1')
  assert huge_pages.restart_env({}, **dict(LINUX, mode='always'))


@pytest.mark.parametrize('environ,where', [
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}, {}),  # After a restart.
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, {}),  # The user's choice.
    ({'VLG_HUGE_PAGES': '0'}, {}),
    ({}, {'mode': 'never'}),
    ({}, {'mode': None}),
    ({}, {'system': 'Darwin'}),
    ({}, {'libc': ''}),  # musl or unknown.
])
def test_no_restart_where_it_would_not_help(environ, where):
  assert huge_pages.restart_env(environ, **dict(LINUX, **where)) is None


def test_thp_mode_reads_the_bracketed_word(tmp_path):
  path = tmp_path / 'enabled'
  path.write_text('always [madvise] never\n')
  assert huge_pages.thp_mode(str(path)) == 'madvise'
  path.write_text('[always] madvise never\n')
  assert huge_pages.thp_mode(str(path)) == 'always'
  path.write_text('garbled\n')
  assert huge_pages.thp_mode(str(path)) is None
  assert huge_pages.thp_mode(str(tmp_path / 'absent')) is None


_SCRIPT = """
import os, sys
from vlg import huge_pages
print('start', os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:], flush=True)
huge_pages.restart_with_huge_pages()
print('running', os.environ.get('GLIBC_TUNABLES', ''), flush=True)
"""


@pytest.mark.skipif(
    huge_pages.restart_env({}, system=platform.system(),
                           libc=platform.libc_ver()[0],
                           mode=huge_pages.thp_mode()) is None,
    reason='no glibc with transparent huge pages here')
@pytest.mark.parametrize('opt_out', [False, True])
def test_a_program_restarts_once_with_its_arguments(tmp_path, opt_out):
  script = tmp_path / 'prog.py'
  script.write_text(_SCRIPT)
  env = {k: v for k, v in os.environ.items()
         if k not in ('GLIBC_TUNABLES', 'VLG_HUGE_PAGES')}
  env['PYTHONPATH'] = os.pathsep.join(
      [os.getcwd()] + [p for p in [env.get('PYTHONPATH')] if p])
  if opt_out:
    env['VLG_HUGE_PAGES'] = '0'
  out = subprocess.run([sys.executable, str(script), '--flag=1'], env=env,
                       capture_output=True, text=True, check=True)
  lines = out.stdout.splitlines()
  assert not out.stderr  # Silent: a command's own output stays as it is.
  if opt_out:
    assert lines == ["start  ['--flag=1']", 'running ']
  else:
    assert lines == ["start  ['--flag=1']",
                     "start glibc.malloc.hugetlb=1 ['--flag=1']",
                     'running glibc.malloc.hugetlb=1']
  # Asked only for its help, a program prints it without restarting.
  out = subprocess.run([sys.executable, str(script), '--flag=1', '--help'],
                       env=env, capture_output=True, text=True, check=True)
  assert out.stdout.splitlines() == ["start  ['--flag=1', '--help']",
                                     'running ']


def test_help_flags_are_absls():
  assert huge_pages.asks_for_help(['--help'])
  assert huge_pages.asks_for_help(['--config=c.py', '-h'])
  assert huge_pages.asks_for_help(['--helpfull'])
  assert not huge_pages.asks_for_help([])
  assert not huge_pages.asks_for_help(['--config.name=help', '--workdir=h'])


def test_describe_says_on_or_off():
  on = huge_pages.describe({'GLIBC_TUNABLES': 'a=1:glibc.malloc.hugetlb=1'})
  assert on.startswith('on (GLIBC_TUNABLES=a=1:glibc.malloc.hugetlb=1')
  assert huge_pages.describe({}) == 'off'
  assert huge_pages.describe({'VLG_HUGE_PAGES': '0'}) == 'off (VLG_HUGE_PAGES=0)'
  assert huge_pages.describe(
      {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}) == 'off'
