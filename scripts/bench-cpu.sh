#!/usr/bin/env bash
# The CPU comparisons of issue 22 in one go (not a test): run it on a quiet machine. Each part
# reuses the per-step benchmark (scripts/bench-step1.sh, bench-step2.sh, bench-step3.sh, the
# evalfleet-bench tool) and the summary at the end prints every pair and its ratio:
#   step1  SmolLM2-135M-Instruct f32, greedy generation at batches 1/8/32: evalfleet vs
#          transformers (tokens/s; ratio per batch and at each side's best batch)
#   gguf   the same prompts on the GGUF file: evalfleet (quantized weights) vs llama.cpp
#          (llama-cpp-python, built from source) on the same file: batch-1 generation and prompt
#          processing (tokens/s)
#   step2  all-MiniLM-L6-v2, N pairs: evalfleet step2 vs sentence-transformers batched
#   step3  MMLU abstract_algebra, both few-shot orders: evalfleet step3 vs the LLaMA-Factory
#          v0.7.1 loop (questions/s)
#   step4  the project's tiny reward model (worker/tests/fixtures/reward), batched vs one at a
#          time (pairs/s; evalfleet only: the reference has no batched loop)
# The machine's load average is printed before each part: other processes make every figure
# lower, so compare only figures of one run.
#
# The Python side is installed on first use into virtual environments under out/ (ignored by
# git): BENCH_VENV (default out/bench-venv: torch, transformers, sentence-transformers,
# llama-cpp-python from PyPI, the last compiled for this CPU) and LF_VENV (default
# out/bench-venv-lf: llmtuner 0.7.1 + transformers 4.41.2, torch linked from BENCH_VENV).
#
# Environment: PARTS (default "step1 gguf step2 step3 step4"), THREADS (both sides; default all
# cores), NEW_TOKENS (default 64), PROMPTS (default 64), N (step-2 pairs, default 2000),
# EVALFLEET_BIN_DIR (a folder with evalfleet, evalfleet-worker and evalfleet-bench; default: build
# them with cargo --release), EVALFLEET_MODELS (default <repo>/.models, scripts/fetch-models.sh).
# Everything is written under out/bench-cpu/; the summary also to out/bench-cpu/summary.txt.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PARTS="${PARTS:-step1 gguf step2 step3 step4}"
THREADS="${THREADS:-$(nproc)}"
NEW_TOKENS="${NEW_TOKENS:-64}"
PROMPTS="${PROMPTS:-64}"
N="${N:-2000}"
MODELS="${EVALFLEET_MODELS:-$ROOT/.models}"
VENV="${BENCH_VENV:-$ROOT/out/bench-venv}"
LF_VENV="${LF_VENV:-$ROOT/out/bench-venv-lf}"
WORK="$ROOT/out/bench-cpu"
SUMMARY="$WORK/summary.txt"
mkdir -p "$WORK"
: >"$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }
load() { note "[$1] $(date -u +%H:%M:%S) load average: $(cut -d' ' -f1-3 /proc/loadavg)"; }
wants() { [[ " $PARTS " == *" $1 "* ]]; }

BIN="${EVALFLEET_BIN_DIR:-}"
if [[ -z "$BIN" ]]; then
  (cd "$ROOT" && cargo build --release -p evalfleet -p evalfleet-worker -p evalfleet-tools --bins)
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
fi

# The Python side, installed once.
if ! "$VENV/bin/python" -c "import torch, transformers, sentence_transformers" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet torch transformers sentence-transformers safetensors numpy
fi
if wants gguf && ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  # From source, for this CPU's vector units (what llama.cpp does when built on the machine).
  CMAKE_ARGS="-DGGML_NATIVE=ON" "$VENV/bin/pip" install --quiet --no-binary llama-cpp-python llama-cpp-python
fi
if wants step3 && ! "$LF_VENV/bin/python" -c "import llmtuner" 2>/dev/null; then
  python3 -m venv "$LF_VENV"
  "$LF_VENV/bin/pip" install --quiet transformers==4.41.2 numpy
  "$LF_VENV/bin/pip" install --quiet --no-deps llmtuner==0.7.1
fi
SITE="$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"

GGUF="$(ls "$MODELS"/smollm2-135m-instruct-gguf/*.gguf 2>/dev/null | head -n 1 || true)"
[[ -n "$GGUF" ]] || { echo "no SmolLM2 GGUF under $MODELS: run scripts/fetch-models.sh first" >&2; exit 1; }
note "bench-cpu: $(nproc) cores, THREADS=$THREADS, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

if wants step1 || wants gguf; then
  sides=""
  wants step1 && sides="transformers evalfleet"
  wants gguf && sides="$sides gguf"
  load step1
  RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" PYTHON="$VENV/bin/python" \
    EVALFLEET_BENCH="$BIN/evalfleet-bench" SIDES="$sides" NEW_TOKENS="$NEW_TOKENS" PROMPTS="$PROMPTS" \
    "$ROOT/scripts/bench-step1.sh" | tee "$WORK/step1.log"
fi

if wants gguf; then
  load gguf
  IDS="$ROOT/out/bench-step1/prompt_ids.json"
  "$VENV/bin/python" "$ROOT/scripts/bench/llama_cpp_bench.py" --gguf "$GGUF" --prompt-ids "$IDS" \
    --new-tokens "$NEW_TOKENS" --threads "$THREADS" | tee "$WORK/llama_cpp.jsonl"
  RAYON_NUM_THREADS="$THREADS" "$BIN/evalfleet-bench" score-prefill --model "$GGUF" --dtype auto \
    --prompt-ids "$IDS" --batch-size 1 | tee "$WORK/evalfleet_gguf_prefill.jsonl"
fi

if wants step2; then
  load step2
  PYTHON="$VENV/bin/python" N="$N" THREADS="$THREADS" EVALFLEET_BIN_DIR="$BIN" \
    "$ROOT/scripts/bench-step2.sh" | tee "$WORK/step2.log"
fi

if wants step3; then
  load step3
  LF_PYTHON="$LF_VENV/bin/python" TORCH_FROM="$SITE" EVALFLEET_BIN_DIR="$BIN" THREADS="$THREADS" \
    "$ROOT/scripts/bench-step3.sh" | tee "$WORK/step3.log"
fi

if wants step4; then
  load step4
  for m in "$ROOT"/worker/tests/fixtures/reward/tiny-rm-*; do
    for dtype in bf16 f32; do
      RAYON_NUM_THREADS="$THREADS" "$BIN/evalfleet-bench" reward --model "$m" --dtype "$dtype" \
        --pairs 32 --batch-size 8 --repeats 2 | tail -n 1 | tee -a "$WORK/step4.jsonl"
    done
  done
fi

# Every pair and its ratio.
"$VENV/bin/python" "$ROOT/scripts/bench/cpu_summary.py" "$WORK" "$ROOT/out" | tee -a "$SUMMARY"
