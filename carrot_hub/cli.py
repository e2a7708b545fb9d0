"""The `carrot` command: route prompts, calibrate μ to a budget, and the training / publishing tools.

Exit codes: 0 success, 2 usage errors (bad options or input), 1 other failures. Errors are one
line on stderr; `--debug` shows the traceback. Heavy imports happen inside the subcommands.
"""

import argparse
import importlib
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

from .cli_common import (
    Failure,
    UsageError,
    first_line,
    load_router,
    non_negative_number,
    positive_int,
    read_mapping,
    read_prices,
)
from .errors import BadInputError
from .configuration_carrot import ENCODER_KINDS
from .default import DEFAULT_ENCODER_KIND
from .precision import ENCODER_DTYPE_CHOICES

PROG = "carrot"

# Subcommands provided by other modules: name -> (module, add_arguments, run, help).
EXTERNAL_COMMANDS = {
    "train": ("training.train", "add_train_arguments", "run_train", "train a router on routing data"),
    "evaluate": ("training.evaluation.evaluate", "add_evaluate_arguments", "run_evaluate", "evaluate a router against baselines"),
    "publish": ("carrot_hub.router_publishing", "add_publish_arguments", "run_publish", "push a router to the Hub"),
    "set-prices": ("carrot_hub.router_publishing", "add_set_prices_arguments", "run_set_prices",
                   "change a saved router's price table"),
    "add-model": ("training.candidates", "add_add_model_arguments", "run_add_model",
                  "add a candidate LLM to a router"),
    "remove-model": ("training.candidates", "add_remove_model_arguments", "run_remove_model",
                     "remove a candidate LLM from a router"),
    "logs": ("carrot_hub.logs_command", "add_logs_arguments", "run_logs",
             "push a carrot serve outcome log to a Hub dataset repo (carrot logs push LOG_DIR REPO_ID), "
             "or judge its logged answers (carrot logs judge LOG_DIR --judge CANDIDATE --upstreams FILE)"),
    "learn": ("carrot_hub.log_learning", "add_learn_arguments", "run_learn",
              "apply the labels of outcome logs to a kNN router and publish new revisions (one writer per store)"),
    "serve": ("carrot_hub.serving.command", "add_serve_arguments", "run_serve",
              "an OpenAI-compatible gateway that routes each request to an LLM"),
    "collect": ("carrot_hub.collect.command", "add_collect_arguments", "run_collect",
                "ask your upstream LLMs a prompt set, score the answers, write a routing table"),
}
DETAIL_LIMIT = 10  # the table shows every candidate's predictions for inputs up to this many prompts


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# ------------------------------------------------------------------------------ option types


