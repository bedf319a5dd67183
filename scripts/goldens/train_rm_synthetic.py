#!/usr/bin/env python3
"""Writes worker/tests/fixtures/train/synthetic.jsonl: a learnable reward-model training task
made from the CharacterEval dialogues (run once; the output is committed).

For each of the first 100 dialogues of the seed's test_data.jsonl: the context is its last line, the
role is its role, and the candidate responses are four of that role's own utterances (from this
dialogue and the next ones). Human scores are synthetic functions of the response text:
  行为一致性 (Behavior):     5 if the response holds a stage direction "（", else 1
  对话流利度 (Fluency):      5 if the response holds "？" or "！", else 1
A reward model that reads the response (at the end of the input, kept by left truncation) and
the dimension (the last tokens) can learn both.

Usage: EVALFLEET_SEED=/path/to/seed /path/to/venv/bin/python scripts/goldens/train_rm_synthetic.py
"""
import json
import os
import random

SEED = os.environ.get("EVALFLEET_SEED", os.path.join(os.path.dirname(__file__), "..", "..", "seed"))
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "worker", "tests",
                   "fixtures", "train", "synthetic.jsonl")
CONTEXTS = 100
PER_CONTEXT = 4
RULES = {
    "行为一致性": lambda r: 5 if "（" in r else 1,
    "对话流利度": lambda r: 5 if ("？" in r or "！" in r) else 1,
}


def utterances(record):
    prefix = record["role"] + "："
    return [line[len(prefix):] for line in record["context"].split("\n")
            if line.startswith(prefix) and 2 <= len(line) - len(prefix) <= 40]


def main():
    rng = random.Random(3)
    with open(os.path.join(SEED, "evaluation", "CharacterEval", "test_data.jsonl")) as f:
        data = json.load(f)
    by_role = {}
    for rec in data:
        by_role.setdefault(rec["role"], []).extend(utterances(rec))
    lines = []
    used = 0
    for rec in data:
        if used == CONTEXTS:
            break
        pool = sorted(set(by_role[rec["role"]]))
        if len(pool) < PER_CONTEXT:
            continue
        used += 1
        context = "\n".join(rec["context"].split("\n")[-1:])
        responses = rng.sample(pool, PER_CONTEXT)
        for dim, rule in RULES.items():
            for resp in responses:
                lines.append({"id": rec["id"], "role": rec["role"], "context": context,
                              "response": resp, "dimension": dim, "score": rule(resp)})
    with open(OUT, "w") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    for dim in RULES:
        s = [l["score"] for l in lines if l["dimension"] == dim]
        print(dim, len(s), "share of 5:", sum(x == 5 for x in s) / len(s))


if __name__ == "__main__":
    main()
