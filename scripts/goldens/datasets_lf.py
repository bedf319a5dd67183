#!/usr/bin/env python3
"""Dataset goldens from LLaMA-Factory v0.7.1 itself: its dataset_info.json parser and its
alpaca/sharegpt converters, run on HF `datasets` 2.16.0 as the original tool ran them.

Needs a Python with `datasets==2.16.0` and the `llmtuner==0.7.1` wheel (no dependencies; only
its pure-Python data modules are imported, with two heavy helpers stubbed):

    python3 -m venv /tmp/lfenv && /tmp/lfenv/bin/pip install datasets==2.16.0
    /tmp/lfenv/bin/pip download --no-deps llmtuner==0.7.1 -d /tmp/lf
    /tmp/lfenv/bin/python scripts/goldens/datasets_lf.py /tmp/lf/llmtuner-0.7.1-py3-none-any.whl

Writes coordinator/tests/fixtures/datasets_lf_goldens.json: per case, the dataset_dir files,
the `dataset` names and `max_samples`, and the samples LF produces for `do_predict` (after
`preprocess_unsupervised_dataset`'s row rules). The case `repo_demo` uses yamls/demo.
"""
import json
import os
import sys
import tempfile
import types
import zipfile
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..", "..")
OUT = os.path.join(REPO, "coordinator", "tests", "fixtures", "datasets_lf_goldens.json")


def import_lf(wheel, tmp):
    src = os.path.join(tmp, "lf")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(src)

    def package(name):
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(src, *name.split("."))]
        sys.modules[name] = module

    # Skip the package __init__s (they import the training stack); the data modules only need
    # datasets, the constants and logging.
    for name in ("llmtuner", "llmtuner.data", "llmtuner.extras"):
        package(name)
    misc = types.ModuleType("llmtuner.extras.misc")
    misc.use_modelscope = lambda: False
    sys.modules["llmtuner.extras.misc"] = misc
    import llmtuner.data.aligner as aligner
    import llmtuner.data.parser as parser
    return parser, aligner


def lf_samples(parser, aligner, dataset_dir, names, max_samples, cache):
    from datasets import concatenate_datasets, load_dataset

    data_args = SimpleNamespace(dataset=",".join(names), dataset_dir=dataset_dir, interleave_probs=None,
                                streaming=False, preprocessing_num_workers=None, overwrite_cache=True,
                                max_samples=max_samples)
    parts = []
    for attr in parser.get_dataset_list(data_args):
        # loader.load_single_dataset, "file" branch (folders listed in name order, as evalfleet).
        local = os.path.join(dataset_dir, attr.dataset_name)
        files = [os.path.join(local, f) for f in sorted(os.listdir(local))] if os.path.isdir(local) else [local]
        ds = load_dataset("json", data_files=files, split="train", cache_dir=cache)
        if max_samples is not None:
            ds = ds.select(range(min(max_samples, len(ds))))
        parts.append(aligner.align_dataset(ds, attr, data_args))
    ds = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    samples = []
    for row in ds:
        # preprocess_unsupervised_dataset's row rules.
        if len(row["prompt"]) % 2 != 1:
            continue
        response = row["response"] if len(row["response"]) == 1 else [{"role": "assistant", "content": ""}]
        messages = row["prompt"] + response
        samples.append({"messages": [[m["role"], m["content"]] for m in messages],
                        "system": row["system"], "tools": row["tools"]})
    return samples


def jsonl(rows):
    return "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"


SEED_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": "history"}

