"""
The dominated-candidate check: when one candidate is cheaper and better on average than another,
does the router still find the prompts where the dearer, worse one wins?

    python -m training.dominated --splits 10 --cache-dir /work/cache/emb --log dominated.jsonl

On each table (default: both packaged ones) the pair (A, B) is chosen on the table's own train
split: among the pairs where A's mean cost is lower and its mean score higher than B's, the one
with the largest mean-score margin (`dominated_pair`). Every other candidate is dropped. On
`--splits` re-splits of the pooled two-candidate table (`training.evaluation.resplit`) the kNN
router is trained as `carrot train --kind knn` trains it (every reliability layer fitted), then
scored with each combination of its layers switched on or off (`training.ablation.set_layers`),
next to the plain CARROT-KNN reference (`carrot-knn-reference`), `random` and, with `--mlp`, the
MLP router. Per router and split, over a μ sweep:

- `b_pick_share`: the share of (prompt, μ) decisions that pick the dominated B;
- `b_picks_right`: of those picks, the share where B scores strictly above A on that prompt
  (`b_picks_not_worse`: B scores at least as high: the pick lost no quality, only money);
- at μ = 0 (quality only): how many prompts go to B, and `b_wins_found`, the share of the prompts
  where B wins (scores strictly above A) that go to B;
- `b_wins_share`: B's base rate, the share of test prompts where B scores strictly above A (the
  prompts the oracle sends to B);
- `aiq_minus_zero_router`, and `gap_closed`: that over the oracle's AIQ − zero router. The zero
  router is A alone (B is below A's hull point), so a router gains only by finding a set of B
  picks that lift mean quality above A's.

Each split's numbers are written to `--log` as a JSON line as soon as it finishes; `--summarize LOG`
summarises logs already written. Last line: JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

from training.ablation import (
    LAYERS,
    TABLES,
    add_split_benchmark_arguments,
    combination_name,
    fitted_layers,
    mean_and_error,
    set_layers,
)

# none, each layer alone (prior_shrink alone is the kNN default, `KNN_DEFAULT_LAYERS`), and all four
COMBINATIONS = ((), ("prior_shrink",), ("calibration",), ("ood_shrink",), ("caution",), LAYERS)
# The kNN default before λ was chosen for the predictions it shrinks: λ chosen for calibrated
# predictions, applied to raw ones (calibration off)
CALIBRATED_LAMBDA = "prior_shrink (λ for calibrated)"
REPORTED_COMBINATIONS = (*(combination_name(combo) for combo in COMBINATIONS), CALIBRATED_LAMBDA)


def dominated_pair(models: Sequence[str], scores: np.ndarray, cost: np.ndarray) -> dict | None:
    """
    The pair (A, B) of largest mean-score margin among those where A's mean cost is lower and its
    mean score higher than B's, from `scores` and `cost` `(n_prompts, n_models)` (NaN scores are
    left out of the means); None when no candidate dominates another.
    """
    quality = np.nanmean(np.asarray(scores, dtype=np.float64), axis=0)
    mean_cost = np.nanmean(np.asarray(cost, dtype=np.float64), axis=0)
    best = None
    for a in range(len(models)):
        for b in range(len(models)):
            if quality[a] > quality[b] and mean_cost[a] < mean_cost[b]:
                margin = float(quality[a] - quality[b])
                if best is None or margin > best["quality_margin"]:
                    best = {"cheaper_better": models[a], "dominated": models[b], "quality_margin": margin,
                            "cost_ratio": float(mean_cost[b] / mean_cost[a]),
                            "mean_quality": [float(quality[a]), float(quality[b])],
                            "mean_cost": [float(mean_cost[a]), float(mean_cost[b])]}
    return best


def pick_statistics(choices: np.ndarray, scores: np.ndarray, dominated: int, top: int = 0) -> dict:
    """
    How often `choices (n_mu, n)` (columns of `scores (n, 2)`) pick the `dominated` column, and how
    often rightly (see the module docstring); `top` is the row of μ = 0.
    """
    choices, scores = np.asarray(choices), np.asarray(scores, dtype=np.float64)
    other = 1 - dominated
    wins = scores[:, dominated] > scores[:, other]
    not_worse = scores[:, dominated] >= scores[:, other]
    picked = choices == dominated
    picks = int(picked.sum())
    at_top = picked[top]
    return {
        "b_pick_share": picks / picked.size,
        "b_picks_right": float((picked & wins[None]).sum() / picks) if picks else None,
        "b_picks_not_worse": float((picked & not_worse[None]).sum() / picks) if picks else None,
        "b_picks_mu0": int(at_top.sum()),
        "b_picks_right_mu0": float(wins[at_top].mean()) if at_top.any() else None,
        "b_wins_found_mu0": float(at_top[wins].mean()) if wins.any() else None,
        "b_wins_share": float(wins.mean()),
    }


def judged(curve, truth, dominated: int) -> dict:
    """The pick statistics of `curve` (with `choices`) and its AIQ against the zero router and the oracle."""
    from training.evaluation.evaluate import summarize

    entry = pick_statistics(curve.choices, truth.scores, dominated, curve.top) if curve.choices is not None else {}
    curve.choices = None  # no per-split bootstrap: the spread over re-splits replaces it
    results = summarize([curve], truth)
    mine = (results["routers"] if curve.kind == "router" else results["baselines"])[curve.name]
    zero, oracle = results["zero_router"]["aiq"], results["oracle"]["aiq"]
    entry["aiq_minus_zero_router"] = mine["aiq"] - zero
    entry["gap_closed"] = (mine["aiq"] - zero) / (oracle - zero) if oracle > zero else None
    entry["oracle_minus_zero_router"] = oracle - zero
    return entry


def check_split(two, embeddings, train_rows, test_rows, dominated_model: str, options: dict, k_grid, mu_steps: int,
                with_mlp: bool) -> dict:
    """Train on `train_rows` of the two-candidate table `two` and judge every router on `test_rows`."""
    from training.evaluation.baselines import random_mixing_curve, reference_knn_predictions
    from training.evaluation.curves import curve_from_predictions, ground_truth
    from training.evaluation.evaluate import router_curve
    from training.knn import train_knn_router

    train, test = two.subset(train_rows), two.subset(test_rows)
    train_embeddings, test_embeddings = embeddings[train_rows], embeddings[test_rows]
    mu_grid = np.linspace(0, 1, mu_steps)
    began = time.perf_counter()
    router, report = train_knn_router(train, k_grid=k_grid, embeddings=train_embeddings, seed=0, progress=False,
                                      reliability_layers=LAYERS, **options)  # every layer fitted, then switched
    trained = time.perf_counter()
    fitted = fitted_layers(router, report)
    row = {"n_train": int(train_rows.size), "n_test": int(test_rows.size), "k": int(report["k"]),
           "fitted": {"calibration_method": fitted["calibration_method"], "prior_shrink": fitted["prior_shrink"],
                      "prior_shrink_uncalibrated": fitted["prior_shrink_uncalibrated"],
                      "shrink_floor": fitted["ood_shrink"], "ood_pessimism": fitted["caution"]},
           "knn": {}, "baselines": {}}
    truth = None
    switches = [(combination_name(combo), fitted, combo) for combo in COMBINATIONS]
    switches.append((CALIBRATED_LAMBDA, {**fitted, "prior_shrink_uncalibrated": fitted["prior_shrink"]}, ("prior_shrink",)))
    for label, values, combo in switches:
        set_layers(router, values, combo)
        curve, truth = router_curve(router, test, mu_grid=mu_grid, embeddings=test_embeddings)
        row["knn"][label] = judged(curve, truth, truth.column(dominated_model))
    dominated = truth.column(dominated_model)
    train_truth = ground_truth(train)
    reference = reference_knn_predictions(train_embeddings, train_truth, test_embeddings)
    from training.evaluation.baselines import REFERENCE_COST_MULTIPLIER, REFERENCE_LAMBDA_GRID

    curve = curve_from_predictions("carrot-knn-reference", truth, reference["quality"], REFERENCE_COST_MULTIPLIER * reference["cost"],
                                   REFERENCE_LAMBDA_GRID, 1.0)
    row["baselines"]["carrot-knn-reference"] = judged(curve, truth, dominated)
    row["baselines"]["random"] = judged(random_mixing_curve(truth), truth, dominated)
    judged_at = time.perf_counter()
    if with_mlp:
        from training.heads import train_heads_router

        mlp, _ = train_heads_router(train, embeddings=train_embeddings, seed=0, progress=False, hidden=64, ensemble=5, **options)
        curve, _ = router_curve(mlp, test, mu_grid=mu_grid, embeddings=test_embeddings, name="mlp")
        row["baselines"]["mlp"] = judged(curve, truth, dominated)
    row["seconds"] = round(time.perf_counter() - began, 1)
    row["stage_seconds"] = {"knn_training": round(trained - began, 1), "judging": round(judged_at - trained, 1),
                            "mlp": round(time.perf_counter() - judged_at, 1)}
    return row


def check_table(name: str, splits: int, cache_dir, mu_steps: int, k_grid, with_mlp: bool, log=None, first_seed: int = 0,
                progress: bool = True) -> list[dict]:
    """Every split's row for one packaged table (see the module docstring)."""
    from carrot_hub.building import new_router
    from carrot_hub.data.packaged import read_router_defaults, resolve_table_source

    from training.embeddings import embed_table
    from training.evaluation.curves import ground_truth
    from training.evaluation.resplit import pooled_table, resplit_rows

    source = resolve_table_source(name)
    defaults = read_router_defaults(name)
    options = {key: defaults[key] for key in ("max_prompt_tokens", "truncation_side") if key in defaults}
    own_train, own_test, pooled, test_rows_in_pool = pooled_table(source)
    own_truth = ground_truth(own_train)
    pair = dominated_pair(own_truth.models, own_train.scores, own_truth.cost)
    if pair is None:
        raise ValueError(f"{name}: no candidate is cheaper and better than another on the train split.")
    base = new_router(pooled.models, pooled.prices, progress=False, **options)  # encodes only
    embeddings = torch.cat([
        embed_table(base, own_train, cache_dir=cache_dir, progress=progress),
        embed_table(base, own_test, cache_dir=cache_dir, progress=progress)[test_rows_in_pool],
    ])
    two = pooled.select_models([pair["cheaper_better"], pair["dominated"]])
    test_fraction = len(own_test) / (len(own_train) + len(own_test))
    rows = []
    for seed in range(first_seed, first_seed + splits):
        train_rows, test_rows = resplit_rows(two.tasks, test_fraction, seed)
        row = {"table": name, "seed": seed, "pair": pair,
               **check_split(two, embeddings, train_rows, test_rows, pair["dominated"], options, k_grid, mu_steps, with_mlp)}
        rows.append(row)
        if log is not None:
            log.write(json.dumps(row) + "\n")
            log.flush()
        if progress:
            print(f"{name} split {seed}: {one_line(row)} ({row['seconds']} s)", file=sys.stderr)
    return rows


