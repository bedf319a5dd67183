"""scripts/bench-cpu.sh's summary: every pair of figures its parts wrote (under WORK and OUT) and
their ratio, one line each."""
import json, os, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from summarize import json_rows  # noqa: E402

work, out = sys.argv[1], sys.argv[2]

def lines(path):
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        return json_rows(f)

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
