"""Goldens for the worker's sentence-transformers embedder (worker/src/embed).

For each (label, predict) pair this computes the score exactly as the original tool's step 2 does:
`emb = model.encode([label, predict])` then `cos_sim(emb[0], emb[1])` read as a float32, and the
full embeddings of a few texts. Two models:

- the real all-MiniLM-L6-v2 (mean pooling + Normalize, max_seq_length 256) from
  `$EVALFLEET_MODELS/all-minilm-l6-v2` (scripts/fetch-models.sh fills it);
- a tiny random BERT saved here as a sentence-transformers folder with CLS pooling and no
  Normalize (`worker/tests/fixtures/embed_tiny_bert_cls/`), seeded, with a small WordPiece vocab,
  so the other pooling path and a second config are covered too.

Usage: python scripts/goldens/embed_goldens.py  (from the repo root; a Python with sentence-transformers)
       ... embed_goldens.py --bench   (throughput of sentence-transformers on the same pairs)
Writes worker/tests/fixtures/embed_pairs.json (the pairs), embed_minilm_goldens.json and embed_tiny_cls_goldens.json (scores
stored as the float32 value widened to a Python float, so they read back exactly).
"""

import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import cos_sim

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
from tokenize_texts import texts as base_texts  # noqa: E402

FIXTURES = REPO / "worker" / "tests" / "fixtures"
SEED_DIALOGUE = Path(os.environ.get("EVALFLEET_SEED", Path(__file__).resolve().parents[3] / "shared" / "seed")) / (
    "evaluation/CharacterEval/test_data.jsonl"
)

ENGLISH = [
    "The cat sat on the mat.",
    "A cat was sitting on a mat.",
    "The weather is lovely today, let's go for a walk in the park.",
    "It is raining heavily and the streets are flooded.",
    "Machine learning is a branch of artificial intelligence.",
    "Deep learning models need a lot of data to train well.",
    "I lost my job last year and I am still looking for a new one.",
    "Where can I find a new job now? The company is gone.",
    "Please pass me the salt.",
    "Could you hand me the salt, please?",
    "He plays the guitar every evening after dinner.",
    "Stock markets fell sharply on Monday after the announcement.",
    "The quick brown fox jumps over the lazy dog.",
    "Never gonna give you up, never gonna let you down.",
    "What time does the train to Boston leave?",
    "The train to Boston departs at 7:45 in the morning.",
]

MIXED = [
    "我今天用 Python 写了一个 web server。",
    "我们明天 meeting 的时间改到 3 点了，OK 吗？",
    "这个 bug 在 production 环境里复现不了。",
    "她说 thank you 然后就走了。",
    "GPU 显存不够，batch size 只能设成 8。",
    "老板说这个 project 下周一 deadline。",
    "emoji 也算：今天好开心 😄🎉",
    "I love 北京烤鸭 and 上海小笼包!",
]

EMOJI = ["😀", "👍🏽", "🇨🇳", "❤️❤️❤️", "🙂🙃🙂🙃", "🤖 robot", "好的👌", "👨‍👩‍👧‍👦"]


def dialogue_lines(limit):
    """Spoken lines of the CharacterEval dialogues (Chinese, with stage directions)."""
    data = json.loads(SEED_DIALOGUE.read_text(encoding="utf-8"))
    lines, contexts = [], []
    for record in data:
        contexts.append(record["context"])
        for line in record["context"].split("\n"):
            _, _, said = line.partition("：")
            if said:
                lines.append(said)
        if len(lines) >= limit:
            break
    return lines[:limit], contexts


