#!/usr/bin/env python
"""Peak memory of routing many long prompts: `router.route(prompts)` in one call (the library path)
against `carrot route --jsonl FILE --output OUT` (the CLI path, which reads and routes in chunks).

    python scripts/bench_route_memory.py [--prompts 50000] [--words 400] [--modes library,cli]
                                         [--max-prompt-tokens N] [--dtype float32]

Each mode runs in its own subprocess with the embedded default router; its peak is the process's
ru_maxrss (the whole process: Python, torch, the router and the routing). The prompts are made of
real RouterBench train prompts, concatenated and cut to `--words` words each. `--max-prompt-tokens`
shortens what the encoder reads (for a quicker run on a small machine); it does not change what is
tokenized, which is where the memory goes: every prompt is tokenized in full to count its tokens.

Prints one line per mode and, last, one JSON line with the figures.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_prompts(n: int, words: int) -> list[str]:
    """`n` prompts of `words` words each, cut from the concatenated RouterBench train prompts."""
    import pyarrow.parquet as pq

    data = ROOT / "carrot_hub" / "default_data" / "routerbench-0shot" / "data" / "train-00000-of-00001.parquet"
    vocabulary = " ".join(pq.read_table(data, columns=["prompt"]).column(0).to_pylist()).split()
    prompts = []
    for i in range(n):
        start = (i * 7919) % (len(vocabulary) - words)  # different windows for different prompts
        prompts.append(" ".join(vocabulary[start : start + words]))
    return prompts


def _load_router(args):
    from carrot_hub import default_router

    router = default_router(progress=False, dtype=args.dtype)
    if args.max_prompt_tokens:
        router.config.max_prompt_tokens = args.max_prompt_tokens
    return router


def measure_library(args) -> dict:
    prompts = json.loads(Path(args.prompts_file).read_text())
    router = _load_router(args)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    decision = router.route(prompts, mu=0.5, batch_size=64)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"routed": len(decision), "seconds": round(seconds, 1), "rss_before_mb": before // 1024, "peak_mb": peak // 1024}


def run_cli(args, jsonl: Path, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "carrot_hub.cli", "route", "--jsonl", str(jsonl), "--output", str(out),
               "--no-progress", "--dtype", args.dtype]
    if args.max_prompt_tokens:
        # The CLI takes a router folder: save the default router with the shorter cut next to the output.
        folder = out.parent / "router"
        if not folder.exists():
            _load_router(args).save_pretrained(folder)
        command += ["--model", str(folder)]
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"carrot route failed with status {status}")
    routed = sum(1 for _ in out.open())
    return {"routed": routed, "seconds": round(time.perf_counter() - started, 1), "peak_mb": usage.ru_maxrss // 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=50_000)
    parser.add_argument("--words", type=int, default=400)
    parser.add_argument("--modes", default="library,cli")
    parser.add_argument("--max-prompt-tokens", type=int, help="override the router's cut (quicker encoder pass)")
    parser.add_argument("--dtype", default="float32", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--_library", help=argparse.SUPPRESS)  # internal: measure in this process
    parser.add_argument("--prompts-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._library:
        print(json.dumps(measure_library(args)))
        return

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-route-memory-") as tmp:
        tmp = Path(tmp)
        prompts = make_prompts(args.prompts, args.words)
        prompts_file = tmp / "prompts.json"
        prompts_file.write_text(json.dumps(prompts))
        jsonl = tmp / "prompts.jsonl"
        jsonl.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        del prompts
        for mode in args.modes.split(","):
            if mode == "library":
                command = [sys.executable, __file__, "--_library", "1", "--prompts-file", str(prompts_file),
                           "--dtype", args.dtype]
                if args.max_prompt_tokens:
                    command += ["--max-prompt-tokens", str(args.max_prompt_tokens)]
                output = subprocess.run(command, check=True, capture_output=True, text=True,
                                        env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout
                results[mode] = json.loads(output.strip().splitlines()[-1])
            elif mode == "cli":
                results[mode] = run_cli(args, jsonl, tmp / "decisions.jsonl")
            else:
                raise SystemExit(f"unknown mode {mode!r}")
            figures = results[mode]
            print(f"{mode:>8}: {figures['routed']} prompts of {args.words} words routed in {figures['seconds']} s, "
                  f"peak RSS {figures['peak_mb']} MB", flush=True)
    print(json.dumps({"prompts": args.prompts, "words": args.words, "max_prompt_tokens": args.max_prompt_tokens,
                      "dtype": args.dtype, **results}))


if __name__ == "__main__":
    main()
