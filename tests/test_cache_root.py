"""vlg.cache_root: one folder for the synthetic sets and compiled programs."""

import os

from vlg import cache_root
from vlg import compilation_cache
from vlg.evaluators import common
from vlg.synthetic import benchmarks as synthetic_benchmarks


def test_root_from_the_environment_or_the_home_cache():
  assert cache_root.cache_root({'VLG_CACHE_DIR': '/scratch/vlg'}) == (
      '/scratch/vlg')
  home = os.path.join(os.path.expanduser('~'), '.cache', 'vlg')
  assert cache_root.cache_root({}) == home
  assert cache_root.cache_root({'VLG_CACHE_DIR': '  '}) == home


def test_synthetic_sets_and_compiled_programs_share_the_root(
    tmp_path, monkeypatch):
  monkeypatch.setenv('VLG_CACHE_DIR', str(tmp_path))
  monkeypatch.delenv('VLG_COMPILATION_CACHE', raising=False)
  monkeypatch.setattr(synthetic_benchmarks, 'write_all',
                      lambda out_dir, **kw: open(
                          os.path.join(out_dir, 'manifest.json'), 'w').close())
  sets = common.synthetic_root(48, seed=3, num=2)
  assert os.path.dirname(sets) == str(tmp_path / 'synthetic_benchmarks')
  assert os.path.isfile(os.path.join(sets, 'manifest.json'))
  assert compilation_cache.cache_dir() == str(tmp_path / 'jax')