def make_pairs():
    """At least 500 (label, predict) pairs of every kind the issue asks for, deterministic."""
    rng = random.Random(20261127)
    lines, contexts = dialogue_lines(600)
    pairs = []
    # Chinese: consecutive lines (related), random lines, identical, prefix/suffix of a line.
    for i in range(0, 240, 2):
        pairs.append((lines[i], lines[i + 1]))
    for _ in range(80):
        pairs.append((rng.choice(lines), rng.choice(lines)))
    for line in lines[240:280]:
        pairs.append((line, line))
        pairs.append((line, line[: max(1, len(line) // 2)]))
    # English and mixed, against each other and against Chinese.
    for a in ENGLISH:
        for b in rng.sample(ENGLISH, 3):
            pairs.append((a, b))
    for m in MIXED:
        pairs.append((m, rng.choice(lines)))
        pairs.append((m, rng.choice(ENGLISH)))
        pairs.append((m, m))
    # The tokenizer goldens' texts: whitespace, punctuation, other scripts, special-token lookalikes.
    base = base_texts()
    for i, t in enumerate(base):
        pairs.append((t, base[(i * 7 + 3) % len(base)]))
    # Empty and blank strings.
    for t in ["", " ", "\n", "hello", "你好"]:
        pairs.append(("", t))
        pairs.append((t, ""))
    # Emoji.
    for e in EMOJI:
        pairs.append((e, rng.choice(EMOJI)))
        pairs.append((e, rng.choice(lines)))
    # Long texts beyond max_seq_length (256 for MiniLM): whole dialogues, long English.
    long_en = " ".join(ENGLISH) * 4
    # 300 to 600 characters: past 256 tokens for the Chinese ones, without a large fixture.
    for k in range(30):
        a = contexts[k][:300]
        b = (contexts[k] + contexts[k + 1])[:600]
        pairs.append((a, b) if k % 2 else (b, a))
    pairs.append((long_en, long_en[:200]))
    pairs.append((long_en, long_en + " extra words at the end that are truncated away"))
    pairs.append((long_en + contexts[0], contexts[0] + long_en))
    return pairs


def encode_pair_scores(model, pairs):
    """The original tool's loop: encode([label, predict]) then cos_sim, read as np.float32."""
    scores = []
    for label, predict in pairs:
        emb = model.encode([label, predict])
        s = cos_sim(emb[0], emb[1]).flatten().numpy()[0]
        assert s.dtype == np.float32
        scores.append(float(s))
    return scores


def embedding_texts(pairs):
    """A handful of texts whose full embeddings are stored: short, Chinese, empty, long."""
    return ["", "Hello, world!", "你好，世界！", "mixed中文and English混合text 😀", pairs[-3][0]]


def write_golden(name, model_name, model, pairs):
    scores = encode_pair_scores(model, pairs)
    texts = embedding_texts(pairs)
    # One batch of different lengths, as the worker will batch them (sorted, padded, masked).
    embs = model.encode(texts, batch_size=32)
    out = {
        "model": model_name,
        "generator": "scripts/goldens/embed_goldens.py",
        "pairs_file": "embed_pairs.json",
        "max_seq_length": model.max_seq_length,
        "scores": scores,
        "mean_f32": float(np.mean(np.array(scores, dtype=np.float32))),
        "embedding_texts": texts,
        "embeddings": [[float(x) for x in e] for e in embs],
    }
    path = FIXTURES / name
    path.write_text(json.dumps(out, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path} ({len(pairs)} pairs, {path.stat().st_size} bytes)")


def tiny_vocab(pairs):
    """A small WordPiece vocab: specials, the ASCII printables, and the most frequent CJK chars."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    ascii_tokens = [chr(c) for c in range(33, 127)]
    words = ["the", "cat", "mat", "train", "learning", "machine", "##s", "##ing", "##ed", "hello"]
    counts = {}
    for a, b in pairs:
        for ch in a + b:
            if "\u4e00" <= ch <= "\u9fff":
                counts[ch] = counts.get(ch, 0) + 1
    cjk = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:300]]
    subwords = ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    vocab = []
    for t in specials + ascii_tokens + words + subwords + cjk:
        if t not in vocab:
            vocab.append(t)
    return vocab


def build_tiny_bert(dir_, pairs):
    """A seeded random 2-layer BERT (hidden 32) saved as a sentence-transformers folder with CLS
    pooling, no Normalize, max_seq_length 24, lower-casing."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    dir_.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab(pairs)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
    )
    fast = BertTokenizerFast(tokenizer_object=tok, model_max_length=512)
    fast.save_pretrained(str(dir_))
    torch.manual_seed(1234)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
    )
    model = BertModel(config, add_pooling_layer=False)
    model.init_weights()
    # Random LayerNorm parameters too, so a wrong LayerNorm shows up in the goldens.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
    model.save_pretrained(str(dir_), safe_serialization=True)
    (dir_ / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ],
            indent=2,
        )
    )
    (dir_ / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 24, "do_lower_case": True}, indent=2)
    )
    (dir_ / "1_Pooling").mkdir(exist_ok=True)
    (dir_ / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": 32,
                "pooling_mode_cls_token": True,
                "pooling_mode_mean_tokens": False,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            },
            indent=2,
        )
    )
    # Only what the embedder reads; the rest save_pretrained wrote is not needed.
    for extra in ["vocab.txt", "special_tokens_map.json", "tokenizer_config.json", "generation_config.json"]:
        if (dir_ / extra).exists():
            (dir_ / extra).unlink()


