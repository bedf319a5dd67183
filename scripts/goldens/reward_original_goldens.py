#!/usr/bin/env python3
"""Reward-model goldens from the ORIGINAL modeling code, at the real model's head size (issue 20).

Used by worker/tests/reward_original.rs (run once; the outputs are committed). Unlike
reward_goldens.py (a re-implementation of the maths), the Baichuan scores here come from
Baichuan2-13B's own `modeling_baichuan.py` (the file BaichuanCharRM's folder ships; its
`BaichuanModel` is the whole decoder: ALiBi mask buffer, W_pack attention, RMSNorm, MLP), run by
PyTorch on the CPU exactly as the original scoring loop runs it (batch of one, no attention
mask, `from_pretrained(folder, torch_dtype=...)`, eval mode). The BaichuanCharRM head on top
(`score = Linear(hidden, 1, bias=True)` on the last token's final-normed hidden state,
`.squeeze()`, sigmoid) is written below, as docs/FIDELITY.md §4.5 describes it: the public
Baichuan2 files have no reward head. The decoder reward models (evalfleet's llama / qwen2 base +
the same head) run on transformers' own `LlamaModel` / `Qwen2Model` with eager attention.

The modeling file is public but not in this repository: pass the folder that holds Baichuan2's
code files (from the baichuan-inc/Baichuan2-13B-Base or -Chat model repository:
modeling_baichuan.py, configuration_baichuan.py, generation_utils.py, tokenization_baichuan.py).
They are imported from a temporary package; nothing of them is written into the fixtures.

Tokenizer: a small Baichuan-style SentencePiece BPE model trained here (options as
spm_model_goldens.py trains baichuan/tokenizer.model; 500 pieces, so the embeddings stay small)
with tokenizer_config.json as Baichuan2 ships it (special tokens `single_word: true`); the ids
are Baichuan's own `BaichuanTokenizer` (tokenization_baichuan.py, loaded with `from_pretrained`
so the config applies) under transformers' slow-tokenizer machinery.

Writes into worker/tests/fixtures/reward_original/:
  tokenizer/                 tokenizer.model + tokenizer_config.json (the test copies them into
                             each model folder)
  baichuan-h128/             1 head x 128 (hidden 128), 2 layers, ALiBi, bf16 model.safetensors
  baichuan-h64/              3 heads x 64 (hidden 192, heads not a power of two), 1 layer, ALiBi,
                             bf16 pytorch_model.bin
  llama-h128/                LlamaForCausalLM, 2 heads x 128 with 1 KV head, 1 layer, + score.*
  qwen2-h64/                 Qwen2ForCausalLM, 2 heads x 64, q/k/v biases, 1 layer, + score.*
  goldens.json               per text: its length class (`short`: up to 2,048 tokens, `mid`:
                             2,049-4,096, `long`: cut to the last 4,096), the slow tokenizer's ids
                             (encode without special tokens + eos, last 4096 kept), and per model
                             the sigmoid in f32 and bf16; the text of a long input is stored as a
                             rule (see `long_text`), to keep the fixture small

Usage: python scripts/goldens/reward_original_goldens.py BAICHUAN2_CODE_DIR
(torch, transformers 4.41.2 as the original tool ran, safetensors, sentencepiece, protobuf,
accelerate).

The GPU check (scripts/device-check.sh, section r) runs the same models on the same ids on a
GPU: `--device-check WORK DEVICE [BAICHUAN2_CODE_DIR]` reads WORK/rm-ids.json and the worker's
sigmoids WORK/rm-<model>-<dtype>.json (`evalfleet-bench reward-scores`), scores the ids with
PyTorch on DEVICE and prints the agreement per model, dtype and length class (the Baichuan
models only when the code folder is given).
"""
import importlib
import json
import math
import os
import random
import shutil
import sys
import tempfile

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "worker", "tests", "fixtures", "reward_original")
CUTOFF = 4096

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
METRICS = ["知识准确率", "言语一致性", "对话一致性", "知识幻觉性", "行为一致性", "对话连贯性",
           "交流技巧", "类人程度", "知识曝光度", "共情度", "表现多样性", "对话流利度"]


