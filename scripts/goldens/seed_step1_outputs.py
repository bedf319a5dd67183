#!/usr/bin/env python3
"""Step-1 files of the original tool, reduced to what step 1 itself writes.

The seed's output/ holds step 1's files after step 2 has touched them: step 2 appended
`avg_sem_sim_score` to predict_results.json, a `score` key to each prediction line and a final
newline to generated_predictions.jsonl. This script
removes exactly those additions at the byte level (no re-serialisation), so the fixtures are the
original tool's own bytes.

Usage: python3 scripts/goldens/seed_step1_outputs.py <seed-dir>   (the dir holding output/)
Writes coordinator/tests/fixtures/seed_step1/{predict_results.json,all_results.json,
generated_predictions.jsonl}.
"""
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "coordinator", "tests", "fixtures", "seed_step1")


def main(seed):
    src = os.path.join(seed, "output")
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(src, "predict_results.json"), "rb") as f:
        predict = f.read()
    # Drop the last entry (step 2's key) and the comma that preceded it.
    predict = re.sub(rb',\n    "avg_sem_sim_score": [^\n]*\n}$', b"\n}", predict)
    assert b"avg_sem_sim_score" not in predict
    with open(os.path.join(src, "generated_predictions.jsonl"), "rb") as f:
        lines = f.read()
    lines = re.sub(rb', "score": [-+.0-9e]+}', b"}", lines)
    # Step 2 rewrote the file as one `json.dumps(item) + "\n"` per row; step 1 (LF
    # save_predictions) joins rows with "\n" and writes no trailing newline (docs/FIDELITY.md
    # §1.7, §2).
    assert lines.endswith(b"\n")
    lines = lines[:-1]
    assert b"score" not in lines
    with open(os.path.join(src, "all_results.json"), "rb") as f:
        all_results = f.read()
    for name, data in (("predict_results.json", predict), ("all_results.json", all_results),
                       ("generated_predictions.jsonl", lines)):
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main(sys.argv[1])
