"""Goldens for SentencePiece models with UNUSED pieces (run after spm_model_goldens.py).

Run with the project venv (`pip install sentencepiece protobuf`):
    python scripts/goldens/spm_unused_goldens.py
Marks 150 multi-character NORMAL pieces of the fixture BPE (baichuan/tokenizer.model) and unigram
models as UNUSED (BPE then merges through them and splits them back; unigram skips them), writes
the models as worker/tests/fixtures/spm/unused_{bpe,unigram}.model and, for the first 600 golden
texts, `sp.encode` ids and `sp.decode` of them, plus decodes of id sequences containing UNUSED
ids, into unused_goldens.json.
"""

import json
import random
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

FIXTURES = Path(__file__).resolve().parents[2] / "worker" / "tests" / "fixtures" / "spm"
NORMAL, UNUSED = 1, 5


def with_unused(src, dst, rng):
    m = pb.ModelProto()
    m.ParseFromString((FIXTURES / src).read_bytes())
    candidates = [i for i, p in enumerate(m.pieces) if p.type == NORMAL and len(p.piece) >= 2]
    chosen = sorted(rng.sample(candidates, 150))
    for i in chosen:
        m.pieces[i].type = UNUSED
    (FIXTURES / dst).write_bytes(m.SerializeToString())
    return spm.SentencePieceProcessor(model_file=str(FIXTURES / dst)), chosen


def main():
    rng = random.Random(7)
    texts = json.loads((FIXTURES / "goldens.json").read_text(encoding="utf-8"))["texts"][:600]
    out = {"sentencepiece_version": spm.__version__, "texts": texts}
    for key, src in [("bpe", "baichuan/tokenizer.model"), ("unigram", "unigram.model")]:
        sp, unused = with_unused(src, f"unused_{key}.model", rng)
        ids = [sp.encode(t) for t in texts]
        cases = []
        for _ in range(100):
            seq = [rng.choice(unused) if rng.random() < 0.5 else rng.randrange(sp.get_piece_size())
                   for _ in range(rng.randint(1, 8))]
            cases.append({"ids": seq, "text": sp.decode(seq)})
        out[key] = {
            "unused_ids": unused,
            "ids": ids,
            "decoded": [None if sp.decode(i) == t else sp.decode(i) for t, i in zip(texts, ids)],
            "decode_cases": cases,
        }
        hits = sum(1 for t in texts if any(u in sp.encode(t) for u in unused))
        print(key, "texts containing an UNUSED id:", hits)
    path = FIXTURES / "unused_goldens.json"
    path.write_text(json.dumps(out, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    print(path.name, path.stat().st_size)


if __name__ == "__main__":
    main()
