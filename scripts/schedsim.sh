#!/usr/bin/env bash
# The scheduling simulation (not a test): 64 workers of speeds spanning 4x (8 joining late, one
# going silent halfway) on a 100k-item job, driven through the real lease scheduler in logical
# time; prints makespan vs the ideal (total work / total speed) for several lease batch sizes.
# Extra arguments go to evalfleet-schedsim (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -q -p evalfleet-tools --bin evalfleet-schedsim -- --batch 1,8,32,64,128 "$@"
