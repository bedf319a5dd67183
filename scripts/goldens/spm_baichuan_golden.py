"""Slow-tokenizer golden for the Baichuan-style folder written by spm_model_goldens.py.

Run with LLaMA-Factory's venv (transformers 4.41.2, the version the original evaluator ran) after
`pip install sentencepiece`:
    /path/to/pyenv-lf/bin/python scripts/goldens/spm_baichuan_golden.py
The reference is a BaichuanTokenizer written here from its documented behaviour (a transformers
`PreTrainedTokenizer` whose `_tokenize` is `sp.encode(text, out_type=str)`, ids by
`sp.piece_to_id`, and BaichuanTokenizer's `convert_tokens_to_string`), loaded with
`from_pretrained` on the folder so tokenizer_config.json applies; transformers' own
`LlamaTokenizer(legacy=True)` must give the same ids. Writes
worker/tests/fixtures/spm/baichuan_slow.json: `encode(text, add_special_tokens=False)` ids,
`encode(text)` ids (add_bos/add_eos from the config), the eos id, and decodes.
"""

import json
from pathlib import Path

import sentencepiece as spm
import transformers
from transformers import LlamaTokenizer, PreTrainedTokenizer

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "worker" / "tests" / "fixtures" / "spm"
FOLDER = FIXTURES / "baichuan"


class RefBaichuanTokenizer(PreTrainedTokenizer):
    """BaichuanTokenizer's behaviour: sentencepiece pieces under a transformers slow tokenizer."""

    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                 pad_token=None, add_bos_token=True, add_eos_token=False, **kwargs):
        self.vocab_file = vocab_file
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.sp_model = spm.SentencePieceProcessor()
        self.sp_model.Load(vocab_file)
        super().__init__(unk_token=unk_token, bos_token=bos_token, eos_token=eos_token,
                         pad_token=pad_token, add_bos_token=add_bos_token,
                         add_eos_token=add_eos_token, **kwargs)

    @property
    def vocab_size(self):
        return self.sp_model.get_piece_size()

    def get_vocab(self):
        vocab = {self.convert_ids_to_tokens(i): i for i in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _tokenize(self, text):
        return self.sp_model.encode(text, out_type=str)

    def _convert_token_to_id(self, token):
        return self.sp_model.piece_to_id(token)

    def _convert_id_to_token(self, index):
        return self.sp_model.IdToPiece(index)

    def convert_tokens_to_string(self, tokens):
        out, pending, prev_special = "", [], False
        for i, token in enumerate(tokens):
            if token in self.all_special_tokens:
                if not prev_special and i != 0:
                    out += " "
                out += self.sp_model.decode(pending) + token
                pending, prev_special = [], True
            else:
                pending.append(token)
                prev_special = False
        return out + self.sp_model.decode(pending)

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        out = bos + token_ids_0 + eos
        if token_ids_1 is not None:
            out = out + bos + token_ids_1 + eos
        return out


def main():
    goldens = json.loads((FIXTURES / "goldens.json").read_text(encoding="utf-8"))
    texts = goldens["texts"][:600] + [
        "<s>", "</s>", "<unk>", " <s> ", "a<s>b</s>c", "<s><s></s>", "<unk>你好<unk>",
        "角色：<s>  你好 </s>\n", "</s >", "<s", "s>", "<<s>>", "<|CHAR|><s>[BOT]",
        "\n\n<RoleInfo>\n\n{'name': '佟湘玉'}\n\n<Context>\n\n老邢：你来了\n\n<Response>\n\n嗯</s>",
    ]
    ref = RefBaichuanTokenizer.from_pretrained(str(FOLDER))
    llama = LlamaTokenizer(vocab_file=str(FOLDER / "tokenizer.model"), legacy=True,
                           add_bos_token=False, add_eos_token=False)
    records = []
    for t in texts:
        ids = ref.encode(t, add_special_tokens=False)
        assert ids == llama.encode(t, add_special_tokens=False), t
        records.append({
            "text": t,
            "ids": ids,
            "ids_special": ref.encode(t),
            "decode": ref.decode(ids),
            "decode_skip": ref.decode(ids, skip_special_tokens=True),
        })
    out = {
        "transformers_version": transformers.__version__,
        "sentencepiece_version": spm.__version__,
        "eos_token_id": ref.eos_token_id,
        "bos_token_id": ref.bos_token_id,
        "unk_token_id": ref.unk_token_id,
        "pad_token_id": ref.pad_token_id,
        "vocab_size": len(ref),
        "records": records,
    }
    path = FIXTURES / "baichuan_slow.json"
    path.write_text(json.dumps(out, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    print(path, path.stat().st_size, "bytes,", len(records), "texts")


if __name__ == "__main__":
    main()
