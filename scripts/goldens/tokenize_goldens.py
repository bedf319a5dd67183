"""Encode/decode goldens for the SmolLM2 GGUF tokenizer, from transformers.

Run with the project venv (transformers + gguf), after scripts/fetch-models.sh:
    python scripts/goldens/tokenize_goldens.py [--save-dir DIR]
(--save-dir also writes a copy of the tokenizer that lf_goldens.py loads under transformers 4.41.)
Writes worker/tests/fixtures/tokenize_smollm2.json: for each text of tokenize_texts.py, the ids of
`encode(text, add_special_tokens=False)` and the decodes of those ids with
(skip_special_tokens, clean_up_tokenization_spaces) = (False, False) and (True, False).
(transformers 5 ignores clean_up_tokenization_spaces=True for BPE tokenizers; the 4.x clean-up
that LLaMA-Factory relied on is covered by lf_goldens.py, run under transformers 4.41.)
"""

import json
import os
import sys
from pathlib import Path

import transformers
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
from tokenize_texts import texts  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("EVALFLEET_MODELS", ROOT / ".models"))
GGUF_DIR = MODELS / "smollm2-135m-instruct-gguf"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = ROOT / "worker" / "tests" / "fixtures" / "tokenize_smollm2.json"


def save_for_transformers4(tok, out_dir):
    """Saves the tokenizer so that transformers 4.41 / tokenizers 0.19 (lf_goldens.py) load it:
    merges as "a b" strings and a PreTrainedTokenizerFast config."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = json.loads(tok.backend_tokenizer.to_str())
    data["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    (out_dir / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "pad_token": tok.pad_token,
        "unk_token": tok.unk_token,
        "clean_up_tokenization_spaces": False,
        "chat_template": tok.chat_template,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    print(f"saved a transformers-4 loadable copy to {out_dir}")


def main():
    tok = AutoTokenizer.from_pretrained(str(GGUF_DIR), gguf_file=GGUF_FILE)
    if len(sys.argv) > 2 and sys.argv[1] == "--save-dir":
        save_for_transformers4(tok, sys.argv[2])
    rows = []
    for text in texts():
        ids = tok.encode(text, add_special_tokens=False)
        rows.append(
            {
                "text": text,
                "ids": ids,
                "decode_raw": tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False),
                "decode_skip": tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False),
            }
        )
    out = {
        "generator": f"transformers {transformers.__version__}, AutoTokenizer.from_pretrained(gguf_file=...)",
        "bos_id": tok.bos_token_id,
        "eos_id": tok.eos_token_id,
        "pad_id": tok.pad_token_id,
        "unk_id": tok.unk_token_id,
        "chat_template": tok.chat_template,
        "rows": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} rows to {OUT}")


if __name__ == "__main__":
    main()