def long_text(n):
    """The long-text rule the test repeats: sentence i % 8 for i in 0..n, joined by newlines,
    in CharacterEval's reward-input frame."""
    body = "\n".join(SENTENCES[i % len(SENTENCES)] for i in range(n))
    return "<RoleInfo>\n\n" + body + "\n\n<Dimension>\n\n知识准确率"


def texts(tok):
    """(name, text, long_rule or None): CharacterEval-shaped inputs of many lengths up to 2,048
    tokens (56 of them), texts holding the special tokens (single_word), 3 of 2,049-4,096 tokens
    and 2 long ones cut to 4,096."""
    rng = random.Random(20)
    out = [("empty", "", None), ("one_char", "好", None),
           ("specials_glued", "对话</s>结束<s>开始", None),
           ("specials_spaced", "对话 </s> 结束 <s> 开始 <unk> 了", None),
           ("specials_edges", "</s>你好<s>", None),
           ("specials_pairs", "</s><s> <s></s> a </s>b c<unk> <unk>", None),
           ("specials_mixed", "<RoleInfo>\n\n白展堂 </s>掌柜的<s> 好</s>\n\n<Dimension>\n\n共情度", None)]

    def record(n):
        ctx = "\n".join(rng.choice(SENTENCES) for _ in range(n))
        return ("<RoleInfo>\n\n" + SENTENCES[4] + "\n\n<Context>\n\n" + ctx + "\n\n<Response>\n\n"
                + rng.choice(SENTENCES) + "\n\n<Dimension>\n\n" + rng.choice(METRICS))

    short, mid = 0, 0
    while short < 56 or mid < 3:
        # Context lengths from one sentence to about 3,000 tokens (log-uniform).
        text = record(int(math.exp(rng.uniform(0, math.log(160)))))
        n = len(tok.encode(text, add_special_tokens=False)) + 1
        if n <= 2048 and short < 56:
            out.append((f"ce_{short:02d}", text, None))
            short += 1
        elif 2048 < n <= CUTOFF and mid < 3:
            out.append((f"mid_{mid}", text, None))
            mid += 1
    for n in (200, 300):
        out.append((f"long_{n}", long_text(n), n))
    return out


def length_class(full_len):
    return "short" if full_len <= 2048 else "mid" if full_len <= CUTOFF else "long"


# ------------------------------------------------------------------------ the original code


def import_baichuan(code_dir):
    """Imports Baichuan2's modeling and tokenization files as a package from a temp copy."""
    pkg_root = tempfile.mkdtemp()
    pkg = os.path.join(pkg_root, "baichuan2_code")
    os.makedirs(pkg)
    for name in ("modeling_baichuan.py", "configuration_baichuan.py", "generation_utils.py",
                 "tokenization_baichuan.py"):
        shutil.copy(os.path.join(code_dir, name), pkg)
    open(os.path.join(pkg, "__init__.py"), "w").close()
    sys.path.insert(0, pkg_root)
    modeling = importlib.import_module("baichuan2_code.modeling_baichuan")
    tokenization = importlib.import_module("baichuan2_code.tokenization_baichuan")
    return modeling, tokenization


def char_rm_class(modeling):
    """BaichuanCharRM: the original BaichuanModel + the reward head (docs/FIDELITY.md §4.5)."""

    class BaichuanCharRM(modeling.BaichuanPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.model = modeling.BaichuanModel(config)
            self.score = torch.nn.Linear(config.hidden_size, 1, bias=True)
            self.post_init()

        def forward(self, input_ids):
            hidden = self.model(input_ids=input_ids)[0]
            logits = self.score(hidden[:, -1, :]).squeeze()
            return None, torch.sigmoid(logits)

    return BaichuanCharRM


def slow_tokenizer(tokenization, folder):
    """Baichuan's BaichuanTokenizer; with transformers >= 4.34 its __init__ reads the vocabulary
    before it loads the SentencePiece model, so the model is loaded first here."""
    import sentencepiece as spm

    class Tok(tokenization.BaichuanTokenizer):
        def __init__(self, vocab_file, **kwargs):
            self.sp_model = spm.SentencePieceProcessor()
            self.sp_model.Load(vocab_file)
            super().__init__(vocab_file, **kwargs)

    return Tok.from_pretrained(folder)


# --------------------------------------------------------------------------- checkpoints


def token(content):
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
            "rstrip": False, "single_word": True}


