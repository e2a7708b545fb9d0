"""
Does each reliability layer earn its place out of fold? The kNN router is trained as `carrot train`
trains it (every layer fitted on the train part), then scored with each combination of its layers
switched on or off (the fitted values kept, the others set to "no change"):

- `calibration`: the per-candidate calibration map (off: identity);
- `prior_shrink`: λ, every prediction moved toward the candidate's prior (off: λ = 0);
- `ood_shrink`: the support ramp toward the prior out of distribution, the floor of the out-of-
  distribution band (off: floor 1, the prediction kept whatever its support);
- `caution`: the cautious estimate, quality lowered down the out-of-distribution band (off: p = 0).

    python -m training.ablation --splits 30 --cache-dir /work/cache/emb --out ablation.json

On each table (default: both packaged ones) it scores every combination on `--splits` fresh re-splits
(`training.evaluation.resplit`: AIQ − zero router on the test part; mean and standard error over re-splits) and
leave-one-task-out (train on the table's other tasks, score on the held-out task against that
task's zero router). A layer is worth keeping when switching it off from the full stack loses
out of fold on both tables and loses on no held-out task by more than `HELD_OUT_TOLERANCE`. The
default set is chosen forward (`choose_layers`): from no layer, add the layer whose addition wins on
every table's re-splits (paired mean over re-splits > 0) by the largest margin on its worst table
and loses no held-out task, until no layer does. Each layer's value from the full stack (all − all
but it) and alone (it − none) is reported beside. Last line: JSON summary.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

LAYERS = ("calibration", "prior_shrink", "ood_shrink", "caution")
HELD_OUT_TOLERANCE = 0.001  # AIQ a layer may lose on one held-out task and still count as not losing there
TABLES = ("routerbench-0shot", "zeroeval-2024")


def combination_name(layers: Sequence[str]) -> str:
    return "+".join(layers) if layers else "none"


def all_combinations() -> list[tuple[str, ...]]:
    return [combo for size in range(len(LAYERS) + 1) for combo in itertools.combinations(LAYERS, size)]


def fitted_layers(router, report: dict | None = None) -> dict:
    """
    What the fit chose for each layer (kept so that layers can be switched back on); with the
    training `report`, also λ chosen for uncalibrated predictions (used when calibration is off).
    """
    reliability = router.reliability
    uncalibrated = ((report or {}).get("reliability", {}).get("layers", {}).get("fitted", {})).get("prior_shrink_uncalibrated")
    return {
        "calibration": (reliability.calibration_x.clone(), reliability.calibration_y.clone()),
        "prior_shrink": router.config.prior_shrink,
        "prior_shrink_uncalibrated": router.config.prior_shrink if uncalibrated is None else uncalibrated,
        "ood_shrink": router.config.shrink_floor,
        "caution": router.config.ood_pessimism,
        "calibration_method": router.config.calibration_method,
    }


def set_layers(router, fitted: dict, on: Sequence[str]) -> None:
    """Switch `router`'s layers: those in `on` as fitted, the others to no change."""
    reliability = router.reliability
    if "calibration" in on:
        knots_x, knots_y = fitted["calibration"]
    else:
        knots_x = torch.linspace(0, 1, fitted["calibration"][0].shape[1]).repeat(fitted["calibration"][0].shape[0], 1)
        knots_y = knots_x.clone()
    reliability.calibration_x.copy_(knots_x)
    reliability.calibration_y.copy_(knots_y)
    # λ was chosen for the predictions it shrinks: calibrated ones, or raw ones when calibration is off
    shrink = fitted["prior_shrink"] if "calibration" in on else fitted.get("prior_shrink_uncalibrated", fitted["prior_shrink"])
    router.config.prior_shrink = shrink if "prior_shrink" in on else 0.0
    router.config.shrink_floor = fitted["ood_shrink"] if "ood_shrink" in on else 1.0
    router.config.ood_pessimism = fitted["caution"] if "caution" in on else 0.0


