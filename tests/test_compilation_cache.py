"""The persistent compilation cache that vlg's entry points turn on."""

import os
import subprocess
import sys

import pytest

from vlg import compilation_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Turns the cache on as an entry point does, compiles one program, and
# prints the directory in use and how many programs were loaded from it.
_CHILD = r'''
import jax, jax.numpy as jnp
from vlg import compilation_cache
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(name)
    if name == '/jax/compilation_cache/cache_hits' else None)
directory = compilation_cache.enable()
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(0))
f(jnp.arange(64.0).reshape(8, 8)).block_until_ready()
print(repr(directory), len(hits))
'''


def _child(env_updates: dict[str, str]) -> tuple[str, int]:
  """Runs :data:`_CHILD` in a fresh process without the test session's own
  cache settings (conftest.py), plus ``env_updates``."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('JAX_COMPILATION_CACHE', 'JAX_PERSISTENT_CACHE',
                              'VLG_COMPILATION_CACHE', 'VLG_CACHE_DIR'))}
  env.update(env_updates)
  run = subprocess.run([sys.executable, '-c', _CHILD], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300,
                       check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  directory, hits = run.stdout.split()[-2:]
  return eval(directory), int(hits)  # pylint: disable=eval-used


def test_cache_dir_from_the_environment():
  assert compilation_cache.cache_dir({'VLG_COMPILATION_CACHE': 'off'}) is None
  assert compilation_cache.cache_dir({'VLG_COMPILATION_CACHE': ' 0 '}) is None
  assert compilation_cache.cache_dir(
      {'VLG_COMPILATION_CACHE': '/data/jax'}) == '/data/jax'
  assert compilation_cache.cache_dir(
      {'VLG_CACHE_DIR': '/scratch/vlg'}) == '/scratch/vlg/jax'
  assert compilation_cache.cache_dir({}) == os.path.join(
      os.path.expanduser('~'), '.cache', 'vlg', 'jax')


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
  cache = tmp_path / 'cache'
  env = {'VLG_CACHE_DIR': str(cache)}
  directory, hits = _child(env)
  assert directory == str(cache / 'jax')
  assert hits == 0
  assert os.listdir(directory)  # The program was written.
  directory, hits = _child(env)
  assert directory == str(cache / 'jax')
  assert hits >= 1  # The program (and the input's arange) loaded.


@pytest.mark.parametrize('setting', ['off', 'OFF', '0'])
def test_off_leaves_jax_without_a_cache(tmp_path, setting):
  directory, hits = _child({'VLG_COMPILATION_CACHE': setting,
                            'VLG_CACHE_DIR': str(tmp_path)})
  assert directory is None and hits == 0
  assert not os.listdir(tmp_path)


def test_a_jax_cache_the_user_set_is_kept(tmp_path):
  mine = tmp_path / 'mine'
  env = {'JAX_COMPILATION_CACHE_DIR': str(mine),
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
         'VLG_CACHE_DIR': str(tmp_path / 'vlg')}
  assert _child(env) == (str(mine), 0)
  directory, hits = _child(env)
  assert directory == str(mine) and hits >= 1
  assert not os.path.exists(tmp_path / 'vlg')
