#!/usr/bin/env bash
# The GPU device check (issue 8), prepared here and run on the lent GPU machine from the repo root
# with dist/ (from scripts/build-cuda.sh) carried along. That machine has no cargo and no network;
# its Python venv has torch (cu130) and the NVIDIA wheels; the driver provides libcuda.so.1.
#
# It prints what it finds, then:
#   (a) logits of the tiny random checkpoints (worker/tests/fixtures/tiny-*) by evalfleet-bench on
#       the GPU vs PyTorch/transformers on the same GPU, f32 and bf16 (max abs diff, argmax
#       agreement); the first CUDA use (module load + PTX JIT) is timed apart;
#   (d) generation throughput vs HF transformers on the same GPU: the same random-weight
#       Qwen2.5-0.5B-shaped bf16 model created here, the same random prompt ids (256 tokens),
#       128 new tokens, batch 1 and 32: tokens/s of both and the ratio;
#   (e) prefill throughput (last-position logits only, as multiple-choice scoring does).
#   (b) NCCL at world size 1 and (c) tensor parallelism over in-process ranks on the one GPU
#       (`evalfleet-bench tp-check`: logits and greedy tokens against the unsplit model);
#   (p) a profile of generation and prefill by model span;
#   (t) reward-model training in bf16 (f32 master weights): one batch's losses and gradients on
#       the GPU against PyTorch's bf16 goldens (worker/tests/fixtures/train/step_llama_bf16_*);
#       then `evalfleet-train` on yamls/train_rm.yaml's synthetic task on the GPU (one rank, 60
#       steps; with 2+ GPUs also 2 ranks over NCCL), printing its held-out metrics.
#   (r) reward scoring (issue 20): the checkpoints of worker/tests/fixtures/reward_original
#       (Baichuan head size 128 and 64, llama and qwen2 reward models) scored by
#       `evalfleet-bench reward-scores` on the GPU in bf16 and f32, against PyTorch on the same
#       GPU (transformers' models for the decoders; Baichuan2's own modeling_baichuan.py for the
#       Baichuan ones, from the folder BAICHUAN2_CODE when set, else that side is skipped) and
#       against the CPU goldens: records identical and the worst difference per length class.
# SECTIONS (default "a d e bc p t r") picks parts.
#
# Every part runs under `timeout`; the whole script stays under ~6 minutes. Everything printed is
# also written to $OUT/device-check.txt (OUT defaults to out/device-check). DRY_RUN=1 runs the
# same steps on the CPU with tiny shapes (for checking the script without a GPU).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/out/device-check}"
WORK="${DEVICE_CHECK_WORK:-${TMPDIR:-/tmp}/evalfleet-device-check}"
DRY_RUN="${DRY_RUN:-0}"
# Which parts to run (all by default); e.g. SECTIONS="e p" for a quick prefill profile. The random
# model of (d)/(e)/(p) is always made.
SECTIONS=" ${SECTIONS:-a d e bc p t r} "
want() { [[ "$SECTIONS" == *" $1 "* ]]; }
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/device-check.txt") 2>&1
T0=$SECONDS

say() { printf '\n=== [%4ds] %s\n' "$((SECONDS - T0))" "$*"; }
# Runs a command under a time limit and reports a timeout or failure without stopping the script.
guard() {
  local limit="$1"; shift
  timeout --kill-after=5 "$limit" "$@"
  local rc=$?
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then echo "!!! timed out after ${limit}s: $*"; fi
  if [[ $rc -ne 0 ]]; then echo "!!! exit $rc: $*"; fi
  return $rc
}

# ---------------------------------------------------------------------------------------------
say "machine"
date -u; uname -a; nproc; free -g | head -2
if [[ "$DRY_RUN" == 1 ]]; then
  DEVICE=cpu; TORCH_DEVICE=cpu
else
  DEVICE=cuda:0; TORCH_DEVICE=cuda
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv || echo "!!! nvidia-smi failed"
  nvidia-smi | head -n 12
fi

