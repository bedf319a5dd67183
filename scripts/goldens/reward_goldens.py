#!/usr/bin/env python3
"""Writes the tiny random BaichuanCharRM-style reward models and their reference scores used by
worker/tests/reward_parity.rs (run once; the outputs are committed).

The reference is this file's own PyTorch implementation of docs/FIDELITY.md §4.5 (not Baichuan's
modeling file): embed_tokens; per layer RMSNorm (variance in f32, normalized value cast to the model
dtype, then times the weight), fused W_pack split into q/k/v, ALiBi bias (interleave slopes, slope*j
on the absolute key index, built in f32 and cast to the model dtype, -inf above the diagonal) or
rotary embeddings (computed in f32, cast back), scores/sqrt(d) + bias clamped to finfo.min,
softmax, o_proj; SiLU MLP; final norm; `score` Linear(hidden, 1, bias) on the last token; sigmoid.

Into worker/tests/fixtures/reward/ (each model folder also holds a byte-level BPE tokenizer.json,
<unk>=0, <s>=1, </s>=2, trained here on the script's own text, and its tokenizer_config.json):
  tiny-rm-alibi4/      hidden 64, 4 heads (power of two), ALiBi, bf16 model.safetensors
  tiny-rm-alibi5/      hidden 80, 5 heads (not a power of two), ALiBi, bf16 PyTorch .bin shards
                       with pytorch_model.bin.index.json
  tiny-rm-rope/        hidden 64, 4 heads, rotary (`position_embedding_type: "rope"`), bf16
                       safetensors shards with model.safetensors.index.json
  goldens.json         per text: ids as the worker must build them (encode without special
                       tokens + eos, last 4096 kept), and per model the sigmoid in f32 and bf16

Usage: /path/to/venv/bin/python scripts/goldens/reward_goldens.py
"""
import json
import math
import os
import random
import shutil
import tempfile

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "worker", "tests",
                    "fixtures", "reward")
CUTOFF = 4096
SPECIALS = ["<unk>", "<s>", "</s>"]

SENTENCES = [
    "佟湘玉：额滴神啊，这日子没法过了！",
    "白展堂：掌柜的，您别着急，有我在呢。",
    "现在请你扮演一个角色扮演专家。请你根据上述信息扮演角色进行对话。",
    "The quick brown fox jumps over the lazy dog.",
    "{'姓名': '郭芙蓉', '性别': '女', '经历': ['排山倒海', '同福客栈']}",
    "知识准确率 言语一致性 对话一致性 知识幻觉性 行为一致性 对话连贯性",
    "Hello, 世界! Mixed 中英文 text with numbers 12345 and symbols #@%.",
    "吕秀才：子曾经曰过，学而时习之，不亦说乎？",
]


def corpus():
    rng = random.Random(7)
    return [" ".join(rng.choice(SENTENCES) for _ in range(6)) for _ in range(400)]


def train_tokenizer(out_dir):
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                   "clean_up_tokenization_spaces": False,
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=2)
    return tok


def texts():
    rng = random.Random(11)
    long1 = "<RoleInfo>\n\n" + "".join(rng.choice(SENTENCES) for _ in range(140))
    long2 = "".join(rng.choice(SENTENCES) for _ in range(250)) + "\n\n<Dimension>\n\n知识准确率"
    return [
        ("empty", ""),
        ("one_char", "好"),
        ("english", "The quick brown fox jumps over the lazy dog."),
        ("charactereval", "<RoleInfo>\n\n" + SENTENCES[4] + "\n\n<Context>\n\n" + SENTENCES[0]
         + "\n" + SENTENCES[1] + "\n\n<Response>\n\n" + SENTENCES[7]
         + "\n\n<Dimension>\n\n对话一致性"),
        ("special_in_text", "before </s> after <s>"),
        ("medium", " ".join(SENTENCES * 6)),
        ("long_over_4096", long1),
        ("long_twice_4096", long2),
    ]


# --------------------------------------------------------------------------- the reference model