def write_tokenizer(folder):
    """A 500-piece BPE model like Baichuan's, trained on the texts' sentences, and Baichuan2's
    tokenizer_config.json."""
    import sentencepiece as spm
    from spm_model_goldens import strip_machine_paths

    os.makedirs(folder, exist_ok=True)
    rng = random.Random(5)
    corpus = SENTENCES + METRICS + ["\n".join(rng.choice(SENTENCES) for _ in range(4))
                                    for _ in range(300)]
    prefix = os.path.join(folder, "tokenizer")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=prefix, num_threads=1, minloglevel=2,
        model_type="bpe", vocab_size=500, byte_fallback=True, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, character_coverage=1.0)
    strip_machine_paths(prefix + ".model")
    os.remove(prefix + ".vocab")
    cfg = {"add_bos_token": False, "add_eos_token": False, "bos_token": token("<s>"),
           "clean_up_tokenization_spaces": False, "eos_token": token("</s>"),
           "model_max_length": CUTOFF, "pad_token": token("<unk>"), "sp_model_kwargs": {},
           "tokenizer_class": "BaichuanTokenizer", "unk_token": token("<unk>")}
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def rnd(g, *shape, scale):
    return (torch.randn(*shape, generator=g) * scale).to(torch.bfloat16)


def norm_w(g, h):
    return (1.0 + torch.randn(h, generator=g) * 0.1).to(torch.bfloat16)


def baichuan_weights(cfg, seed):
    """bf16 weights scaled so that scores spread over (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    sd = {"model.embed_tokens.weight": rnd(g, cfg["vocab_size"], h, scale=1.0)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = norm_w(g, h)
        sd[p + "self_attn.W_pack.weight"] = rnd(g, 3 * h, h, scale=2.0 / math.sqrt(h))
        sd[p + "self_attn.o_proj.weight"] = rnd(g, h, h, scale=1.0 / math.sqrt(h))
        sd[p + "post_attention_layernorm.weight"] = norm_w(g, h)
        sd[p + "mlp.gate_proj.weight"] = rnd(g, inter, h, scale=1.0 / math.sqrt(h))
        sd[p + "mlp.up_proj.weight"] = rnd(g, inter, h, scale=1.0 / math.sqrt(h))
        sd[p + "mlp.down_proj.weight"] = rnd(g, h, inter, scale=1.0 / math.sqrt(inter))
    sd["model.norm.weight"] = norm_w(g, h)
    sd["score.weight"] = rnd(g, 1, h, scale=1.0 / math.sqrt(h))
    sd["score.bias"] = rnd(g, 1, scale=0.1)
    return sd


def decoder_weights(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = h // heads
    bias = cfg["model_type"] == "qwen2"
    sd = {"model.embed_tokens.weight": rnd(g, cfg["vocab_size"], h, scale=1.0)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = norm_w(g, h)
        for name, rows in (("q_proj", heads * d), ("k_proj", kv * d), ("v_proj", kv * d)):
            sd[p + f"self_attn.{name}.weight"] = rnd(g, rows, h, scale=2.0 / math.sqrt(h))
            if bias:
                sd[p + f"self_attn.{name}.bias"] = rnd(g, rows, scale=0.5)
        sd[p + "self_attn.o_proj.weight"] = rnd(g, h, heads * d, scale=1.0 / math.sqrt(h))
        sd[p + "post_attention_layernorm.weight"] = norm_w(g, h)
        sd[p + "mlp.gate_proj.weight"] = rnd(g, inter, h, scale=1.0 / math.sqrt(h))
        sd[p + "mlp.up_proj.weight"] = rnd(g, inter, h, scale=1.0 / math.sqrt(h))
        sd[p + "mlp.down_proj.weight"] = rnd(g, h, inter, scale=1.0 / math.sqrt(inter))
    sd["model.norm.weight"] = norm_w(g, h)
    sd["score.weight"] = rnd(g, 1, h, scale=1.0 / math.sqrt(h))
    sd["score.bias"] = rnd(g, 1, scale=0.1)
    return sd


def baichuan_config(hidden, heads, layers, vocab):
    return {"architectures": ["BaichuanCharRM"], "model_type": "baichuan", "vocab_size": vocab,
            "hidden_size": hidden, "intermediate_size": 128, "num_hidden_layers": layers,
            "num_attention_heads": heads, "hidden_act": "silu", "model_max_length": CUTOFF,
            "rms_norm_eps": 1e-6, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
            "tie_word_embeddings": False, "torch_dtype": "bfloat16",
            "initializer_range": 0.02, "use_cache": False}


def decoder_config(kind, hidden, heads, kv, vocab):
    cfg = {"architectures": ["LlamaForCausalLM" if kind == "llama" else "Qwen2ForCausalLM"],
           "model_type": kind, "vocab_size": vocab, "hidden_size": hidden,
           "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": heads,
           "num_key_value_heads": kv, "hidden_act": "silu", "max_position_embeddings": CUTOFF,
           "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2,
           "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    if kind == "qwen2":
        cfg["use_sliding_window"] = False
    return cfg


def save(folder, cfg, sd, fmt):
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    if fmt == "bin":
        torch.save(sd, os.path.join(folder, "pytorch_model.bin"))
    else:
        save_file(sd, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


# ------------------------------------------------------------------------------- scoring


@torch.no_grad()
def baichuan_scorer(modeling, folder, dtype, device="cpu"):
    """The original scoring loop's model: from_pretrained on the folder (weights as stored)."""
    code_cfg = importlib.import_module("baichuan2_code.configuration_baichuan")
    config = code_cfg.BaichuanConfig.from_pretrained(folder)
    model = char_rm_class(modeling).from_pretrained(folder, config=config, torch_dtype=dtype)
    model.eval().to(device)

    def score(ids):
        return model(input_ids=torch.tensor(ids, device=device).unsqueeze(0))[1].float().item()
    return score


