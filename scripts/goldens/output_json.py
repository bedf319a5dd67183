#!/usr/bin/env python3
"""Golden strings for coordinator/src/output: Python's repr(float), json.dumps escaping, the
indent=4/sort_keys layout HF's save_metrics uses, round() and HF speed_metrics.

Run once with the project's Python (any CPython 3.8+; the json module's output has not changed
since): python3 scripts/goldens/output_json.py
Writes coordinator/tests/fixtures/python_json_goldens.json (ASCII only).
"""
import json
import math
import os
import random
import struct

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "coordinator", "tests", "fixtures",
                   "python_json_goldens.json")


def bits(x):
    return "%016x" % struct.unpack("<Q", struct.pack("<d", x))[0]


def tricky_floats():
    xs = [0.0, -0.0, 1.0, -1.0, 100.0, 0.76, 1e-05, 1e-4, 0.0001, 0.00012345, 0.001, 1.5e16,
          1e16, 1e15, 9999999999999998.0, 123456789012345.6, 1234567890123456.7, 0.1, 0.2,
          0.1 + 0.2, 1 / 3, 2 / 3, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
          79.36506666666666, 70.17543333333333, 68.05863333333333, 3.9457, 0.8512865900993347,
          0.9999998807907104, 0.5538597702980042, 1e22, 1e23, 9007199254740993.0, -1.5,
          123.456, 0.999999995 * 100, 38.0952, 4.1759, 1e-7, 12345678.9, 5e-5, 4.35e-05,
          float("inf"), float("-inf"), float("nan")]
    rng = random.Random(20261127)
    for _ in range(150):
        # Random mantissas across a wide exponent range, including the -4/16 boundaries.
        xs.append(rng.uniform(-1, 1) * 10 ** rng.randint(-8, 20))
    for _ in range(50):
        xs.append(struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0])
    for e in range(-7, 19):
        xs.append(10.0 ** e)
        xs.append(1.25 * 10.0 ** e)
    return xs


def float_cases():
    cases = []
    for x in tricky_floats():
        cases.append({"bits": bits(x), "repr": repr(x), "json": json.dumps(x)})
    return cases


STRINGS = [
    "", "plain ascii", "我工作一年。你看我现在有工作吗？", "quote \" and backslash \\ and slash /",
    "tab\tnewline\ncr\rbackspace\bformfeed\f", "".join(chr(c) for c in range(0x20)),
    "del \x7f and nbsp \xa0", "line sep \u2028 para sep \u2029", "emoji 😀👍🏽 and 𝄞",
    "mixed 中文 English, 标点！？…… “引号” ‘单引号’", "bom \ufeff zero-width \u200b",
    "private use \ue000 and max \U0010ffff", "\\u0041 literal", "a\x00b",
]


def string_cases():
    return [{"s": s, "ascii": json.dumps(s), "raw": json.dumps(s, ensure_ascii=False)}
            for s in STRINGS]


def round_cases():
    rng = random.Random(7)
    cases = []
    xs = [0.125, 0.375, 2.675, 1.0005, 3.94571234, 0.7603214, 2.5, 1e-9, 12345.6789]
    xs += [rng.uniform(0, 1000) for _ in range(100)]
    for x in xs:
        for n in (3, 4):
            cases.append({"x": bits(x), "n": n, "round": bits(round(x, n))})
    return cases


def speed_metrics(split, runtime, num_samples, num_steps):
    # transformers.trainer_utils.speed_metrics, with the runtime passed in instead of measured.
    result = {f"{split}_runtime": round(runtime, 4)}
    if runtime == 0:
        return result
    result[f"{split}_samples_per_second"] = round(num_samples / runtime, 3)
    result[f"{split}_steps_per_second"] = round(num_steps / runtime, 3)
    return result


def speed_cases():
    rng = random.Random(11)
    cases = []
    for _ in range(40):
        n = rng.randint(1, 5000)
        bs = rng.choice([1, 2, 4, 8, 16, 32])
        t = rng.uniform(0.001, 5000)
        metrics = speed_metrics("predict", t, n, math.ceil(n / bs))
        cases.append({"n": n, "bs": bs, "t": bits(t),
                      "pretty": json.dumps(metrics, indent=4, sort_keys=True)})
    return cases


def pretty_cases():
    values = [
        {},
        [],
        {"b": [1, None, True, False], "a": {"z": 1.0, "e": [], "d": {}}, "中": "文", "😀": 1e-05},
        {"predict_bleu-4": 68.05863333333333, "predict_rouge-1": 79.36506666666666, "k": [[], [{}]]},
        [1, 2.5, "x", {"y": None}],
    ]
    return [{"value": v, "pretty": json.dumps(v, indent=4, sort_keys=True),
             "compact": json.dumps(v, ensure_ascii=False)} for v in values]


def main():
    goldens = {
        "floats": float_cases(),
        "strings": string_cases(),
        "round": round_cases(),
        "speed": speed_cases(),
        "pretty": pretty_cases(),
    }
    # One case per line keeps the fixture small and its diffs readable.
    with open(OUT, "w") as f:
        f.write("{\n")
        for i, (name, cases) in enumerate(goldens.items()):
            f.write(json.dumps(name) + ": [\n")
            f.write(",\n".join(json.dumps(c) for c in cases))
            f.write("\n]" + (",\n" if i + 1 < len(goldens) else "\n"))
        f.write("}\n")


if __name__ == "__main__":
    main()
