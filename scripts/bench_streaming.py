#!/usr/bin/env python
"""Peak memory and throughput of load_routing_table on a 100,000-row SPROUT-layout parquet file:
streamed (`streaming=True`, Arrow batches) against read whole (`streaming=False`, and one in-memory
Arrow table). Each mode runs in its own subprocess; peak memory is that process's ru_maxrss minus
its ru_maxrss just before loading (imports excluded).

    python scripts/bench_streaming.py [--rows 100000] [--models 13] [--batch-size 1000] [--file PATH]

Prints a table and, last, one JSON line with the figures. The rows are synthetic (this measures the
loader, not routing quality); the layout is SPROUT's exact one.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {
    "streaming": "load_routing_table(file, streaming=True)",
    "whole (load_dataset)": "load_routing_table(file, streaming=False)",
    "whole (one Arrow table)": "pyarrow.parquet.read_table + one validation pass",
}


def generate(path: Path, rows: int, n_models: int, seed: int = 0) -> None:
    """A SPROUT-layout parquet file: metadata columns + `n_models` struct columns, prompts of 20-400 words."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    words = np.array("the of a to and in is that for it as with be on by this an which or from at are we can".split()
                     + [f"term{i}" for i in range(2000)])
    writer = None
    chunk = 10_000
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        lengths = rng.integers(20, 400, n)
        prompts = [" ".join(words[rng.integers(0, len(words), k)]) + "?" for k in lengths]
        columns = {
            "key": pa.array([f"synthetic-{start + i}" for i in range(n)]),
            "dataset": pa.array(rng.choice(["gpqa", "mmlu-pro", "math", "musr", "openhermes"], n)),
            "dataset_level": pa.array(["none"] * n),
            "dataset_idx": pa.array(np.arange(start, start + n)),
            "prompt": pa.array(prompts),
            "golden_answer": pa.array(["A"] * n),
        }
        for m in range(n_models):
            columns[f"synthetic-model-{m:02d}"] = pa.StructArray.from_arrays(
                [pa.array(rng.integers(0, 11, n) / 10.0), pa.array(lengths * 13 // 10), pa.array(rng.integers(1, 2000, n))],
                names=["score", "num_input_tokens", "num_output_tokens"],
            )
        table = pa.table(columns)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="zstd")
        writer.write_table(table)
    writer.close()


def measure(mode: str, file: str, batch_size: int) -> dict:
    """Run inside the subprocess: load `file` one way, report seconds and peak RSS increase."""
    import resource

    import pyarrow.parquet as pq

    from carrot_hub.data import load_routing_table
    from carrot_hub.data.validation import RowValidator, discover_model_columns

    # Warm up on a 50-row slice so lazy imports and one-off set-up are not counted as loading cost.
    with tempfile.TemporaryDirectory() as scratch:
        small = Path(scratch) / "warmup.parquet"
        pq.write_table(pq.ParquetFile(file).read_row_group(0).slice(0, 50), small)
        load_routing_table(str(small), streaming=mode == "streaming")
        RowValidator(discover_model_columns(pq.read_table(small).schema))(pq.read_table(small))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if mode == "streaming":
        table = load_routing_table(file, streaming=True, batch_size=batch_size)
    elif mode == "whole (load_dataset)":
        table = load_routing_table(file, streaming=False, batch_size=batch_size)
    else:
        arrow = pq.read_table(file)
        table = RowValidator(discover_model_columns(arrow.schema))(arrow)
    n, m = table.scores.shape
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # What the result itself holds (prompt and id strings, three float32 arrays): the floor for any mode.
    ids = table.prompt_ids if hasattr(table, "prompt_ids") else table.keys  # RoutingTable or one validated batch
    result = sum(sys.getsizeof(p) for p in table.prompts) + sum(sys.getsizeof(k) for k in ids)
    result += table.scores.nbytes + table.input_tokens.nbytes + table.output_tokens.nbytes
    return {"mode": mode, "rows": n, "models": m, "seconds": round(seconds, 2), "rows_per_second": round(n / seconds),
            "peak_rss_increase_mb": round((peak - before) / 1024, 1), "peak_rss_mb": round(peak / 1024, 1), "result_mb": round(result / 2**20, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--models", type=int, default=13)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--file", help="reuse this parquet file instead of generating one")
    parser.add_argument("--_measure", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._measure:
        print(json.dumps(measure(args._measure, args.file, args.batch_size)))
        return 0

    with tempfile.TemporaryDirectory(prefix="carrot-bench-") as scratch:
        file = Path(args.file) if args.file else Path(scratch) / "sprout-synthetic.parquet"
        if not args.file:
            started = time.perf_counter()
            generate(file, args.rows, args.models)
            print(f"generated {args.rows:,} rows x {args.models} models in {time.perf_counter() - started:.1f}s: "
                  f"{file.stat().st_size / 1e6:.1f} MB parquet", file=sys.stderr)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
        results = []
        for mode in MODES:
            out = subprocess.run(
                [sys.executable, __file__, "--_measure", mode, "--file", str(file), "--batch-size", str(args.batch_size)],
                capture_output=True, text=True, env=env,
            )
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                return 1
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        size_mb = round(file.stat().st_size / 1e6, 1)

    print(f"\n{'mode':26} {'rows':>8} {'seconds':>8} {'rows/s':>9} {'peak RSS +MB':>13} {'result MB':>10}")
    for r in results:
        print(f"{r['mode']:26} {r['rows']:8d} {r['seconds']:8.2f} {r['rows_per_second']:9d} "
              f"{r['peak_rss_increase_mb']:13.1f} {r['result_mb']:10.1f}")
    print(json.dumps({"rows": args.rows, "models": args.models, "batch_size": args.batch_size, "parquet_mb": size_mb,
                      "cpu_count": os.cpu_count(), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