def score_combinations(router, test_table, test_embeddings, mu_steps: int, report: dict | None = None) -> dict:
    """`{combination: AIQ − zero router}` on one test part, every combination of `LAYERS` (`report`: see `fitted_layers`)."""
    from training.evaluation.resplit import score_split

    fitted = fitted_layers(router, report)
    scores = {}
    for combo in all_combinations():
        set_layers(router, fitted, combo)
        result = score_split(router, test_table, test_embeddings, mu_steps)
        scores[combination_name(combo)] = result["aiq_minus_zero_router"]
    set_layers(router, fitted, LAYERS)
    return {"aiq_minus_zero_router": scores, "fitted": {
        "calibration_method": fitted["calibration_method"], "prior_shrink": fitted["prior_shrink"],
        "prior_shrink_uncalibrated": fitted["prior_shrink_uncalibrated"], "shrink_floor": fitted["ood_shrink"], "ood_pessimism": fitted["caution"]}}


def mean_and_error(values: Sequence[float]) -> dict:
    values = np.asarray(values, dtype=np.float64)
    error = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else float("nan")
    return {"mean": float(values.mean()), "standard_error": error, "n": int(values.size)}


def ablate_table(name: str, splits: int, cache_dir, mu_steps: int, progress: bool, k_grid, log=None, first_seed: int = 0,
                 held_out_tasks: bool = True, only_tasks: Sequence[str] | None = None) -> dict:
    """Re-splits and leave-one-task-out of one packaged table (see the module docstring)."""
    from carrot_hub.building import new_router
    from carrot_hub.data.packaged import read_router_defaults, resolve_table_source

    from training.embeddings import embed_table
    from training.knn import train_knn_router
    from training.evaluation.resplit import pooled_table, resplit_rows

    source = resolve_table_source(name)
    defaults = read_router_defaults(name)
    options = {key: defaults[key] for key in ("max_prompt_tokens", "truncation_side") if key in defaults}
    own_train, own_test, pooled, test_rows_in_pool = pooled_table(source)
    test_fraction = len(own_test) / (len(own_train) + len(own_test))
    base = new_router(pooled.models, pooled.prices, progress=False, **options)
    embeddings = torch.cat([
        embed_table(base, own_train, cache_dir=cache_dir, progress=progress),
        embed_table(base, own_test, cache_dir=cache_dir, progress=progress)[test_rows_in_pool],
    ])
    tasks = np.asarray(pooled.tasks, dtype=object)
    draws = [("resplit", seed, *resplit_rows(pooled.tasks, test_fraction, seed)) for seed in range(first_seed, first_seed + splits)]
    held_out = [task for task in sorted(set(pooled.tasks)) if only_tasks is None or task in only_tasks]
    draws += [] if not held_out_tasks else [("held_out_task", task, np.flatnonzero(tasks != task), np.flatnonzero(tasks == task)) for task in held_out]
    rows = []
    for kind, label, train_rows, test_rows in draws:
        began = time.perf_counter()
        router, report = train_knn_router(pooled.subset(train_rows), k_grid=k_grid, embeddings=embeddings[train_rows], seed=0,
                                     progress=False, reliability_layers=LAYERS, **options)  # every layer fitted, then switched
        row = {"table": name, "kind": kind, "split": label, "n_train": int(train_rows.size), "n_test": int(test_rows.size),
               **score_combinations(router, pooled.subset(test_rows), embeddings[test_rows], mu_steps, report),
               "seconds": round(time.perf_counter() - began, 1)}
        rows.append(row)
        if log is not None:
            log.write(json.dumps(row) + "\n")
            log.flush()
        if progress:
            gaps = row["aiq_minus_zero_router"]
            print(f"{name} {kind} {label}: none {gaps['none']:+.4f}, all {gaps[combination_name(LAYERS)]:+.4f} "
                  f"({row['seconds']} s)", file=sys.stderr)
    return summarize_table(rows)


