"""SentencePiece `tokenizer.model` fixtures and their `sentencepiece` encode/decode goldens.

Run with the project venv after `pip install sentencepiece` (0.2.x):
    python scripts/goldens/spm_model_goldens.py
(the seed folder is $EVALFLEET_SEED, by default ../shared/seed beside the repository).
Trains three small models with the `sentencepiece` package on CharacterEval dialogue lines (the
first half of the data set) plus English MMLU questions, then writes into worker/tests/fixtures/spm/:

- bpe.model: BPE, byte_fallback, nmt_nfkc (precompiled charsmap), default whitespace options.
- unigram.model: unigram, identity normalizer, no byte fallback (unknown runs merge into one
  <unk>), two user-defined symbols.
- baichuan/tokenizer.model: BPE like Baichuan's (identity, no dummy prefix, extra whitespace kept,
  split digits, byte fallback, user-defined symbols), in a folder with tokenizer_config.json
  naming BaichuanTokenizer and no tokenizer.json (its slow-tokenizer golden comes from
  spm_baichuan_golden.py).
- goldens.json: the 2000 texts, and per model `sp.encode(text)` ids, `sp.decode(ids)` when it
  differs from the text, and decodes of random id sequences (control, unknown and byte ids
  included).
"""

import io
import json
import os
import random
import sys
import zipfile
import csv
from pathlib import Path

import sentencepiece as spm

sys.path.insert(0, str(Path(__file__).parent))
from tokenize_texts import texts as base_texts  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SEED = Path(os.environ.get("EVALFLEET_SEED", ROOT.parent / "shared" / "seed")) / "evaluation"
OUT = ROOT / "worker" / "tests" / "fixtures" / "spm"
N_TEXTS = 2000
rng = random.Random(20261127)


def dialogues():
    with open(SEED / "CharacterEval" / "test_data.jsonl", encoding="utf-8") as f:
        return json.load(f)


def english_questions(limit):
    out = []
    with zipfile.ZipFile(SEED / "mmlu" / "mmlu.zip") as z:
        for name in sorted(z.namelist()):
            if not name.endswith("_test.csv"):
                continue
            with z.open(name) as f:
                for row in csv.reader(io.TextIOWrapper(f, encoding="utf-8")):
                    out.append(" ".join(row[:5]))
            if len(out) >= limit:
                break
    return out


def train(data, prefix, **kwargs):
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(data),
        model_prefix=str(prefix),
        num_threads=2,
        minloglevel=2,
        **kwargs,
    )
    strip_machine_paths(str(prefix) + ".model")
    return spm.SentencePieceProcessor(model_file=str(prefix) + ".model")


def strip_machine_paths(path):
    """The trainer records its output prefix (an absolute path here) in trainer_spec; keep only
    the file name so that no path of the machine that made the fixture is committed. Encoding
    does not read these fields."""
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    proto.trainer_spec.model_prefix = Path(proto.trainer_spec.model_prefix).name
    del proto.trainer_spec.input[:]
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())


def sample_texts(held_out, english):
    """Chinese, English and mixed texts, plus edge cases the normalizers and byte fallback meet."""
    out = list(base_texts())
    out += [
        "<s>", "</s>", "<unk>", "<s>你好</s>", "前文<s>后文</s>尾", " <s> ", "<pad>", "<0x41>",
        "▁", "▁▁你好", "a▁b", "ＡＢＣ１２３", "e\u0301t\u00e9", "\u3000全角空格\u3000",
        "𠀀𠀁𪚥", "龘靐齉", "\x01\x02\x7f", "\ufeffBOM", "多  个   空格", "  前后空格  ",
        "换行\n\n两次", "\t制表\t符", "😀你好👍🏽", "123456789０１２", "ⅫⅣ①②", "[USER]你好[BOT]",
        "<|CHAR|>角色", "你好<|CHAR|>世界<|CHAR|>", "",
    ]
    while len(out) < N_TEXTS:
        kind = rng.random()
        line = rng.choice(held_out)
        start = rng.randrange(max(1, len(line)))
        piece = line[start:start + rng.randint(1, 60)]
        if kind < 0.45:
            out.append(piece)
        elif kind < 0.65:
            out.append(rng.choice(english)[: rng.randint(5, 120)])
        elif kind < 0.85:
            eng = rng.choice(english)
            a = rng.randrange(max(1, len(eng)))
            out.append(piece + rng.choice([" ", "", "\n", "  "]) + eng[a:a + rng.randint(1, 30)]
                       + rng.choice(["", str(rng.randint(0, 10**6)), " 😀", "。"]))
        else:
            extra = rng.choice(["<s>", "</s>", "\n", "  ", "🎉", "𠮷", "½", "Ⅻ", "\t", " ", "<unk>"])
            cut = rng.randrange(len(piece) + 1)
            out.append(piece[:cut] + extra + piece[cut:])
    return out[:N_TEXTS]


