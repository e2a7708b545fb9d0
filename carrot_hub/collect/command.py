"""`carrot collect`: the command line of `carrot_hub.collect`.

    carrot collect PROMPTS --upstreams upstreams.yaml [--models a,b] --out TABLE | --into TABLE
                   [--from-log LOGDIR [--only-out-of-distribution]] [--scorer TASK=SPEC ...]
                   [--max-spend DOLLARS] [--prices FILE] [--temperature T] [--max-tokens N] [--limit N]

Exit codes: 0 when every cell was answered, 1 when some failed every retry (the table is written and
the summary printed all the same: rerun the same command to ask them again), 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys


def add_collect_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `carrot collect`."""
    from ..cli_common import non_negative_number, positive_int

    parser.add_argument("prompts", nargs="?", metavar="PROMPTS",
                        help="a packaged table name, a SPROUT-layout folder, a JSONL/JSON/CSV/Parquet file or a Hub "
                             "data set id; columns prompt or messages, optional key, reference, task, tests")
    parser.add_argument("--upstreams", required=True, metavar="FILE", help="the upstreams file carrot serve reads")
    parser.add_argument("--models", help="comma-separated candidates to ask (default: every upstream)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", metavar="TABLE", help="a new table folder to write")
    where.add_argument("--into", metavar="TABLE", help="an existing table to add these models (columns) or prompts (rows) to")
    parser.add_argument("--from-log", metavar="LOGDIR", help="ask the prompts a carrot serve gateway served (its outcome log)")
    parser.add_argument("--only-out-of-distribution", action="store_true",
                        help="with --from-log: only the served prompts the router flagged as out of distribution")
    parser.add_argument("--scorer", action="append", metavar="[TASK=]SPEC",
                        help="scorer per task: exact, number, choice, math, code or judge:CANDIDATE "
                             "(e.g. --scorer gsm8k=number --scorer default=judge:gpt-4o; bare SPEC = default)")
    parser.add_argument("--allow-code-execution", action="store_true",
                        help="let the code scorer run answers' code in a subprocess (not a security sandbox)")
    parser.add_argument("--max-spend", type=float, metavar="DOLLARS",
                        help="stop before this run's estimated spend (candidates and judges) would pass this many US$")
    parser.add_argument("--prices", metavar="FILE|JSON",
                        help="$ per million tokens per model (default: the --into table's, then the prompt set's prices.json)")
    parser.add_argument("--temperature", type=non_negative_number(), default=0.0, help="sampling temperature (default: 0)")
    parser.add_argument("--max-tokens", type=positive_int, help="max_tokens per answer (default: the upstream's)")
    parser.add_argument("--limit", type=positive_int, help="ask only the first N prompts")
    parser.add_argument("--split", default="train", help="split of a table or Hub prompt set, and of --into (default: train)")
    parser.add_argument("--streaming", action="store_true", help="stream a Hub data set instead of downloading it")
    parser.add_argument("--store", metavar="DIR", help="the append-only answer store (default: TABLE.cells beside the table)")
    parser.add_argument("--retries", type=int, default=5, help="retries per call on 429/5xx/timeouts (default: 5)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line instead of the summary table")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return parser


def run_collect(args) -> int:
    """`carrot collect`: see the module docstring."""
    from ..cli_common import UsageError, read_prices
    from ..serving.upstreams import RetryPolicy
    from .collecting import collect
    from .summary import format_summary

    if args.max_spend is not None and not (math.isfinite(args.max_spend) and args.max_spend >= 0):
        raise UsageError(f"--max-spend must be a finite number of US dollars ≥ 0, got {args.max_spend:g}.")
    if args.retries < 0:
        raise UsageError(f"--retries must be ≥ 0, got {args.retries}.")
    result = collect(
        args.prompts, args.upstreams, models=args.models, out=args.out, into=args.into, from_log=args.from_log,
        only_out_of_distribution=args.only_out_of_distribution, scorers=args.scorer,
        allow_code_execution=args.allow_code_execution, max_spend=args.max_spend, prices=read_prices(args.prices),
        temperature=args.temperature, max_tokens=args.max_tokens, limit=args.limit, split=args.split,
        streaming=args.streaming, store=args.store, retries=RetryPolicy(max_retries=args.retries),
        progress=not args.no_progress,
    )
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        counts = result.counts
        print(format_summary(result.summary))
        print(f"This run: {counts.asked} calls, {counts.answered} answered, {counts.failed} failed, "
              f"{counts.scored} scored; spent ${result.spent:.4f} on candidates and ${result.judge_spent:.4f} "
              f"on judges in {result.elapsed_s:.1f} s.")
        if not args.scorer:
            print("No --scorer given: answers are stored but every cell is unscored; rerun with --scorer "
                  "TASK=SPEC to score them (no model is asked again).")
        if result.stopped_by_max_spend:
            print(f"Stopped by --max-spend: {counts.not_asked} cells not asked, {counts.not_judged} answers not graded; "
                  "rerun with a higher limit to continue.")
        print(f"Table: {result.table}  (answers stored in {result.store})")
    if not result.ok:
        print(f"carrot collect: {result.failed_cells} cells failed every retry (see {result.table}/answers); "
              "rerun the same command to ask them again.", file=sys.stderr)
        return 1
    return 0
