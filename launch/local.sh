#!/usr/bin/env bash
# One host. Without NUM_PROCESSES: one process on all local devices:
#   launch/local.sh configs/albef.py:tiny workdirs/albef_tiny [--config.x=y ...]
# With NUM_PROCESSES=N: a real N-process JAX job on this machine (CPU, gloo
# collectives), e.g. 2 processes with 4 fake CPU devices each:
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=4 \
#     launch/local.sh configs/albef.py:tiny workdirs/mp
# Environment: NUM_PROCESSES (default 1), DEVICES_PER_PROCESS (fake CPU
# devices per process; unset: the backend's own devices), COORDINATOR_PORT
# (default 12355), PYTHON (default python). Process 0 prints to the
# terminal, process i>0 to WORKDIR/logs/process_i.log. The script waits for
# all processes and exits non-zero (stopping the others) as soon as one
# fails; Ctrl-C or SIGTERM is passed on as SIGTERM, so the job saves a
# checkpoint and exits. Re-running the same command resumes from WORKDIR.
set -euo pipefail
if [[ $# -lt 2 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,14p' "$0"; exit 0
fi
config="$1"; workdir="$2"; shift 2
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
num_processes="${NUM_PROCESSES:-1}"
if [[ -n "${DEVICES_PER_PROCESS:-}" ]]; then
  fake_devices="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS}"
  export XLA_FLAGS="${XLA_FLAGS:-} $fake_devices"
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
fi
if [[ "$num_processes" -le 1 ]]; then
  exec "$python" -m vlg.main --config="$config" --workdir="$workdir" "$@"
fi

port="${COORDINATOR_PORT:-12355}"
mkdir -p "$workdir/logs"
pids=()
stop_all() {
  local signal="$1"
  for pid in "${pids[@]}"; do
    kill "-$signal" "$pid" 2>/dev/null || true
  done
}
# Background jobs of a script ignore SIGINT, so forward Ctrl-C ourselves;
# SIGTERM asks vlg.main for a checkpoint and a clean exit.
trap 'echo "local.sh: stopping ${#pids[@]} processes" >&2
      stop_all TERM' INT TERM

for ((i = 0; i < num_processes; i++)); do
  cmd=("$python" -m vlg.main --config="$config" --workdir="$workdir"
       --coordinator_address="127.0.0.1:$port"
       --num_processes="$num_processes" --process_id="$i" "$@")
  if [[ "$i" -eq 0 ]]; then
    "${cmd[@]}" &
  else
    "${cmd[@]}" >"$workdir/logs/process_$i.log" 2>&1 &
  fi
  pids+=("$!")
done

declare -A rank_of=()
for ((i = 0; i < num_processes; i++)); do rank_of[${pids[$i]}]="$i"; done
live=("${pids[@]}")
status=0
while [[ ${#live[@]} -gt 0 ]]; do
  finished=""
  if wait -n -p finished "${live[@]}"; then rc=0; else rc=$?; fi
  [[ -z "${finished:-}" ]] && continue  # A trapped signal interrupted wait.
  still=()
  for pid in "${live[@]}"; do
    [[ "$pid" != "$finished" ]] && still+=("$pid")
  done
  live=("${still[@]+"${still[@]}"}")
  if [[ "$rc" -ne 0 && "$status" -eq 0 ]]; then
    status="$rc"
    echo "local.sh: process ${rank_of[$finished]} exited with status $rc;" \
         "stopping the others (logs in $workdir/logs)" >&2
    stop_all KILL
  fi
done
exit "$status"
