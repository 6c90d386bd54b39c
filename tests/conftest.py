"""Test set-up: 8 fake CPU devices, forced before jax is imported."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# Tests that compile for TPU topologies (vlg.tools.aot) use libtpu's
# compile-only devices, from several processes at once (xdist workers, the
# tools' subprocesses); libtpu's one-process lock would refuse all but one.
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')

from absl import flags  # noqa: E402

# grain reads absl flags in worker set-up; mark them parsed outside app.run.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# Tests build the same tiny train step several times (fresh run, resumed run,
# single-device reference); a session-wide persistent cache compiles it once.
# Under pytest-xdist the workers inherit the controller's environment, so
# they share one cache.
# The process that makes the cache (the controller, or the only process)
# removes it when the session ends, so runs do not fill /tmp.
_OWN_CACHE = 'VLG_TEST_JAX_CACHE' not in os.environ
if _OWN_CACHE:
  os.environ['VLG_TEST_JAX_CACHE'] = tempfile.mkdtemp(
      prefix='vlg_test_jax_cache_')
# The tests' subprocesses (multi-process jobs, fault-injected runs) read it
# too: jax takes its config from these variables at import.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.environ['VLG_TEST_JAX_CACHE'])
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
jax.config.update('jax_compilation_cache_dir', os.environ['VLG_TEST_JAX_CACHE'])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def pytest_unconfigure(config):
  """Removes the session's compilation cache where this process made it
  (never a cache the caller named with VLG_TEST_JAX_CACHE)."""
  del config
  if _OWN_CACHE:
    shutil.rmtree(os.environ['VLG_TEST_JAX_CACHE'], ignore_errors=True)


@pytest.fixture
def fast_compile():
  """Turns off most XLA optimisations (compile time dominates tiny tests)."""
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', False)
