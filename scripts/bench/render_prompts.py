"""Renders chat conversations (scripts/bench/prompts.json) with a model folder's own chat template
and tokenizer (transformers) into token ids, so both sides of a benchmark generate from exactly the
same ids. Writes a JSON list of id lists."""
import argparse
import json

from transformers import AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=0, help="only the first N conversations")
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.model)
    with open(args.prompts, encoding="utf-8") as f:
        conversations = json.load(f)
    if args.limit:
        conversations = conversations[:args.limit]
    ids = []
    for c in conversations:
        text = tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
        ids.append(tok(text, add_special_tokens=False)["input_ids"])
    with open(args.out, "w") as f:
        json.dump(ids, f)
    lengths = [len(i) for i in ids]
    print(json.dumps({"prompts": len(ids), "min_len": min(lengths), "max_len": max(lengths),
                      "mean_len": round(sum(lengths) / len(lengths), 1)}))


if __name__ == "__main__":
    main()
