#!/usr/bin/env python3
"""Step 3 goldens from LLaMA-Factory v0.7.1's evaluator with a real model: token ids and predictions.

Three phases, each in the Python stack it needs (the evaluator's era does not fit one venv here):

1. `prompts` (datasets 2.16.0, pandas 2.1.4, numpy 1.26.4: a venv as described in
   step3_goldens.py): the evaluator's data path exactly as step3_goldens.py runs it (LF's task
   scripts, `np.random.seed(42)` per task, one seedless `Dataset.shuffle()` per question, LF's
   `EvalTemplate.format_example`), for the three full benchmarks and for a small task per benchmark
   whose mapping.json holds only SMALL[task] (in mapping order; the shuffles then start at its
   first subject, as they would in LF on such a task dir) and whose evaluated files keep only
   their first SMALL_ROWS questions. Writes one JSON line per question (SMALL_ONLY=1: only the
   small tasks).
       python step3_lf_goldens.py prompts <LLaMA-Factory clone> <llmtuner dir> <seed evaluation> <out.jsonl>
2. `tokens` (llmtuner 0.7.1 + transformers 4.41.2, a venv of its own): `get_template_and_fix_tokenizer`
   (template `qwen`) and `encode_oneturn(tokenizer, messages)` as the evaluator calls them, on the
   tokenizer of the f32 SmolLM2 folder (`evalfleet-worker convert-gguf`). Writes
   worker/tests/fixtures/step3_token_hashes.json: per task and subject the question count, the sum
   of prompt lengths, the SHA-256 of the first question's ids and a digest over every question's
   (SHA-256 of the ids, each id as decimal text joined by ","; the digest is SHA-256 of the
   concatenated hex hashes), plus the choice token ids.
       python step3_lf_goldens.py tokens <f32 model dir> <prompts.jsonl>
3. `predict` (the same venv plus torch importable, e.g. PYTHONPATH to a folder linking torch and
   its dist-info): the evaluator's prediction loop (`tokenizer.pad` of batch_size inputs, right
   padding, logits at `sum(attention_mask) - 1`, softmax over the choice ids, argmax) with the f32
   model, on the small tasks. LF's `load_model` needs peft/trl and this folder's safetensors lack
   the `format: pt` metadata transformers 4.41 wants, so the model is built from its config and
   the state dict loaded directly (f32, eval mode: the same module LF's loader returns on a CPU).
   Writes coordinator/tests/fixtures/step3_lf_predictions.json (SMALL_ROWS 6; other values add
   `_<rows>` to the name; the committed _25 one was made with SMALL_ROWS=25 in phases 1 and 3):
   per small task its subjects, the rows kept and the cut files' SHA-256,
   LF's results.json and results.log text, and per question the prediction, the four choice logits
   and the margin between the two largest (to explain any difference).
       python step3_lf_goldens.py predict <f32 model dir> <prompts.jsonl> [batch_size]
"""
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TASKS = [("mmlu", "en", "test"), ("cmmlu", "zh", "test"), ("ceval", "zh", "validation")]
# Three subjects per benchmark with short prompts, of different categories where possible.
SMALL = {
    "mmlu": ["abstract_algebra", "management", "us_foreign_policy"],
    "cmmlu": ["college_engineering_hydrology", "philosophy", "college_education"],
    "ceval": ["middle_school_geography", "discrete_mathematics", "basic_medicine"],
}
# The small tasks keep the first SMALL_ROWS questions of each evaluated file (env SMALL_ROWS,
# default 6: evalfleet's end-to-end test scores them all in a debug build); dev files are whole.
SMALL_ROWS = int(os.environ.get("SMALL_ROWS", "6"))
SMALL_FILES = {"mmlu": "data/test/{}_test.csv", "cmmlu": "test/{}.csv", "ceval": "val/{}_val.csv"}
SUBJECTS = ["Average", "STEM", "Social Sciences", "Humanities", "Other"]


def eval_template_module(llmtuner_dir):
    """LF's eval/template.py from an installed llmtuner, executed with its two imports stubbed."""
    src = (Path(llmtuner_dir) / "eval" / "template.py").read_text()
    src = src.replace("from ..data import Role\n", "").replace("from ..extras.constants import CHOICES\n", "")

    class _V:
        def __init__(self, v):
            self.value = v

    class Role:
        USER = _V("user")
        ASSISTANT = _V("assistant")

    ns = {"Role": Role, "CHOICES": ["A", "B", "C", "D"], "__name__": "lf_eval_template"}
    exec(compile(src, "llmtuner/eval/template.py", "exec"), ns)
    return ns["get_eval_template"]


