#!/usr/bin/env bash
# Step-3 benchmark on this machine's CPU: `evalfleet step3` (release build, local CPU workers)
# against LLaMA-Factory v0.7.1's evaluator loop (transformers, batch 4; scripts/bench/lf_step3.py),
# same model (SmolLM2-135M-Instruct as an f32 HF folder converted from the PyPI GGUF), same
# subjects, template qwen, 5 shots, in both few-shot modes. Prints each run's JSON line, then the
# questions per second of both sides and the ratio per mode. Not a test.
#
# evalfleet's time is the whole command (planning, starting the worker, loading the model, scoring,
# writing the files); the LF loop's is formatting + predicting with the model already loaded (what
# its progress bars time), so the ratio is conservative. The model file is read into the page
# cache before each evalfleet run, so a cold disk (8.6 s instead of 1 s to load the model right
# after a build) does not count against the side whose timing includes the load.
#
# Environment:
#   LF_PYTHON   python with llmtuner 0.7.1 + transformers 4.41.2 (required; e.g. a venv made with
#               pip install --no-deps llmtuner==0.7.1 transformers==4.41.2 tokenizers accelerate)
#   TORCH_PATH  a PYTHONPATH entry that makes torch importable there (default: a folder under out/
#               linking torch and its dist-info from TORCH_FROM, another venv's site-packages)
#   SEED_EVAL   the benchmarks folder (default <repo>/../shared/seed/evaluation)
#   TASK, LANG, SPLIT   default mmlu, en, test
#   SUBJECTS    comma-separated subjects of TASK (default abstract_algebra: 100 questions)
#   MODES       default "fixed llamafactory"
#   LF_BATCH    default 4; EF_BATCH (evalfleet questions per forward pass) default 8
#   WORKERS     evalfleet CPU worker processes (default 1; each gets RAYON_NUM_THREADS = CPUs /
#               WORKERS, and N single-threaded workers on N cores go faster than one: README)
#   THREADS     torch threads (default: torch's)
#   SIDES       default "evalfleet llamafactory"
#   EVALFLEET_BIN_DIR  a folder with release evalfleet and evalfleet-worker (default:
#               build them with cargo --release)
#   FULL_MMLU=1 also times evalfleet on the whole MMLU test split (14042 questions) per mode
# Results are also appended to out/bench-step3/results.jsonl.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS="${EVALFLEET_MODELS:-$ROOT/.models}"
LF_PYTHON="${LF_PYTHON:?set LF_PYTHON to a python with llmtuner 0.7.1 and transformers 4.41.2}"
SEED_EVAL="${SEED_EVAL:-$ROOT/../shared/seed/evaluation}"
TASK="${TASK:-mmlu}"
LANG_="${LANG_:-${STEP3_LANG:-en}}"
SPLIT="${SPLIT:-test}"
SUBJECTS="${SUBJECTS:-abstract_algebra}"
MODES="${MODES:-fixed llamafactory}"
LF_BATCH="${LF_BATCH:-4}"
EF_BATCH="${EF_BATCH:-8}"
WORKERS="${WORKERS:-1}"
THREADS="${THREADS:-0}"
SIDES="${SIDES:-evalfleet llamafactory}"
WORK="$ROOT/out/bench-step3"
HF_DIR="$MODELS/smollm2-135m-instruct-f32"
RESULTS="$WORK/results.jsonl"
mkdir -p "$WORK"

GGUF="$MODELS/smollm2-135m-instruct-gguf/SmolLM2-135M-Instruct.Q4_1.gguf"
[[ -f "$GGUF" ]] || { echo "no SmolLM2 GGUF under $MODELS: run scripts/fetch-models.sh first" >&2; exit 1; }
[[ -f "$SEED_EVAL/$TASK/mapping.json" ]] || { echo "no $SEED_EVAL/$TASK/mapping.json: set SEED_EVAL" >&2; exit 1; }

BIN="${EVALFLEET_BIN_DIR:-}"
if [[ -z "$BIN" ]]; then
  (cd "$ROOT" && cargo build --release -p evalfleet -p evalfleet-worker --bins)
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
fi
if [[ ! -f "$HF_DIR/model.safetensors" ]]; then
  "$BIN/evalfleet-worker" convert-gguf --gguf "$GGUF" --out "$HF_DIR"
fi

if [[ -z "${TORCH_PATH:-}" ]] && ! "$LF_PYTHON" -c "import torch" 2>/dev/null; then
  TORCH_FROM="${TORCH_FROM:?set TORCH_PATH, or TORCH_FROM to a site-packages folder holding torch}"
  TORCH_PATH="$WORK/torch-path"
  mkdir -p "$TORCH_PATH"
  for p in "$TORCH_FROM"/torch "$TORCH_FROM"/torch-*.dist-info "$TORCH_FROM"/torchgen "$TORCH_FROM"/functorch \
           "$TORCH_FROM"/sympy "$TORCH_FROM"/mpmath "$TORCH_FROM"/networkx; do
    [[ -e "$p" ]] && ln -sfn "$p" "$TORCH_PATH/"
  done
fi

