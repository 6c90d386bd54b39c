#!/usr/bin/env bash
# One host, all local devices:
#   launch/local.sh configs/albef.py:tiny workdirs/albef_tiny [--config.x=y ...]
# Re-running the same command resumes from the last checkpoint in WORKDIR.
set -euo pipefail
if [[ $# -lt 2 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,4p' "$0"; exit 0
fi
config="$1"; workdir="$2"; shift 2
cd "$(dirname "$0")/.."
exec python -m vlg.main --config="$config" --workdir="$workdir" "$@"
