#!/usr/bin/env python3
"""Step-3 choice items for `evalfleet-bench score-choices`, made as the coordinator plans them.

Reads a task's zip (mapping.json beside it) with lf_step3.py's CSV reader, renders each question
with LF's eval template (docs/FIDELITY.md §3.3: the subject line prepended to the first shot's user
turn), picks the shots as the mode says (`fixed`: dev rows in file order; `llamafactory`: one
datasets-style shuffle per question after np.random.seed(42)), and writes the items in the
coordinator's queue order: each subject's questions sorted by shot rows, `shared_prefix_pairs` the
longest run of leading shots shared with a neighbour (coordinator/src/run/step3.rs).
    python choice_items.py --task-dir <seed>/evaluation --task mmlu --subjects abstract_algebra \
        --limit 100 --mode fixed --out items.json
"""
import argparse
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lf_step3 import FILES, rows, shuffle_order  # noqa: E402

TEMPLATES = {  # lang -> (system, answer)
    "en": ("The following are multiple choice questions (with answers) about {}.\n\n", "\nAnswer: "),
    "zh": ("以下是中国关于{}考试的单项选择题，请选出其中的正确答案。\n\n", "\n答案："),
}


def user_text(row, answer):
    return row["question"] + "".join(f"\n{c}. {row[c]}" for c in "ABCD") + answer


def lcp(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--task-dir", required=True)
    ap.add_argument("--task", default="mmlu")
    ap.add_argument("--lang", default="en")
    ap.add_argument("--split", default="test")
    ap.add_argument("--subjects", default="", help="comma-separated; empty = all, in mapping order")
    ap.add_argument("--limit", type=int, default=0, help="questions per subject (0 = all)")
    ap.add_argument("--mode", choices=["llamafactory", "fixed"], default="fixed")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    task_dir = Path(args.task_dir) / args.task
    mapping = json.loads((task_dir / "mapping.json").read_text(encoding="utf-8"))
    zf = zipfile.ZipFile(task_dir / f"{args.task}.zip")
    targets, dev_pattern, header = FILES[args.task]
    wanted = [s for s in args.subjects.split(",") if s]
    system, answer = TEMPLATES[args.lang]
    np.random.seed(42)
    items = []
    for subject, info in mapping.items():
        dev = rows(zf, dev_pattern.format(subject), header)
        target = rows(zf, targets[args.split].format(subject), header)
        planned = []
        for example in target:
            # Every subject draws its shuffles (as LF does) even when it is not written out.
            shots = shuffle_order(len(dev)) if args.mode == "llamafactory" else list(range(len(dev)))
            planned.append((shots[:5], example))
        if wanted and subject not in wanted:
            continue
        if args.limit:
            planned = planned[: args.limit]
        planned.sort(key=lambda p: p[0])
        for k, (shots, example) in enumerate(planned):
            before = lcp(planned[k - 1][0], shots) if k > 0 else 0
            after = lcp(shots, planned[k + 1][0]) if k + 1 < len(planned) else 0
            messages = []
            for j, s in enumerate(shots):
                text = user_text(dev[s], answer)
                messages.append({"role": "user", "content": (system.format(info["name"]) if j == 0 else "") + text})
                messages.append({"role": "assistant", "content": dev[s]["answer"]})
            messages.append({"role": "user", "content": (system.format(info["name"]) if not shots else "")
                             + user_text(example, answer)})
            items.append({"messages": messages, "choice_texts": [" A", " B", " C", " D"],
                          "shared_prefix_pairs": max(before, after)})
    Path(args.out).write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    print(json.dumps({"items": len(items), "out": args.out}))


if __name__ == "__main__":
    main()
