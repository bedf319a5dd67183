#!/usr/bin/env python3
"""Greedy reference continuations of SmolLM2-135M-Instruct (the GGUF fetched by
scripts/fetch-models.sh, dequantized to f32 by transformers) for worker/tests/models_smollm2.rs.

transformers renders each chat prompt with the model's own chat template (from the GGUF
metadata), then the script greedily takes the argmax token 24 times (full forward each step, no
stopping at EOS, so every reference has the same length). It records the prompt ids, the
rendered prompt, the reference tokens and, per step, the margin between the best and the
second-best logit (a small margin marks a near-tie that float rounding may flip).

Usage: EVALFLEET_MODELS=<models dir> /path/to/venv/bin/python scripts/goldens/smollm2_reference.py
"""
import json
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..", "..")
MODELS = os.environ.get("EVALFLEET_MODELS", os.path.join(REPO, ".models"))
DIR = os.path.join(MODELS, "smollm2-135m-instruct-gguf")
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = os.path.join(REPO, "worker", "tests", "fixtures", "smollm2-reference.json")
NEW_TOKENS = 24

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "Give me three tips for staying healthy."}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "user", "content": "Translate 'good morning' into Spanish."},
     {"role": "assistant", "content": "Buenos días."},
     {"role": "user", "content": "And into German?"}],
    [{"role": "user", "content": "Explain what a binary search does, in one sentence."}],
]


@torch.no_grad()
def main():
    tok = AutoTokenizer.from_pretrained(DIR, gguf_file=FILE)
    model = AutoModelForCausalLM.from_pretrained(DIR, gguf_file=FILE, dtype=torch.float32)
    model.eval()
    cases = []
    for chat in CHATS:
        text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        seq = torch.tensor([ids])
        out, margins = [], []
        for _ in range(NEW_TOKENS):
            logits = model(input_ids=seq).logits[0, -1]
            top = torch.topk(logits, 2)
            nxt = int(top.indices[0])
            margins.append(round(float(top.values[0] - top.values[1]), 4))
            out.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
        cases.append({"messages": chat, "rendered": text, "prompt_ids": ids,
                      "reference": out, "margins": margins,
                      "reference_text": tok.decode(out)})
        print(repr(tok.decode(out)), "min margin", min(margins))
    with open(OUT, "w") as f:
        json.dump({"model": f"smollm2-135m-instruct-gguf/{FILE}", "new_tokens": NEW_TOKENS,
                   "cases": cases}, f, ensure_ascii=False, indent=1)
    print("written", OUT)


if __name__ == "__main__":
    main()