def one_line(row: dict) -> str:
    parts = [f"B wins {row['knn']['none']['b_wins_share']:.3f}"]
    for label in ("none", "prior_shrink", CALIBRATED_LAMBDA, combination_name(LAYERS)):
        entry = row["knn"][label]
        parts.append(f"{label}: B {entry['b_pick_share']:.3f} gain {entry['aiq_minus_zero_router']:+.4f}")
    return "; ".join(parts)


def summarize_rows(rows: Sequence[dict]) -> dict:
    """
    Per table and router: mean and standard error over splits of every statistic, and of the
    router's gain minus the plain kNN's (`knn:none`) on the same split (`gain_minus_knn_none`).
    """
    tables = {}
    for name in dict.fromkeys(row["table"] for row in rows):
        mine = [row for row in rows if row["table"] == name]
        routers = {f"knn:{label}": [(row, row["knn"][label]) for row in mine] for label in mine[0]["knn"]}
        routers.update({label: [(row, row["baselines"][label]) for row in mine if label in row["baselines"]]
                        for label in dict.fromkeys(key for row in mine for key in row["baselines"])})
        summary = {}
        for label, pairs in routers.items():
            summary[label] = {}
            for key in pairs[0][1]:
                values = [entry[key] for _, entry in pairs if entry.get(key) is not None]
                summary[label][key] = mean_and_error(values) if values else None
            summary[label]["gain_minus_knn_none"] = mean_and_error(
                [entry["aiq_minus_zero_router"] - row["knn"]["none"]["aiq_minus_zero_router"] for row, entry in pairs])
        tables[name] = {"pair": mine[0]["pair"], "splits": len(mine), "k": [row["k"] for row in mine],
                        "fitted": [row["fitted"] for row in mine], "routers": summary}
    return tables


