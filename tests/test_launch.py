"""The launch scripts' commands, with a stand-in for gcloud."""

import os
import stat
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tpu_pod_command(tmp_path, **env_updates) -> str:
  """The command line tpu_pod.sh hands to ``gcloud ... ssh``."""
  fake = tmp_path / 'bin' / 'gcloud'
  fake.parent.mkdir()
  fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  env = {k: v for k, v in os.environ.items() if k != 'VLG_COMPILATION_CACHE'}
  env.update(PATH=f'{fake.parent}:{env["PATH"]}', TPU_NAME='vlg-v4-32',
             ZONE='us-central2-b', PROJECT='p', CONFIG='configs/albef.py:base',
             WORKDIR='gs://b/albef', **env_updates)
  run = subprocess.run(['bash', os.path.join(ROOT, 'launch', 'tpu_pod.sh'),
                        '--config.total_steps=10'], env=env,
                       capture_output=True, text=True, check=True)
  args = run.stdout.splitlines()
  return next(a for a in args if a.startswith('--command='))


def test_tpu_pod_runs_main_on_every_worker(tmp_path):
  command = _tpu_pod_command(tmp_path)
  assert 'python3 -m vlg.main --config=configs/albef.py:base' in command
  assert ('--workdir=gs://b/albef --distributed --config.total_steps=10'
          in command)
  assert 'VLG_COMPILATION_CACHE' not in command


def test_tpu_pod_passes_the_compilation_cache_on(tmp_path):
  command = _tpu_pod_command(tmp_path,
                             VLG_COMPILATION_CACHE='gs://b/jax cache')
  assert ('VLG_COMPILATION_CACHE=gs://b/jax\\ cache python3 -m vlg.main'
          in command)
