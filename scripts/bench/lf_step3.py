#!/usr/bin/env python3
"""The LLaMA-Factory v0.7.1 evaluator loop, timed, for scripts/bench-step3.sh.

Runs what `llmtuner.eval.evaluator.Evaluator.eval` does per subject: formats every question with
LF's own eval template (`llmtuner/eval/template.py`) and shots chosen as the mode says, encodes it
with LF's `encode_oneturn` (template qwen), then `tokenizer.pad` batches of --batch-size (right
padding), one forward pass per batch, the logits at the last non-pad position, softmax over the
choice ids and argmax. Prints one JSON line: questions, seconds (formatting + predicting, the
model already loaded, as the evaluator's progress bars measure), questions per second, accuracy.

The CSV cells are read with Python's csv module instead of `datasets` + pandas (not installed in
the LF venv): the few cells pandas renders differently (docs/FIDELITY.md §3.2) do not change the
timing. Shots: `llamafactory` draws one `Dataset.shuffle()` per question as datasets 2.16 does after
`np.random.seed(42)` (the raw MT19937 word, one `np.random.random()`, a PCG64 permutation);
`fixed` takes the dev rows in file order.

Needs llmtuner 0.7.1 + transformers 4.41.2 (LF_PYTHON in bench-step3.sh) and torch importable (e.g.
PYTHONPATH pointing at a folder that links torch and its dist-info from another venv).
    python lf_step3.py --model <f32 dir> --task-dir <dir with mapping.json and <task>.zip> \
        --task mmlu --lang en --split test --mode fixed --batch-size 4
"""
import argparse
import csv
import importlib.util
import io
import json
import os
import sys
import time
import types
import zipfile
from pathlib import Path

import numpy as np

FILES = {  # task -> (evaluated file per split, dev file, header row?)
    "mmlu": ({"test": "data/test/{}_test.csv", "validation": "data/val/{}_val.csv"}, "data/dev/{}_dev.csv", False),
    "cmmlu": ({"test": "test/{}.csv"}, "dev/{}.csv", True),
    "ceval": ({"test": "test/{}_test.csv", "validation": "val/{}_val.csv"}, "dev/{}_dev.csv", True),
}


def lf_modules():
    """llmtuner's data/template.py (package __init__ files bypassed) and eval/template.py."""
    spec = importlib.util.find_spec("llmtuner")
    pkg = Path(spec.submodule_search_locations[0])
    for name, sub in [("llmtuner", ""), ("llmtuner.data", "data"), ("llmtuner.extras", "extras"),
                      ("llmtuner.eval", "eval")]:
        module = types.ModuleType(name)
        module.__path__ = [str(pkg / sub) if sub else str(pkg)]
        sys.modules[name] = module
    datasets = types.ModuleType("datasets")
    datasets.concatenate_datasets = datasets.interleave_datasets = None
    sys.modules.setdefault("datasets", datasets)
    import llmtuner.data.template as data_template
    import llmtuner.data.utils as data_utils

    # eval/template.py imports Role from the (bypassed) package __init__.
    sys.modules["llmtuner.data"].Role = data_utils.Role
    import llmtuner.eval.template as eval_template

    return data_template, eval_template


def rows(zf, member, header):
    with zf.open(member) as f:
        records = list(csv.reader(io.TextIOWrapper(f, encoding="utf-8", newline="")))
    if not header:
        return [dict(zip(["question", "A", "B", "C", "D", "answer"], r)) for r in records]
    names = ["question" if h == "Question" else "answer" if h == "Answer" else h for h in records[0]]
    return [dict(zip(names, r)) for r in records[1:]]


def shuffle_order(n):
    """datasets 2.16 `Dataset.shuffle()` without a seed (docs/FIDELITY.md §3.3)."""
    _, st, pos, *_ = np.random.get_state()
    seed = int(st[pos] if pos < 624 else st[0])
    np.random.random()
    return np.random.default_rng(seed).permutation(n).tolist()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--task-dir", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--lang", default="en")
    ap.add_argument("--split", default="test")
    ap.add_argument("--mode", choices=["llamafactory", "fixed"], default="llamafactory")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    data_template, eval_template = lf_modules()
    tok = AutoTokenizer.from_pretrained(args.model, padding_side="right")
    template = data_template.get_template_and_fix_tokenizer(tok, "qwen")
    etpl = eval_template.get_eval_template(args.lang)
    choice_ids = [tok.encode(etpl.prefix + ch, add_special_tokens=False)[-1] for ch in "ABCD"]
    # transformers 4.41 wants a `format: pt` entry in the safetensors metadata, which the converted
    # folder lacks: build the model from its config and load the tensors (f32, eval mode).
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.model), torch_dtype=torch.float32)
    model.load_state_dict(load_file(os.path.join(args.model, "model.safetensors")), strict=False)
    model.tie_weights()
    model.eval()

    task_dir = Path(args.task_dir) / args.task
    with open(task_dir / "mapping.json", encoding="utf-8") as f:
        mapping = json.load(f)
    zf = zipfile.ZipFile(task_dir / f"{args.task}.zip")
    targets, dev_pattern, header = FILES[args.task]
    np.random.seed(42)
    started = time.perf_counter()
    n = correct = 0
    for subject, info in mapping.items():
        dev = rows(zf, dev_pattern.format(subject), header)
        target = rows(zf, targets[args.split].format(subject), header)
        inputs, labels = [], []
        for example in target:
            order = shuffle_order(len(dev)) if args.mode == "llamafactory" else list(range(len(dev)))
            support = [dev[i] for i in order[:5]]
            messages = etpl.format_example(target_data=example, support_set=support, subject_name=info["name"])
            ids, _ = template.encode_oneturn(tokenizer=tok, messages=messages)
            inputs.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
            labels.append(messages[-1]["content"])
        outputs = []
        for i in range(0, len(inputs), args.batch_size):
            batch = tok.pad(inputs[i:i + args.batch_size], return_attention_mask=True, return_tensors="pt")
            with torch.inference_mode():
                logits = model(**batch).logits
            lengths = torch.sum(batch["attention_mask"], dim=-1)
            word = torch.stack([logits[j, lengths[j] - 1] for j in range(len(lengths))], dim=0)
            probs = torch.nn.functional.softmax(word[:, choice_ids], dim=-1)
            outputs += [chr(ord("A") + o.item()) for o in torch.argmax(probs, dim=-1)]
        n += len(outputs)
        correct += sum(o == l for o, l in zip(outputs, labels))
    seconds = time.perf_counter() - started
    print(json.dumps({"side": "llamafactory-loop", "mode": args.mode, "questions": n, "seconds": round(seconds, 3),
                      "questions_per_s": round(n / seconds, 3), "accuracy": round(100 * correct / max(n, 1), 2),
                      "batch_size": args.batch_size, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
