#!/usr/bin/env python3
"""The llama variant of train_rm_goldens.py: one AdamW step of a reward model made of a tiny
random llama decoder (transformers' LlamaModel, eager attention, f32) plus a new
score = Linear(hidden, 1, bias) on the final-normed hidden state of the last token, the
reference for worker/tests/train_step_parity.rs (run once; the outputs are committed).

Writes the model folder worker/tests/fixtures/train/tiny-llama-rm/ (config.json with
architectures LlamaForCausalLM, model.safetensors in f32 with the score head and without
lm_head, and the tokenizer of reward/tiny-rm-alibi4, whose 384-token vocabulary it shares),
then runs the same batch, losses (train_rm_goldens.losses) and AdamW settings as the Baichuan
goldens for loss_1 alone, loss_2 alone and both, and writes train/step_llama_goldens.json and
train/step_llama_weights.safetensors (updated weights named "llama-<case>/<param>").

AdamW's eps is 1e-5 here (1e-6 for Baichuan): under loss_1 alone the score bias has a gradient
that is zero but for rounding (3.7e-9 in PyTorch), and Adam's first step moves it by
lr * g / (|g| + eps) in either implementation, noise of opposite signs giving up to 1.1e-5 apart
with eps 1e-6; 1e-5 bounds that to ~4e-7 while every other gradient still takes Adam's
normalisation.

The attention has grouped KV heads (4 query heads over 2) and the norm weights are drawn around
1 (not all ones) so that every part of the model is exercised.

Usage: /path/to/venv/bin/python scripts/goldens/train_rm_llama_goldens.py
"""
import json
import os
import shutil
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_rm_goldens import ADAMW, CASES, FIX, OUT, batch, losses  # noqa: E402

ADAMW = dict(ADAMW, eps=1e-5)

FOLDER = os.path.join(OUT, "tiny-llama-rm")
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 384,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "hidden_act": "silu",
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "torch_dtype": "float32",
}


def make_model():
    """A random llama reward model's state dict (HF names, `model.` prefix, `score.*`)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(**{k: v for k, v in CONFIG.items() if k != "architectures"})
    model = LlamaModel(cfg)
    sd = {f"model.{k}": v.detach().clone().float() for k, v in model.state_dict().items()}
    for k in sd:
        if k.endswith("norm.weight"):
            sd[k] = 1.0 + 0.1 * torch.randn_like(sd[k])
        elif k.endswith("embed_tokens.weight"):
            # Larger than the 0.02 init, so the scores differ visibly between inputs.
            sd[k] = torch.randn_like(sd[k])
    sd["score.weight"] = torch.randn(1, CONFIG["hidden_size"]) * 0.2
    sd["score.bias"] = torch.tensor([0.1])
    return sd


def llama_logit(_cfg, w, ids):
    """The score logit of one sequence through transformers' LlamaModel over the weights `w`."""
    model = llama_logit.model
    params = {k[len("model."):]: v for k, v in w.items() if k.startswith("model.")}
    out = torch.func.functional_call(model, params, (torch.tensor([ids]),))
    x = out.last_hidden_state[0, -1]
    return F.linear(x, w["score.weight"], w["score.bias"]).squeeze()


def main():
    init = make_model()
    os.makedirs(FOLDER, exist_ok=True)
    save_file({k: v.contiguous() for k, v in init.items()},
              os.path.join(FOLDER, "model.safetensors"))
    with open(os.path.join(FOLDER, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=1)
        f.write("\n")
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(FIX, "reward", "tiny-rm-alibi4", name), FOLDER)
    hf_cfg = LlamaConfig(**{k: v for k, v in CONFIG.items() if k != "architectures"})
    hf_cfg._attn_implementation = "eager"
    llama_logit.model = LlamaModel(hf_cfg).eval()
    groups = batch()
    out = {"model": "train/tiny-llama-rm", "adamw": ADAMW, "groups": groups, "cases": []}
    weights = {}
    for name, w1, w2 in CASES:
        name = f"llama-{name}"
        w = {k: v.clone().requires_grad_(True) for k, v in init.items()}
        opt = torch.optim.AdamW(list(w.values()), lr=ADAMW["lr"],
                                betas=(ADAMW["beta1"], ADAMW["beta2"]), eps=ADAMW["eps"],
                                weight_decay=ADAMW["weight_decay"])
        l1, l2 = losses(None, w, groups, llama_logit)
        total = w1 * l1 + w2 * l2
        opt.zero_grad()
        total.backward()
        opt.step()
        out["cases"].append({"name": name, "w_ranking": w1, "w_regression": w2,
                             "loss_1": l1.item(), "loss_2": l2.item(), "loss": total.item()})
        for k, v in w.items():
            weights[f"{name}/{k}"] = v.detach().contiguous()
        print(name, l1.item(), l2.item(), total.item())
    save_file(weights, os.path.join(OUT, "step_llama_weights.safetensors"))
    with open(os.path.join(OUT, "step_llama_goldens.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
