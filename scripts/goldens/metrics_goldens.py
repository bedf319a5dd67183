#!/usr/bin/env python3
"""Writes coordinator/tests/fixtures/metrics_goldens.json: step-1 text metrics computed by the
reference packages, for coordinator/tests/metrics_golden.rs.

Requires jieba==0.42.1, rouge-chinese==1.0.3, nltk==3.8.1 and numpy (any 1.x/2.x: only np.mean of
a float64 list is used). The per-row computation is LLaMA-Factory's ComputeMetrics
(train/sft/metric.py), extended with the ROUGE precision and recall that evalfleet also reports.

Deterministic: a fixed seed and inputs read from the seed folder (data/demo.json,
evaluation/CharacterEval/test_data.jsonl, output/generated_predictions.jsonl).

Usage: python scripts/goldens/metrics_goldens.py [--seed-dir DIR] [--out FILE]
"""
import argparse
import json
import os
import random
import sys

import jieba
import nltk
import numpy as np
import rouge_chinese
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEYS = ["rouge-1", "rouge-2", "rouge-l", "bleu-4"]
PR_KEYS = [f"{m}-{s}" for m in ("rouge-1", "rouge-2", "rouge-l") for s in ("precision", "recall")]


def score(pred, label):
    """One row, exactly as LLaMA-Factory's ComputeMetrics does it (plus p and r)."""
    hyp = list(jieba.cut(pred))
    ref = list(jieba.cut(label))
    if len(" ".join(hyp).split()) == 0 or len(" ".join(ref).split()) == 0:
        result = {m: {"f": 0.0, "p": 0.0, "r": 0.0} for m in ("rouge-1", "rouge-2", "rouge-l")}
    else:
        result = Rouge().get_scores(" ".join(hyp), " ".join(ref))[0]
    row = {"label": label, "predict": pred, "label_tokens": ref, "predict_tokens": hyp}
    for m, v in result.items():
        row[m] = round(v["f"] * 100, 4)
        row[m + "-precision"] = round(v["p"] * 100, 4)
        row[m + "-recall"] = round(v["r"] * 100, 4)
    bleu = sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)
    row["bleu-4"] = round(bleu * 100, 4)
    return row


def means(rows):
    return {k: float(np.mean([r[k] for r in rows])) for k in KEYS + PR_KEYS}


EDGE_PAIRS = [
    ("", ""),
    ("", "有内容"),
    ("有内容", ""),
    (" ", " "),
    ("   ", "你好"),
    ("你好", "\t\t"),
    ("\n", "\n"),
    ("\r\n", "\r\n"),
    ("\r\r\n\n", "a\r\nb"),
    ("\u3000", "中文\u3000空格"),
    ("\x1c\x1d\x1e\x1f", "分隔\x1f符"),
    ("\x0b\x0c竖表\x85", "\xa0不换行\u2028段\u2029落\u202f\u205f"),
    ("零宽\u200b空格", "零宽\u200b空格"),
    ("你好。”他说", "你好。”她说"),
    ("好！！！真的吗？？？", "好！真的吗？"),
    ("等等......然后呢", "等等........然后呢"),
    ("嗯……好的……", "嗯…………好的"),
    ("“你好。”她说。“再见！”", "“你好！”她说，“再见。”"),
    ("他说：“好！”然后走了。", "他说：“好！”，然后走了。"),
    ("Hello?World? yes", "Hello? World?yes"),
    ("a?b?c", "a ? b ? c"),
    ("第一句。\n\n第二句。", "第一句。\n第二句。\n"),
    ("第一行\n第二行\n\n第三行", "第一行\r\n第二行\r\n第三行"),
    ("  前后空格  ", "前后空格"),
    ("tab\t分隔\t的\t文本", "tab 分隔 的 文本"),
    ("😀😀好的👍", "好的😀"),
    ("👨\u200d👩\u200d👧 家庭", "👨\u200d👩\u200d👧家庭"),
    ("🇨🇳中国🇨🇳", "中国"),
    ("增长了3.5%，达到100.25亿元", "增长了3.50%，达到100亿元"),
    ("版本v1.2.3-beta_4发布", "版本v1.2.3发布"),
    ("abc_def.ghi和x.1y", "abc_def.ghi和x.1y"),
    ("C++和C#都是语言", "C++与C#是编程语言"),
    ("AT&T公司的e-mail地址", "AT&T的email地址"),
    ("圆周率是3.14159，约等于22/7", "圆周率约为3.14"),
    ("50%的人和100%的人", "百分之五十的人"),
    ("1,000,000元", "1000000元"),
    ("--__..%%##&&++", "-_.%#&+"),
    ("__init__.py文件", "__init__.py 文件"),
    ("这是繁體中文的測試", "这是繁体中文的测试"),
    ("こんにちは世界", "你好世界"),
    ("안녕하세요 세계", "你好 世界"),
    ("ＡＢＣ１２３全角", "ABC123半角"),
    ("\u9fd6\u9fd7\u9feb新字", "\u3400\u3401扩展A"),
    ("\uf900\uf901兼容字", "兼容字"),
    ("佟湘玉白展堂吕秀才郭芙蓉李大嘴", "白展堂和佟湘玉"),
    ("我用Python写了一个App", "我用python写了一个app"),
    ("iPhone15Pro很好用", "iPhone 15 Pro 很好用"),
    ("The quick brown fox jumps over the lazy dog.", "The quick brown fox jumped over the lazy dog."),
    ("I don't know. Maybe? Yes!", "I do not know... maybe yes!"),
    ("Mr. Smith went to Washington, D.C. in 2020.", "Mr Smith went to Washington DC in 2020"),
    ("a", "a"),
    ("a", "b"),
    ("ab", "ab"),
    ("abc", "abcd"),
    ("。", "。"),
    ("？", "?"),
    ("！！", "！"),
    ("……", "……"),
    ("......", "......"),
    ("”", "’"),
    ("我", "我"),
    ("我我我我我", "我我"),
    ("的的的的的的的的的的的的的的的的的的的的", "的"),
    ("哈哈哈哈哈哈", "哈哈"),
]

