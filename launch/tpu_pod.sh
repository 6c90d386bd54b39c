#!/usr/bin/env bash
# A TPU VM slice (one or many hosts): the same command on every worker.
#   TPU_NAME=vlg-v4-32 ZONE=us-central2-b PROJECT=my-project \
#   CONFIG=configs/albef.py:base WORKDIR=gs://my-bucket/albef_base \
#   launch/tpu_pod.sh [--config.x=y ...]
# Required: TPU_NAME, ZONE, PROJECT, CONFIG, WORKDIR (a gs:// path every
# worker can write: checkpoints are written by all hosts together).
# Optional: REPO_DIR (checkout on the workers, default vlg under the
# worker's home), PYTHON (default python3), SYNC=1 (first copy this tree to
# every worker and pip install requirements.txt there), DETACH=1 (run under
# nohup, logging to ~/vlg_train.log on each worker, so a dropped ssh
# session does not kill the job), VLG_COMPILATION_CACHE (passed on to every
# worker: a gs:// directory lets a resumed job load its compiled step).
# Each worker runs `python -m vlg.main --distributed`:
# jax.distributed.initialize() finds the other hosts from the TPU metadata.
# Re-running the same command resumes from the last checkpoint in WORKDIR.
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,16p' "$0"; exit 0
fi
for var in TPU_NAME ZONE PROJECT CONFIG WORKDIR; do
  if [[ -z "${!var:-}" ]]; then
    echo "tpu_pod.sh: set $var (see --help)" >&2; exit 2
  fi
done
cd "$(dirname "$0")/.."
repo_dir="${REPO_DIR:-vlg}"
python="${PYTHON:-python3}"
tpu=(gcloud compute tpus tpu-vm)
where=("$TPU_NAME" --zone="$ZONE" --project="$PROJECT" --worker=all)

if [[ "${SYNC:-0}" == "1" ]]; then
  archive="$(mktemp -t vlg_XXXX.tar.gz)"
  tar --exclude=.git --exclude=workdirs -czf "$archive" .
  "${tpu[@]}" scp "$archive" "$TPU_NAME:vlg.tar.gz" --zone="$ZONE" \
      --project="$PROJECT" --worker=all
  "${tpu[@]}" ssh "${where[@]}" --command="mkdir -p $(printf '%q' "$repo_dir") \
      && tar -xzf vlg.tar.gz -C $(printf '%q' "$repo_dir") \
      && $python -m pip install -q -r $(printf '%q' "$repo_dir")/requirements.txt"
  rm -f "$archive"
fi

# The compilation cache's directory (launch/README.md) travels to every
# worker when it is set here.
cache_env=""
if [[ -n "${VLG_COMPILATION_CACHE:-}" ]]; then
  cache_env="VLG_COMPILATION_CACHE=$(printf '%q' "$VLG_COMPILATION_CACHE") "
fi
train="cd $(printf '%q' "$repo_dir") && $cache_env$python -m vlg.main \
--config=$(printf '%q' "$CONFIG") --workdir=$(printf '%q' "$WORKDIR") \
--distributed"
for arg in "$@"; do train+=" $(printf '%q' "$arg")"; done
if [[ "${DETACH:-0}" == "1" ]]; then
  train="nohup bash -c $(printf '%q' "$train") > ~/vlg_train.log 2>&1 &"
fi
exec "${tpu[@]}" ssh "${where[@]}" --command="$train"
