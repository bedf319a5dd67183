#!/usr/bin/env bash
# Step-2 benchmark on this machine's CPU: evalfleet vs sentence-transformers, same model
# (all-MiniLM-L6-v2 from scripts/fetch-models.sh), same pairs (the 509 parity pairs of
# worker/tests/fixtures/embed_pairs.json, cycled to N: Chinese, English, mixed, long texts).
#
# evalfleet runs as a user runs it: `evalfleet step2` (release build) with one local CPU worker on
# a step-1 output folder holding the N pairs. Two figures:
#   - embedding: the pairs over the worker's summed lease times (model loaded, batches of
#     --batch-size pairs, each sorted by length), comparable to sentence-transformers' encode;
#   - end to end: the pairs over the wall time of the whole command (worker start-up, model
#     load, gRPC, writing the files).
# sentence-transformers (the Python at PYTHON) runs the same pairs two ways:
#   - batched: model.encode(all texts, batch_size=32) then cos_sim per pair;
#   - per pair: the original tool's loop, model.encode([label, predict]) per row; plus its
#     end-to-end time with the model load.
# Prints each side's pairs/s and the ratios (evalfleet / sentence-transformers).
#
# Environment: PYTHON (a Python with sentence-transformers; default python3), EVALFLEET_MODELS (default <repo>/.models), N (pairs, default 2000), BATCH (pairs per
# lease for evalfleet, default 64), THREADS (CPU threads for both sides, default: all cores),
# EVALFLEET_BIN_DIR (a folder with release evalfleet and evalfleet-worker; default: build them).
# Results are written to out/bench-step2/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
MODELS="${EVALFLEET_MODELS:-$ROOT/.models}"
MODEL="$MODELS/all-minilm-l6-v2"
N="${N:-2000}"
BATCH="${BATCH:-64}"
THREADS="${THREADS:-$(nproc)}"
WORK="$ROOT/out/bench-step2"
PAIRS_JSON="$ROOT/worker/tests/fixtures/embed_pairs.json"

if [[ ! -f "$MODEL/modules.json" ]]; then
  echo "$MODEL is missing: run scripts/fetch-models.sh first" >&2
  exit 1
fi

BIN="${EVALFLEET_BIN_DIR:-}"
if [[ -z "$BIN" ]]; then
  (cd "$ROOT" && cargo build --release -p evalfleet -p evalfleet-worker --bin evalfleet --bin evalfleet-worker)
  BIN="$ROOT/target/release"
fi

rm -rf "$WORK"
mkdir -p "$WORK/out"
# A step-1 output folder with N (label, predict) rows, as step 1 writes it.
"$PYTHON" - "$PAIRS_JSON" "$N" "$WORK/out" <<'EOF'
import json, sys
pairs = json.load(open(sys.argv[1]))["pairs"]
n, out = int(sys.argv[2]), sys.argv[3]
rows = [pairs[i % len(pairs)] for i in range(n)]
with open(f"{out}/generated_predictions.jsonl", "w", encoding="utf-8") as f:
    f.write("\n".join(json.dumps({"label": a, "predict": b}, ensure_ascii=False) for a, b in rows))
with open(f"{out}/predict_results.json", "w") as f:
    f.write('{\n    "predict_bleu-4": 0.0\n}')
with open(f"{out}/pairs.json", "w", encoding="utf-8") as f:
    json.dump(rows, f, ensure_ascii=False)
EOF
printf 'model_path: %s\noutput_dir: %s\n' "$MODEL" "$WORK/out" >"$WORK/step2.yaml"

# evalfleet: the worker logs every lease's pairs and seconds ("embed lease done").
start=$(date +%s.%N)
RAYON_NUM_THREADS="$THREADS" EVALFLEET_WORKER_BIN="$BIN/evalfleet-worker" \
  "$BIN/evalfleet" step2 "$WORK/step2.yaml" --workers 1 --cpu --batch-size "$BATCH" \
  >"$WORK/evalfleet.stdout" 2>"$WORK/evalfleet.stderr"