@torch.no_grad()
def decoder_scorer(folder, kind, dtype, device="cpu"):
    cls = transformers.LlamaModel if kind == "llama" else transformers.Qwen2Model
    model = cls.from_pretrained(folder, torch_dtype=dtype, attn_implementation="eager")
    model.eval().to(device)
    sd = load_file(os.path.join(folder, "model.safetensors"))
    w, b = sd["score.weight"].to(dtype).to(device), sd["score.bias"].to(dtype).to(device)

    def score(ids):
        hidden = model(input_ids=torch.tensor(ids, device=device).unsqueeze(0)).last_hidden_state
        return torch.sigmoid(F.linear(hidden[:, -1, :], w, b)).squeeze().float().item()
    return score


MODELS = {"baichuan-h128": "baichuan", "baichuan-h64": "baichuan", "llama-h128": "llama",
          "qwen2-h64": "qwen2"}
STEP = 0.0156  # one bf16 step of the score (sigmoid * 4 + 1) near 1-5's middle


def device_check(work, device, code_dir):
    """Section r of the GPU check: PyTorch on `device` vs the worker's sigmoids on the same
    device, and the worker there vs the CPU goldens."""
    goldens = json.load(open(os.path.join(OUT, "goldens.json")))
    classes = [t["class"] for t in goldens["texts"]]
    ids = json.load(open(os.path.join(work, "rm-ids.json")))
    modeling = import_baichuan(code_dir)[0] if code_dir else None
    for name, kind in MODELS.items():
        folder = os.path.join(OUT, name)
        for label, dtype in (("bf16", torch.bfloat16), ("f32", torch.float32)):
            path = os.path.join(work, f"rm-{name}-{label}.json")
            if not os.path.exists(path):
                print(f"reward {name} {label}: no worker scores ({path})")
                continue
            ours = json.load(open(path))["sigmoid"]
            cpu = [t["sigmoid"][name][label] for t in goldens["texts"]]
            report(name, label, "worker on the device vs PyTorch CPU goldens", ours, cpu, classes)
            if kind == "baichuan" and modeling is None:
                print(f"reward {name} {label}: PyTorch side skipped (no Baichuan2 code folder)")
                continue
            score = (baichuan_scorer(modeling, folder, dtype, device) if kind == "baichuan"
                     else decoder_scorer(folder, kind, dtype, device))
            ref = [score(x) for x in ids]
            report(name, label, f"worker vs PyTorch on {device}", ours, ref, classes)