def brief(tables: dict) -> dict:
    """The last line: per table the pair, B's base rate and, per reported router, B's picks and gain."""
    out = {}
    for name, table in tables.items():
        routers = table["routers"]
        shown = [f"knn:{label}" for label in REPORTED_COMBINATIONS if f"knn:{label}" in routers]
        shown += [label for label in routers if not label.startswith("knn:")]

        def mean(label, key):
            value = routers[label].get(key)
            return None if value is None else round(value["mean"], 4)

        out[name] = {"pair": [table["pair"]["cheaper_better"], table["pair"]["dominated"]], "splits": table["splits"],
                     "b_wins_share": mean("knn:none", "b_wins_share"),
                     **{label: {"b_pick_share": mean(label, "b_pick_share"), "b_picks_right": mean(label, "b_picks_right"),
                                "aiq_gain": mean(label, "aiq_minus_zero_router"), "gap_closed": mean(label, "gap_closed"),
                                "gain_minus_knn_none": mean(label, "gain_minus_knn_none")}
                        for label in shown}}
    return out


def markdown(tables: dict) -> str:
    """The docs' tables: per table, one row per reported router (means over splits, ± one standard error)."""

    def cell(value, digits: int = 3, error: bool = False) -> str:
        if value is None:
            return "–"
        text = f"{value['mean']:.{digits}f}"
        return f"{text} ± {value['standard_error']:.{digits}f}" if error else text

    lines = []
    for name, table in tables.items():
        routers, pair = table["routers"], table["pair"]
        lines += [f"**{name}**: A = `{pair['cheaper_better']}`, B = `{pair['dominated']}` (train split: score "
                  f"{pair['mean_quality'][0]:.3f} against {pair['mean_quality'][1]:.3f}, B {pair['cost_ratio']:.1f}× A's cost); "
                  f"{table['splits']} re-splits; B wins on {cell(routers['knn:none']['b_wins_share'])} of the test prompts; "
                  f"oracle − zero router {cell(routers['knn:none']['oracle_minus_zero_router'], 4)}.", "",
                  "| router | B picks (of prompts × μ) | B picks right | B's wins found at μ = 0 | AIQ − zero router | share of the gap | − plain kNN (paired) |",
                  "|---|---|---|---|---|---|---|"]
        shown = [f"knn:{label}" for label in REPORTED_COMBINATIONS if f"knn:{label}" in routers]
        shown += [label for label in routers if not label.startswith("knn:")]
        for label in shown:
            entry = routers[label]
            lines.append(f"| {label} | {cell(entry.get('b_pick_share'))} | {cell(entry.get('b_picks_right'))} | "
                         f"{cell(entry.get('b_wins_found_mu0'))} | {cell(entry['aiq_minus_zero_router'], 4, True)} | "
                         f"{cell(entry['gap_closed'])} | {cell(entry['gain_minus_knn_none'], 4, True)} |")
        lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.dominated", description=__doc__.split("\n\n")[0])
    add_split_benchmark_arguments(parser, splits=10, mu_steps=101)
    parser.add_argument("--mlp", action="store_true", help="also train the MLP router on each split")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from carrot_hub.data.packaged import packaged_tables

    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    if args.summarize:
        try:
            rows = [json.loads(line) for path in args.summarize for line in open(path, encoding="utf-8") if line.strip()]
        except (OSError, json.JSONDecodeError) as error:
            print(f"python -m training.dominated: error: cannot read the logs: {error}", file=sys.stderr)
            return 2
    else:
        tables = args.data or list(TABLES)
        unknown = [name for name in tables if name not in packaged_tables()]
        if unknown or args.splits < 1 or args.mu_steps < 2:
            print(f"python -m training.dominated: error: --data takes packaged tables ({', '.join(packaged_tables())}), "
                  f"--splits at least 1 and --mu-steps at least 2; got {unknown or [args.splits, args.mu_steps]}", file=sys.stderr)
            return 2
        log = open(args.log, "a", encoding="utf-8") if args.log else None
        try:
            rows = [row for name in tables for row in check_table(name, args.splits, args.cache_dir, args.mu_steps, args.k_grid,
                                                                  args.mlp, log, args.first_seed, not args.quiet)]
        finally:
            if log is not None:
                log.close()
    if not rows:
        print("python -m training.dominated: error: no split to summarize", file=sys.stderr)
        return 2
    tables = summarize_rows(rows)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump({"tables": tables, "seconds": round(time.perf_counter() - started, 1)}, handle, indent=1)
    if args.markdown:
        print(markdown(tables))
    print(json.dumps(brief(tables)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