def _unit_interval(meaning: str = ""):
    """An argparse type for a number in [0, 1]; `meaning` explains the ends in the error."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}") from None
        if not 0.0 <= value <= 1.0:
            raise argparse.ArgumentTypeError(f"must be in [0, 1]{meaning}, got {text}")
        return value

    return parse


_mu = _unit_interval(" (0 = best quality, 1 = cheapest)")
_quality = _unit_interval()




_dollars = non_negative_number("dollars")
_seconds = non_negative_number("seconds")


def _packaged_table(text: str) -> str:
    """`--data`: the name of a routing table shipped in the package."""
    from .data.packaged import UnknownTableError, packaged_table_dir

    try:
        packaged_table_dir(text)
    except UnknownTableError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


# ----------------------------------------------------------------------------------- parsers


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def _add_routing_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("prompts (one way only; with none, standard input is read)")
    source.add_argument("prompts", nargs="*", help="prompts to route (`-` alone reads standard input)")
    source.add_argument("--file", help="a text file, one prompt per line (blank lines are skipped)")
    source.add_argument("--jsonl", help="a JSONL file, the prompt in --field")
    source.add_argument("--parquet", help="a parquet file, the prompt in column --field")
    source.add_argument("--input", help="a JSONL, parquet or text file (by suffix), or a Hub data set id (streamed)")
    source.add_argument("--field", default="prompt", help="JSON key / column holding the prompt (default: prompt)")
    source.add_argument("--split", default="train", help="split of a Hub data set (default: train)")

    router = parser.add_argument_group("router")
    router.add_argument("--model", help="router folder or Hub id (default: the embedded default router)")
    router.add_argument("--encoder", choices=ENCODER_KINDS,
                        help="encoder of the embedded default router: transformer (all-MiniLM-L6-v2) or static "
                             f"(a token table distilled from it, ~100x cheaper) (default: {DEFAULT_ENCODER_KIND}); "
                             "a router given with --model keeps its own")
    from .data.packaged import packaged_tables

    router.add_argument("--data", type=_packaged_table, metavar="TABLE",
                        help="without --model: the default router of this packaged routing table "
                             f"(one of {', '.join(packaged_tables())}; default: the first)")
    router.add_argument("--prices", help='price overrides: a JSON/YAML file or inline JSON {"model": {"input": $/M, "output": $/M}}')
    router.add_argument("--allowed", action="append",
                        help="only these candidates (comma-separated, or repeat the option)")
    router.add_argument("--max-cost", type=_dollars, help="exclude candidates predicted to cost more than this many $ per prompt")
    router.add_argument("--latency", help='speed profile: a JSON/YAML file or inline JSON {"model": {"ttft_s": s, '
                                          '"tokens_per_s": t}} (default: the one saved in the router, if any)')
    router.add_argument("--max-latency", type=_seconds, metavar="SECONDS",
                        help="exclude candidates predicted to take longer than this (time to first token + "
                             "predicted output tokens / tokens per second)")

    speed = parser.add_argument_group("speed")
    speed.add_argument("--batch-size", type=positive_int, default=64, help="prompts per encoder pass (default: 64)")
    speed.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    speed.add_argument("--dtype", choices=ENCODER_DTYPE_CHOICES, default="auto",
                       help="the encoder's dtype: auto = bfloat16 on CPUs with bf16 units (about 1.5x faster, "
                            "~99%% of decisions unchanged), else float32; float32 = the same decisions everywhere")
    speed.add_argument("--chunk-size", type=positive_int, default=4096,
                       help="prompts read and routed at a time; bounds memory on large inputs (default: 4096)")
    speed.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """
    The `carrot` parser. Only the subcommand named by `command` imports its module (so that
    `carrot route` never pays for training imports); others get a one-line description.
    """
    parser = _Parser(prog=PROG, description="CARROT: route prompts to the LLM that best trades quality for cost.")
    _add_common_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    route = commands.add_parser("route", help="choose a model for each prompt",
                                description="Choose the LLM for each prompt with CARROT's quality/cost rule.")
    _add_common_options(route)
    _add_routing_options(route)
    route.add_argument("--mu", type=_mu, help="quality/cost trade-off in [0, 1] (default: the router's default_mu)")
    route.add_argument("--ood", metavar="POLICY",
                        help="prompts out of distribution (low support): predict (route on predictions), prior "
                             "(route on each candidate's prior quality) or model:NAME (send them to NAME); "
                             "default: the router's ood_policy")
    route.add_argument("--format", choices=("table", "jsonl"),
                       help="output format (default: table on the terminal, jsonl with --output)")
    route.add_argument("--output", help="write the output to this file (atomically; required under accelerate launch)")
    route.set_defaults(handler=run_route)

    calibrate = commands.add_parser(
        "calibrate", help="choose μ for a target spend or quality on your prompts",
        description="Predict spend per 1,000 prompts and mean quality over a grid of μ on your own prompts "
        "(no labels needed), and solve for the μ meeting --target-spend or --target-quality.",
    )
    _add_common_options(calibrate)
    _add_routing_options(calibrate)
    target = calibrate.add_mutually_exclusive_group()
    target.add_argument("--target-spend", type=_dollars, help="US dollars per 1,000 prompts")
    target.add_argument("--target-quality", type=_quality, help="mean predicted quality in [0, 1]")
    calibrate.add_argument("--grid", type=positive_int, default=11,
                           help="number of evenly spaced μ values in [0, 1] to print (default: 11)")
    calibrate.add_argument("--json", action="store_true", help="print the result as one JSON object")
    calibrate.set_defaults(handler=run_calibrate)

    for name, (module_name, add_name, run_name, help_text) in EXTERNAL_COMMANDS.items():
        if name != command:
            sub = commands.add_parser(name, help=help_text, add_help=False)
            sub.add_argument("rest", nargs=argparse.REMAINDER)
            continue
        try:
            module = importlib.import_module(module_name)
            add_arguments, run = getattr(module, add_name), getattr(module, run_name)
        except (ImportError, AttributeError) as error:
            sub = commands.add_parser(name, help=help_text, description=f"not available: {error}")
            parser.unavailable = f"`carrot {name}` is not available: cannot import {module_name} ({error})."
            continue
        sub = commands.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        if not any("--debug" in action.option_strings for action in sub._actions):
            _add_common_options(sub)
        sub.set_defaults(handler=run)
    return parser


def _command_in(argv: list[str]) -> str | None:
    for token in argv:
        if not token.startswith("-"):
            return token
    return None


# ------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run `carrot` with `argv` (default: `sys.argv[1:]`) and return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    command = _command_in(argv)
    try:
        parser = build_parser(command)
        if getattr(parser, "unavailable", None) and not {"-h", "--help"} & set(argv):
            raise Failure(parser.unavailable)
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_:  # --help
            return int(exit_.code or 0)
        if getattr(args, "handler", None) is None:
            parser.print_help(sys.stderr)
            return 2
        result = args.handler(args)
        return int(result or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (UsageError, BadInputError, FileExistsError) as error:  # bad options, files, rows; a destination to keep
        return _report(command, error, 2, debug)
    except Failure as error:
        return _report(command, error, 1, debug)
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else _report(command, exit_.code, 1, debug)
    except Exception as error:  # noqa: BLE001  (one line, not a traceback, unless --debug)
        return _report(command, error, 1, debug, prefix_type=True)


def _report(command, error, code: int, debug: bool, prefix_type: bool = False) -> int:
    from .hub_checks import redact

    if debug and isinstance(error, BaseException):
        traceback.print_exc()
    text = str(error).strip() or type(error).__name__
    text = redact(" ".join(text.split()))  # one line, and never a Hub token
    if prefix_type and not isinstance(error, (OSError, ValueError)):
        text = f"{type(error).__name__}: {text}"
    where = f"{PROG} {command}" if command in ("route", "calibrate", *EXTERNAL_COMMANDS) else PROG
    print(f"{where}: error: {text}", file=sys.stderr)
    return code


# ----------------------------------------------------------------------------- shared steps


def _check_encoder_option(args) -> None:
    if args.encoder is not None and args.model is not None:
        raise UsageError("--encoder picks the embedded default router's encoder; a router given with --model keeps its own.")


def _allowed(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if not names:
        raise UsageError("--allowed names no model.")
    return names


def _routing_options(router, args, prices, allowed):
    """The router's `RoutingOptions` for --mu / --prices / --allowed / --max-cost / --ood, checked once (exit 2 on error)."""
    latency = read_mapping(args.latency, "--latency") if getattr(args, "latency", None) else None
    try:
        return router.routing_options(getattr(args, "mu", None), prices, allowed, args.max_cost, getattr(args, "ood", None),
                                      latency=latency, max_latency_s=getattr(args, "max_latency", None))
    except ValueError as error:
        raise UsageError(str(error)) from None


