"""Resumability and spend accounting of `carrot collect` on ZeroEval's real answers (replay upstream).

1. Reference: one uninterrupted `carrot collect` of PROMPTS × MODELS through a replay upstream.
2. Kills: the same command on a fresh store and a second replay upstream, killed with SIGKILL at
   `--kills` random moments (uniform over the reference run's duration) and rerun each time, then
   run to the end.
3. Checks: the two tables are equal (scores, tokens, answers, costs, scorers; latencies differ);
   the second replay saw every cell once, plus at most the calls in flight at each kill
   (`--concurrency` per model × models per kill); the realised spend equals the table's own cost of
   the collected cells (`RoutingTable.cost()` from `prices.json` and the record's token counts).
4. Spend limit: a fresh run with `--max-spend` set to a share of the full cost; its realised spend
   against the limit, and how many cells it asked.

    python scripts/collect_kills.py --data ../shared/data/zeroeval-2024 --work /tmp/kills         # full: 44,499 cells
    python scripts/collect_kills.py --data ../shared/data/zeroeval-2024 --models 3 --prompts 200   # smaller

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
COMPARED = ["key", "model", "status", "answer", "input_tokens", "output_tokens", "tokens_counted", "cost",
            "finish_reason", "score", "scorer", "unscored_reason"]


def start_replay(data: Path, responses: Path, latency_ms: float) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "carrot_hub.serving.fake_upstream", "--replay", str(data), "--responses", str(responses),
         "--latency-ms", str(latency_ms)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    line = process.stdout.readline().strip()
    if not line.startswith("fake upstream on "):
        process.kill()
        raise RuntimeError(f"the replay upstream did not start: {line!r}")
    return process, line.removeprefix("fake upstream on ")


def replay_counts(base_url: str) -> dict:
    with urllib.request.urlopen(f"{base_url}/replay/counts", timeout=30) as response:
        return json.load(response)


def write_prompts(data: Path, path: Path, n_prompts: int | None, seed: int) -> int:
    """Every split's prompts (key, prompt, task, golden answer) as JSONL; a seeded sample of n_prompts."""
    rows = []
    for file in sorted((data / "data").glob("*.parquet")):
        rows += pq.read_table(file, columns=["key", "dataset", "prompt", "golden_answer"]).to_pylist()
    if n_prompts is not None and n_prompts < len(rows):
        rows = random.Random(seed).sample(rows, n_prompts)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def collect_command(prompts: Path, upstreams: Path, out: Path, extra=()) -> list[str]:
    return [sys.executable, "-m", "carrot_hub.cli", "collect", str(prompts), "--upstreams", str(upstreams),
            "--out", str(out), "--scorer", "gsm8k=number", "--scorer", "cruxeval=exact", "--prices",
            str(out.parent / "prices.json"), "--no-progress", "--json", *extra]


def run(command) -> tuple[dict, float]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"carrot collect failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), elapsed


def _stored_answers(store: Path) -> int:
    """Answer lines in a collection store (0 before it exists)."""
    try:
        return store.read_bytes().count(b'"type":"answer"')
    except FileNotFoundError:
        return 0


def _answering_seconds(store: Path) -> float:
    """From the first answer to the last one of a store (its lines' `time`): how long the asking took."""
    times = [json.loads(line)["time"] for line in store.read_text(encoding="utf-8").splitlines()
             if '"type":"answer"' in line]
    return max(times) - min(times)


