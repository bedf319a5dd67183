#!/usr/bin/env bash
# evalfleet-tp-group K -- WORKER_ARGS...
#
# Runs one tensor-parallel group inside one pod: K `evalfleet-worker` processes, rank R on cuda:R,
# each given WORKER_ARGS plus --device cuda:R --tp-rank R --tp-size K --tp-rendezvous DIR (DIR from
# $EVALFLEET_TP_RENDEZVOUS, default /tmp/evalfleet-tp: rank 0 leaves the NCCL id there for the
# others). Rank 0 talks to the coordinator; the group acts as one worker.
#
# A group with a dead rank cannot make progress, so when any rank exits the others are stopped and
# the script exits with that rank's status (the pod is then replaced as a whole). SIGTERM/SIGINT are
# forwarded to every rank, so the graceful stop (rank 0 hands its lease back) works as for one worker.
set -euo pipefail

usage() { echo "usage: evalfleet-tp-group K -- WORKER_ARGS..." >&2; exit 2; }

[[ $# -ge 2 && "$1" =~ ^[1-9][0-9]*$ && "$2" == "--" ]] || usage
size="$1"
shift 2
rendezvous="${EVALFLEET_TP_RENDEZVOUS:-/tmp/evalfleet-tp}"
worker="${EVALFLEET_WORKER_BIN:-/usr/local/bin/evalfleet-worker}"
mkdir -p "$rendezvous"

pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap 'stop_all' TERM INT

for ((rank = 0; rank < size; rank++)); do
  "$worker" "$@" --device "cuda:$rank" --tp-rank "$rank" --tp-size "$size" \
    --tp-rendezvous "$rendezvous" &
  pids+=("$!")
done

# The first rank to exit decides the group's fate. A SIGTERM interrupts this wait with status 143
# and the script exits 143 after every rank has stopped: a stopped group has not finished the job, and
# exiting 0 would count as a success of the Indexed Job (whose successPolicy ends on the first one).
status=0
wait -n "${pids[@]}" || status=$?
stop_all
wait "${pids[@]}" 2>/dev/null || true
exit "$status"