def _source(args):
    from .prompt_sources import InputError, resolve_source

    try:
        return resolve_source(args.prompts, args.file, args.jsonl, args.parquet, args.input, args.field, args.split)
    except InputError as error:
        raise UsageError(str(error)) from None


def _set_threads(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


# ------------------------------------------------------------------------------------ route


def run_route(args) -> int:
    """`carrot route`: see the module docstring and `carrot route --help`."""
    from .prompt_sources import InputError, SourceUnavailableError
    from .atomic_writing import atomic_file
    from .sharding import ProcessGroup, merge_parts, part_path, remove_parts, shard_from_env

    shard = shard_from_env()
    fmt = args.format or ("jsonl" if args.output else "table")
    if shard.distributed and not args.output:
        raise UsageError("Under accelerate launch / torchrun, pass --output FILE: the processes write one merged file.")
    if shard.distributed and fmt != "jsonl":
        raise UsageError("Under accelerate launch / torchrun the output is JSONL; drop --format table.")
    output = Path(args.output).expanduser() if args.output else None
    if output is not None and output.is_dir():
        raise UsageError(f"--output {args.output} is a folder; give a file name.")
    _refuse_output_over_input(output, args)
    _check_encoder_option(args)
    source = _source(args)
    prices = read_prices(args.prices)
    allowed = _allowed(args.allowed)
    _set_threads(args)
    group = ProcessGroup(shard)

    # Every process runs the same steps; failures are gathered so that all of them stop together.
    error, count = None, 0
    part = part_path(output, shard.rank, shard.world_size) if shard.distributed else None
    try:
        router = load_router(args.model, progress=shard.is_main and not args.no_progress, dtype=args.dtype,
                             encoder=args.encoder, data=args.data)
        options = _routing_options(router, args, prices, allowed)
        if part is not None:
            with open(part, "w", encoding="utf-8") as handle:
                count = _route_stream(router, source, args, options, shard, handle, "jsonl")
        elif output is not None:
            with atomic_file(output) as handle:
                count = _route_stream(router, source, args, options, shard, handle, fmt)
                if count == 0:
                    raise InputError(f"No prompts in {source.name}.")
        else:
            count = _route_stream(router, source, args, options, shard, sys.stdout, fmt)
            if count == 0:
                raise InputError(f"No prompts in {source.name}.")
    except InputError as exc:
        error = (2, str(exc), exc)
    except SourceUnavailableError as exc:
        error = (1, str(exc), exc)
    except (UsageError, Failure) as exc:
        error = (2 if isinstance(exc, UsageError) else 1, str(exc), exc)
    except Exception as exc:  # noqa: BLE001
        error = (1, first_line(exc), exc)

    if not shard.distributed:
        if error:
            raise _as_cli_error(error)
        return 0

    statuses = group.gather((error[0], error[1]) if error else (0, count))
    parts = [part_path(output, rank, shard.world_size) for rank in range(shard.world_size)]
    failed = [(rank, status) for rank, status in enumerate(statuses) if status[0] != 0]
    if failed:
        remove_parts([part])
        if error:
            raise _as_cli_error(error)
        rank, (code, message) = failed[0]
        raise (UsageError if code == 2 else Failure)(f"process {rank} failed: {message}")
    total = sum(status[1] for status in statuses)
    if shard.is_main:
        try:
            if total == 0:
                raise UsageError(f"No prompts in {source.name}.")
            merge_parts(parts, output, check_line=_check_index)
        finally:
            remove_parts(parts)
    group.gather(None)  # the others wait for the merge, so that the output exists when all have exited
    if not output.exists():
        raise Failure("The merged output was not written (the main process failed).")
    return 0


def _refuse_output_over_input(output: Path | None, args) -> None:
    """`--output` naming the prompts' own file would replace the prompts with the decisions: refuse."""
    if output is None or not output.exists():
        return
    for option in ("file", "jsonl", "parquet", "input"):
        source = getattr(args, option, None)
        if source and Path(source).expanduser().is_file() and os.path.samefile(source, output):
            raise UsageError(
                f"--output {args.output} is the input file (--{option}): writing there would replace your "
                "prompts. Choose another output file."
            )


def _as_cli_error(error) -> Exception:
    code, message, exc = error
    cli_error = (UsageError if code == 2 else Failure)(message)
    cli_error.__cause__ = exc
    return cli_error


def _check_index(line: str, index: int) -> None:
    found = json.loads(line).get("index")
    if found != index:
        raise RuntimeError(f"Merging part files: record {index} holds index {found}; the parts are inconsistent.")


def _route_stream(router, source, args, options, shard, handle, fmt: str) -> int:
    """Route `source`'s prompts for this shard chunk by chunk, writing records to `handle`; returns the count."""
    from tqdm.auto import tqdm

    total = source.size_hint()
    if total is not None and shard.distributed:
        total = len(range(shard.rank, total, shard.world_size))
    show_bar = shard.is_main and not args.no_progress
    # delay: a bar appears only when routing takes more than a second (large inputs).
    bar = tqdm(total=total, unit="prompt", desc="routing", file=sys.stderr, dynamic_ncols=True, delay=1.0,
               disable=not show_bar)
    count = 0
    detailed = fmt == "table" and (total is not None and total <= DETAIL_LIMIT)
    if fmt == "table":
        _write_table_header(handle, detailed)
    indices, prompts = [], []
    try:
        for index, prompt in source.iter_prompts(shard.rank, shard.world_size):
            indices.append(index)
            prompts.append(prompt)
            if len(prompts) >= args.chunk_size:
                count += _route_chunk(router, indices, prompts, args, options, handle, fmt, detailed)
                bar.update(len(prompts))
                indices, prompts = [], []
        if prompts:
            count += _route_chunk(router, indices, prompts, args, options, handle, fmt, detailed)
            bar.update(len(prompts))
    finally:
        bar.close()
    return count


def _route_chunk(router, indices, prompts, args, options, handle, fmt, detailed) -> int:
    decision = router.route(prompts, batch_size=args.batch_size, options=options)
    if fmt == "jsonl":
        lines = []
        for index, record in zip(indices, decision.to_records()):
            chosen = record["predictions"][record["model"]]
            lines.append(json.dumps({"index": index, "model": record["model"], "quality": chosen["quality"],
                                     "cost": chosen["cost"], "mu": decision.mu, **{k: v for k, v in record.items()
                                                                                     if k != "model"}}))
        handle.write("\n".join(lines) + "\n")
    else:
        _write_table_rows(handle, indices, prompts, decision, detailed)
    handle.flush()
    return len(prompts)


def _write_table_header(handle, detailed: bool) -> None:
    handle.write(f"{'#':>5}  {'chosen model':<34} {'quality':>7} {'cost $':>10} {'in tok':>6} {'support':>7}  prompt\n")


def _write_table_rows(handle, indices, prompts, decision, detailed: bool) -> None:
    for row, (index, prompt) in enumerate(zip(indices, prompts)):
        column = int(decision.model_indices[row])
        flags = (" [truncated]" if decision.truncated[row] else "") + (
            " [over budget]" if decision.over_budget[row] else "") + _ood_flag(decision, row) + (
            " [no known token: fallback embedding]" if decision.fallback_embedding[row] else "")
        support = float(decision.support[row])
        support_text = "?" if math.isnan(support) else f"{support:.3f}"
        text = " ".join(prompt.split())
        text = text if len(text) <= 60 else text[:57] + "..."
        handle.write(
            f"{index:>5}  {decision.models[row]:<34} {float(decision.quality[row, column]):>7.3f} "
            f"{float(decision.cost[row, column]):>10.6f} {int(decision.input_tokens[row]):>6} {support_text:>7}  {text}{flags}\n"
        )
        if detailed:
            handle.write(f"{'':>7}{'candidate':<34} {'quality':>7} {'band':>13} {'cost $':>10} {'out tok':>7}\n")
            for col, name in enumerate(decision.candidate_models):
                mark = "*" if col == column else ("x" if not math.isfinite(float(decision.utility[row, col])) else " ")
                handle.write(
                    f"{'':>5}{mark} {name:<34} {float(decision.quality[row, col]):>7.3f} "
                    f"{float(decision.quality_low[row, col]):>6.3f}-{float(decision.quality_high[row, col]):<6.3f} "
                    f"{float(decision.cost[row, col]):>10.6f} {float(decision.output_tokens[row, col]):>7.0f}\n"
                )
            handle.write("\n")


def _ood_flag(decision, row: int) -> str:
    """The table's note on a prompt out of distribution: flagged, and what the ood policy did."""
    if decision.in_distribution[row] is not False:
        return ""
    if decision.ood_applied[row]:
        return f" [out of distribution: {decision.ood_policy}]"
    return " [out of distribution]"


# -------------------------------------------------------------------------------- calibrate


def run_calibrate(args) -> int:
    """`carrot calibrate`: the μ curve on the user's prompts and the μ meeting a target."""
    from .budget import Calibrator
    from .prompt_sources import InputError, SourceUnavailableError

    _check_encoder_option(args)
    source = _source(args)
    prices = read_prices(args.prices)
    allowed = _allowed(args.allowed)
    _set_threads(args)
    try:
        prompts = [prompt for _, prompt in source.iter_prompts()]
    except InputError as error:
        raise UsageError(str(error)) from None
    except SourceUnavailableError as error:
        raise Failure(str(error)) from None
    if not prompts:
        raise UsageError(f"No prompts in {source.name}.")
    router = load_router(args.model, progress=not args.no_progress, dtype=args.dtype, encoder=args.encoder, data=args.data)
    options = _routing_options(router, args, prices, allowed)
    started = time.perf_counter()
    predictions = router.predict(prompts, batch_size=args.batch_size,
                                 progress=not args.no_progress and len(prompts) > 4 * args.batch_size)
    calibrator = Calibrator.from_predictions(router, predictions, options=options)
    grid = [i / (args.grid - 1) for i in range(args.grid)] if args.grid > 1 else [router.config.default_mu]
    curve = calibrator.curve(grid)
    solved, target_text = None, None
    try:
        if args.target_spend is not None:
            solved = calibrator.solve_for_spend(args.target_spend)
            target_text = f"spend ≤ ${args.target_spend:g} per 1,000 prompts"
        elif args.target_quality is not None:
            solved = calibrator.solve_for_quality(args.target_quality)
            target_text = f"mean predicted quality ≥ {args.target_quality:g}"
    except ValueError as error:
        raise Failure(str(error)) from None
    elapsed = time.perf_counter() - started

    if args.json:
        print(json.dumps({
            "n_prompts": len(prompts),
            "curve": [vars(point) for point in curve],
            "solved": vars(solved) if solved else None,
            "mu": solved.mu if solved else None,
        }))
        return 0
    print(f"Predicted on {len(prompts)} prompts from {source.name} ({elapsed:.1f} s; no labels used).")
    print(f"{'mu':>6}  {'$ per 1,000':>11}  {'mean quality':>12}  most chosen")
    for point in curve:
        print(f"{point.mu:>6.3f}  {point.cost_per_1000:>11.4f}  {point.mean_quality:>12.4f}  {_top_share(point)}")
    if solved is not None:
        print(f"For {target_text}: predicted ${solved.cost_per_1000:.4f} per 1,000 prompts, "
              f"mean quality {solved.mean_quality:.4f}, {_top_share(solved)}.")
        print(f"mu = {solved.mu:.4f}")
    return 0


def _top_share(point) -> str:
    ranked = sorted(point.model_share.items(), key=lambda item: -item[1])[:2]
    return ", ".join(f"{name} {share:.0%}" for name, share in ranked)


if __name__ == "__main__":
    sys.exit(main())