def bench(model, pairs):
    """Pairs per second of sentence-transformers on this CPU, as worker/tests/embed_bench.rs."""
    import time

    texts = [t for pair in pairs for t in pair]
    model.encode(texts[:64])  # warm-up
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        embs = model.encode(texts, batch_size=32)
        s = sum(float(cos_sim(embs[i], embs[i + 1])[0][0]) for i in range(0, len(texts), 2))
        best = min(best, time.perf_counter() - t0)
        assert s == s
    t0 = time.perf_counter()
    encode_pair_scores(model, pairs)
    per_pair = time.perf_counter() - t0
    print(
        f"sentence-transformers, all-MiniLM-L6-v2, CPU ({torch.get_num_threads()} threads), {len(pairs)} pairs: "
        f"batched (32) {len(pairs) / best:.1f} pairs/s; one encode per pair as the original tool {len(pairs) / per_pair:.1f} pairs/s"
    )


def main():
    torch.set_num_threads(int(os.environ.get("EMBED_THREADS", os.cpu_count() or 1)))
    pairs = make_pairs()
    assert len(pairs) >= 500, len(pairs)
    models_dir = Path(os.environ.get("EVALFLEET_MODELS", REPO / ".models"))
    minilm_dir = models_dir / "all-minilm-l6-v2"
    if not (minilm_dir / "modules.json").exists():
        sys.exit(f"{minilm_dir} missing: run scripts/fetch-models.sh")
    if "--bench" in sys.argv:
        bench(SentenceTransformer(str(minilm_dir), device="cpu"), pairs)
        return
    pairs_path = FIXTURES / "embed_pairs.json"
    pairs_path.write_text(
        json.dumps({"pairs": [[a, b] for a, b in pairs]}, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    print(f"wrote {pairs_path} ({len(pairs)} pairs)")
    if "--tiny-only" not in sys.argv:
        minilm = SentenceTransformer(str(minilm_dir), device="cpu", similarity_fn_name="cosine")
        write_golden("embed_minilm_goldens.json", "all-minilm-l6-v2", minilm, pairs)
    tiny_dir = FIXTURES / "embed_tiny_bert_cls"
    build_tiny_bert(tiny_dir, pairs)
    tiny = SentenceTransformer(str(tiny_dir), device="cpu", similarity_fn_name="cosine")
    assert tiny.max_seq_length == 24, tiny.max_seq_length
    write_golden("embed_tiny_cls_goldens.json", "embed_tiny_bert_cls", tiny, pairs)


if __name__ == "__main__":
    main()