# A task folder with only the chosen subjects (mapping order kept), reading the seed's zip.
make_task_dir() { # dest task subjects(comma)
  local dest="$1/$2"
  mkdir -p "$dest"
  ln -sfn "$SEED_EVAL/$2/$2.zip" "$dest/$2.zip"
  python3 - "$SEED_EVAL/$2/mapping.json" "$dest/mapping.json" "$3" <<'EOF'
import json, sys
src, dst, subjects = sys.argv[1], sys.argv[2], sys.argv[3]
mapping = json.load(open(src, encoding="utf-8"))
keep = mapping if subjects == "all" else {k: v for k, v in mapping.items() if k in subjects.split(",")}
missing = set(subjects.split(",")) - set(mapping) if subjects != "all" else set()
if missing:
    sys.exit(f"unknown subjects: {sorted(missing)}")
json.dump(keep, open(dst, "w", encoding="utf-8"), ensure_ascii=False)
EOF
}

# Runs evalfleet step3 on task folder $1 in mode $2; prints a JSON line.
run_evalfleet() {
  local tasks="$1" mode="$2" label="$3"
  local yaml="$WORK/step3-$label-$mode.yaml" out="$WORK/out-$label-$mode"
  cat >"$yaml" <<EOF
model_name_or_path: $HF_DIR
task_dir: $tasks
tasks: [$TASK]
langs: [$LANG_]
splits: [$SPLIT]
template: qwen
save_dir: $out
batch_size: $EF_BATCH
few_shot_order: $mode
dtype: f32
EOF
  local start end n
  # A journal left by an interrupted run would be resumed, and the time would cover only the rest.
  rm -rf "$out"
  cat "$HF_DIR"/*.safetensors >/dev/null
  start=$(date +%s.%N)
  "$BIN/evalfleet" step3 "$yaml" --workers "$WORKERS" --cpu >"$WORK/evalfleet-$label-$mode.log" 2>&1 \
    || { tail -20 "$WORK/evalfleet-$label-$mode.log" >&2; return 1; }
  end=$(date +%s.%N)
  n=$(wc -l <"$out/$TASK/results_detail.jsonl")
  python3 -c "import json,sys; n,s=int(sys.argv[1]),float(sys.argv[2]); acc=open(sys.argv[3]).read().splitlines()[0].split(':')[1].strip(); \
print(json.dumps({'side':'evalfleet','label':sys.argv[4],'mode':sys.argv[5],'questions':n,'seconds':round(s,3),'questions_per_s':round(n/s,3),'accuracy':float(acc),'batch_size':int(sys.argv[6]),'workers':int(sys.argv[7])}))" \
    "$n" "$(python3 -c "print($end - $start)")" "$out/$TASK/results.log" "$label" "$mode" "$EF_BATCH" "$WORKERS"
}

run_lf() {
  local tasks="$1" mode="$2"
  PYTHONPATH="$TORCH_PATH${PYTHONPATH:+:$PYTHONPATH}" "$LF_PYTHON" "$ROOT/scripts/bench/lf_step3.py" \
    --model "$HF_DIR" --task-dir "$tasks" --task "$TASK" --lang "$LANG_" --split "$SPLIT" \
    --mode "$mode" --batch-size "$LF_BATCH" --threads "$THREADS" 2>/dev/null | tail -n 1
}

TASKS_DIR="$WORK/tasks"
rm -rf "$TASKS_DIR"
make_task_dir "$TASKS_DIR" "$TASK" "$SUBJECTS"
echo "step3 bench: $TASK/$SPLIT subjects $SUBJECTS; modes: $MODES; sides: $SIDES; $(nproc) CPUs" >&2

declare -A QPS
for mode in $MODES; do
  for side in $SIDES; do
    case "$side" in
      evalfleet) line="$(run_evalfleet "$TASKS_DIR" "$mode" subjects)" ;;
      llamafactory) line="$(run_lf "$TASKS_DIR" "$mode")" ;;
      *) echo "unknown side $side" >&2; exit 1 ;;
    esac
    echo "$line" | tee -a "$RESULTS"
    QPS["$side/$mode"]="$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['questions_per_s'])" "$line")"
  done
done

if [[ "${FULL_MMLU:-0}" == 1 ]]; then
  FULL_DIR="$WORK/tasks-full"
  rm -rf "$FULL_DIR"
  TASK=mmlu LANG_=en SPLIT=test make_task_dir "$FULL_DIR" mmlu all
  for mode in $MODES; do
    TASK=mmlu LANG_=en SPLIT=test run_evalfleet "$FULL_DIR" "$mode" full-mmlu | tee -a "$RESULTS"
  done
fi

echo
printf '%-14s %14s %14s %8s\n' mode evalfleet-q/s llamafactory-q/s ratio
for mode in $MODES; do
  ef="${QPS[evalfleet/$mode]:-}"; lf="${QPS[llamafactory/$mode]:-}"
  ratio=""
  [[ -n "$ef" && -n "$lf" ]] && ratio="$(python3 -c "print(f'{$ef / $lf:.2f}x')")"
  printf '%-14s %14s %14s %8s\n' "$mode" "${ef:--}" "${lf:--}" "${ratio:--}"
done
