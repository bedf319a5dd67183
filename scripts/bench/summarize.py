"""Reads the JSON lines both benchmark sides printed (stdin or files) and prints tokens/s of each
side per batch size, their ratio, and each side's best batch size. Lines are grouped by `side`
(plus `label` when present: e.g. the GGUF run of evalfleet)."""
import json
import sys


def json_rows(texts):
    """The JSON objects among `texts` (lines): lines starting with `{` that parse."""
    rows = []
    for text in texts:
        text = text.strip()
        if text.startswith("{"):
            try:
                rows.append(json.loads(text))
            except json.JSONDecodeError:
                pass
    return rows


def main():
    rows = []
    for stream in (open(p) for p in sys.argv[1:]) if len(sys.argv) > 1 else [sys.stdin]:
        rows.extend(json_rows(stream))
    runs = {}
    for r in rows:
        if "tokens_per_second" not in r:
            continue
        key = r.get("label") or r["side"]
        runs.setdefault(key, {})[r["batch_size"]] = r["tokens_per_second"]
    base = runs.get("transformers", {})
    sizes = sorted({b for v in runs.values() for b in v})
    names = sorted(runs, key=lambda k: (k != "transformers", k))
    print("tokens/s by batch size" + "".join(f"{n:>22}" for n in names) + "".join(f"{'ratio ' + n:>26}" for n in names if n != "transformers"))
    for b in sizes:
        cells = "".join(f"{runs[n].get(b, float('nan')):>22.2f}" for n in names)
        ratios = "".join(f"{(runs[n].get(b, float('nan')) / base[b]) if b in base else float('nan'):>26.2f}" for n in names if n != "transformers")
        print(f"{b:>22}{cells}{ratios}")
    if base:
        hb = max(base, key=base.get)
        print(f"best transformers: {base[hb]:.2f} tokens/s at batch {hb}")
        for n in names:
            if n == "transformers" or not runs[n]:
                continue
            nb = max(runs[n], key=runs[n].get)
            print(f"best {n}: {runs[n][nb]:.2f} tokens/s at batch {nb}: {runs[n][nb] / base[hb]:.2f}x transformers' best")


if __name__ == "__main__":
    main()
