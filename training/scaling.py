"""
How kNN training time grows with the number of prompts, tasks and candidates.

    python scripts/bench_train_scaling.py --sizes 2000,10000,50000 --models 15 --cache-dir /work/cache/emb
    python scripts/bench_train_scaling.py --sizes 10000 --tasks 57

A packaged table's train split is replicated up to each size (prompt ids made unique; each copy's
embeddings jittered by Gaussian noise of `--jitter` per coordinate and re-normalised, so that copies
are near neighbours, not exact ties), its candidates cut to the first `--models`, and its tasks
optionally split into about `--tasks` pseudo-tasks (task name + row number modulo a count), which is what the reliability
fit holds out one at a time. The router is trained as `carrot train --kind knn` trains it
(`training.knn.train_knn_router`) from the precomputed embeddings: the encoder pass is excluded from
`train_seconds` and reported apart (`encode_seconds_estimate`: the encoder's measured speed on
`--encode-sample` of the table's prompts, times the size). Each run also reports the machine's
1-minute load average at its end and the process's peak resident memory so far. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch


def replicated_table(table, embeddings: torch.Tensor, size: int, n_tasks: int | None, jitter: float, seed: int = 0):
    """`(table, embeddings (size, hidden))`: `table` repeated to `size` rows (see the module docstring)."""
    from carrot_hub.data.routing_table import RoutingTable

    n = len(table)
    copies = -(-size // n)
    rows = np.tile(np.arange(n), copies)[:size]
    copy = np.repeat(np.arange(copies), n)[:size]
    base_tasks = list(dict.fromkeys(table.tasks))
    per_task = max(1, -(-(n_tasks or len(base_tasks)) // len(base_tasks)))
    tasks = [f"{table.tasks[r]}#{i % per_task}" if per_task > 1 else table.tasks[r] for i, r in enumerate(rows)]
    grown = RoutingTable(
        prompts=[table.prompts[r] for r in rows],
        prompt_ids=[f"{table.prompt_ids[r]}#{c}" for r, c in zip(rows, copy)],
        tasks=tasks,
        models=list(table.models),
        scores=table.scores[rows],
        input_tokens=table.input_tokens[rows],
        output_tokens=table.output_tokens[rows],
        prices=table.prices,
        split=table.split,
        metadata=dict(table.metadata),
    )
    generator = torch.Generator().manual_seed(seed)
    grown_embeddings = embeddings[torch.as_tensor(rows)]
    noise = torch.randn(grown_embeddings.shape, generator=generator) * jitter
    noise[torch.as_tensor(copy == 0)] = 0.0  # the first copy is the table itself
    return grown, torch.nn.functional.normalize(grown_embeddings + noise, dim=1)


def write_replicated_table(grown, grown_embeddings: torch.Tensor, folder, cache_dir, options: dict) -> str:
    """
    Write `grown` as a SPROUT-layout folder and put `grown_embeddings` in `cache_dir` under the key
    `carrot train --kind knn --data FOLDER --embeddings-cache CACHE_DIR` (with `options` as its
    --max-prompt-tokens and --truncation-side) looks up, so that an end-to-end run of the command line
    skips the encoder pass, as the timed runs here do. Returns that command line.
    """
    from carrot_hub.data.writing import write_sprout_dataset
    from carrot_hub.embedding_cache import save_embeddings, embeddings_key

    from training.embeddings import embedding_cache_file
    from training.prepare import new_training_router

    write_sprout_dataset(grown, folder)
    router = new_training_router(grown, "knn", **options)
    save_embeddings(embedding_cache_file(cache_dir, router, grown.prompts), grown_embeddings, embeddings_key(router, list(grown.prompts)))
    flags = "".join(f" --{key.replace('_', '-')} {value}" for key, value in options.items())
    return f"carrot train --kind knn --data {folder} --embeddings-cache {cache_dir}{flags} --out ROUTER_FOLDER --no-progress"


def run(args) -> dict:
    from carrot_hub.data import load_routing_table, resolve_table_source
    from carrot_hub.data.packaged import packaged_tables, read_router_defaults

    from training.embeddings import embed_table
    from training.knn import train_knn_router
    from training.prepare import new_training_router

    source = resolve_table_source(args.data)
    table = load_routing_table(source, split="train", progress=False)
    if args.models:
        table = table.select_models(list(table.models)[: args.models])
    options = {}
    if args.data in packaged_tables():
        defaults = read_router_defaults(args.data)
        options = {key: defaults[key] for key in ("max_prompt_tokens", "truncation_side") if key in defaults}
    router = new_training_router(table, "knn", **options)
    embeddings = embed_table(router, table, cache_dir=args.cache_dir, progress=False)
    if args.write_table:
        grown, grown_embeddings = replicated_table(table, embeddings, args.sizes[0], args.tasks, args.jitter)
        command = write_replicated_table(grown, grown_embeddings, args.write_table, args.cache_dir, options)
        return {"data": args.data, "wrote": args.write_table, "prompts": len(grown), "tasks": len(set(grown.tasks)),
                "candidates": len(grown.models), "train_with": command}

    sample = list(table.prompts[: args.encode_sample])
    began = time.perf_counter()
    router.encode(sample, batch_size=32, progress=False)
    encode_per_prompt = (time.perf_counter() - began) / len(sample)

    runs = []
    for size in args.sizes:
        grown, grown_embeddings = replicated_table(table, embeddings, size, args.tasks, args.jitter)
        began, cpu_began = time.perf_counter(), time.process_time()
        _, report = train_knn_router(grown, embeddings=grown_embeddings, seed=0, progress=False, **options)
        seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu_began
        reliability = report["reliability"]
        run = {
            "prompts": size,
            "tasks": len(set(grown.tasks)),
            "candidates": len(grown.models),
            "train_seconds": round(seconds, 1),
            "train_cpu_seconds": round(cpu_seconds, 1),  # all threads; on a shared machine wall time also counts the others' load
            "load_average_1min": round(os.getloadavg()[0], 2),  # at the end of the run: what else the machine was doing
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),  # the process so far (sizes ascend)
            "stage_seconds": report.get("stage_seconds"),
            "encode_seconds_estimate": round(encode_per_prompt * size, 1),
            "k": report["k"],
            "support_k": reliability["support_k"],
            "support_threshold": reliability["support_threshold"],
            "calibration": reliability["calibration"]["method"],
            "prior_shrink": reliability["prior_shrink"],
            "shrink_floor": reliability["shrink_floor"],
            "ood_pessimism": (reliability.get("ood_pessimism") or {}).get("chosen"),
            "held_out_groups": reliability["n_groups"],
        }
        runs.append(run)
        print(json.dumps(run), file=sys.stderr)
    return {
        "data": args.data,
        "method": "packaged train split replicated to each size (embeddings jittered), kNN trained as `carrot train "
                  "--kind knn` from precomputed embeddings; encoder pass excluded from train_seconds, estimated apart",
        "jitter": args.jitter,
        "encode_seconds_per_prompt": encode_per_prompt,
        "torch_threads": torch.get_num_threads(),
        "runs": runs,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python scripts/bench_train_scaling.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="zeroeval-2024", help="packaged table (or folder) to replicate (default: zeroeval-2024)")
    parser.add_argument("--sizes", default="2000,10000,50000", help="prompt counts, comma-separated")
    parser.add_argument("--models", type=int, default=15, help="keep the first this many candidates (0: all)")
    parser.add_argument("--tasks", type=int, default=None, help="split the tasks into about this many pseudo-tasks")
    parser.add_argument("--jitter", type=float, default=0.01, help="per-coordinate noise on replicated embeddings")
    parser.add_argument("--encode-sample", type=int, default=256, help="prompts encoded to measure the encoder's speed")
    parser.add_argument("--cache-dir", help="folder caching prompt embeddings")
    parser.add_argument("--write-table", metavar="FOLDER",
                        help="instead of timing: write the first size's replicated table to FOLDER (SPROUT layout) and its "
                             "embeddings to --cache-dir, and print the `carrot train` command that trains on them end to end")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.sizes = [int(part) for part in args.sizes.split(",") if part.strip()]
        if not args.sizes or min(args.sizes) < 100:
            raise ValueError
    except ValueError:
        print(f"error: --sizes takes comma-separated prompt counts of at least 100, got {args.sizes!r}", file=sys.stderr)
        return 2
    if args.write_table and not args.cache_dir:
        print("error: --write-table needs --cache-dir: the replicated table's embeddings are put there for `carrot train`.", file=sys.stderr)
        return 2
    try:
        result = run(args)
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
