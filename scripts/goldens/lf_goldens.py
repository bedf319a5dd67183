"""LLaMA-Factory v0.7.1 template goldens on the SmolLM2 tokenizer, from llmtuner itself.

Needs a separate venv with LF's era of transformers (llmtuner 0.7.1 pins transformers<4.42):
    python3 -m venv /path/pyenv-lf
    /path/pyenv-lf/bin/pip install llmtuner==0.7.1 --no-deps
    /path/pyenv-lf/bin/pip install transformers==4.41.2 jinja2
and a transformers-4 loadable copy of the SmolLM2 tokenizer, written by the project venv:
    python scripts/goldens/tokenize_goldens.py --save-dir /tmp/smollm2-tok4
then:
    /path/pyenv-lf/bin/python scripts/goldens/lf_goldens.py /tmp/smollm2-tok4

Only `llmtuner.data.template` (and its formatter/utils) is imported; the package __init__ files
(which pull torch, datasets, trl, ...) are bypassed with empty package modules, and `datasets`
(imported by data/utils.py for functions the templates do not use) is stubbed.

Writes worker/tests/fixtures/tokenize_lf_goldens.json:
- "templates": per template, after `get_template_and_fix_tokenizer`: the stop ids
  `[eos] + additional_special_tokens_ids`, eos and pad ids, and efficient_eos (LF's unsupervised
  preprocessing appends eos to the label when it is set);
- "cases": for each template, conversation, cutoff_len and reserved_label_len, LF's
  `encode_oneturn` output;
- "decode_clean": `decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)` of
  the tokenize_texts.py texts under transformers 4.41 (the clean-up LF's predictions get).
"""

import importlib.util
import json
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from tokenize_texts import texts  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "worker" / "tests" / "fixtures" / "tokenize_lf_goldens.json"


def import_lf_templates():
    spec = importlib.util.find_spec("llmtuner")
    pkg_dir = Path(spec.submodule_search_locations[0])
    for name, sub in [("llmtuner", ""), ("llmtuner.data", "data"), ("llmtuner.extras", "extras")]:
        module = types.ModuleType(name)
        module.__path__ = [str(pkg_dir / sub) if sub else str(pkg_dir)]
        sys.modules[name] = module
    datasets = types.ModuleType("datasets")
    datasets.concatenate_datasets = datasets.interleave_datasets = None
    sys.modules.setdefault("datasets", datasets)
    import llmtuner.data.template as template_module

    return template_module


LONG_EN = (
    "Explain in detail how photosynthesis works in plants, including the light-dependent "
    "reactions, the Calvin cycle, and the role of chlorophyll. Give examples."
)
LONG_ANSWER = (
    "Photosynthesis converts light energy into chemical energy. In the light-dependent reactions, "
    "water is split and ATP and NADPH are produced; the Calvin cycle then fixes carbon dioxide."
)

CONVERSATIONS = {
    "single": ([("user", "Hello, who are you?"), ("assistant", "I am an assistant.")], ""),
    "system": ([("user", "What is 2+2?"), ("assistant", "4")], "You are a math tutor."),
    "multiturn": (
        [
            ("user", "Hi"),
            ("assistant", "Hello! How can I help?"),
            ("user", "Tell me a joke."),
            ("assistant", "Why did the chicken cross the road?"),
            ("user", "Why?"),
            ("assistant", "To get to the other side."),
        ],
        "",
    ),
    "chinese": ([("user", "请介绍一下你自己。\n要简短"), ("assistant", "我是一个乐于助人的助手。")], ""),
    "empty_answer": ([("user", "Summarize: the cat sat on the mat."), ("assistant", "")], ""),
    "long": ([("user", LONG_EN), ("assistant", LONG_ANSWER)], ""),
    "long_multiturn": (
        [
            ("user", LONG_EN),
            ("assistant", LONG_ANSWER),
            ("user", "Shorter please, in one sentence with emoji 🌱."),
            ("assistant", "Plants turn light, water and CO2 into sugar 🌞."),
        ],
        "Be concise.",
    ),
    "special_in_text": (
        [("user", "Echo <|im_start|> and <|im_end|> please"), ("assistant", "<|im_start|> <|im_end|>")],
        "",
    ),
}

# Every template on these conversations at the default cutoff; the named ones on all of them at
# every cutoff (truncation cases).
TRUNCATION_TEMPLATES = [
    "qwen", "chatml", "llama3", "llama2", "llama2_zh", "mistral", "baichuan", "baichuan2",
    "default", "empty", "yi", "vicuna", "alpaca", "intern2", "zephyr", "gemma",
]
CUTOFFS = [1024, 100, 40, 16, 5]
BASIC_CONVERSATIONS = ["single", "system", "multiturn"]
# reserved_label_len above what is left makes LF's source budget negative (Python slices from the end).
RESERVED_TEMPLATES = ["qwen", "llama2", "baichuan2"]
RESERVED_CUTOFFS = [40, 16, 5]


def main():
    from transformers import AutoTokenizer
    import transformers

    tok_dir = sys.argv[1]
    T = import_lf_templates()
    cases = []
    tokenizers = {}
    for name in sorted(T.templates):
        truncation = name in TRUNCATION_TEMPLATES
        conv_names = list(CONVERSATIONS) if truncation else BASIC_CONVERSATIONS
        settings = [(c, 1) for c in (CUTOFFS if truncation else [1024])]
        if name in RESERVED_TEMPLATES:
            settings += [(c, 8) for c in RESERVED_CUTOFFS]
        tok = AutoTokenizer.from_pretrained(tok_dir)
        template = T.get_template_and_fix_tokenizer(tok, name)
        tokenizers[name] = {
            "stop_ids": [tok.eos_token_id] + tok.additional_special_tokens_ids,
            "eos_id": tok.eos_token_id,
            "pad_id": tok.pad_token_id,
            "efficient_eos": template.efficient_eos,
        }
        for conv_name in conv_names:
            turns, system = CONVERSATIONS[conv_name]
            messages = [{"role": r, "content": c} for r, c in turns]
            for cutoff, reserved in settings:
                prompt, label = template.encode_oneturn(tok, messages, system, None, cutoff, reserved)
                cases.append(
                    {
                        "template": name,
                        "conversation": conv_name,
                        "cutoff_len": cutoff,
                        "reserved_label_len": reserved,
                        "prompt_ids": prompt,
                        "label_ids": label,
                    }
                )
    tok = AutoTokenizer.from_pretrained(tok_dir)
    decode_clean = []
    for text in texts():
        ids = tok.encode(text, add_special_tokens=False)
        decode_clean.append(
            {"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)}
        )
    out = {
        "generator": f"llmtuner 0.7.1 data/template.py, transformers {transformers.__version__}",
        "conversations": {k: {"messages": v[0], "system": v[1]} for k, v in CONVERSATIONS.items()},
        "templates": tokenizers,
        "cases": cases,
        "decode_clean": decode_clean,
    }
    OUT.write_text(json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases to {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
