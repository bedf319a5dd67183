#!/usr/bin/env python3
"""Step 3 goldens (MMLU / CMMLU / C-Eval) from the real LLaMA-Factory v0.7.1 evaluator path.

Runs, per task, what `llmtuner.eval.evaluator.Evaluator.eval` does before the model is called:
`np.random.seed(42)` (transformers.set_seed), then for every subject in mapping.json order
`load_dataset(<task dir>, name=subject, trust_remote_code=True)` with LF's own task scripts
(pandas reading, `string` features), and for every example of the split
`dataset["train"].shuffle().select(range(min(5, len(train))))` and LF's `EvalTemplate.format_example`
(its source file `llmtuner/eval/template.py`, executed with its two imports stubbed).

The task scripts come from a LLaMA-Factory git clone: ceval.py and cmmlu.py at tag v0.7.1, and
mmlu.py at 14ab14a0 ("fix #3837", `header=None`): v0.7.1's own mmlu.py drops the first row of every
CSV as a header, which the seed's outputs (100 abstract_algebra answers, 14042 in all) show the
original tool did not do.

Needs a venv with the packages of that era:
    python3 -m venv /tmp/dsenv
    /tmp/dsenv/bin/pip install datasets==2.16.0 pandas==2.1.4 numpy==1.26.4 pyarrow==15.0.2
    /tmp/dsenv/bin/pip download --no-deps llmtuner==0.7.1 -d /tmp/lf   # for eval/template.py
    /tmp/dsenv/bin/python scripts/goldens/step3_goldens.py <LLaMA-Factory clone> \
        /tmp/lf/llmtuner-0.7.1-py3-none-any.whl <seed evaluation dir>

Writes coordinator/tests/fixtures/step3_{cells,shuffles,prompts}.json (see each writer below).
The same three files (versions aside) come out of datasets 2.19.2 + pandas 2.2.3 + pyarrow 16.1.0,
the stack PyPI's llmtuner 0.7.1 installs with.
"""
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "coordinator", "tests", "fixtures")
TASKS = [("mmlu", "en", "test"), ("cmmlu", "zh", "test"), ("ceval", "zh", "validation")]
SCRIPT_REV = {"mmlu": "14ab14a0e6255b5ed6d05ba6bc1e1e62255adc19", "cmmlu": "v0.7.1", "ceval": "v0.7.1"}


def eval_templates(wheel):
    """LF's eval/template.py from the wheel, executed with `Role` and `CHOICES` stubbed."""
    with zipfile.ZipFile(wheel) as z:
        src = z.read("llmtuner/eval/template.py").decode()
    src = src.replace("from ..data import Role\n", "")
    src = src.replace("from ..extras.constants import CHOICES\n", "")

    class _V:
        def __init__(self, v):
            self.value = v

    class Role:
        USER = _V("user")
        ASSISTANT = _V("assistant")

    ns = {"Role": Role, "CHOICES": ["A", "B", "C", "D"], "__name__": "lf_eval_template"}
    exec(compile(src, "llmtuner/eval/template.py", "exec"), ns)
    return ns["get_eval_template"]


def make_task_dir(lf_repo, seed_eval, task, root):
    d = os.path.join(root, task)
    os.makedirs(d)
    script = subprocess.check_output(
        ["git", "-C", lf_repo, "show", f"{SCRIPT_REV[task]}:evaluation/{task}/{task}.py"]
    )
    with open(os.path.join(d, f"{task}.py"), "wb") as f:
        f.write(script)
    for name in (f"{task}.zip", "mapping.json"):
        shutil.copy(os.path.join(seed_eval, task, name), d)
    return d


def prompt_text(messages):
    """The hashed form of a message list: role, 0x1e, content, messages joined by 0x1f."""
    return "\x1f".join(m["role"] + "\x1e" + m["content"] for m in messages)