def summarize_table(rows: Sequence[dict]) -> dict:
    """Per combination: re-split mean and SE of AIQ − zero router; per held-out task, AIQ − that task's zero router."""
    resplits = [row for row in rows if row["kind"] == "resplit"]
    held_out = [row for row in rows if row["kind"] == "held_out_task"]
    names = list(rows[0]["aiq_minus_zero_router"])
    full = combination_name(LAYERS)
    summary = {
        "resplits": {name: mean_and_error([row["aiq_minus_zero_router"][name] for row in resplits]) for name in names} if resplits else {},
        "resplit_scores": [row["aiq_minus_zero_router"] for row in resplits],
        "held_out_tasks": {row["split"]: row["aiq_minus_zero_router"] for row in held_out},
        "layer_value": {},
        "fitted": [row["fitted"] for row in rows],
    }
    for layer in LAYERS:
        without = combination_name([other for other in LAYERS if other != layer])
        paired = [row["aiq_minus_zero_router"][full] - row["aiq_minus_zero_router"][without] for row in resplits]
        alone = [row["aiq_minus_zero_router"][layer] - row["aiq_minus_zero_router"]["none"] for row in resplits]
        summary["layer_value"][layer] = {
            "full_minus_without_resplits": mean_and_error(paired) if paired else None,
            "alone_minus_none_resplits": mean_and_error(alone) if alone else None,
            "full_minus_without_held_out": {row["split"]: row["aiq_minus_zero_router"][full] - row["aiq_minus_zero_router"][without] for row in held_out},
            "alone_minus_none_held_out": {row["split"]: row["aiq_minus_zero_router"][layer] - row["aiq_minus_zero_router"]["none"] for row in held_out},
        }
    return summary


def choose_layers(summaries: dict) -> dict:
    """
    The default set, chosen forward: `{"layers": [...], "steps": [...]}`. From no layer, each step adds
    the layer whose addition (paired over re-splits, per table) wins on every table, by the largest
    margin on its worst table, and on no held-out task loses more than `HELD_OUT_TOLERANCE`; it
    stops when no layer does. Every step's candidates are reported with their paired gains.
    """
    chosen: list[str] = []
    steps = []
    while True:
        current = combination_name([layer for layer in LAYERS if layer in chosen])
        options = {}
        for layer in (layer for layer in LAYERS if layer not in chosen):
            added = combination_name([other for other in LAYERS if other in chosen or other == layer])
            gains = {name: mean_and_error([scores[added] - scores[current] for scores in table["resplit_scores"]])
                     for name, table in summaries.items() if table["resplit_scores"]}
            held_out = {task: scores[added] - scores[current]
                        for table in summaries.values() for task, scores in table["held_out_tasks"].items()}
            eligible = bool(gains) and all(gain["mean"] > 0 for gain in gains.values()) and \
                all(value >= -HELD_OUT_TOLERANCE for value in held_out.values())
            options[layer] = {"resplit_gain": gains, "held_out_gain": held_out, "eligible": eligible}
        steps.append({"from": current, "options": options})
        eligible = [layer for layer, option in options.items() if option["eligible"]]
        if not eligible:
            return {"layers": chosen, "steps": steps}
        chosen.append(max(eligible, key=lambda layer: min(g["mean"] for g in options[layer]["resplit_gain"].values())))


def keep_layers(summaries: dict, chosen: dict | None = None) -> dict:
    """
    Per layer: `keep` when `choose_layers` puts it in the default set (`chosen`: its result, when
    already computed); beside it, whether it wins both ways on every table's re-splits (the full stack
    against the stack without it, and the layer alone against no layer) and whether, alone, it loses
    no held-out task against the plain router.
    """
    chosen = (chosen or choose_layers(summaries))["layers"]
    verdict = {}
    for layer in LAYERS:
        wins = all(
            (table["layer_value"][layer][contrast] or {}).get("mean", -1.0) > 0
            for table in summaries.values() for contrast in ("full_minus_without_resplits", "alone_minus_none_resplits")
        )
        held_out = [value for table in summaries.values() for value in table["layer_value"][layer]["alone_minus_none_held_out"].values()]
        no_loss = all(value >= -HELD_OUT_TOLERANCE for value in held_out)
        verdict[layer] = {"wins_both_ways_on_every_table": wins, "no_held_out_task_loses_alone": no_loss,
                          "keep": layer in chosen}
    return verdict