def prompts(lf_repo, llmtuner_dir, seed_eval, out):
    sys.path.insert(0, str(HERE))
    import numpy as np
    from step3_goldens import make_task_dir

    os.environ["HF_DATASETS_OFFLINE"] = "1"
    from datasets import disable_progress_bar, load_dataset

    disable_progress_bar()
    get_eval_template = eval_template_module(llmtuner_dir)
    root = tempfile.mkdtemp()
    cache = os.path.join(root, "cache")
    with open(out, "w", encoding="utf-8") as f:
        for task, lang, split in TASKS:
            tdir = make_task_dir(lf_repo, seed_eval, task, os.path.join(root, "full"))
            with open(os.path.join(tdir, "mapping.json"), encoding="utf-8") as m:
                mapping = json.load(m)
            small_dir = make_task_dir(lf_repo, seed_eval, task, os.path.join(root, "small"))
            small = {k: v for k, v in mapping.items() if k in SMALL[task]}
            with open(os.path.join(small_dir, "mapping.json"), "w", encoding="utf-8") as m:
                json.dump(small, m, ensure_ascii=False)
            for subject, digest in truncate_zip(os.path.join(small_dir, f"{task}.zip"), task, small).items():
                f.write(json.dumps({"kind": "small-file", "task": task, "subject": subject, "sha256": digest}) + "\n")
            kinds = [("small", small_dir, small)]
            if not os.environ.get("SMALL_ONLY"):
                kinds.insert(0, ("full", tdir, mapping))
            for kind, d, subjects in kinds:
                template = get_eval_template(lang)
                np.random.seed(42)  # transformers.set_seed(42) in get_eval_args, once per task
                for subject in subjects:
                    ds = load_dataset(path=d, name=subject, cache_dir=cache + kind, trust_remote_code=True)
                    target = ds[split]
                    for i in range(len(target)):
                        support = ds["train"].shuffle().select(range(min(5, len(ds["train"]))))
                        messages = template.format_example(
                            target_data=target[i], support_set=support, subject_name=subjects[subject]["name"]
                        )
                        row = {"kind": kind, "task": task, "subject": subject,
                               "category": subjects[subject]["category"], "index": i, "messages": messages}
                        f.write(json.dumps(row, ensure_ascii=False) + "\n")
            print(task, "done", file=sys.stderr)
    shutil.rmtree(root)


def truncate_zip(path, task, subjects):
    """Rewrites the zip with the subjects' evaluated files cut after SMALL_ROWS records (the bytes up to the end of that record; a header line stays). Returns
    the SHA-256 of each cut file, which the evalfleet test checks it rebuilt."""
    import csv
    import io
    import zipfile

    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    digests, out = {}, dict(members)
    for subject in subjects:
        name = SMALL_FILES[task].format(subject)
        text = members[name].decode("utf-8")
        reader = csv.reader(io.StringIO(text, newline=""))
        keep = SMALL_ROWS + (0 if task == "mmlu" else 1)
        for n, _ in enumerate(reader, 1):
            if n == keep:
                break
        lines = text.splitlines(keepends=True)[: reader.line_num]
        cut = "".join(lines).encode("utf-8")
        out[name] = cut
        digests[subject] = hashlib.sha256(cut).hexdigest()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in out.items():
            z.writestr(name, data)
    return digests


def import_lf_templates():
    sys.path.insert(0, str(HERE))
    from lf_goldens import import_lf_templates as imp

    return imp()


def load_tokenizer(model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, use_fast=True, split_special_tokens=False, padding_side="right")
    tok.padding_side = "right"
    template = import_lf_templates().get_template_and_fix_tokenizer(tok, "qwen")
    choice_ids = [tok.encode(" " + ch, add_special_tokens=False)[-1] for ch in "ABCD"]
    return tok, template, choice_ids


def read_rows(path, kind):
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["kind"] == kind:
                yield row


def ids_hash(ids):
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()