ENGLISH = [
    "It is a guide to action which ensures that the military always obeys the commands of the party.",
    "The weather today is sunny with a light breeze from the west.",
    "Please call me back when you have time; I will be at home after six.",
    "Deep learning models require large amounts of data and compute.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "I lost my job last year and I still cannot pay the credit card bill.",
    "Can you give me two more weeks? My salary comes in on the 15th.",
    "Error 404: the page you requested could not be found.",
    "The price rose by 12.5% to $3,450.75 in Q3 2023.",
    "To be, or not to be, that is the question.",
]


def load_seed_texts(seed_dir):
    texts = []
    with open(os.path.join(seed_dir, "data", "demo.json"), encoding="utf-8") as f:
        for rec in json.load(f):
            for key in ("instruction", "output"):
                if rec.get(key):
                    texts.append(rec[key])
            for turn in rec.get("history") or []:
                texts.extend(t for t in turn if t)
    with open(os.path.join(seed_dir, "evaluation", "CharacterEval", "test_data.jsonl"), encoding="utf-8") as f:
        records = json.load(f)
    for rec in records[:400]:
        for line in rec["context"].split("\n"):
            value = "：".join(line.split("：")[1:])
            if value:
                texts.append(value)
    contexts = [rec["context"] for rec in records[400:420]]
    more = [line for rec in records[420:520] for line in rec["context"].split("\n")]
    return texts, contexts, more


