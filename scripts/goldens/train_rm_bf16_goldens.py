#!/usr/bin/env python3
"""Mixed-precision (bf16) reward-model training in PyTorch, the reference for the bf16 tests of
worker/tests/train_step_parity.rs (run once; the outputs are committed).

The scheme evalfleet's trainer uses with `dtype: bf16`: the parameters (master weights) are
f32 and require grad; the forward pass reads each of them cast to bf16 (a differentiable cast,
so the gradients arrive in f32), except the score head, which computes in f32 on the bf16
hidden state widened to f32. transformers' LlamaModel in bf16 keeps its RMSNorm and its eager
softmax in f32 internally, as evalfleet's decoder does.

Model, batch and losses are train_rm_llama_goldens.py's (the committed tiny-llama-rm folder is
read, not rewritten). For each of its three loss cases the gradients of every parameter (f32)
and the loss values are written, to worker/tests/fixtures/train/step_llama_bf16_grads.safetensors
("llama-bf16-<case>/<param>") and step_llama_bf16_goldens.json; and the same gradients computed
all in f32 ("llama-bf16-<case>/f32/<param>"), which measure how far bf16 rounding alone moves a
gradient: under the ranking loss alone some gradients are small differences of large terms, and
PyTorch's own bf16 gradients differ from its f32 ones by up to ~80 % there. Gradients rather than
updated weights: Adam's first step is about lr * sign(g), so bf16 rounding noise in a near-zero
gradient flips a whole step, while the gradients can be compared against that noise.

Usage: /path/to/venv/bin/python scripts/goldens/train_rm_bf16_goldens.py
"""
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_rm_goldens import CASES, OUT, batch, losses  # noqa: E402
from train_rm_llama_goldens import ADAMW, CONFIG, FOLDER, llama_logit  # noqa: E402


def bf16_logit(_cfg, w, ids):
    """The score logit of one sequence: LlamaModel over the bf16 casts of `w`, head in f32."""
    model = bf16_logit.model
    params = {k[len("model."):]: v.to(torch.bfloat16) for k, v in w.items()
              if k.startswith("model.")}
    out = torch.func.functional_call(model, params, (torch.tensor([ids]),))
    x = out.last_hidden_state[0, -1].float()
    return F.linear(x, w["score.weight"], w["score.bias"]).squeeze()


def main():
    init = load_file(os.path.join(FOLDER, "model.safetensors"))
    hf_cfg = LlamaConfig(**{k: v for k, v in CONFIG.items() if k != "architectures"})
    hf_cfg._attn_implementation = "eager"
    bf16_logit.model = LlamaModel(hf_cfg).to(torch.bfloat16).eval()
    llama_logit.model = LlamaModel(hf_cfg).eval()
    groups = batch()
    out = {"model": "train/tiny-llama-rm", "dtype": "bf16", "adamw": ADAMW, "groups": groups,
           "cases": []}
    grads = {}
    for name, w1, w2 in CASES:
        name = f"llama-bf16-{name}"
        w = {k: v.float().clone().requires_grad_(True) for k, v in init.items()}
        l1, l2 = losses(None, w, groups, bf16_logit)
        total = w1 * l1 + w2 * l2
        total.backward()
        out["cases"].append({"name": name, "w_ranking": w1, "w_regression": w2,
                             "loss_1": l1.item(), "loss_2": l2.item(), "loss": total.item()})
        print(name, l1.item(), l2.item(), total.item())
        for k, v in w.items():
            assert v.grad.dtype == torch.float32
            grads[f"{name}/{k}"] = v.grad.contiguous()
        w = {k: v.float().clone().requires_grad_(True) for k, v in init.items()}
        l1, l2 = losses(None, w, groups, llama_logit)
        (w1 * l1 + w2 * l2).backward()
        for k, v in w.items():
            grads[f"{name}/f32/{k}"] = v.grad.contiguous()
    save_file(grads, os.path.join(OUT, "step_llama_bf16_grads.safetensors"))
    with open(os.path.join(OUT, "step_llama_bf16_goldens.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