def report(name, label, what, got, want, classes):
    for cls in ("short", "mid", "long"):
        pairs = [(g, w) for g, w, c in zip(got, want, classes) if c == cls]
        same = sum(g == w for g, w in pairs)
        worst = max(abs(g - w) * 4 for g, w in pairs)
        print(json.dumps({"check": "reward", "model": name, "dtype": label, "what": what,
                          "class": cls, "records": len(pairs), "identical": same,
                          "worst_score_diff": worst, "worst_in_bf16_steps": worst / STEP}))


def main():
    if sys.argv[1] == "--device-check":
        device_check(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
        return
    code_dir = sys.argv[1]
    modeling, tokenization = import_baichuan(code_dir)
    torch.manual_seed(0)
    tok_dir = os.path.join(OUT, "tokenizer")
    shutil.rmtree(OUT, ignore_errors=True)
    write_tokenizer(tok_dir)
    tok = slow_tokenizer(tokenization, tok_dir)
    vocab, eos = tok.vocab_size, tok.eos_token_id
    assert eos == 2, eos

    specs = [
        ("baichuan-h128", "baichuan", baichuan_config(128, 1, 2, vocab), "safetensors", 1),
        ("baichuan-h64", "baichuan", baichuan_config(192, 3, 1, vocab), "bin", 2),
        ("llama-h128", "llama", decoder_config("llama", 256, 2, 1, vocab), "safetensors", 3),
        ("qwen2-h64", "qwen2", decoder_config("qwen2", 128, 2, 2, vocab), "safetensors", 4),
    ]
    scorers = {}
    for name, kind, cfg, fmt, seed in specs:
        folder = os.path.join(OUT, name)
        sd = baichuan_weights(cfg, seed) if kind == "baichuan" else decoder_weights(cfg, seed)
        save(folder, cfg, sd, fmt)
        for dtype, label in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
            scorers[(name, label)] = (baichuan_scorer(modeling, folder, dtype)
                                      if kind == "baichuan" else decoder_scorer(folder, kind, dtype))

    out = {"cutoff_len": CUTOFF, "eos_id": eos, "torch_version": torch.__version__,
           "transformers_version": transformers.__version__, "texts": []}
    for label, text, rule in texts(tok):
        full = tok.encode(text, add_special_tokens=False) + [eos]
        ids = full[-CUTOFF:]
        entry = {"name": label, "class": length_class(len(full)), "full_len": len(full),
                 "truncated": len(full) > CUTOFF}
        if rule is None:
            entry["text"] = text
        else:
            entry["long_rule"] = rule
        entry["ids"] = ids
        entry["sigmoid"] = {}
        for name, *_ in specs:
            entry["sigmoid"][name] = {d: scorers[(name, d)](ids) for d in ("f32", "bf16")}
        print(label, len(full), {k: v["bf16"] for k, v in entry["sigmoid"].items()}, flush=True)
        out["texts"].append(entry)
    # One text per line: the id lists stay compact.
    texts_json = ",\n".join(json.dumps(t, ensure_ascii=False) for t in out.pop("texts"))
    head = json.dumps(out, ensure_ascii=False)[:-1]
    with open(os.path.join(OUT, "goldens.json"), "w") as f:
        f.write(head + ',\n"texts": [\n' + texts_json + "\n]}\n")
    json.loads(open(os.path.join(OUT, "goldens.json")).read())


if __name__ == "__main__":
    main()
