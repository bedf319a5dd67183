"""HF transformers side of the generation benchmarks (scripts/bench-step1.sh, scripts/device-check.sh).

Generates exactly --new-tokens tokens (greedy, EOS ignored through min_new_tokens and no eos id) for
every prompt, left-padded in batches of --batch-size, and prints one JSON line with tokens/s, the
same shape `evalfleet-bench generate` prints.

Prompts are either --prompts (JSON list of chat-message lists, rendered with the model's chat
template inside the timed region) or --prompt-ids (JSON list of token-id lists, the same file the
evalfleet side reads, so both sides feed identical ids; no tokenizer needed).
"""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def left_pad(rows, pad_id):
    """(input_ids, attention_mask) of left-padded rows."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def batches_from_ids(path, batch_size, device):
    with open(path, encoding="utf-8") as f:
        prompts = json.load(f)
    out = []
    for i in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[i:i + batch_size], 0)
        out.append({"input_ids": ids.to(device), "attention_mask": mask.to(device)})
    return len(prompts), lambda: out


def batches_from_chat(model_dir, path, batch_size, device):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    with open(path, encoding="utf-8") as f:
        conversations = json.load(f)
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]

    def make():
        # Tokenizing is part of the timed work on this side, as it is in a real evaluation.
        return [tok(texts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                for i in range(0, len(texts), batch_size)]
    return len(texts), make


def run(model, make_batches, new_tokens, pad_id, keep):
    generated = 0
    for batch in make_batches():
        out = model.generate(**batch, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             pad_token_id=pad_id, eos_token_id=None)
        new = out[:, batch["input_ids"].shape[1]:]
        generated += new.numel()
        if keep is not None:
            keep.extend(new.tolist())
    return generated


def prefill(model, make_batches):
    """One forward pass per batch computing only the last position's logits (as scoring does);
    returns the number of real prompt tokens."""
    tokens = 0
    for batch in make_batches():
        logits = model(**batch, logits_to_keep=1).logits
        logits.float().cpu()
        tokens += int(batch["attention_mask"].sum())
    return tokens


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", help="JSON list of chat conversations")
    ap.add_argument("--prompt-ids", help="JSON list of token-id lists")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    ap.add_argument("--warmup", action="store_true", help="one short untimed generation first")
    ap.add_argument("--prefill", action="store_true", help="measure prefill tokens/s instead of generation")
    ap.add_argument("--save-ids", help="write the generated ids here (JSON list per prompt)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=DTYPES[args.dtype]).to(args.device).eval()
    model.generation_config.eos_token_id = None
    if args.prompt_ids:
        n, make_batches = batches_from_ids(args.prompt_ids, args.batch_size, args.device)
    elif args.prompts:
        n, make_batches = batches_from_chat(args.model, args.prompts, args.batch_size, args.device)
    else:
        ap.error("give --prompts or --prompt-ids")
    with torch.inference_mode():
        warmup_s = None
        if args.warmup:
            start = time.perf_counter()
            first = make_batches()[0]
            model.generate(**first, do_sample=False, max_new_tokens=4, min_new_tokens=4, pad_token_id=0,
                           eos_token_id=None)
            sync(args.device)
            warmup_s = round(time.perf_counter() - start, 3)
        keep = [] if args.save_ids else None
        start = time.perf_counter()
        if args.prefill:
            counted = prefill(model, make_batches)
        else:
            counted = run(model, make_batches, args.new_tokens, 0, keep)
        sync(args.device)
        elapsed = time.perf_counter() - start
    if keep is not None:
        with open(args.save_ids, "w") as f:
            json.dump(keep, f)
    line = {"side": "transformers", "batch_size": args.batch_size, "prompts": n}
    line.update({"mode": "prefill", "prompt_tokens": counted} if args.prefill else {"new_tokens": counted})
    line.update({"seconds": round(elapsed, 3), "tokens_per_second": round(counted / elapsed, 2),
                 "device": args.device, "dtype": args.dtype, "warmup_seconds": warmup_s,
                 "torch_threads": torch.get_num_threads()})
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