CASES = [
    {
        "name": "alpaca_seed_columns",
        "info": {"demo.json": {"file_name": "demo.json", "columns": SEED_COLUMNS}},
        "files": {"demo.json": json.dumps([
            {"instruction": "你好", "input": "", "output": "你好！", "history": [], "system": "unused"},
            {"instruction": "q", "input": "more", "output": "a", "history": [["h1", "r1"], ["h2", "r2"]], "system": "x"},
            {"instruction": "", "input": "only input", "output": None, "history": None, "system": None},
            {"instruction": "multi\nline \"quoted\"", "input": None, "output": "", "history": [["", ""]], "system": ""},
        ], ensure_ascii=False, indent=2)},
        "dataset": ["demo.json"], "max_samples": 50,
    },
    {
        "name": "alpaca_list_response_and_system",
        "info": {"r": {"file_name": "r.jsonl", "columns": {"prompt": "q", "response": "a", "system": "s"}}},
        "files": {"r.jsonl": jsonl([
            {"q": "pick one", "a": ["x"], "s": "judge"},
            {"q": "pick two", "a": ["x", "y"], "s": ""},
            {"q": "pick none", "a": [], "s": None},
        ])},
        "dataset": ["r"], "max_samples": None,
    },
    {
        "name": "alpaca_default_columns",
        "info": {"d": {"file_name": "d.jsonl"}},
        "files": {"d.jsonl": jsonl([
            {"instruction": "i1", "input": "x1", "output": "o1", "history": [["a", "b"]]},
            {"instruction": "i2", "input": "", "output": "o2", "history": []},
        ])},
        "dataset": ["d"], "max_samples": None,
    },
    {
        "name": "sharegpt_default_tags",
        "info": {"c": {"file_name": "c.json", "formatting": "sharegpt",
                       "columns": {"messages": "conversations", "system": "sys"}}},
        "files": {"c.json": json.dumps([
            {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "u"},
                               {"from": "gpt", "value": "a"}], "sys": "col"},
            {"conversations": [{"from": "human", "value": "u1"}, {"from": "function_call", "value": "f"},
                               {"from": "observation", "value": "o"}, {"from": "gpt", "value": "a2"},
                               {"from": "human", "value": "dangling"}], "sys": "col"},
            {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "unanswered"}],
             "sys": None},
            {"conversations": [{"from": "human", "value": "u"}, {"from": "gpt", "value": "last"}], "sys": ""},
        ], ensure_ascii=False)},
        "dataset": ["c"], "max_samples": None,
    },
    {
        "name": "sharegpt_custom_tags_and_tools",
        "info": {"oa": {"file_name": "oa.jsonl", "formatting": "sharegpt",
                        "columns": {"messages": "messages", "tools": "tools"},
                        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                 "assistant_tag": "assistant", "observation_tag": "tool",
                                 "function_tag": "call", "system_tag": "system"}}},
        "files": {"oa.jsonl": jsonl([
            {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "hello"}], "tools": "[]"},
            {"messages": [{"role": "user", "content": "weather?"}, {"role": "call", "content": "{}"},
                          {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}],
             "tools": "[{\"name\": \"w\"}]"},
        ])},
        "dataset": ["oa"], "max_samples": None,
    },
    {
        "name": "several_datasets_max_samples_and_folder",
        "info": {"a": {"file_name": "a.json"}, "b": {"file_name": "b"}},
        "files": {
            "a.json": jsonl([{"instruction": f"a{i}", "input": "", "output": "o"} for i in range(4)]),
            "b/1.jsonl": jsonl([{"instruction": f"b{i}", "input": "", "output": "o"} for i in range(2)]),
            "b/2.jsonl": jsonl([{"instruction": f"c{i}", "input": "", "output": "o"} for i in range(2)]),
        },
        "dataset": ["b", "a"], "max_samples": 3,
    },
]


def main(wheel):
    with tempfile.TemporaryDirectory() as tmp:
        parser, aligner = import_lf(wheel, tmp)
        cache = os.path.join(tmp, "cache")
        out = []
        for i, case in enumerate(CASES):
            d = os.path.join(tmp, f"case{i}")
            for name, text in list(case["files"].items()) + [("dataset_info.json", json.dumps(case["info"]))]:
                path = os.path.join(d, name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)
            samples = lf_samples(parser, aligner, d, case["dataset"], case["max_samples"], cache)
            out.append({**case, "samples": samples})
        demo = os.path.join(REPO, "yamls", "demo")
        names = ["demo_alpaca", "demo_sharegpt"]
        out.append({"name": "repo_demo", "repo_dir": "yamls/demo", "dataset": names, "max_samples": None,
                    "samples": lf_samples(parser, aligner, demo, names, None, cache)})
    with open(OUT, "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
