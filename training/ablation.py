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
out of fold on both tables (paired means over re-splits, from the full stack and from none) and,
on its own, loses to the plain router on no held-out task by more than `HELD_OUT_TOLERANCE`.
Last line: JSON summary.
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


def fitted_layers(router) -> dict:
    """What the fit chose for each layer (kept so that layers can be switched back on)."""
    reliability = router.reliability
    return {
        "calibration": (reliability.calibration_x.clone(), reliability.calibration_y.clone()),
        "prior_shrink": router.config.prior_shrink,
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
    router.config.prior_shrink = fitted["prior_shrink"] if "prior_shrink" in on else 0.0
    router.config.shrink_floor = fitted["ood_shrink"] if "ood_shrink" in on else 1.0
    router.config.ood_pessimism = fitted["caution"] if "caution" in on else 0.0


def score_combinations(router, test_table, test_embeddings, mu_steps: int) -> dict:
    """`{combination: AIQ − zero router}` on one test part, every combination of `LAYERS`."""
    from training.evaluation.resplit import score_split

    fitted = fitted_layers(router)
    scores = {}
    for combo in all_combinations():
        set_layers(router, fitted, combo)
        result = score_split(router, test_table, test_embeddings, mu_steps)
        scores[combination_name(combo)] = result["aiq_minus_zero_router"]
    set_layers(router, fitted, LAYERS)
    return {"aiq_minus_zero_router": scores, "fitted": {
        "calibration_method": fitted["calibration_method"], "prior_shrink": fitted["prior_shrink"],
        "shrink_floor": fitted["ood_shrink"], "ood_pessimism": fitted["caution"]}}


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
        router, _ = train_knn_router(pooled.subset(train_rows), k_grid=k_grid, embeddings=embeddings[train_rows], seed=0,
                                     progress=False, reliability_layers=LAYERS, **options)  # every layer fitted, then switched
        row = {"table": name, "kind": kind, "split": label, "n_train": int(train_rows.size), "n_test": int(test_rows.size),
               **score_combinations(router, pooled.subset(test_rows), embeddings[test_rows], mu_steps),
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


def keep_layers(summaries: dict) -> dict:
    """
    Per layer: kept when, on every table's re-splits, it wins both ways (paired means > 0: the full
    stack against the stack without it, and the layer alone against no layer) and on no held-out task
    the layer alone loses more than `HELD_OUT_TOLERANCE` against the plain router.
    """
    verdict = {}
    for layer in LAYERS:
        wins = all(
            (table["layer_value"][layer][contrast] or {}).get("mean", -1.0) > 0
            for table in summaries.values() for contrast in ("full_minus_without_resplits", "alone_minus_none_resplits")
        )
        held_out = [value for table in summaries.values() for value in table["layer_value"][layer]["alone_minus_none_held_out"].values()]
        no_loss = all(value >= -HELD_OUT_TOLERANCE for value in held_out)
        verdict[layer] = {"wins_out_of_fold_on_every_table": wins, "no_held_out_task_loses": no_loss, "keep": wins and no_loss}
    return verdict


def build_parser() -> argparse.ArgumentParser:
    from training.knn import DEFAULT_K_GRID
    from training.train import _k_grid

    parser = argparse.ArgumentParser(prog="python -m training.ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", default=None, help=f"packaged table (repeatable; default: {', '.join(TABLES)})")
    parser.add_argument("--splits", type=int, default=30, help="fresh re-splits per table (default: 30)")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first re-split (to add re-splits to a --log)")
    parser.add_argument("--no-held-out-tasks", action="store_true", help="re-splits only")
    parser.add_argument("--held-out", action="append", metavar="TASK", help="hold out only this task (repeatable; default: every task)")
    parser.add_argument("--mu-steps", type=int, default=201)
    parser.add_argument("--k-grid", type=_k_grid, default=DEFAULT_K_GRID)
    parser.add_argument("--cache-dir", help="folder caching prompt embeddings")
    parser.add_argument("--out", help="results JSON (the summary and every split's scores)")
    parser.add_argument("--log", help="JSON lines, one per trained split, written as they finish")
    parser.add_argument("--summarize", nargs="+", metavar="LOG", help="only summarize --log files already written (no training)")
    parser.add_argument("--quiet", action="store_true")
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


def report(summaries: dict, splits, args, seconds: float) -> int:
    results = {"tables": summaries, "keep": keep_layers(summaries), "splits": splits, "seconds": round(seconds, 1)}
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)
    brief = {
        "splits": {name: (table["resplits"].get("none") or {}).get("n", 0) for name, table in summaries.items()},
        "keep": {layer: verdict["keep"] for layer, verdict in results["keep"].items()},
        "resplit_mean": {name: {combo: round(value["mean"], 5) for combo, value in table["resplits"].items()
                                if combo in ("none", combination_name(LAYERS), *LAYERS)} for name, table in summaries.items()},
    }
    print(json.dumps(brief))
    return 0


if __name__ == "__main__":
    sys.exit(main())