say "python with torch"
PY=""
for cand in "${PYTHON:-}" python3 python /opt/venv/bin/python /venv/bin/python /workspace/venv/bin/python \
  "${HOME:-/root}"/venv/bin/python "${HOME:-/root}"/.venv/bin/python /root/venv/bin/python /opt/conda/bin/python \
  /opt/*/bin/python3 /opt/*/*/bin/python3 /usr/local/bin/python3 /home/*/venv/bin/python3 /*/venv/bin/python3; do
  [[ -n "$cand" ]] || continue
  command -v "$cand" >/dev/null 2>&1 || [[ -x "$cand" ]] || continue
  if "$cand" -c 'import torch' >/dev/null 2>&1; then PY="$cand"; break; fi
done
if [[ -z "$PY" ]]; then
  echo "!!! no Python with torch found; looked for python3 and common venv paths"
  exit 1
fi
echo "python: $PY"
"$PY" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available(),
      "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
try:
    import transformers
    print("transformers", transformers.__version__)
except Exception as e:
    print("transformers MISSING:", e)
EOF
HAVE_TRANSFORMERS=0
"$PY" -c 'import transformers' >/dev/null 2>&1 && HAVE_TRANSFORMERS=1
[[ "${FORCE_TORCH_REF:-0}" == 1 ]] && HAVE_TRANSFORMERS=0  # test the transformers-free path

say "unpack binaries"
BIN="$WORK/bin"
mkdir -p "$BIN"
"$PY" - "$ROOT/dist" "$BIN" <<'EOF'
import lzma, os, sys, time
src, dst = sys.argv[1:]
for name in sorted(os.listdir(src)):
    if not name.endswith(".xz"):
        continue
    t = time.perf_counter()
    out = os.path.join(dst, name[:-3])
    with lzma.open(os.path.join(src, name)) as f, open(out, "wb") as g:
        g.write(f.read())
    os.chmod(out, 0o755)
    print(f"{name} -> {out} ({os.path.getsize(out) / 2**20:.1f} MiB, {time.perf_counter() - t:.1f}s)")
EOF
EF="$BIN/evalfleet-bench"
[[ -x "$EF" ]] || { echo "!!! $EF missing: carry dist/ (scripts/build-cuda.sh)"; exit 1; }

# The CUDA libraries come from the venv's NVIDIA wheels (site-packages/nvidia/*/lib).
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
LIBDIRS="$(find "$SITE/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null | sort | tr '\n' ':')"
export LD_LIBRARY_PATH="${LIBDIRS%:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[[ "$DRY_RUN" == 1 && -n "${DRY_RUN_LIBS:-}" ]] && export LD_LIBRARY_PATH="$DRY_RUN_LIBS:$LD_LIBRARY_PATH"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
ldd "$EF" | grep -E 'not found|cuda|cublas|curand|nccl|nvrtc' || true
guard 20 "$EF" --version

FIX="$ROOT/worker/tests/fixtures"
SUMMARY="$OUT/summary.jsonl"
: >"$SUMMARY"

# ---------------------------------------------------------------------------------------------
if want a; then
say "(a) first CUDA use (module load + PTX JIT), timed apart"
# Each tiny checkpoint's own inputs (reference.json) in the --tokens format of evalfleet-bench.
"$PY" - "$FIX" "$WORK" <<'EOF'
import json, os, sys
fix, work = sys.argv[1:]
for arch in ["llama", "qwen2", "mistral"]:
    r = json.load(open(os.path.join(fix, f"tiny-{arch}", "reference.json")))
    batch = {"ids": r["batch_ids"], "mask": r["batch_mask"], "positions": r["batch_positions"]}
    json.dump({"single": r["single"], "batch": batch}, open(os.path.join(work, f"tokens-{arch}.json"), "w"))