def goldens_for(sp, texts):
    ids = [sp.encode(t) for t in texts]
    decoded = []
    for t, i in zip(texts, ids):
        d = sp.decode(i)
        decoded.append(None if d == t else d)
    n = sp.get_piece_size()
    cases = []
    for _ in range(300):
        seq = [rng.randrange(n) for _ in range(rng.randint(1, 12))]
        cases.append({"ids": seq, "text": sp.decode(seq)})
    # Byte pieces that are not valid UTF-8 on their own, and a split multi-byte character.
    byte_ids = [sp.piece_to_id(f"<0x{b:02X}>") for b in (0xE4, 0xBD, 0xA0, 0xFF, 0x41)]
    if all(i != sp.unk_id() for i in byte_ids):
        for seq in ([byte_ids[0], byte_ids[1]], byte_ids, [byte_ids[3]], byte_ids[:3] + [3, byte_ids[4]]):
            cases.append({"ids": seq, "text": sp.decode(seq)})
    return {"ids": ids, "decoded": decoded, "decode_cases": cases}


def main():
    data = dialogues()
    half = len(data) // 2
    lines = [l for d in data[:half] for l in d["context"].split("\n") if l.strip()]
    held_out = [l for d in data[half:] for l in d["context"].split("\n") if l.strip()]
    english = english_questions(6000)
    rng.shuffle(lines)
    corpus = lines[:30000] + english[:3000]
    rng.shuffle(corpus)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "baichuan").mkdir(exist_ok=True)

    bpe = train(corpus, OUT / "bpe", model_type="bpe", vocab_size=4000, byte_fallback=True,
                character_coverage=0.9995)
    unigram = train(corpus, OUT / "unigram", model_type="unigram", vocab_size=3000,
                    normalization_rule_name="identity", character_coverage=0.995,
                    user_defined_symbols=["<|CHAR|>", "[USER]"])
    baichuan = train(corpus, OUT / "baichuan" / "tokenizer", model_type="bpe", vocab_size=3000,
                     byte_fallback=True, normalization_rule_name="identity",
                     add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
                     allow_whitespace_only_pieces=True, character_coverage=0.99,
                     user_defined_symbols=["<|CHAR|>", "[BOT]", "  "])
    for p in [OUT / "bpe.vocab", OUT / "unigram.vocab", OUT / "baichuan" / "tokenizer.vocab"]:
        p.unlink()
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "auto_map": {"AutoTokenizer": ["tokenization_baichuan.BaichuanTokenizer", None]},
        "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": True,
                      "rstrip": False, "single_word": False},
        "clean_up_tokenization_spaces": False,
        "eos_token": {"__type": "AddedToken", "content": "</s>", "lstrip": False, "normalized": True,
                      "rstrip": False, "single_word": False},
        "model_max_length": 4096,
        "pad_token": {"__type": "AddedToken", "content": "<unk>", "lstrip": False, "normalized": True,
                      "rstrip": False, "single_word": False},
        "sp_model_kwargs": {},
        "tokenizer_class": "BaichuanTokenizer",
        "unk_token": {"__type": "AddedToken", "content": "<unk>", "lstrip": False, "normalized": True,
                      "rstrip": False, "single_word": False},
    }
    with open(OUT / "baichuan" / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)

    texts = sample_texts(held_out, english)
    out = {
        "sentencepiece_version": spm.__version__,
        "texts": texts,
        "bpe": goldens_for(bpe, texts),
        "unigram": goldens_for(unigram, texts),
        "baichuan": goldens_for(baichuan, texts),
    }
    with open(OUT / "goldens.json", "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
    for name in ["bpe.model", "unigram.model", "baichuan/tokenizer.model", "goldens.json"]:
        print(name, (OUT / name).stat().st_size)


if __name__ == "__main__":
    main()
