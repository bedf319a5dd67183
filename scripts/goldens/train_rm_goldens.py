#!/usr/bin/env python3
"""One AdamW step of reward-model training in PyTorch, the reference for
worker/tests/train_step_parity.rs (run once; the outputs are committed).

The model is scripts/goldens/reward_goldens.py's own PyTorch implementation of BaichuanCharRM
(docs/FIDELITY.md §4.5), run in f32 with autograd, initialised from E's tiny checkpoint
worker/tests/fixtures/reward/tiny-rm-alibi4 (bf16 weights widened to f32). Full fine-tuning.

Losses (worker/src/train/loss.rs states the same): a batch of groups (responses to one context
on one dimension), r = the score logit before the sigmoid, s = human score 1..5,
  loss_1 = (1/G) sum_g -1/(C(N_g,2)+1) * sum_{s_a > s_b} log sigmoid(r_a - r_b)
  loss_2 = (1/T) sum_i (sigmoid(r_i) - (s_i - 1)/4)^2
  loss   = w1 * loss_1 + w2 * loss_2
then torch.optim.AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01), one step.
eps is 1e-6, not 1e-8: Adam's first step is lr * g / (|g| + eps), so a gradient that is zero up
to rounding (the score bias under the ranking loss, whose r_a - r_b cancels it; ~1e-9 noise)
would move by up to lr in either implementation; eps = 1e-6 bounds that to ~1e-3 * lr.

The same step of the combined loss is also run on tiny-rm-rope (rotary attention), case
"rope-both".

Writes worker/tests/fixtures/train/step_goldens.json (the batch, settings, loss values) and
step_weights.safetensors (the updated f32 weights of each case, named "<case>/<param>").

Usage: /path/to/venv/bin/python scripts/goldens/train_rm_goldens.py
"""
import json
import math
import os
import random
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reward_goldens import position_bias, rms_norm, rotary  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "..", "worker", "tests", "fixtures")
MODEL = os.path.join(FIX, "reward", "tiny-rm-alibi4")
# The rotary model is checked on the combined loss only (keeps the fixture small).
ROPE_MODEL = os.path.join(FIX, "reward", "tiny-rm-rope")
OUT = os.path.join(FIX, "train")
ADAMW = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-6, "weight_decay": 0.01}
CASES = [("ranking", 1.0, 0.0), ("regression", 0.0, 1.0), ("both", 0.7, 1.3)]


def logit(cfg, w, ids):
    """The score logit of one sequence (f32, differentiable)."""
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    d, eps, n = hidden // heads, cfg["rms_norm_eps"], len(ids)
    bias = position_bias(cfg, n, torch.float32)
    x = w["model.embed_tokens.weight"][torch.tensor(ids)]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps, torch.float32)
        q, k, v = F.linear(h, w[p + "self_attn.W_pack.weight"]).split(hidden, dim=-1)
        q, k, v = (t.view(n, heads, d).transpose(0, 1) for t in (q, k, v))
        if cfg["position_embedding_type"] == "rope":
            q = rotary(q, cfg["rope_theta"], torch.float32)
            k = rotary(k, cfg["rope_theta"], torch.float32)
        s = torch.matmul(q, k.transpose(1, 2)) / math.sqrt(d) + bias
        s = torch.max(s, torch.tensor(torch.finfo(s.dtype).min))
        o = torch.matmul(torch.softmax(s, dim=-1), v).transpose(0, 1).reshape(n, hidden)
        x = x + F.linear(o, w[p + "self_attn.o_proj.weight"])
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps, torch.float32)
        mlp = F.silu(F.linear(h, w[p + "mlp.gate_proj.weight"])) * F.linear(h, w[p + "mlp.up_proj.weight"])
        x = x + F.linear(mlp, w[p + "mlp.down_proj.weight"])
    x = rms_norm(x, w["model.norm.weight"], eps, torch.float32)
    return F.linear(x[-1], w["score.weight"], w["score.bias"]).squeeze()


def losses(cfg, w, groups, logit_fn=None):
    """loss_1 and loss_2 of the batch; `logit_fn(cfg, w, ids)` is the model (default: the
    Baichuan one above; train_rm_llama_goldens.py passes a llama reward model)."""
    logit_fn = logit_fn or logit
    G = len(groups)
    T = sum(len(g["seqs"]) for g in groups)
    l1 = torch.zeros(())
    l2 = torch.zeros(())
    for g in groups:
        r = [logit_fn(cfg, w, ids) for ids in g["seqs"]]
        s = g["scores"]
        n = len(r)
        norm = n * (n - 1) // 2 + 1
        for a in range(n):
            for b in range(n):
                if s[a] > s[b]:
                    l1 = l1 - F.logsigmoid(r[a] - r[b]) / (norm * G)
        for ri, si in zip(r, s):
            l2 = l2 + (torch.sigmoid(ri) - (si - 1) / 4) ** 2 / T
    return l1, l2


def batch():
    rng = random.Random(5)
    groups = []
    for n, scores in [(3, [4, 2, 4]), (2, [1, 5]), (4, [3, 5, 2, 1])]:
        seqs = [[rng.randrange(3, 384) for _ in range(rng.randrange(4, 18))] + [2]
                for _ in range(n)]
        groups.append({"seqs": seqs, "scores": scores})
    return groups


def load_model(folder):
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    sd = {}
    for file in files:
        sd.update(load_file(os.path.join(folder, file)))
    return cfg, {k: v.float() for k, v in sd.items()}


def main():
    torch.manual_seed(0)
    cfg, init = load_model(MODEL)
    rope_cfg, rope_init = load_model(ROPE_MODEL)
    groups = batch()
    out = {"model": "reward/tiny-rm-alibi4", "rope_model": "reward/tiny-rm-rope", "adamw": ADAMW,
           "groups": groups, "cases": []}
    weights = {}
    runs = [(n, w1, w2, cfg, init) for n, w1, w2 in CASES]
    runs.append(("rope-both", 0.7, 1.3, rope_cfg, rope_init))
    for name, w1, w2, cfg, init in runs:
        w = {k: v.clone().requires_grad_(True) for k, v in init.items()}
        opt = torch.optim.AdamW(list(w.values()), lr=ADAMW["lr"],
                                betas=(ADAMW["beta1"], ADAMW["beta2"]), eps=ADAMW["eps"],
                                weight_decay=ADAMW["weight_decay"])
        l1, l2 = losses(cfg, w, groups)
        total = w1 * l1 + w2 * l2
        opt.zero_grad()
        total.backward()
        opt.step()
        out["cases"].append({"name": name, "w_ranking": w1, "w_regression": w2,
                             "loss_1": l1.item(), "loss_2": l2.item(), "loss": total.item()})
        for k, v in w.items():
            weights[f"{name}/{k}"] = v.detach().contiguous()
        print(name, l1.item(), l2.item(), total.item())
    os.makedirs(OUT, exist_ok=True)
    save_file(weights, os.path.join(OUT, "step_weights.safetensors"))
    with open(os.path.join(OUT, "step_goldens.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