def mutate(rng, text):
    """A plausible 'prediction' for `text`: dropped, repeated, swapped or foreign pieces."""
    chars = list(text)
    op = rng.randrange(6)
    if op == 0 and len(chars) > 2:
        i = rng.randrange(len(chars))
        j = min(len(chars), i + rng.randint(1, 6))
        del chars[i:j]
    elif op == 1 and chars:
        i = rng.randrange(len(chars))
        chars[i:i] = chars[max(0, i - 4):i]
    elif op == 2 and len(chars) > 4:
        i = rng.randrange(len(chars) // 2)
        j = rng.randrange(len(chars) // 2, len(chars))
        chars = chars[j:] + chars[i:j] + chars[:i]
    elif op == 3:
        chars = chars[: max(1, len(chars) // 3)]
    elif op == 4:
        chars += list(rng.choice(["。", "！", "？", "……", "\n", " ", "、", "，"]))
        chars += list(rng.choice(["好的", "我知道了", "OK", "没问题", "😀"]))
    return "".join(chars)


def random_han(rng, n):
    return "".join(chr(rng.randint(0x4E00, 0x9FD5)) for _ in range(n))


FUZZ_ALPHABET = (
    list("我们的是不了在人有这中大为上个国和地到以说时要就出会可也你对生能而子那得于着下自之年过发后作里")
    + list("abcXYZ019") + list(".._%-+#&") + list("。！？?”’“‘……，、：；（）")
    + [" ", " ", "\n", "\r\n", "\t", "\u3000", "😀", "\u9fd6", "ａ"]
)


def fuzz(rng, max_len):
    """A random string over an alphabet rich in block, sentence-cut and whitespace boundaries."""
    return "".join(rng.choice(FUZZ_ALPHABET) for _ in range(rng.randint(0, max_len)))


def build_pairs(seed_dir, rng):
    texts, contexts, _ = load_seed_texts(seed_dir)
    pairs = list(EDGE_PAIRS)
    # Chinese: a reference and a mutated, unrelated or identical prediction.
    for i in range(160):
        label = rng.choice(texts)
        kind = i % 4
        if kind == 0:
            pred = label
        elif kind == 1:
            pred = mutate(rng, label)
        elif kind == 2:
            pred = rng.choice(texts)
        else:
            pred = mutate(rng, mutate(rng, label))
        pairs.append((label, pred))
    # Multi-sentence texts with mixed separators.
    for _ in range(40):
        parts = [rng.choice(texts) for _ in range(rng.randint(2, 5))]
        seps = ["\n", "\r\n", " ", "\t", "", "。", "\n\n", "  "]
        label = "".join(p + rng.choice(seps) for p in parts)
        pred = "".join(mutate(rng, p) + rng.choice(seps) for p in parts)
        pairs.append((label, pred))
    # English and mixed Chinese/English.
    for i in range(40):
        label = rng.choice(ENGLISH)
        if i % 2:
            label = rng.choice(texts) + " " + label
        pairs.append((label, mutate(rng, label) if i % 3 else label))
    # Unknown words: random Han runs exercise the HMM.
    for _ in range(30):
        label = random_han(rng, rng.randint(2, 12)) + rng.choice(texts)
        pred = label[: len(label) // 2] + random_han(rng, rng.randint(1, 8))
        pairs.append((label, pred))
    # Random strings over a boundary-rich alphabet; every third prediction shares the label's start.
    for i in range(60):
        label = fuzz(rng, 40)
        pred = label[: rng.randint(0, len(label))] + fuzz(rng, 20) if i % 3 == 0 else fuzz(rng, 40)
        pairs.append((label, pred))
    # Long texts (whole CharacterEval dialogues with newlines).
    for ctx in contexts[:8]:
        pairs.append((ctx, mutate(rng, ctx)))
    return pairs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed-dir", default=os.path.join(os.path.dirname(REPO), "shared", "seed"))
    ap.add_argument("--out", default=os.path.join(REPO, "coordinator", "tests", "fixtures", "metrics_goldens.json"))
    args = ap.parse_args()
    assert jieba.__version__ == "0.42.1", jieba.__version__
    assert nltk.__version__ == "3.8.1", nltk.__version__
    jieba.setLogLevel(60)
    rng = random.Random(20240601)

    with open(os.path.join(args.seed_dir, "output", "generated_predictions.jsonl"), encoding="utf-8") as f:
        seed_rows = [json.loads(line) for line in f if line.strip()]
    seed_pairs = [(r["label"], r["predict"]) for r in seed_rows]
    pairs = seed_pairs + build_pairs(args.seed_dir, rng)

    rows = [score(pred, label) for label, pred in pairs]
    # Segmentation-only texts: more dialogue lines and random strings, tokens only.
    _, _, more = load_seed_texts(args.seed_dir)
    seg_texts = more[:700] + [fuzz(rng, 60) for _ in range(300)]
    segment_only = [{"text": t, "tokens": list(jieba.cut(t))} for t in seg_texts]
    seed_means = means(rows[: len(seed_pairs)])
    with open(os.path.join(args.seed_dir, "output", "predict_results.json"), encoding="utf-8") as f:
        stored = json.load(f)
    for k in KEYS:
        assert seed_means[k] == stored["predict_" + k], (k, seed_means[k], stored["predict_" + k])

    out = {
        "generator": "scripts/goldens/metrics_goldens.py",
        "versions": {
            "jieba": jieba.__version__,
            "rouge-chinese": getattr(rouge_chinese, "__version__", "1.0.3"),
            "nltk": nltk.__version__,
            "numpy": np.__version__,
        },
        "seed_rows": len(seed_pairs),
        "seed_stored_means": {k: stored["predict_" + k] for k in KEYS},
        "means_seed": seed_means,
        "means_all": means(rows),
        "rows": rows,
        "segment_only": segment_only,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)
        f.write("\n")
    print(f"wrote {len(rows)} rows to {args.out} ({os.path.getsize(args.out)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