EOF
for i in 1 2; do
  start=$SECONDS
  guard 150 "$EF" logits --model "$FIX/tiny-qwen2/model" --tokens "$WORK/tokens-qwen2.json" \
    --out "$WORK/warm.safetensors" --device "$DEVICE" --dtype bf16
  echo "call $i (tiny-qwen2 bf16 logits, process start to exit): $((SECONDS - start)) s"
done

say "(a) logits parity: evalfleet on $DEVICE vs PyTorch on $TORCH_DEVICE"
for arch in llama qwen2 mistral; do
  for dt in f32 bf16; do
    guard 60 "$EF" logits --model "$FIX/tiny-$arch/model" --tokens "$WORK/tokens-$arch.json" \
      --out "$WORK/ef-$arch-$dt.safetensors" --device "$DEVICE" --dtype "$dt"
  done
done
if [[ $HAVE_TRANSFORMERS == 1 ]]; then
  # One Python process for all six comparisons (torch + CUDA start-up once).
  guard 150 "$PY" - "$ROOT/scripts/bench" "$FIX" "$WORK" "$TORCH_DEVICE" <<'EOF' 2>&1 | grep -v -i -E 'warn|loading weights' | tee -a "$SUMMARY"
import json, os, sys
bench, fix, work, device = sys.argv[1:]
sys.path.insert(0, bench)
from torch_logits import compare, torch_logits
for arch in ["llama", "qwen2", "mistral"]:
    tokens = json.load(open(os.path.join(work, f"tokens-{arch}.json")))
    for dtype in ["f32", "bf16"]:
        ours = os.path.join(work, f"ef-{arch}-{dtype}.safetensors")
        print(f"--- tiny-{arch} {dtype}: evalfleet vs transformers {device}")
        if not os.path.exists(ours):
            print("  no evalfleet output")
            continue
        theirs = torch_logits(os.path.join(fix, f"tiny-{arch}", "model"), tokens, device, dtype)
        worst = compare(tokens, ours, theirs)
        print(json.dumps({"check": "logits", "model": f"tiny-{arch}", "dtype": dtype, "max_abs_diff": worst}))
        if dtype == "f32":
            f32_ref = theirs
        else:
            # The scale of bf16 rounding: transformers' own bf16 logits against its f32 ones.
            from safetensors.torch import save_file
            own = os.path.join(work, f"pt-{arch}-bf16.safetensors")
            save_file(theirs, own)
            print(f"  (transformers bf16 vs transformers f32, for scale:)")
            compare(tokens, own, f32_ref)
EOF
else
  echo "(transformers missing: reference = scripts/bench/torch_ref.py, plain eager PyTorch)"
  for arch in llama qwen2 mistral; do
    for dt in f32 bf16; do
      echo "--- tiny-$arch $dt: evalfleet vs torch-eager $TORCH_DEVICE"
      guard 60 "$PY" "$ROOT/scripts/bench/torch_ref.py" logits --model "$FIX/tiny-$arch/model" \
        --tokens "$WORK/tokens-$arch.json" --compare "$WORK/ef-$arch-$dt.safetensors" --device "$TORCH_DEVICE" \
        --dtype "$dt" | tee -a "$SUMMARY"
    done
  done
fi

# Also against the committed CPU transformers reference (f32); needs nothing but torch.
"$PY" - "$ROOT/scripts/bench" "$FIX" "$WORK" "$DEVICE" <<'EOF'
import json, os, sys
import torch
bench, fix, work, device = sys.argv[1:]
sys.path.insert(0, bench)
from torch_ref import load_safetensors
for arch in ["llama", "qwen2", "mistral"]:
    ref = load_safetensors(os.path.join(fix, f"tiny-{arch}", "reference.safetensors"))
    r = json.load(open(os.path.join(fix, f"tiny-{arch}", "reference.json")))
    path = os.path.join(work, f"ef-{arch}-f32.safetensors")
    if not os.path.exists(path):
        print(f"tiny-{arch}: no evalfleet output"); continue
    ours = load_safetensors(path)
    mask = torch.tensor(r["batch_mask"]).bool()
    d1 = (ours["single"] - ref["single.base"]).abs().max().item()
    d2 = (ours["batch"] - ref["batch.base"]).abs()[mask].max().item()
    print(f"tiny-{arch} f32 on {device} vs committed CPU "
          f"transformers reference: max|diff| single {d1:.3e}, batch {d2:.3e}")
