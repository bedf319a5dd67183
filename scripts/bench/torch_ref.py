"""A transformers-free PyTorch reference for the GPU check (scripts/device-check.sh), used only when
the GPU machine's venv has torch but not transformers: then the comparison is against this plain
eager PyTorch decoder (labelled `torch-eager`), not against HF transformers.

It needs nothing but torch: safetensors files are read and written by hand (the format is a JSON
header plus raw little-endian tensors). The decoder covers what the tiny fixtures and the
Qwen2-shaped throughput model use: llama / qwen2 / mistral (q/k/v biases, head_dim, llama3 rope
scaling, sliding window), tied embeddings, GQA, SDPA attention and a preallocated KV cache.

Subcommands (each prints one JSON line):
  make-model --out DIR --preset qwen2.5-0.5b [--prompt-ids FILE ...]  random bf16 checkpoint
  logits --model DIR --tokens FILE --compare EF.safetensors --dtype f32|bf16 --device cuda
  generate --model DIR --prompt-ids FILE --batch-size N --new-tokens N [--prefill] [--warmup]
"""
import argparse
import json
import math
import os
import struct
import time

import torch
import torch.nn.functional as F

ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I64": torch.int64}
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def load_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = torch.frombuffer(bytearray(data[a:b]), dtype=torch.uint8)
        out[name] = raw.view(ST_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def save_safetensors(tensors, path):
    names = {v: k for k, v in ST_DTYPES.items()}
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        raw = t.view(torch.uint8).reshape(-1) if t.numel() else torch.empty(0, dtype=torch.uint8)
        blob = _to_bytes(raw)
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def _to_bytes(raw):
    # Without numpy: copy into a bytearray-backed tensor (no Python-level loop over elements).
    buf = bytearray(raw.numel())
    torch.frombuffer(buf, dtype=torch.uint8).copy_(raw)
    return bytes(buf)


def load_weights(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
    out = {}
    for f in files:
        out.update(load_safetensors(os.path.join(model_dir, f)))
    return out


def rope_inv_freq(cfg, head_dim):
    params = cfg.get("rope_parameters") or {}
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling and scaling.get("rope_type", scaling.get("type")) == "llama3":
        factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        orig = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        smooth = (orig / wavelen - lo) / (hi - lo)
        mid = (1 - smooth) * inv / factor + smooth * inv
        inv = torch.where(wavelen > orig / lo, inv / factor, torch.where(wavelen < orig / hi, inv, mid))
    elif scaling:
        raise SystemExit(f"torch_ref: rope scaling {scaling} not supported")
    return inv.float()


class Decoder:
    """Eager llama/qwen2/mistral decoder over a weight dict (HF names)."""

    def __init__(self, model_dir, device, dtype):
        cfg = json.load(open(os.path.join(model_dir, "config.json")))
        self.cfg = cfg
        self.w = {k: v.to(device=device, dtype=dtype) for k, v in load_weights(model_dir).items()}
        self.heads, self.kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.head_dim = cfg.get("head_dim") or cfg["hidden_size"] // self.heads
        self.layers = cfg["num_hidden_layers"]
        self.eps = cfg["rms_norm_eps"]
        self.window = cfg.get("sliding_window") if cfg.get("model_type") == "mistral" else None
        self.inv_freq = rope_inv_freq(cfg, self.head_dim).to(device)
        self.lm_head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])
        self.device, self.dtype = device, dtype

    def norm(self, x, name):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.w[name] * h.to(x.dtype)

    def lin(self, x, name):
        return F.linear(x, self.w[name + ".weight"], self.w.get(name + ".bias"))

    def rope(self, x, pos):
        freqs = pos[:, None, :, None].float() * self.inv_freq  # (b, 1, s, d/2)
        emb = torch.cat([freqs, freqs], -1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos + rot * sin

    def new_cache(self, batch, max_len):
        shape = (batch, self.kv_heads, max_len, self.head_dim)
        return {"len": 0, "kv": [(torch.empty(shape, device=self.device, dtype=self.dtype),
                                  torch.empty(shape, device=self.device, dtype=self.dtype)) for _ in range(self.layers)]}

    def forward(self, ids, pos, mask=None, cache=None, last_only=False):
        """ids, pos: (b, s); mask: (b, past + s) 1 = real key, or None; returns f32 logits."""
        b, s = ids.shape
        past = cache["len"] if cache else 0
        attn_mask = None
        if mask is not None or self.window or (s > 1 and past > 0):
            q_idx = torch.arange(past, past + s, device=self.device)[:, None]
            k_idx = torch.arange(past + s, device=self.device)[None, :]
            allowed = k_idx <= q_idx
            if self.window:
                allowed &= (q_idx - k_idx) < self.window
            allowed = allowed[None, None].expand(b, 1, s, past + s)
            if mask is not None:
                allowed = allowed & mask[:, None, None, :].bool()
            attn_mask = allowed
        x = self.w["model.embed_tokens.weight"][ids]
        for i in range(self.layers):
            p = f"model.layers.{i}."
            h = self.norm(x, p + "input_layernorm.weight")
            q = self.lin(h, p + "self_attn.q_proj").view(b, s, self.heads, self.head_dim).transpose(1, 2)
            k = self.lin(h, p + "self_attn.k_proj").view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
            v = self.lin(h, p + "self_attn.v_proj").view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = self.rope(q, pos), self.rope(k, pos)
            if cache:
                kc, vc = cache["kv"][i]
                kc[:, :, past:past + s], vc[:, :, past:past + s] = k, v
                k, v = kc[:, :, :past + s], vc[:, :, :past + s]
            rep = self.heads // self.kv_heads
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
            if attn_mask is None:
                a = F.scaled_dot_product_attention(q, k, v, is_causal=s > 1)
            else:
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            x = x + self.lin(a.transpose(1, 2).reshape(b, s, -1), p + "self_attn.o_proj")
            h = self.norm(x, p + "post_attention_layernorm.weight")
            mlp = F.silu(self.lin(h, p + "mlp.gate_proj")) * self.lin(h, p + "mlp.up_proj")
            x = x + self.lin(mlp, p + "mlp.down_proj")
        if cache:
            cache["len"] = past + s
        x = self.norm(x[:, -1:] if last_only else x, "model.norm.weight")
        return F.linear(x, self.lm_head).float()

    def generate(self, ids, new_tokens):
        """Greedy continuation of equal-length prompts (no padding), exactly new_tokens each."""
        b, s = ids.shape
        cache = self.new_cache(b, s + new_tokens)
        pos = torch.arange(s, device=self.device)[None].expand(b, s)
        out = []
        logits = self.forward(ids, pos, cache=cache, last_only=True)
        for t in range(new_tokens):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            out.append(nxt)
            if t + 1 < new_tokens:
                logits = self.forward(nxt, torch.full((b, 1), s + t, device=self.device), cache=cache)
        return torch.cat(out, 1)


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def make_model(args):
    presets = {
        "qwen2.5-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                             intermediate_size=4864),
        "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=128),
    }
    cfg = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=args.vocab, hidden_act="silu",
               max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
               use_sliding_window=False, sliding_window=None, torch_dtype="bfloat16", **presets[args.preset])
    g = torch.Generator(device=args.device).manual_seed(args.seed)
    hd, kv = cfg["hidden_size"], cfg["num_key_value_heads"] * cfg["hidden_size"] // cfg["num_attention_heads"]
    shapes = {"model.embed_tokens.weight": (args.vocab, hd), "model.norm.weight": (hd,)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (hd,), p + "post_attention_layernorm.weight": (hd,),
                       p + "self_attn.q_proj.weight": (hd, hd), p + "self_attn.q_proj.bias": (hd,),
                       p + "self_attn.k_proj.weight": (kv, hd), p + "self_attn.k_proj.bias": (kv,),
                       p + "self_attn.v_proj.weight": (kv, hd), p + "self_attn.v_proj.bias": (kv,),
                       p + "self_attn.o_proj.weight": (hd, hd),
                       p + "mlp.gate_proj.weight": (cfg["intermediate_size"], hd),
                       p + "mlp.up_proj.weight": (cfg["intermediate_size"], hd),
                       p + "mlp.down_proj.weight": (hd, cfg["intermediate_size"])})
    tensors = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            t = torch.ones(shape, device=args.device)
        elif name.endswith(".bias"):
            t = torch.zeros(shape, device=args.device)
        else:
            t = torch.randn(shape, device=args.device, generator=g) * 0.02
        tensors[name] = t.to(torch.bfloat16)
    os.makedirs(args.out, exist_ok=True)
    save_safetensors(tensors, os.path.join(args.out, "model.safetensors"))
    json.dump(cfg, open(os.path.join(args.out, "config.json"), "w"), indent=1)
    if args.prompt_ids:
        gen = torch.Generator().manual_seed(args.seed + 1)
        json.dump(torch.randint(0, args.vocab, (args.prompts, args.prompt_len), generator=gen).tolist(),
                  open(args.prompt_ids, "w"))
    print(json.dumps({"model": args.out, "preset": args.preset, "params": sum(t.numel() for t in tensors.values()),
                      "writer": "torch_ref"}))