def interleave_slopes(n):
    """ALiBi slopes (Python floats): the power-of-two rule, then every other slope of 2n."""
    def pow2(m):
        start = 2 ** (-(2 ** -(math.log2(m) - 3)))
        return [start * start ** i for i in range(m)]
    if math.log2(n).is_integer():
        return pow2(n)
    closest = 2 ** math.floor(math.log2(n))
    return pow2(closest) + interleave_slopes(2 * closest)[0::2][: n - closest]


def rms_norm(x, w, eps, dtype):
    var = x.float().pow(2).mean(-1, keepdim=True)
    return w * (x.float() * torch.rsqrt(var + eps)).to(dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def rotary(x, theta, dtype):
    """Rotary embedding of (heads, L, d) at positions 0..L-1, computed in f32, cast back."""
    d, n = x.shape[-1], x.shape[-2]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2).float() / d))
    freqs = torch.outer(torch.arange(n).float(), inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    xf = x.float()
    return (xf * emb.cos() + rotate_half(xf) * emb.sin()).to(dtype)


def position_bias(cfg, n, dtype):
    """(heads, n, n) additive bias: ALiBi slope*j (f32, then cast) or 0, -inf above the diagonal."""
    future = torch.triu(torch.full((n, n), float("-inf")), 1)
    if cfg["position_embedding_type"] == "alibi":
        slopes = torch.tensor(interleave_slopes(cfg["num_attention_heads"]), dtype=torch.float32)
        alibi = slopes[:, None, None] * torch.arange(n).float()[None, None, :]
        return (alibi + future[None]).to(dtype)
    return future[None].to(dtype)


@torch.no_grad()
def sigmoid_score(cfg, sd, ids, dtype):
    w = {k: v.to(dtype) for k, v in sd.items()}
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    d, eps, n = hidden // heads, cfg["rms_norm_eps"], len(ids)
    bias = position_bias(cfg, n, dtype)
    x = w["model.embed_tokens.weight"][torch.tensor(ids)]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps, dtype)
        q, k, v = F.linear(h, w[p + "self_attn.W_pack.weight"]).split(hidden, dim=-1)
        q, k, v = (t.view(n, heads, d).transpose(0, 1) for t in (q, k, v))
        if cfg["position_embedding_type"] == "rope":
            q, k = rotary(q, cfg["rope_theta"], dtype), rotary(k, cfg["rope_theta"], dtype)
        s = torch.matmul(q, k.transpose(1, 2)) / math.sqrt(d) + bias
        s = torch.max(s, torch.tensor(torch.finfo(s.dtype).min, dtype=s.dtype))
        o = torch.matmul(torch.softmax(s, dim=-1), v).transpose(0, 1).reshape(n, hidden)
        x = x + F.linear(o, w[p + "self_attn.o_proj.weight"])
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps, dtype)
        mlp = F.silu(F.linear(h, w[p + "mlp.gate_proj.weight"])) * F.linear(h, w[p + "mlp.up_proj.weight"])
        x = x + F.linear(mlp, w[p + "mlp.down_proj.weight"])
    x = rms_norm(x, w["model.norm.weight"], eps, dtype)
    logit = F.linear(x[-1], w["score.weight"], w["score.bias"])
    return torch.sigmoid(logit).squeeze().float().item()


# ------------------------------------------------------------------------- checkpoints on disk

def make_config(hidden, heads, vocab, pos):
    cfg = {"architectures": ["BaichuanCharRM"], "model_type": "baichuan", "vocab_size": vocab,
           "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": 2,
           "num_attention_heads": heads, "hidden_act": "silu", "model_max_length": CUTOFF,
           "rms_norm_eps": 1e-6, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
           "tie_word_embeddings": False, "torch_dtype": "bfloat16",
           "position_embedding_type": pos}
    if pos == "rope":
        cfg["rope_theta"] = 10000.0
    return cfg


