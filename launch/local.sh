#!/usr/bin/env bash
# A pod on one machine: N JAX processes of one job on this host, talking over loopback.
#
#   launch/local.sh N WORKDIR [--config.KEY=VALUE ...]
#
# Each process runs `python -m jaxaudio.main` with --coordinator=127.0.0.1:PORT (a free
# port, or PORT), --num_processes=N and its --process_id; on CPU they use gloo collectives,
# so this is the same program a TPU pod or a GPU cluster runs, one process per host. Every
# line of output is prefixed with its process id. The script waits for all of them, stops
# the others as soon as one fails, and exits with the first failure's status. Re-running the
# same command resumes from the last checkpoint in WORKDIR. CONFIG (default
# configs/finetune.py) and PYTHON (default: python) pick the config and interpreter;
# MODULE=jaxaudio.evaluate runs the evaluation (or --folds=K) the same way; give
# each process its own devices with e.g. XLA_FLAGS=--xla_force_host_platform_device_count=2.
# DRY_RUN=1 prints the N commands instead of running them.
set -uo pipefail

N="${1:?usage: $0 N WORKDIR [--config.KEY=VALUE ...]}"
WORKDIR="${2:?usage: $0 N WORKDIR [--config.KEY=VALUE ...]}"
shift 2
if ! [[ "$N" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: N=$N is not a positive number of processes; e.g. $0 2 runs/pod." >&2
  exit 2
fi
CONFIG="${CONFIG:-configs/finetune.py}"
PYTHON="${PYTHON:-python}"
PORT="${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"

MODULE="${MODULE:-jaxaudio.main}"

command_for() {
  cmd=("$PYTHON" -m "$MODULE")
  [[ "$MODULE" == jaxaudio.main ]] && cmd+=("--config=$CONFIG")
  cmd+=("--workdir=$WORKDIR" "--coordinator=127.0.0.1:$PORT" "--num_processes=$N"
        "--process_id=$1" "${@:2}")
}

if [[ -n "${DRY_RUN:-}" ]]; then
  for ((i = 0; i < N; i++)); do command_for "$i" "$@"; printf '%q ' "${cmd[@]}"; echo; done
  exit 0
fi

pids=()
stop_all() {
  kill -TERM "${pids[@]}" 2>/dev/null
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    kill -0 "${pids[@]}" 2>/dev/null || return 0
    sleep 1
  done
  kill -KILL "${pids[@]}" 2>/dev/null
}
trap 'stop_all; exit 143' TERM
trap 'stop_all; exit 130' INT

for ((i = 0; i < N; i++)); do
  command_for "$i" "$@"
  "${cmd[@]}" > >(sed -u "s/^/[$i] /") 2>&1 &
  pids+=("$!")
done

status=0
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  done_pid=""
  wait -n -p done_pid "${running[@]}" 2>/dev/null
  rc=$?
  [[ -z "$done_pid" ]] && break
  still=()
  for p in "${running[@]}"; do [[ "$p" != "$done_pid" ]] && still+=("$p"); done
  running=("${still[@]}")
  if ((rc != 0 && status == 0)); then
    status=$rc
    for ((i = 0; i < N; i++)); do
      [[ "${pids[$i]}" == "$done_pid" ]] && echo "[local.sh] process $i exited with status $rc; stopping the others" >&2
    done
    stop_all
  fi
done
wait   # the output prefixers
exit "$status"