def logits(args):
    tokens = json.load(open(args.tokens))
    m = Decoder(args.model, args.device, DTYPES[args.dtype])
    ours = load_safetensors(args.compare)
    worst = 0.0
    with torch.inference_mode():
        for name, batch in tokens.items():
            if isinstance(batch, list):
                batch = {"ids": batch}
            ids = torch.tensor(batch["ids"], device=args.device)
            mask = torch.tensor(batch["mask"], device=args.device) if batch.get("mask") else None
            pos = torch.tensor(batch["positions"], device=args.device) if batch.get("positions") else \
                torch.arange(ids.shape[1], device=args.device)[None].expand_as(ids)
            ref = m.forward(ids, pos, mask).cpu()
            real = mask.bool().cpu() if mask is not None else torch.ones(ids.shape, dtype=torch.bool)
            diff = (ours[name].float() - ref).abs()[real].max().item()
            agree = (ours[name].argmax(-1) == ref.argmax(-1))[real].float().mean().item()
            print(f"  {name}: max|diff| {diff:.3e}, argmax agreement {agree:.3f}")
            worst = max(worst, diff)
    print(json.dumps({"check": "logits", "model": args.model, "dtype": args.dtype, "max_abs_diff": worst,
                      "reference": "torch-eager"}))


def generate(args):
    m = Decoder(args.model, args.device, DTYPES[args.dtype])
    prompts = json.load(open(args.prompt_ids))
    batches = [torch.tensor(prompts[i:i + args.batch_size], device=args.device)
               for i in range(0, len(prompts), args.batch_size)]
    with torch.inference_mode():
        warm = None
        if args.warmup:
            t = time.perf_counter()
            m.generate(batches[0], 4)
            sync(args.device)
            warm = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        count = 0
        for ids in batches:
            if args.prefill:
                pos = torch.arange(ids.shape[1], device=args.device)[None].expand_as(ids)
                m.forward(ids, pos, last_only=True).cpu()
                count += ids.numel()
            else:
                count += m.generate(ids, args.new_tokens).numel()
        sync(args.device)
        sec = time.perf_counter() - t
    line = {"side": "torch-eager", "batch_size": args.batch_size, "prompts": len(prompts)}
    line.update({"mode": "prefill", "prompt_tokens": count} if args.prefill else {"new_tokens": count})
    line.update({"seconds": round(sec, 3), "tokens_per_second": round(count / sec, 2), "warmup_seconds": warm})
    print(json.dumps(line), flush=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-model")
    mk.add_argument("--out", required=True)
    mk.add_argument("--preset", default="qwen2.5-0.5b")
    mk.add_argument("--vocab", type=int, default=151936)
    mk.add_argument("--device", default="cpu")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--prompt-ids")
    mk.add_argument("--prompts", type=int, default=32)
    mk.add_argument("--prompt-len", type=int, default=256)
    lg = sub.add_parser("logits")
    lg.add_argument("--model", required=True)
    lg.add_argument("--tokens", required=True)
    lg.add_argument("--compare", required=True)
    lg.add_argument("--device", default="cpu")
    lg.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    gn = sub.add_parser("generate")
    gn.add_argument("--model", required=True)
    gn.add_argument("--prompt-ids", required=True)
    gn.add_argument("--batch-size", type=int, default=1)
    gn.add_argument("--new-tokens", type=int, default=128)
    gn.add_argument("--device", default="cpu")
    gn.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    gn.add_argument("--prefill", action="store_true")
    gn.add_argument("--warmup", action="store_true")
    args = ap.parse_args()
    {"make-model": make_model, "logits": logits, "generate": generate}[args.cmd](args)


if __name__ == "__main__":
    main()