def random_weights(cfg, seed):
    """bf16 weights scaled so that scores spread over (0, 1) instead of all sitting at 0.5."""
    g = torch.Generator().manual_seed(seed)
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]

    def rnd(*shape, scale):
        return (torch.randn(*shape, generator=g) * scale).to(torch.bfloat16)

    def norm_w():
        return (1.0 + torch.randn(h, generator=g) * 0.1).to(torch.bfloat16)
    sd = {"model.embed_tokens.weight": rnd(cfg["vocab_size"], h, scale=1.0)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = norm_w()
        sd[p + "self_attn.W_pack.weight"] = rnd(3 * h, h, scale=1.5 / math.sqrt(h))
        sd[p + "self_attn.o_proj.weight"] = rnd(h, h, scale=1.0 / math.sqrt(h))
        sd[p + "post_attention_layernorm.weight"] = norm_w()
        sd[p + "mlp.gate_proj.weight"] = rnd(inter, h, scale=1.0 / math.sqrt(h))
        sd[p + "mlp.up_proj.weight"] = rnd(inter, h, scale=1.0 / math.sqrt(h))
        sd[p + "mlp.down_proj.weight"] = rnd(h, inter, scale=1.0 / math.sqrt(inter))
    sd["model.norm.weight"] = norm_w()
    sd["score.weight"] = rnd(1, h, scale=1.0 / math.sqrt(h))
    sd["score.bias"] = rnd(1, scale=0.1)
    return sd


def split_names(sd):
    names = sorted(sd)
    return names[: len(names) // 2], names[len(names) // 2:]


def save_model(folder, cfg, sd, fmt, tok_dir):
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok_dir, name), folder)
    if fmt == "safetensors":
        save_file(sd, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        return
    parts = split_names(sd)
    ext = "safetensors" if fmt == "safetensors-shards" else "bin"
    prefix = "model" if ext == "safetensors" else "pytorch_model"
    weight_map = {}
    for n, part in enumerate(parts):
        file = f"{prefix}-{n + 1:05d}-of-{len(parts):05d}.{ext}"
        shard = {k: sd[k].clone() for k in part}
        if ext == "bin":
            torch.save(shard, os.path.join(folder, file))
        else:
            save_file(shard, os.path.join(folder, file), metadata={"format": "pt"})
        weight_map.update({k: file for k in part})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    with open(os.path.join(folder, f"{prefix}.{ext}.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def main():
    torch.manual_seed(0)
    tok_dir = tempfile.mkdtemp()
    tok = train_tokenizer(tok_dir)
    vocab = tok.get_vocab_size()
    eos = tok.token_to_id("</s>")
    assert eos == 2, eos
    specs = [("tiny-rm-alibi4", 64, 4, "alibi", "safetensors", 1),
             ("tiny-rm-alibi5", 80, 5, "alibi", "bin-shards", 2),
             ("tiny-rm-rope", 64, 4, "rope", "safetensors-shards", 3)]
    built = []
    for name, hidden, heads, pos, fmt, seed in specs:
        cfg = make_config(hidden, heads, vocab, pos)
        sd = random_weights(cfg, seed)
        save_model(os.path.join(ROOT, name), cfg, sd, fmt, tok_dir)
        built.append((name, cfg, sd))
    out = {"cutoff_len": CUTOFF, "eos_id": eos, "texts": []}
    for label, text in texts():
        full = tok.encode(text, add_special_tokens=False).ids + [eos]
        ids = full[-CUTOFF:]
        entry = {"name": label, "text": text, "full_len": len(full), "ids": ids,
                 "truncated": len(full) > CUTOFF, "sigmoid": {}}
        for name, cfg, sd in built:
            entry["sigmoid"][name] = {"f32": sigmoid_score(cfg, sd, ids, torch.float32),
                                      "bf16": sigmoid_score(cfg, sd, ids, torch.bfloat16)}
        print(label, len(full), entry["sigmoid"])
        out["texts"].append(entry)
    with open(os.path.join(ROOT, "goldens.json"), "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
