"""What exploration's out-of-distribution flag costs the routing batch (`route_batch(..., trained_support=True)`).

With `carrot serve --explore` and a router that has remembered prompts (`--learn`), each routing
batch also measures support among the router's trained rows (`carrot_hub/serving/trained_distribution.py`):
one more similarity product against those rows and a top-k. This times batches of `--batch-size`
RouterBench prompts through `route_batch` with and without it, on the embedded default router
(static encoder) after it has remembered `--remembered` prompts, interleaved over `--repeats` rounds.

    python scripts/bench_trained_support.py [--batch-size 64] [--remembered 2000] [--repeats 20] [--threads 2]

Last line: one JSON object.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from carrot_hub import default_router  # noqa: E402
from carrot_hub.serving.batching import route_batch  # noqa: E402
from carrot_hub.serving.bench_setup import routerbench_test_prompts  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--remembered", type=int, default=2000, help="prompts remembered before timing (as under --learn)")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds, each: every batch without, then with")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    router = default_router(encoder="static", progress=False)
    prompts = routerbench_test_prompts(seed=0)
    learned = [f"{p}\n(remembered {i})" for i, p in enumerate(prompts * (args.remembered // len(prompts) + 1))][: args.remembered]
    router.remember(learned, router.config.candidate_models[0], [1.0] * len(learned))
    options = [router.routing_options(mu=0.5)] * args.batch_size
    batches = [prompts[i : i + args.batch_size] for i in range(0, len(prompts) - args.batch_size + 1, args.batch_size)]
    for batch in batches[:2]:  # warm the word cache and the allocator
        route_batch(router, batch, options, trained_support=True)
    seconds = {False: [], True: []}
    for _ in range(args.repeats):
        for flag in (False, True):
            for batch in batches:
                started = time.perf_counter()
                route_batch(router, batch, options, trained_support=flag)
                seconds[flag].append(time.perf_counter() - started)
    per_batch = {flag: statistics.median(values) * 1000 for flag, values in seconds.items()}
    result = {
        "batch_size": args.batch_size, "batches_timed": len(seconds[True]), "memory_rows": router.config.knn_memory_size,
        "remembered_rows": router.config.knn_remembered_rows, "threads": args.threads,
        "ms_per_batch_without": round(per_batch[False], 3), "ms_per_batch_with": round(per_batch[True], 3),
        "added_ms_per_batch": round(per_batch[True] - per_batch[False], 3),
        "added_share": round(per_batch[True] / per_batch[False] - 1, 4),
    }
    print(f"median per batch of {args.batch_size}: {per_batch[False]:.2f} ms without, {per_batch[True]:.2f} ms with "
          f"({result['added_share']:+.1%}); memory {result['memory_rows']} rows, {result['remembered_rows']} remembered")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