def sha(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def raw_rows(zf, member):
    """The CSV cells as text (Python csv), for comparison with what datasets renders."""
    with zf.open(member) as f:
        return list(csv.reader(io.TextIOWrapper(f, encoding="utf-8", newline="")))


SPLIT_FILES = {
    "mmlu": {"test": "data/test/{}_test.csv", "validation": "data/val/{}_val.csv", "train": "data/dev/{}_dev.csv"},
    "cmmlu": {"test": "test/{}.csv", "train": "dev/{}.csv"},
    "ceval": {"test": "test/{}_test.csv", "validation": "val/{}_val.csv", "train": "dev/{}_dev.csv"},
}
COLUMNS = ["question", "A", "B", "C", "D", "answer"]


def raw_cell_map(task, rows):
    """row index -> {column: raw text} in the dataset's row numbering."""
    if task == "mmlu":
        return [dict(zip(COLUMNS, r)) for r in rows]
    header = rows[0]
    out = []
    for r in rows[1:]:
        rec = dict(zip(header, r))
        if task == "cmmlu":
            rec = {"question": rec.get("Question"), "A": rec.get("A"), "B": rec.get("B"),
                   "C": rec.get("C"), "D": rec.get("D"), "answer": rec.get("Answer")}
        out.append({c: rec.get(c) for c in COLUMNS})
    return out


def main():
    lf_repo, wheel, seed_eval = sys.argv[1:4]
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    from datasets import load_dataset, disable_progress_bar
    import datasets, pandas, pyarrow

    disable_progress_bar()
    get_eval_template = eval_templates(wheel)
    versions = {"datasets": datasets.__version__, "pandas": pandas.__version__,
                "numpy": np.__version__, "pyarrow": pyarrow.__version__}
    cells, prompts = {"versions": versions}, {"versions": versions}
    root = tempfile.mkdtemp()
    cache = os.path.join(root, "cache")
    for task, lang, split in TASKS:
        tdir = make_task_dir(lf_repo, seed_eval, task, root)
        with open(os.path.join(tdir, "mapping.json"), encoding="utf-8") as f:
            mapping = json.load(f)
        zf = zipfile.ZipFile(os.path.join(tdir, f"{task}.zip"))
        template = get_eval_template(lang)
        np.random.seed(42)  # transformers.set_seed(42) in get_eval_args, once per task
        task_cells, task_prompts, full = [], {}, []
        for subject in mapping:
            ds = load_dataset(path=tdir, name=subject, cache_dir=cache, trust_remote_code=True)
            for sp, pattern in SPLIT_FILES[task].items():
                member = pattern.format(subject)
                raw = raw_cell_map(task, raw_rows(zf, member))
                got = ds[sp]
                assert len(raw) == len(got), (member, len(raw), len(got))
                for i, rec in enumerate(got):
                    for c in COLUMNS:
                        # A column the file lacks (C-Eval test answers) is filled by the script.
                        if raw[i][c] is not None and rec[c] != raw[i][c]:
                            task_cells.append([member, i, c, raw[i][c], rec[c]])
            target = ds[split]
            hashes, whole = [], hashlib.sha256()
            for i in range(len(target)):
                support = ds["train"].shuffle().select(range(min(5, len(ds["train"]))))
                messages = template.format_example(
                    target_data=target[i], support_set=support, subject_name=mapping[subject]["name"]
                )
                text = prompt_text(messages)
                whole.update(sha(text).encode())
                if i < 3:
                    hashes.append(sha(text))
                if i == 0 and len(full) < 8:
                    full.append({"subject": subject, "index": i, "messages": messages})
            task_prompts[subject] = {"count": len(target), "first": hashes, "all": whole.hexdigest()}
        cells[task] = task_cells
        prompts[task] = {"subjects": task_prompts, "full": full}
        print(task, "cells differing:", len(task_cells), file=sys.stderr)
    with open(os.path.join(FIXTURES, "step3_cells.json"), "w", encoding="utf-8") as f:
        json.dump(cells, f, ensure_ascii=False, indent=1)
    with open(os.path.join(FIXTURES, "step3_prompts.json"), "w", encoding="utf-8") as f:
        json.dump(prompts, f, ensure_ascii=False, indent=1)
    write_shuffles()
    shutil.rmtree(root)


def write_shuffles():
    """The datasets `shuffle()` seed stream after np.random.seed(42) and its permutations."""
    np.random.seed(42)
    pairs = []
    for _ in range(2000):
        _, st, pos, *_ = np.random.get_state()
        seed = int(st[pos] if pos < 624 else st[0])
        np.random.random()
        pairs.append([seed, np.random.default_rng(seed).permutation(5).tolist()])
    other = []
    for seed in [0, 1, 42, 4170412009, 2**32 - 1, 123456789]:
        for n in [0, 1, 2, 3, 4, 6, 7, 10, 31, 100]:
            other.append([seed, n, np.random.default_rng(seed).permutation(n).tolist()])
    with open(os.path.join(FIXTURES, "step3_shuffles.json"), "w") as f:
        json.dump({"numpy": np.__version__, "seed42_n5": pairs, "other_n": other}, f, separators=(",", ":"))


if __name__ == "__main__":
    main()
