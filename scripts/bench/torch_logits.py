"""PyTorch/transformers side of the logits parity check (scripts/device-check.sh).

Reads the same --tokens JSON `evalfleet-bench logits` reads (name -> [[ids]] or {ids, mask?,
positions?}), runs the HF model at --device in --dtype, and writes the f32 logits of every batch
to --out (safetensors, one tensor per name). With --compare FILE it then prints, per batch, the
max abs difference to FILE's logits over real (unmasked) positions and how often the argmax agrees.
"""
import argparse
import json

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def inputs(batch, device):
    if isinstance(batch, list):
        ids = torch.tensor(batch, dtype=torch.long)
        return ids.to(device), None, None
    ids = torch.tensor(batch["ids"], dtype=torch.long)
    mask = torch.tensor(batch["mask"], dtype=torch.long) if batch.get("mask") is not None else None
    pos = torch.tensor(batch["positions"], dtype=torch.long) if batch.get("positions") is not None else None
    if pos is None and mask is not None:
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), None if mask is None else mask.to(device), None if pos is None else pos.to(device)


def compare(tokens, ours_path, theirs):
    ours = load_file(ours_path)
    worst = 0.0
    for name, batch in tokens.items():
        a, b = ours[name].float().cpu(), theirs[name].float().cpu()
        if a.shape != b.shape:
            print(f"  {name}: SHAPE MISMATCH evalfleet {tuple(a.shape)} vs torch {tuple(b.shape)}")
            worst = float("inf")
            continue
        real = torch.ones(a.shape[:2], dtype=torch.bool)
        if isinstance(batch, dict) and batch.get("mask") is not None:
            real = torch.tensor(batch["mask"]).bool()
        diff = (a - b).abs()[real].max().item()
        agree = (a.argmax(-1) == b.argmax(-1))[real].float().mean().item()
        scale = b[real].abs().max().item()
        print(f"  {name}: max|diff| {diff:.3e} (max|logit| {scale:.2f}), argmax agreement {agree:.3f}")
        worst = max(worst, diff)
    return worst


def torch_logits(model_dir, tokens, device, dtype):
    """f32 CPU logits of every batch of `tokens` (name -> batch) from the HF model in `model_dir`."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype]).to(device).eval()
    out = {}
    with torch.inference_mode():
        for name, batch in tokens.items():
            ids, mask, pos = inputs(batch, device)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
            out[name] = logits.float().cpu().contiguous()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    ap.add_argument("--compare", help="evalfleet-bench logits output to compare with")
    args = ap.parse_args()
    with open(args.tokens, encoding="utf-8") as f:
        tokens = json.load(f)
    out = torch_logits(args.model, tokens, args.device, args.dtype)
    save_file(out, args.out)
    if args.compare:
        worst = compare(tokens, args.compare, out)
        print(json.dumps({"check": "logits", "model": args.model, "device": args.device, "dtype": args.dtype,
                          "max_abs_diff": worst}))


if __name__ == "__main__":
    main()
