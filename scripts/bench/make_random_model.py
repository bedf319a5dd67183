"""Writes a random-weight Qwen2-shaped HF checkpoint for the GPU throughput check
(scripts/device-check.sh): both evalfleet and transformers then load the same folder.

Presets follow the public configs' shapes: qwen2.5-0.5b (hidden 896, 24 layers, 14 heads, 2 kv
heads, intermediate 4864, vocab 151936, tied embeddings) and qwen2.5-1.5b. Weights are drawn on
--device (fast on a GPU) with transformers' own initialisation and saved in --dtype.
"""
import argparse
import json
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

PRESETS = {
    "qwen2.5-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         intermediate_size=4864, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         intermediate_size=8960, tie_word_embeddings=True),
    # For dry runs on a CPU: the same code path, seconds instead of minutes.
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, tie_word_embeddings=True),
}
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="qwen2.5-0.5b")
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt-ids", help="also write random prompts here (JSON list of id lists)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=256)
    args = ap.parse_args()
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    cfg = Qwen2Config(vocab_size=args.vocab, max_position_embeddings=32768, rms_norm_eps=1e-6,
                      rope_theta=1000000.0, use_sliding_window=False, bos_token_id=None, eos_token_id=None,
                      **PRESETS[args.preset])
    with torch.device(args.device):
        model = Qwen2ForCausalLM(cfg).to(DTYPES[args.dtype])
    model.save_pretrained(args.out, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    if args.prompt_ids:
        g = torch.Generator().manual_seed(args.seed + 1)
        ids = torch.randint(0, args.vocab, (args.prompts, args.prompt_len), generator=g).tolist()
        with open(args.prompt_ids, "w") as f:
            json.dump(ids, f)
    print(json.dumps({"model": args.out, "preset": args.preset, "params": params, "dtype": args.dtype,
                      "seconds": round(time.perf_counter() - start, 2)}))


if __name__ == "__main__":
    main()