def tokens(model_dir, prompts_path):
    import transformers

    tok, template, choice_ids = load_tokenizer(model_dir)
    out = {"generator": f"llmtuner 0.7.1 encode_oneturn (template qwen), transformers {transformers.__version__}",
           "choice_ids": choice_ids, "tasks": {}}
    for row in read_rows(prompts_path, "full"):
        ids, _ = template.encode_oneturn(tokenizer=tok, messages=row["messages"])
        subj = out["tasks"].setdefault(row["task"], {}).setdefault(
            row["subject"], {"count": 0, "tokens": 0, "first": None, "_h": hashlib.sha256()})
        h = ids_hash(ids)
        subj["count"] += 1
        subj["tokens"] += len(ids)
        subj["first"] = subj["first"] or h
        subj["_h"].update(h.encode())
    for task in out["tasks"].values():
        for subj in task.values():
            subj["all"] = subj.pop("_h").hexdigest()
    path = ROOT / "worker" / "tests" / "fixtures" / "step3_token_hashes.json"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    print({t: sum(s["count"] for s in v.values()) for t, v in out["tasks"].items()}, file=sys.stderr)


def load_model(model_dir):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    state = load_file(os.path.join(model_dir, "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied head has no tensor of its own in the file.
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    return model.eval()


def predict(model_dir, prompts_path, batch_size=4):
    import numpy as np
    import torch
    import transformers

    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    tok, template, choice_ids = load_tokenizer(model_dir)
    model = load_model(model_dir)
    tasks, files = {}, {}
    for row in read_rows(prompts_path, "small-file"):
        files.setdefault(row["task"], {})[row["subject"]] = row["sha256"]
    for row in read_rows(prompts_path, "small"):
        tasks.setdefault(row["task"], []).append(row)
    out = {"generator": f"LLaMA-Factory 0.7.1 evaluator loop, transformers {transformers.__version__}, "
           f"torch {torch.__version__}, f32 CPU, batch {batch_size}", "choice_ids": choice_ids, "tasks": {}}
    for task, rows in tasks.items():
        subjects = list(dict.fromkeys(r["subject"] for r in rows))
        category_corrects = {s: np.array([], dtype="bool") for s in SUBJECTS}
        results, questions = {}, {}
        for subject in subjects:
            srows = [r for r in rows if r["subject"] == subject]
            inputs, labels, outputs, logits_out = [], [], [], []
            for r in srows:
                ids, _ = template.encode_oneturn(tokenizer=tok, messages=r["messages"])
                inputs.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
                labels.append(r["messages"][-1]["content"])
            for i in range(0, len(inputs), batch_size):
                batch = tok.pad(inputs[i:i + batch_size], return_attention_mask=True, return_tensors="pt")
                with torch.inference_mode():
                    logits = model(**batch).logits
                lengths = torch.sum(batch["attention_mask"], dim=-1)
                word = torch.stack([logits[j, lengths[j] - 1] for j in range(len(lengths))], dim=0)
                chosen = word[:, choice_ids]
                probs = torch.nn.functional.softmax(chosen, dim=-1)
                outputs += [chr(ord("A") + o.item()) for o in torch.argmax(probs, dim=-1)]
                logits_out += chosen.tolist()
                print(task, subject, i, file=sys.stderr)
            corrects = np.array(outputs) == np.array(labels)
            cat = srows[0]["category"]
            category_corrects[cat] = np.concatenate([category_corrects[cat], corrects], axis=0)
            category_corrects["Average"] = np.concatenate([category_corrects["Average"], corrects], axis=0)
            results[subject] = {str(i): outputs[i] for i in range(len(outputs))}
            questions[subject] = [
                {"pred": p, "logits": lg, "margin": sorted(lg)[-1] - sorted(lg)[-2]}
                for p, lg in zip(outputs, logits_out)
            ]
        score_info = "\n".join(
            "{:>15}: {:.2f}".format(name, 100 * np.mean(c)) for name, c in category_corrects.items() if len(c)
        )
        out["tasks"][task] = {"subjects": subjects, "rows": SMALL_ROWS, "files": files[task], "results_json": json.dumps(results, indent=2),
                              "results_log": score_info, "questions": questions}
        print(score_info, file=sys.stderr)
    suffix = "" if SMALL_ROWS == 6 else f"_{SMALL_ROWS}"
    path = ROOT / "coordinator" / "tests" / "fixtures" / f"step3_lf_predictions{suffix}.json"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "prompts":
        prompts(*args)
    elif cmd == "tokens":
        tokens(*args)
    elif cmd == "predict":
        predict(args[0], args[1], int(args[2]) if len(args) > 2 else 4)
    else:
        sys.exit(f"unknown phase {cmd}: prompts, tokens or predict")