EOF

fi  # (a)

# ---------------------------------------------------------------------------------------------
say "(d) generation throughput: random Qwen2.5-0.5B-shaped bf16 model, prompt 256, 128 new tokens"
if [[ "$DRY_RUN" == 1 ]]; then PRESET=tiny; VOCAB=1000; NEW=8; else PRESET=qwen2.5-0.5b; VOCAB=151936; NEW=128; fi
MODEL="$WORK/qwen2-0.5b-random"
GEN_OK=0
if [[ $HAVE_TRANSFORMERS == 1 ]]; then
  REF=transformers
  guard 120 "$PY" "$ROOT/scripts/bench/make_random_model.py" --out "$MODEL" --preset "$PRESET" --vocab "$VOCAB" \
    --device "$TORCH_DEVICE" --dtype bf16 --prompt-ids "$WORK/ids32.json" --prompts 32 --prompt-len 256 \
    2>/dev/null && GEN_OK=1
else
  REF=torch-eager
  echo "(transformers missing: comparing with scripts/bench/torch_ref.py, plain eager PyTorch with a static KV cache)"
  guard 120 "$PY" "$ROOT/scripts/bench/torch_ref.py" make-model --out "$MODEL" --preset "$PRESET" --vocab "$VOCAB" \
    --device "$TORCH_DEVICE" --prompt-ids "$WORK/ids32.json" --prompts 32 --prompt-len 256 && GEN_OK=1
fi
# The reference side (transformers or torch-eager); its stderr (progress bars, tracebacks) goes to
# $OUT/reference-stderr.txt.
if [[ $REF == transformers ]]; then
  REF_CMD=("$PY" "$ROOT/scripts/bench/hf_generate.py" --model "$MODEL" --device "$TORCH_DEVICE" --dtype bf16 --warmup)
else
  REF_CMD=("$PY" "$ROOT/scripts/bench/torch_ref.py" generate --model "$MODEL" --device "$TORCH_DEVICE" --dtype bf16 --warmup)
fi
if [[ $GEN_OK == 1 ]] && want d; then
  # Batch 1 runs 4 prompts (each side's time per prompt is what matters there).
  "$PY" -c "import json; json.dump(json.load(open('$WORK/ids32.json'))[:4], open('$WORK/ids4.json', 'w'))"
  for bs in 1 32; do
    ids="$WORK/ids32.json"; [[ $bs == 1 ]] && ids="$WORK/ids4.json"
    echo "--- batch $bs"
    guard 100 "$EF" generate --model "$MODEL" --prompt-ids "$ids" --batch-size "$bs" --new-tokens "$NEW" \
      --device "$DEVICE" --dtype bf16 --warmup --save-ids "$WORK/ef-gen-$bs.json" | tee -a "$SUMMARY"
    extra=(); [[ $REF == transformers ]] && extra=(--save-ids "$WORK/hf-gen-$bs.json")
    guard 100 "${REF_CMD[@]}" --prompt-ids "$ids" --batch-size "$bs" --new-tokens "$NEW" "${extra[@]}" \
      2>>"$OUT/reference-stderr.txt" | tee -a "$SUMMARY"
  done
  "$PY" - "$WORK" <<'EOF'
import json, os, sys
w = sys.argv[1]
for bs in (1, 32):
    a, b = (os.path.join(w, f"{s}-gen-{bs}.json") for s in ("ef", "hf"))
    if os.path.exists(a) and os.path.exists(b):
        x, y = json.load(open(a)), json.load(open(b))
        same = sum(p == q for r, s in zip(x, y) for p, q in zip(r, s))
        first = sum(r[:16] == s[:16] for r, s in zip(x, y))
        print(f"batch {bs}: generated ids equal at {same}/{sum(map(len, y))} positions; "
              f"first 16 tokens identical in {first}/{len(y)} rows (bf16 random weights: near-ties diverge)")
