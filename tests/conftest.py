"""Test set-up: 8 fake CPU devices, forced before jax is imported."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import flags  # noqa: E402

# grain reads absl flags in worker set-up; mark them parsed outside app.run.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()