end=$(date +%s.%N)
"$PYTHON" - "$WORK/evalfleet.stderr" "$N" "$start" "$end" "$WORK/evalfleet.json" <<'EOF'
import json, re, sys
log, n, start, end, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
pairs = secs = 0.0
for line in open(log, encoding="utf-8", errors="replace"):
    if "embed lease done" in line:
        pairs += int(re.search(r"pairs=(\d+)", line).group(1))
        secs += float(re.search(r'secs="?([0-9.]+)', line).group(1))
assert pairs == n, f"{log}: the worker logged {pairs:.0f} pairs, expected {n}"
res = {"side": "evalfleet", "pairs": n, "embed_s": secs, "wall_s": end - start,
       "embed_pairs_per_s": n / secs, "end_to_end_pairs_per_s": n / (end - start)}
json.dump(res, open(out, "w"))
print(json.dumps(res))
EOF

# sentence-transformers on the same pairs and threads.
"$PYTHON" - "$MODEL" "$WORK/out/pairs.json" "$THREADS" "$WORK/st.json" <<'EOF'
import json, sys, time
t0 = time.perf_counter()
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import cos_sim
model_dir, pairs_path, threads, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(threads)
model = SentenceTransformer(model_dir, device="cpu", similarity_fn_name="cosine")
loaded = time.perf_counter()
pairs = json.load(open(pairs_path, encoding="utf-8"))
n = len(pairs)
t = time.perf_counter()
for label, predict in pairs:
    emb = model.encode([label, predict])
    float(cos_sim(emb[0], emb[1]).flatten().numpy()[0])
per_pair = time.perf_counter() - t
end_to_end = time.perf_counter() - t0
texts = [x for p in pairs for x in p]
t = time.perf_counter()
emb = model.encode(texts, batch_size=32)
for i in range(0, len(texts), 2):
    float(cos_sim(emb[i], emb[i + 1]).flatten().numpy()[0])
batched = time.perf_counter() - t
res = {"side": "sentence-transformers", "pairs": n, "threads": threads, "load_s": loaded - t0,
       "per_pair_pairs_per_s": n / per_pair, "batched_pairs_per_s": n / batched,
       "end_to_end_pairs_per_s": n / end_to_end}
json.dump(res, open(out, "w"))
print(json.dumps(res))
EOF

"$PYTHON" - "$WORK/evalfleet.json" "$WORK/st.json" "$THREADS" "$BATCH" <<'EOF'
import json, sys
ef, st = (json.load(open(p)) for p in sys.argv[1:3])
threads, batch = sys.argv[3], sys.argv[4]
print()
print(f"all-MiniLM-L6-v2, {ef['pairs']} pairs, CPU, {threads} threads")
print(f"  embedding   evalfleet {ef['embed_pairs_per_s']:8.1f} pairs/s ({batch} pairs per lease)"
      f" | sentence-transformers batched {st['batched_pairs_per_s']:8.1f} pairs/s"
      f" | ratio {ef['embed_pairs_per_s'] / st['batched_pairs_per_s']:.2f}")
print(f"  vs the original tool's loop: evalfleet {ef['embed_pairs_per_s']:8.1f} pairs/s"
      f" | sentence-transformers one encode per pair {st['per_pair_pairs_per_s']:8.1f} pairs/s"
      f" | ratio {ef['embed_pairs_per_s'] / st['per_pair_pairs_per_s']:.2f}")
print(f"  end to end  evalfleet step2 {ef['end_to_end_pairs_per_s']:8.1f} pairs/s ({ef['wall_s']:.1f} s)"
      f" | script like the original tool {st['end_to_end_pairs_per_s']:8.1f} pairs/s"
      f" | ratio {ef['end_to_end_pairs_per_s'] / st['end_to_end_pairs_per_s']:.2f}")
EOF