EOF
fi
if [[ $GEN_OK == 1 ]] && want e; then
  say "(e) prefill throughput (last-position logits), 32 prompts x 256 tokens"
  for bs in 8 32; do
    guard 60 "$EF" score-prefill --model "$MODEL" --prompt-ids "$WORK/ids32.json" --batch-size "$bs" \
      --device "$DEVICE" --dtype bf16 --warmup | tee -a "$SUMMARY"
    guard 60 "${REF_CMD[@]}" --prompt-ids "$WORK/ids32.json" --batch-size "$bs" --prefill \
      2>>"$OUT/reference-stderr.txt" | tee -a "$SUMMARY"
  done
fi

# ---------------------------------------------------------------------------------------------
if want bc; then
say "(b)/(c) NCCL world size 1, in-process tensor parallel on one device"
# tp-check prints one JSON line per check: NCCL primitives and the model through an NCCL
# communicator at world size 1 (b), and the model split over 2 in-process ranks vs unsplit (c).
for arch in llama qwen2; do
  for dt in f32 bf16; do
    echo "--- tiny-$arch $dt"
    guard 90 "$EF" tp-check --model "$FIX/tiny-$arch/model" --device "$DEVICE" --dtype "$dt" --worlds 2 \
      | tee -a "$SUMMARY"
  done
done
if [[ $GEN_OK == 1 ]]; then
  echo "--- random Qwen2.5-0.5B-shaped model, bf16"
  guard 120 "$EF" tp-check --model "$MODEL" --device "$DEVICE" --dtype bf16 --worlds 2 --new-tokens 8 \
    | tee -a "$SUMMARY"
fi

# ---------------------------------------------------------------------------------------------
fi  # (b)/(c)
if [[ $GEN_OK == 1 ]] && want p; then
  say "(p) where the time goes: model spans (host launch time; then GPU time with CUDA_LAUNCH_BLOCKING=1)"
  for blocking in 0 1; do
    echo "--- CUDA_LAUNCH_BLOCKING=$blocking"
    CUDA_LAUNCH_BLOCKING=$blocking EVALFLEET_PROFILE=1 RUST_LOG=evalfleet_worker::engine=debug guard 90 \
      "$EF" generate --model "$MODEL" --prompt-ids "$WORK/ids32.json" --batch-size 32 --new-tokens 32 \
      --device "$DEVICE" --dtype bf16 --warmup 2>&1 | grep -E 'batch done|profile|tokens_per_second' | tail -n 4
    CUDA_LAUNCH_BLOCKING=$blocking EVALFLEET_PROFILE=1 guard 60 "$EF" score-prefill --model "$MODEL" \
      --prompt-ids "$WORK/ids32.json" --batch-size 32 --device "$DEVICE" --dtype bf16 --warmup 2>&1 \
      | grep -E 'profile|tokens_per_second'
  done
fi