def answers(table: Path):
    return pq.read_table(table / "answers" / "train.parquet", columns=COMPARED).sort_by([("key", "ascending"),
                                                                                         ("model", "ascending")])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "zeroeval-2024",
                        help="the zeroeval-2024 folder (SPROUT table, prices.json and responses/)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/carrot-collect-kills"))
    parser.add_argument("--models", type=int, help="first N models of the table (default: all)")
    parser.add_argument("--prompts", type=int, help="a seeded sample of N prompts (default: all, both splits)")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8, help="max_concurrency of each upstream")
    parser.add_argument("--latency-ms", type=float, default=2.0, help="the replay upstream's latency per answer")
    parser.add_argument("--spend-share", type=float, default=0.3, help="--max-spend as a share of the full cost")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from carrot_hub.data import load_routing_table
    from carrot_hub.data.prices import read_prices_file
    from carrot_hub.data.validation import discover_model_columns

    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    first = sorted((args.data / "data").glob("*.parquet"))[0]
    models = discover_model_columns(pq.read_schema(first))[: args.models]
    n_prompts = write_prompts(args.data, work / "prompts.jsonl", args.prompts, args.seed)
    prices = read_prices_file(args.data / "prices.json")
    (work / "prices.json").write_text(json.dumps(prices))
    cells = n_prompts * len(models)
    rng = random.Random(args.seed)

    servers = [start_replay(args.data, args.data / "responses", args.latency_ms) for _ in range(3)]
    try:
        upstream_files = []
        for i, (_, base_url) in enumerate(servers):
            path = work / f"upstreams-{i}.json"
            path.write_text(json.dumps({m: {"base_url": base_url, "model": m, "max_concurrency": args.concurrency}
                                        for m in models}))
            upstream_files.append(path)

        # 1. the uninterrupted reference run
        reference, reference_s = run(collect_command(work / "prompts.jsonl", upstream_files[0], work / "reference"))
        reference_counts = replay_counts(servers[0][1])

        # 2. five kills, each followed by a rerun; then the run that finishes
        killed_at, cells_before_kill = [], []
        command = collect_command(work / "prompts.jsonl", upstream_files[1], work / "killed")
        store = work / "killed.cells" / "cells.jsonl"
        collect_s = _answering_seconds(work / "reference.cells" / "cells.jsonl")
        for _ in range(args.kills):
            before = _stored_answers(store)
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
            # A kill while Python is still importing proves nothing: wait for the first new answer, then
            # kill at a random moment of what is left of the collection (as long as the reference took).
            while _stored_answers(store) == before and process.poll() is None:
                time.sleep(0.02)
            left = max(0.0, 1 - before / cells) * collect_s
            moment = rng.uniform(0.0, 0.8 * left)
            time.sleep(moment)
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed_at.append(round(moment, 2))
            cells_before_kill.append(_stored_answers(store))
        final, final_s = run(command)
        counts = replay_counts(servers[1][1])

        # 3. the checks
        a, b = answers(work / "reference"), answers(work / "killed")
        same_answers = a.equals(b)
        table_a = load_routing_table(str(work / "reference"))
        table_b = load_routing_table(str(work / "killed"))
        same_table = (table_a.prompt_ids == table_b.prompt_ids and table_a.models == table_b.models
                      and all(np.array_equal(getattr(table_a, n), getattr(table_b, n), equal_nan=True)
                              for n in ("scores", "input_tokens", "output_tokens")))
        extra = counts["requests"] - cells
        in_flight_bound = args.kills * args.concurrency * len(models)
        # spend accounting: realised cost (what collect summed from usage × prices) against the record's own cost
        record = load_routing_table(str(args.data), split="train")
        record = record.concatenate([record, load_routing_table(str(args.data), split="test")])
        true_cost = record.select_models(models).cost(prices["prices"])
        rows = {k: i for i, k in enumerate(record.prompt_ids)}
        asked = [rows[k] for k in table_a.prompt_ids]
        true_total = float(np.nansum(true_cost[asked]))
        answered = a.to_pydict()
        realised_total = float(sum(c for c in answered["cost"] if c is not None))

        # 4. the spend limit
        limit = round(args.spend_share * true_total, 4)
        limited, _ = run(collect_command(work / "prompts.jsonl", upstream_files[2], work / "limited",
                                         ["--max-spend", str(limit)]))
        limited_counts = replay_counts(servers[2][1])
    finally:
        for process, _ in servers:
            process.send_signal(signal.SIGTERM)
        for process, _ in servers:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()

    result = {
        "cells": cells, "models": len(models), "prompts": n_prompts, "concurrency_per_model": args.concurrency,
        "reference_run_s": round(reference_s, 1), "reference_answering_s": round(collect_s, 1),
        "reference_requests": reference_counts["requests"],
        "reference_cells_per_s": round(cells / max(collect_s, 1e-9), 1),
        "kills": args.kills, "killed_at_s": killed_at, "answers_stored_at_each_kill": cells_before_kill,
        "final_run_s": round(final_s, 1), "final_run_asked": final["asked"],
        "tables_equal": bool(same_table and same_answers), "replay_requests": counts["requests"],
        "replay_cells": counts["cells"], "extra_requests": extra, "repeated_cells": counts["repeated_cells"],
        "max_requests_per_cell": counts["max_per_cell"], "in_flight_bound": in_flight_bound,
        "each_cell_once_plus_in_flight": bool(counts["cells"] == cells and 0 <= extra <= in_flight_bound),
        "realised_spend": round(realised_total, 6), "replay_true_cost": round(true_total, 6),
        "spend_equal": bool(abs(realised_total - true_total) <= 1e-9 * max(1.0, true_total)),
        "reference_summary_spend": round(reference["spent"], 6),
        "max_spend": limit, "limited_spend": round(limited["spent"], 6),
        "limited_asked": limited["asked"], "limited_requests": limited_counts["requests"],
        "limited_within": bool(limited["spent"] <= limit), "limited_stopped": limited["stopped_by_max_spend"],
    }
    print(json.dumps(result))
    return 0 if result["tables_equal"] and result["each_cell_once_plus_in_flight"] and result["spend_equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
