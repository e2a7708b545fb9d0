"""`carrot logs`: what to do with a `carrot serve` outcome log.

    carrot logs push LOG_DIR REPO_ID [--private] [--revision BRANCH]      a Hub dataset repo
    carrot logs judge LOG_DIR --judge CANDIDATE --upstreams FILE           judge labels for logged answers
                      [--explore ROUTER] [--max-spend DOLLARS] [--prices FILE|JSON] [--concurrency N] [--json]

Exit codes: 0 done; 1 when some records could not be judged because an upstream failed every retry
(rerun the same command: they are judged again); 2 bad input (one line).
"""

from __future__ import annotations

import argparse
import json
import sys


def add_logs_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `carrot logs` (actions: push, judge)."""
    from .cli_common import non_negative_number, positive_int
    from .data.outcome_log_publishing import add_push_arguments
    from .serving.log_judging import DEFAULT_CONCURRENCY

    actions = parser.add_subparsers(dest="logs_action", metavar="ACTION", parser_class=type(parser))
    add_push_arguments(actions)
    judge = actions.add_parser(
        "judge",
        help="grade the answers an outcome log holds (carrot serve --log-answers) with a judge upstream",
        description="Add judge labels (feedback records, source 'judge') to the served records of an outcome log "
        "that have none, grading the logged answers with the rubric of carrot serve --explore; optionally ask "
        "one other candidate per record and grade it too (--explore ROUTER). Existing shards are only read; the "
        "labels go to a new shard. Rerunning judges only what is left. See docs/exploration.md.",
    )
    judge.add_argument("log_dir", metavar="LOG_DIR", help="the folder carrot serve writes its outcome log to (--log-dir)")
    judge.add_argument("--judge", required=True, metavar="CANDIDATE", help="the upstream that grades the answers")
    judge.add_argument("--upstreams", required=True, metavar="FILE", help="the upstreams file carrot serve reads")
    judge.add_argument("--explore", metavar="ROUTER",
                       help="also ask one other candidate each prompt (the cheaper one closest in predicted quality "
                            "by this router's ranking, as carrot serve --explore picks) and grade its answer")
    judge.add_argument("--max-spend", type=non_negative_number("dollars"), metavar="DOLLARS",
                       help="stop before this run's estimated spend (judge and explored answers) would pass this many US$")
    judge.add_argument("--prices", metavar="FILE|JSON",
                       help="$ per million tokens per model (default: the log's prices.json); --max-spend needs the judge's")
    judge.add_argument("--retries", type=int, default=5, help="retries per call on 429/5xx/timeouts (default: 5)")
    judge.add_argument("--concurrency", type=positive_int, default=DEFAULT_CONCURRENCY,
                       help=f"records judged at a time (default {DEFAULT_CONCURRENCY})")
    judge.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    judge.add_argument("--no-progress", action="store_true", help="no progress bar")
    judge.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def run_logs(args: argparse.Namespace) -> int:
    from .cli_common import UsageError

    if args.logs_action == "push":
        from .data.outcome_log_publishing import run_push

        return run_push(args)
    if args.logs_action == "judge":
        return run_judge(args)
    raise UsageError("name an action: `carrot logs push LOG_DIR REPO_ID` or `carrot logs judge LOG_DIR --judge ...`")


def run_judge(args: argparse.Namespace) -> int:
    """`carrot logs judge`: checks every input first (one line, exit 2), then judges and prints the summary."""
    from .cli_common import UsageError, load_router, read_prices
    from .collect.spending import SpendLimitError
    from .errors import BadInputError
    from .router_store import StoreLocked
    from .serving.log_judging import LogNotFound, check_log_dir, judge_log
    from .serving.upstreams import RetryPolicy, UpstreamConfigError, UpstreamPool, check_keys, read_upstreams_file

    try:
        check_log_dir(args.log_dir)
        specs = read_upstreams_file(args.upstreams)
        check_keys(specs)
    except (LogNotFound, UpstreamConfigError) as error:
        raise UsageError(str(error)) from None
    if args.judge not in specs:
        raise UsageError(f"The judge {args.judge!r} is not an upstream (upstreams: {', '.join(specs)}): "
                         "add it to the upstreams file or name one of them.")
    if args.retries < 0:
        raise UsageError(f"--retries must be ≥ 0, got {args.retries}.")
    prices = read_prices(args.prices)
    router = load_router(args.explore, progress=False) if args.explore is not None else None
    try:
        result = judge_log(args.log_dir, UpstreamPool(specs), args.judge, router=router, max_spend=args.max_spend,
                           prices=prices, concurrency=args.concurrency, retries=RetryPolicy(max_retries=args.retries),
                           progress=not args.no_progress and not args.json)
    except (LogNotFound, SpendLimitError, StoreLocked, BadInputError, ValueError) as error:
        raise UsageError(str(error)) from None
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(format_judge_summary(result))
    if result.to_retry:
        print(f"carrot logs judge: {result.to_retry} records could not be judged (an upstream failed every retry); "
              "rerun the same command to judge them.", file=sys.stderr)
        return 1
    return 0


def format_judge_summary(result) -> str:
    """The summary `carrot logs judge` prints: what was judged, unscored and skipped (by reason), and spent."""
    from .serving.log_judging import SKIP_REASONS

    lines = [f"{result.log_dir}: {result.served} served records, {result.candidates} to judge by {result.judge}.",
             f"  judged: {result.judged} chosen answers labelled"
             + (f"; {result.explored} other candidates explored" if result.explored else "")
             + f"; {result.labels} judge labels written" + (f" to {result.shard}" if result.shard else "")]
    if result.unscored:
        lines.append("  unscored (no label): " + "; ".join(f"{reason}: {n}" for reason, n in result.unscored.most_common()))
    if result.skipped:
        lines.append("  skipped: " + "; ".join(f"{SKIP_REASONS[reason]}: {n}" for reason, n in result.skipped.most_common()))
    if result.not_judged_max_spend:
        lines.append(f"  not judged: {result.not_judged_max_spend} records (--max-spend reached; rerun with a higher "
                     "limit to continue)")
    lines.append(f"  spent ${result.judge_spent:.4f} on the judge and ${result.explored_spent:.4f} on explored answers.")
    return "\n".join(lines)
