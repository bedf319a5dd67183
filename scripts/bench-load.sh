#!/usr/bin/env bash
# Load benchmark of the coordinator's item-result path (issue 6): the real gRPC server with a
# journal in a temporary directory, N fake workers over loopback sending precomputed results.
# Prints results per second and peak memory, after the machine's load average (the figures
# are only comparable on a quiet machine).
#
#   scripts/bench-load.sh [evalfleet-loadbench options...]
#   e.g. scripts/bench-load.sh --workers 64 --items 500000 --batch 32 --predict-bytes 1000
#
# Builds the release binary first (CARGO_TARGET_DIR is honoured).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p evalfleet-tools --bin evalfleet-loadbench
target_dir="${CARGO_TARGET_DIR:-target}"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
"$target_dir/release/evalfleet-loadbench" "$@"