def add_split_benchmark_arguments(parser: argparse.ArgumentParser, splits: int, mu_steps: int) -> None:
    """The options every re-split benchmark over the packaged tables takes (`training.ablation`, `training.dominated`)."""
    from training.knn import DEFAULT_K_GRID
    from training.train import _k_grid

    parser.add_argument("--data", action="append", default=None, help=f"packaged table (repeatable; default: {', '.join(TABLES)})")
    parser.add_argument("--splits", type=int, default=splits, help=f"fresh re-splits per table (default: {splits})")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first re-split (to add re-splits to a --log)")
    parser.add_argument("--mu-steps", type=int, default=mu_steps)
    parser.add_argument("--k-grid", type=_k_grid, default=DEFAULT_K_GRID)
    parser.add_argument("--cache-dir", help="folder caching prompt embeddings")
    parser.add_argument("--out", help="results JSON")
    parser.add_argument("--log", help="JSON lines, one per trained split, written as they finish (appended)")
    parser.add_argument("--summarize", nargs="+", metavar="LOG", help="only summarize --log files already written (no training)")
    parser.add_argument("--markdown", action="store_true", help="also print the summary as Markdown tables (before the JSON line)")
    parser.add_argument("--quiet", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.ablation", description=__doc__.split("\n\n")[0])
    add_split_benchmark_arguments(parser, splits=30, mu_steps=201)
    parser.add_argument("--no-held-out-tasks", action="store_true", help="re-splits only")
    parser.add_argument("--held-out", action="append", metavar="TASK", help="hold out only this task (repeatable; default: every task)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from carrot_hub.data.packaged import packaged_tables

    args = build_parser().parse_args(argv)
    tables = args.data or list(TABLES)
    unknown = [name for name in tables if name not in packaged_tables()]
    if args.summarize:
        rows = [json.loads(line) for path in args.summarize for line in open(path, encoding="utf-8") if line.strip()]
        summaries = {name: summarize_table([row for row in rows if row["table"] == name]) for name in dict.fromkeys(row["table"] for row in rows)}
        return report(summaries, None, args, 0.0)
    if args.held_out:
        from carrot_hub.data.packaged import resolve_table_source
        from training.evaluation.resplit import pooled_table

        known = {task for name in tables for task in pooled_table(resolve_table_source(name))[2].tasks}
        if set(args.held_out) - known:
            print(f"error: --held-out takes tasks of the tables ({', '.join(sorted(known))}); got {sorted(set(args.held_out) - known)}",
                  file=sys.stderr)
            return 2
    if unknown or args.splits == 1 or args.splits < 0:
        print(f"error: --data takes packaged tables ({', '.join(packaged_tables())}) and --splits 0 (held-out tasks only) or at least 2; "
              f"got {unknown or args.splits}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    log = open(args.log, "a", encoding="utf-8") if args.log else None
    try:
        summaries = {name: ablate_table(name, args.splits, args.cache_dir, args.mu_steps, not args.quiet, args.k_grid, log,
                                        args.first_seed, not args.no_held_out_tasks, args.held_out) for name in tables}
    finally:
        if log is not None:
            log.close()
    return report(summaries, args.splits, args, time.perf_counter() - started)


def markdown_tables(summaries: dict, keep: dict) -> str:
    """The summary as two Markdown tables: AIQ − zero router per combination, and each layer's value."""
    full = combination_name(LAYERS)
    combos = [("none (plain CARROT-KNN)", "none"), *((f"{layer} only", layer) for layer in LAYERS), ("all four", full),
              *((f"all but {layer}", combination_name([o for o in LAYERS if o != layer])) for layer in LAYERS)]
    tasks = [(table, task) for table, summary in summaries.items() for task in summary["held_out_tasks"]]

    def mean_se(value: dict) -> str:
        return f"{value['mean']:+.4f} ± {value['standard_error']:.4f}"

    lines = ["| layers on | " + " | ".join(f"{table}: re-splits (n={summary['resplits']['none']['n']})"
                                         for table, summary in summaries.items() if summary["resplits"])
             + "".join(f" | held out: {task}" for _, task in tasks) + " |"]
    lines.append("|---" * (1 + sum(bool(s["resplits"]) for s in summaries.values()) + len(tasks)) + "|")
    for label, key in combos:
        cells = [mean_se(summary["resplits"][key]) for summary in summaries.values() if summary["resplits"]]
        cells += [f"{summaries[table]['held_out_tasks'][task][key]:+.4f}" for table, task in tasks]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| layer | " + " | ".join(f"{table}: all − all but it | {table}: it only − none"
                                           for table, summary in summaries.items() if summary["resplits"])
              + " | held out: all − all but it | held out: it only − none | keep |"]
    lines.append("|---" * (4 + 2 * sum(bool(s["resplits"]) for s in summaries.values())) + "|")
    for layer in LAYERS:
        values = [summary["layer_value"][layer] for summary in summaries.values()]
        cells = [mean_se(v[c]) for v in values if v["full_minus_without_resplits"]
                 for c in ("full_minus_without_resplits", "alone_minus_none_resplits")]
        held = ", ".join(f"{task} {x:+.4f}" for v in values for task, x in v["full_minus_without_held_out"].items())
        alone = ", ".join(f"{task} {x:+.4f}" for v in values for task, x in v["alone_minus_none_held_out"].items())
        lines.append(f"| {layer} | " + " | ".join(cells) + f" | {held} | {alone} | {'yes' if keep[layer]['keep'] else 'no'} |")
    return "\n".join(lines)


def markdown_steps(chosen: dict) -> str:
    """The forward choice as a Markdown table: each step's candidates and their paired gains."""
    lines = ["| from | add | " + "re-split gain per table (paired mean ± SE) | held-out gain per task | eligible |", "|---|---|---|---|---|"]
    for step in chosen["steps"]:
        for layer, option in step["options"].items():
            gains = ", ".join(f"{name} {g['mean']:+.4f} ± {g['standard_error']:.4f}" for name, g in option["resplit_gain"].items())
            held = ", ".join(f"{task} {value:+.4f}" for task, value in option["held_out_gain"].items())
            lines.append(f"| {step['from']} | {layer} | {gains} | {held} | {'yes' if option['eligible'] else 'no'} |")
    return "\n".join(lines) + f"\n\nChosen: {combination_name(chosen['layers'])}"


def report(summaries: dict, splits, args, seconds: float) -> int:
    chosen = choose_layers(summaries)
    results = {"tables": summaries, "keep": keep_layers(summaries, chosen), "chosen": chosen, "splits": splits,
               "seconds": round(seconds, 1)}
    if getattr(args, "markdown", False):
        print(markdown_tables(summaries, results["keep"]), end="\n\n")
        print(markdown_steps(results["chosen"]))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)
    brief = {
        "splits": {name: (table["resplits"].get("none") or {}).get("n", 0) for name, table in summaries.items()},
        "keep": {layer: verdict["keep"] for layer, verdict in results["keep"].items()},
        "chosen": combination_name(results["chosen"]["layers"]),
        "resplit_mean": {name: {combo: round(value["mean"], 5) for combo, value in table["resplits"].items()
                                if combo in ("none", combination_name(LAYERS), *LAYERS)} for name, table in summaries.items()},
    }
    print(json.dumps(brief))
    return 0


if __name__ == "__main__":
    sys.exit(main())