if want t; then
  say "(t) reward-model training in bf16: gradients on $DEVICE vs PyTorch's (goldens made on the CPU)"
  guard 120 "$EF" train-grads --model "$FIX/train/tiny-llama-rm" \
    --goldens "$FIX/train/step_llama_bf16_goldens.json" \
    --grads "$FIX/train/step_llama_bf16_grads.safetensors" --device "$DEVICE" --dtype bf16 \
    | tee -a "$SUMMARY"
  TRAIN="$BIN/evalfleet-train"
  NGPU=$([[ "$DRY_RUN" == 1 ]] && echo 1 || nvidia-smi -L 2>/dev/null | wc -l)
  for ranks in 1 2; do
    if [[ $ranks -gt 1 && $NGPU -lt 2 ]]; then echo "--- 2 ranks over NCCL: skipped, $NGPU GPU(s)"; continue; fi
    dev=$([[ "$DRY_RUN" == 1 ]] && echo cpu || { [[ $ranks == 1 ]] && echo "$DEVICE" || echo cuda; })
    out="$WORK/train-rm-$ranks"
    rm -rf "$out"
    sed -e "s|^model: |model: $ROOT/|" -e "s|^train_data: |train_data: $ROOT/|" \
      -e "s|^output_dir: .*|output_dir: $out|" -e "s|^ranks: .*|ranks: $ranks|" \
      -e "s|^device: .*|device: $dev|" -e "s|^epochs: .*|max_steps: 60|" \
      "$ROOT/yamls/train_rm.yaml" >"$WORK/train-rm-$ranks.yaml"
    echo "--- evalfleet-train, $ranks rank(s) on $dev, dtype auto"
    start=$SECONDS
    guard 240 "$TRAIN" train-rm "$WORK/train-rm-$ranks.yaml" 2>&1 | tail -n 3
    echo "took $((SECONDS - start)) s; last held-out metrics:"
    grep '"split":"eval"' "$out/metrics.jsonl" | tail -n 1
  done
fi

if want r; then
  say "(r) reward models: evalfleet on $DEVICE vs PyTorch on $TORCH_DEVICE and the CPU goldens"
  RM="$FIX/reward_original"
  "$PY" -c 'import json,sys; g=json.load(open(sys.argv[1])); json.dump([t["ids"] for t in g["texts"]], open(sys.argv[2], "w"))' \
    "$RM/goldens.json" "$WORK/rm-ids.json"
  for model in baichuan-h128 baichuan-h64 llama-h128 qwen2-h64; do
    for dtype in bf16 f32; do
      guard 120 "$EF" reward-scores --model "$RM/$model" --ids "$WORK/rm-ids.json" --device "$DEVICE" \
        --dtype "$dtype" >"$WORK/rm-$model-$dtype.json" || rm -f "$WORK/rm-$model-$dtype.json"
    done
  done
  guard 240 "$PY" "$ROOT/scripts/goldens/reward_original_goldens.py" --device-check "$WORK" \
    "$TORCH_DEVICE" ${BAICHUAN2_CODE:-} | tee -a "$SUMMARY"
fi

say "summary (card: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || echo none))"
"$PY" - "$SUMMARY" "${REF:-transformers}" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
ref = sys.argv[2]
for r in rows:
    if r.get("check") == "logits":
        print(f"logits {r['model']} {r['dtype']}: max|diff| {r['max_abs_diff']:.3e} vs {r.get('reference', 'transformers')}")
    if r.get("check") == "reward":
        print(f"reward {r['model']} {r['dtype']} {r['class']} ({r['what']}): {r['identical']}/{r['records']} "
              f"identical, worst {r['worst_score_diff']:.4f} ({r['worst_in_bf16_steps']:.2f} bf16 steps)")
    if r.get("check") == "train-grads":
        print(f"train-grads {r['case']} {r['dtype']} on {r['device']}: worst gradient excess "
              f"{r['worst_excess']:.3f} ({r['worst_param']}; <= 1 passes), distance to PyTorch bf16 "
              f"{r['distance_to_reference']:.2e} / f32 {r['distance_to_f32']:.2e}, loss error {r['worst_loss_error']:.2e}")
def tps(side, mode, bs):
    for r in rows:
        if r.get("side") == side and r.get("batch_size") == bs and (r.get("mode") == "prefill") == (mode == "prefill"):
            return r["tokens_per_second"]
for mode, sizes in (("generate", (1, 32)), ("prefill", (8, 32))):
    for bs in sizes:
        a, b = tps("evalfleet", mode, bs), tps(ref, mode, bs)
        if a and b:
            print(f"{mode} batch {bs}: evalfleet {a:.1f} tok/s, {ref} {b:.1f} tok/s, ratio {a / b:.2f}x")
        else:
            print(f"{mode} batch {bs}: evalfleet {a}, {ref} {b} (missing)")
EOF
echo "total $((SECONDS - T0)) s"
sleep 1 # let tee flush the log file
