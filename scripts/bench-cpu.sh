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
"$VENV/bin/python" - "$WORK" "$ROOT/out" <<'EOF' | tee -a "$SUMMARY"
import json, os, re, sys
work, out = sys.argv[1], sys.argv[2]

def lines(path):
    if not os.path.exists(path):
        return []
    rows = []
    for text in open(path, encoding="utf-8", errors="replace"):
        text = text.strip()
        if text.startswith("{"):
            try:
                rows.append(json.loads(text))
            except json.JSONDecodeError:
                pass
    return rows

def pair(what, a_name, a, b_name, b, unit):
    ratio = f"{a / b:.2f}x" if a and b else "-"
    print(f"{what:<44} {a_name} {a or 0:9.2f} {unit} | {b_name} {b or 0:9.2f} {unit} | ratio {ratio}")

print()
step1 = lines(f"{out}/bench-step1/results.jsonl")
tps = {}
for r in step1:
    tps.setdefault(r.get("label") or r["side"], {})[r["batch_size"]] = r["tokens_per_second"]
hf, ef, gg = tps.get("transformers", {}), tps.get("evalfleet", {}), tps.get("evalfleet-gguf", {})
for b in sorted(set(hf) | set(ef)):
    pair(f"step1 f32 batch {b}", "evalfleet", ef.get(b), "transformers", hf.get(b), "tok/s")
if hf and ef:
    pair("step1 f32 each side's best batch", "evalfleet", max(ef.values()), "transformers",
         max(hf.values()), "tok/s")
lc = {r["mode"]: r for r in lines(f"{work}/llama_cpp.jsonl")}
if gg and "decode" in lc:
    pair("gguf generation batch 1", "evalfleet", gg.get(1), "llama.cpp",
         lc["decode"]["tokens_per_second"], "tok/s")
    pair("gguf generation, evalfleet best batch", "evalfleet", max(gg.values()), "llama.cpp b1",
         lc["decode"]["tokens_per_second"], "tok/s")
pre = lines(f"{work}/evalfleet_gguf_prefill.jsonl")
if pre and "prefill" in lc:
    pair("gguf prompt processing", "evalfleet", pre[-1]["tokens_per_second"], "llama.cpp",
         lc["prefill"]["tokens_per_second"], "tok/s")
for path in [f"{out}/bench-step2/evalfleet.json"]:
    st_path = f"{out}/bench-step2/st.json"
    if os.path.exists(path) and os.path.exists(st_path):
        e, s = json.load(open(path)), json.load(open(st_path))
        pair("step2 embedding", "evalfleet", e["embed_pairs_per_s"], "sentence-transformers batched",
             s["batched_pairs_per_s"], "pairs/s")
        pair("step2 end to end", "evalfleet", e["end_to_end_pairs_per_s"], "original loop",
             s["end_to_end_pairs_per_s"], "pairs/s")
q = {}
for r in lines(f"{out}/bench-step3/results.jsonl"):
    if r.get("label", "subjects") == "subjects" or r["side"] != "evalfleet":
        q[(r["side"], r["mode"])] = r["questions_per_s"]
for mode in ["fixed", "llamafactory"]:
    if (("evalfleet", mode) in q) or (("llamafactory", mode) in q):
        pair(f"step3 {mode}", "evalfleet", q.get(("evalfleet", mode)), "LLaMA-Factory",
             q.get(("llamafactory", mode)), "q/s")
for r in lines(f"{work}/step4.jsonl"):
    name = os.path.basename(str(r.get("model", "reward")))
    pair(f"step4 {name} {r.get('dtype', '')} (same scores: {r.get('identical_scores')})", "batched",
         r.get("batched_pairs_per_s"), "one at a time", r.get("one_at_a_time_pairs_per_s"), "pairs/s")
EOF
