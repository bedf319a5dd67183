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

Then adds tokens (special ones past the vocabulary and on a user-defined piece, normal ones new
and already in the vocabulary), saves the tokenizer with `save_pretrained` into
worker/tests/fixtures/spm/baichuan_added/ (configs only: the test copies tokenizer.model next to
them), reloads it from there and writes the same goldens as baichuan_added.json.
"""

import json
import shutil
import tempfile
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

    def save_vocabulary(self, save_directory, filename_prefix=None):
        out = Path(save_directory) / ((filename_prefix + "-" if filename_prefix else "") + "tokenizer.model")
        shutil.copy(self.vocab_file, out)
        return (str(out),)

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
    for t in texts:
        assert ref.encode(t, add_special_tokens=False) == llama.encode(t, add_special_tokens=False), t
    write(ref, texts, "baichuan_slow.json")

    ref.add_special_tokens({"additional_special_tokens": ["<|role|>", "<|CHAR|>"]})
    ref.add_tokens(["<new>", "你好", "hello world"])
    added_dir = FIXTURES / "baichuan_added"
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        added_dir.mkdir(exist_ok=True)
        for name in ["tokenizer_config.json", "special_tokens_map.json"]:
            shutil.copy(Path(tmp) / name, added_dir / name)
        config = json.loads((added_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        config["tokenizer_class"] = "BaichuanTokenizer"
        (added_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
        shutil.copy(FOLDER / "tokenizer.model", Path(tmp) / "tokenizer.model")
        reloaded = RefBaichuanTokenizer.from_pretrained(tmp)
    extra = ["<|role|>你好<new>", "a<|CHAR|>b<|role|>c", "hello world!", "say hello world ",
             "<new><new></s>", "<|role|> <s> 你好呀"]
    write(reloaded, texts[:200] + extra, "baichuan_added.json")


def write(ref, texts, name):
    records = []
    for t in texts:
        ids = ref.encode(t, add_special_tokens=False)
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
    path = FIXTURES / name
    path.write_text(json.dumps(out, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    print(path, path.stat().st_size, "bytes,", len(records), "texts")


if __name__ == "__main__":
    main()
