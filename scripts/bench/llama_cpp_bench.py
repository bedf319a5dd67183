"""llama.cpp (llama-cpp-python) on a GGUF file, the same prompt ids as evalfleet's benchmarks:
prompt processing (each prompt evaluated in one call) and batch-1 greedy decoding of exactly
--new-tokens tokens after each prompt (EOS ignored). Prints one JSON line per mode, in the format
scripts/bench/summarize.py reads (`tokens_per_second`, `batch_size` 1)."""
import argparse
import json
import time

import numpy as np
from llama_cpp import Llama


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--prompt-ids", required=True)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    prompts = json.load(open(args.prompt_ids))
    if args.limit:
        prompts = prompts[: args.limit]
    longest = max(len(p) for p in prompts) + args.new_tokens + 8
    kw = {"n_threads": args.threads, "n_threads_batch": args.threads} if args.threads else {}
    llm = Llama(model_path=args.gguf, n_ctx=longest, n_batch=max(512, longest), verbose=False, **kw)
    prompt_s = decode_s = 0.0
    prompt_tokens = 0
    for ids in prompts:
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        prompt_s += time.perf_counter() - t
        prompt_tokens += len(ids)
        t = time.perf_counter()
        for _ in range(args.new_tokens):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            llm.eval([tok])
        decode_s += time.perf_counter() - t
    n = len(prompts)
    base = {"side": "llama.cpp", "prompts": n, "threads": args.threads or None}
    print(json.dumps({**base, "mode": "prefill", "label": "llama.cpp-prefill", "batch_size": 1,
                      "prompt_tokens": prompt_tokens, "seconds": round(prompt_s, 3),
                      "tokens_per_second": round(prompt_tokens / prompt_s, 2)}))
    print(json.dumps({**base, "mode": "decode", "label": "llama.cpp", "batch_size": 1,
                      "new_tokens": args.new_tokens, "seconds": round(prompt_s + decode_s, 3),
                      "decode_seconds": round(decode_s, 3),
                      "tokens_per_second": round(n * args.new_tokens / (prompt_s + decode_s), 2),
                      "decode_tokens_per_second": round(n * args.new_tokens / decode_s, 2)}))


if __name__ == "__main__":
    main()
