"""A tiny SentencePiece-style ("llama") GGUF vocabulary and its transformers encode/decode goldens.

Run with the project venv (transformers 5 + gguf):
    python scripts/goldens/tokenize_spm_goldens.py
Writes worker/tests/fixtures/tokenize_spm_tiny.gguf (metadata only, no tensors: a vocabulary of
byte tokens, <unk>/<s>/</s>, one control and one user-defined token, and scored pieces made from
the most frequent substrings of an English corpus) and worker/tests/fixtures/tokenize_spm.json
with `encode(text, add_special_tokens=False)` and decodes for the tokenize_texts.py texts, as
transformers' `AutoTokenizer.from_pretrained(gguf_file=...)` gives them.
"""

import json
import sys
from collections import Counter
from pathlib import Path

import gguf
import transformers
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
from tokenize_texts import texts  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "worker" / "tests" / "fixtures"
GGUF_OUT = FIXTURES / "tokenize_spm_tiny.gguf"
JSON_OUT = FIXTURES / "tokenize_spm.json"

CORPUS = """The quick brown fox jumps over the lazy dog. Hello world, hello there!
It is what it is; they're here and we've seen that. Numbers like 123 and 4567 appear too.
Machine learning is a branch of artificial intelligence. Explain the answer in detail, please.
Photosynthesis converts light energy into chemical energy in plants and other organisms."""

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6


def build_vocab():
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [UNKNOWN, CONTROL, CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(BYTE)
    tokens += ["<|im_start|>", "<think>"]
    scores += [0.0, 0.0]
    types += [CONTROL, USER_DEFINED]
    words = ["\u2581" + w for w in CORPUS.replace("\n", " ").split(" ") if w]
    chars = sorted(set("".join(words)))
    counts = Counter()
    for w in words:
        for i in range(len(w)):
            for j in range(i + 2, min(len(w), i + 6) + 1):
                counts[w[i:j]] += 1
    pieces = [p for p, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:500]
    for rank, piece in enumerate(pieces):
        tokens.append(piece)
        scores.append(-float(rank))
        types.append(NORMAL)
    for i, c in enumerate(chars):
        tokens.append(c)
        scores.append(-1000.0 - i)
        types.append(NORMAL)
    return tokens, scores, types


def write_gguf(path):
    tokens, scores, types = build_vocab()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return len(tokens)


def main():
    n = write_gguf(GGUF_OUT)
    tok = AutoTokenizer.from_pretrained(str(GGUF_OUT.parent), gguf_file=GGUF_OUT.name)
    rows = []
    extra = ["<s>hello</s>", "hello<|im_start|>world", "a <think> b", "  two leading", "ends ▁ marker"]
    for text in texts() + extra:
        ids = tok.encode(text, add_special_tokens=False)
        rows.append(
            {
                "text": text,
                "ids": ids,
                "decode_raw": tok.decode(ids, skip_special_tokens=False),
                "decode_skip": tok.decode(ids, skip_special_tokens=True),
            }
        )
    out = {
        "generator": f"transformers {transformers.__version__}, AutoTokenizer.from_pretrained(gguf_file=...)",
        "vocab_size": n,
        "bos_id": tok.bos_token_id,
        "eos_id": tok.eos_token_id,
        "unk_id": tok.unk_token_id,
        "rows": rows,
    }
    JSON_OUT.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {GGUF_OUT} ({GGUF_OUT.stat().st_size} bytes, {n} tokens) and {len(rows)} rows to {JSON_OUT}")


if __name__ == "__main__":
    main()
