"""
How much a table's one test split can say: pool its splits, draw many fresh train/test splits
(per task, seeded, the same fraction as the table's own), train the router on each train part with
the usual training code (k, calibration, shrinkage and the rest chosen out-of-fold on that part)
and score it on the test part against the zero router (the hull of the single models on the same
test part).

    python -m training.evaluation.resplit --data zeroeval-2024 --splits 30 --out resplits.json
    python -m training.evaluation.resplit --data routerbench-0shot --kind mlp --encoder static --splits 10

A table's own test split is one draw. With a few hundred prompts the best single model on it is
partly luck, and the zero router picks it with hindsight, so a router can trail it on that split
while beating it on most others. The mean difference over the re-splits, its standard error and
the share of re-splits the router wins, with the table's own split ranked among them, say which.
This is an evaluation of the method, not a way to choose it: nothing here feeds back into a
router's settings (those come from the train part alone, as in `training.train`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from carrot_hub.errors import BadInputError
from training.knn import DEFAULT_K_GRID
from training.train import _k_grid as k_grid_argument

KINDS = ("knn", "mlp")
OWN_SPLIT = "own"  # the `seed` recorded for the table's own train/test split


def pooled_table(source: str, splits: Sequence[str] = ("train", "test"), progress: bool = False):
    """
    `(own_train, own_test, pooled, test_rows_in_pool)`: the table's own two splits, and both joined
    for re-splitting. A test prompt whose id is also in the train split (RouterBench's slice has a
    few) is pooled once, as its train row, so that no prompt can fall on both sides of a re-split;
    `test_rows_in_pool` are the rows of `own_test` that the pool keeps, after all of `own_train`'s.
    The splits are read and checked as the benchmark reads them (same models, every model priced).
    """
    from carrot_hub.data.packaged import table_name
    from carrot_hub.data.routing_table import RoutingTable

    from training.prepare import load_benchmark_tables

    own_train, own_test = load_benchmark_tables(table_name(source), source, *splits, progress=progress)
    seen = set(own_train.prompt_ids)
    test_rows_in_pool = np.array([i for i, prompt_id in enumerate(own_test.prompt_ids) if prompt_id not in seen], dtype=np.int64)
    pooled = RoutingTable.concatenate([own_train, own_test.subset(test_rows_in_pool)])
    return own_train, own_test, pooled, test_rows_in_pool


def resplit_rows(tasks: Sequence[str], test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`(train_rows, test_rows)`: every task split by `test_fraction`, seeded (see `split_indices`)."""
    from carrot_hub.data.splitting import split_indices

    return split_indices(len(tasks), test_fraction, seed=seed, groups=list(tasks))


def train_router(kind: str, table, embeddings, seed: int, router_options: dict, k_grid, mlp_options: dict, folds: int = 5):
    """`(router, training report)` of `kind` trained on `table` (embeddings `(n_prompts, hidden)`)."""
    if kind == "knn":
        from training.knn import train_knn_router

        return train_knn_router(table, k_grid=k_grid, folds=folds, embeddings=embeddings, seed=seed, progress=False,
                                **router_options)
    from training.heads import train_heads_router

    return train_heads_router(table, embeddings=embeddings, seed=seed, progress=False, **mlp_options, **router_options)


def score_split(router, test_table, test_embeddings, mu_steps: int) -> dict:
    """The router's AIQ, the zero router's, and what the benchmark reports beside them, on one test part."""
    from training.evaluation.evaluate import router_curve, summarize

    curve, truth = router_curve(router, test_table, mu_grid=np.linspace(0, 1, mu_steps), embeddings=test_embeddings)
    curve.choices = None  # the spread over re-splits replaces the per-split bootstrap
    results = summarize([curve], truth)
    mine = results["routers"][curve.name]
    return {
        "aiq": mine["aiq"],
        "zero_router_aiq": results["zero_router"]["aiq"],
        "aiq_minus_zero_router": mine["aiq"] - results["zero_router"]["aiq"],
        "task_oracle_aiq": (results["task_oracle"] or {}).get("aiq"),
        "quality_mu0": mine["quality_mu0"],
        "best_single": results["best_single"],
        "cost_to_match_best": mine["cost_to_match_best"],
    }


def summarize_resplits(rows: Sequence[dict]) -> dict:
    """Mean, standard error, normal 95% interval and win share of `aiq_minus_zero_router` over the re-splits."""
    differences = np.array([row["aiq_minus_zero_router"] for row in rows], dtype=np.float64)
    n = len(differences)
    mean = float(differences.mean())
    standard_error = float(differences.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    matched = [row["cost_to_match_best"] for row in rows]
    reached = [value for value in matched if value is not None]
    return {
        "splits": n,
        "aiq_minus_zero_router": {
            "mean": mean,
            "standard_error": standard_error,
            "ci95_of_mean": [mean - 1.96 * standard_error, mean + 1.96 * standard_error],
            "min": float(differences.min()),
            "max": float(differences.max()),
            "share_above_zero": float((differences > 0).mean()),
        },
        "aiq_mean": float(np.mean([row["aiq"] for row in rows])),
        "zero_router_aiq_mean": float(np.mean([row["zero_router_aiq"] for row in rows])),
        "task_oracle_aiq_mean": _mean_or_none([row.get("task_oracle_aiq") for row in rows]),
        "quality_mu0_minus_best_single_mean": float(np.mean([row["quality_mu0"] - row["best_single"]["quality"] for row in rows])),
        "best_single_reached_share": len(reached) / n,
        "cost_to_match_best_median": float(np.median(reached)) if reached else None,
    }


def _mean_or_none(values: Sequence) -> float | None:
    return None if any(value is None for value in values) else float(np.mean(values))


def rank_of_own_split(own: dict, rows: Sequence[dict]) -> float:
    """The share of re-splits on which the router did worse against the zero router than on the table's own split."""
    differences = np.array([row["aiq_minus_zero_router"] for row in rows])
    return float((differences < own["aiq_minus_zero_router"]).mean())


def resplit_evaluation(
    source: str,
    kind: str = "knn",
    splits: int = 30,
    first_seed: int = 0,
    test_fraction: float | None = None,
    train_split: str = "train",
    test_split: str = "test",
    seed: int = 0,
    k_grid: Sequence[int] = DEFAULT_K_GRID,
    folds: int = 5,
    mlp_options: dict | None = None,
    router_options: dict | None = None,
    mu_steps: int = 201,
    cache_dir=None,
    progress: bool = False,
) -> dict:
    """
    Train and score `kind` on the table's own split and on `splits` fresh re-splits of `source`.

    Args:
        source: a folder (or Hub id) with `train_split` and `test_split`, pooled.
        test_fraction: share of each task held out (default: the own test split's share).
        router_options: `new_router` / config fields of every router (`max_prompt_tokens`,
            `truncation_side`, `encoder`, `encoder_kind`, ...); the cost scale is each train part's.
        k_grid, folds: the kNN's k values and the cross-validation folds that choose among them.
        mlp_options: `train_heads_router` options (`hidden`, `ensemble`, ...) for `kind="mlp"`.

    Returns:
        JSON-ready `{"data", "router", "method", "summary", "own_split", "splits", "seconds"}`.
    """
    from carrot_hub.building import new_router

    from training.embeddings import embed_table

    if kind not in KINDS:
        raise BadInputError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}.")
    router_options, mlp_options = dict(router_options or {}), dict(mlp_options or {})
    own_train, own_test, pooled, test_rows_in_pool = pooled_table(source, (train_split, test_split), progress=progress)
    test_fraction = test_fraction or len(own_test) / (len(own_train) + len(own_test))

    started = time.perf_counter()
    base = new_router(pooled.models, pooled.prices, progress=False, **router_options)  # encodes only
    own_train_embeddings = embed_table(base, own_train, cache_dir=cache_dir, progress=progress)
    own_test_embeddings = embed_table(base, own_test, cache_dir=cache_dir, progress=progress)
    embeddings = torch.cat([own_train_embeddings, own_test_embeddings[test_rows_in_pool]])
    draws = [(OWN_SPLIT, own_train, own_train_embeddings, own_test, own_test_embeddings)]
    for split_seed in range(first_seed, first_seed + splits):
        train_rows, test_rows = resplit_rows(pooled.tasks, test_fraction, split_seed)
        draws.append((split_seed, pooled.subset(train_rows), embeddings[train_rows], pooled.subset(test_rows), embeddings[test_rows]))
    rows = []
    for split_seed, train, train_embeddings, test, test_embeddings in draws:
        began = time.perf_counter()
        router, report = train_router(kind, train, train_embeddings, seed, router_options, k_grid, mlp_options, folds)
        row = {"seed": split_seed, "n_train": len(train), "n_test": len(test),
               **score_split(router, test, test_embeddings, mu_steps)}
        if "k" in report:
            row["k"] = report["k"]
        row["seconds"] = round(time.perf_counter() - began, 1)
        rows.append(row)
        if progress:
            print(f"split {split_seed}: AIQ {row['aiq']:.4f}, zero router {row['zero_router_aiq']:.4f}, "
                  f"difference {row['aiq_minus_zero_router']:+.4f}", file=sys.stderr)
    own, fresh = rows[0], rows[1:]
    return {
        "data": {"source": str(source), "n_prompts": len(pooled), "models": list(pooled.models),
                 "tasks": sorted(set(pooled.tasks)), "pooled_splits": [train_split, test_split],
                 "test_prompts_also_in_train": len(own_test) - len(test_rows_in_pool), "test_fraction": test_fraction},
        "router": {"kind": kind, "encoder_kind": router_options.get("encoder_kind", "transformer"), "seed": seed,
                   **{key: value for key, value in router_options.items() if value is not None},
                   **({"k_grid": list(k_grid)} if kind == "knn" else mlp_options)},
        "method": "each split: the table's rows re-split per task (numpy default_rng(seed), split_indices), "
                  "the router trained on the train part as `training.train` does (its settings chosen "
                  "out-of-fold there), scored on the test part; the zero router is the hull of the single "
                  "models on that test part, and both AIQs share that part's cost range",
        "summary": summarize_resplits(fresh),
        "own_split": {**own, "share_of_resplits_below": rank_of_own_split(own, fresh)},
        "splits": fresh,
        "seconds": round(time.perf_counter() - started, 1),
    }


def run_resplits(args: argparse.Namespace) -> dict:
    """The re-split evaluation the command line `args` describe (see the module docstring)."""
    from carrot_hub.data.packaged import packaged_tables, read_router_defaults, resolve_table_source

    check_arguments(args)
    router_options = {}
    if args.data in packaged_tables():  # the table's own default settings, chosen out-of-fold on its train split
        defaults = read_router_defaults(args.data)
        router_options.update({key: defaults[key] for key in ("max_prompt_tokens", "truncation_side") if key in defaults})
    if args.max_prompt_tokens is not None:
        router_options["max_prompt_tokens"] = args.max_prompt_tokens
    if args.encoder == "static":
        router_options["encoder_kind"] = "static"
    results = resplit_evaluation(
        resolve_table_source(args.data), kind=args.kind, splits=args.splits, first_seed=args.first_seed,
        test_fraction=args.test_fraction, train_split=args.train_split, test_split=args.test_split, seed=args.seed,
        k_grid=args.k_grid, mlp_options={"hidden": args.hidden, "ensemble": args.ensemble},
        router_options=router_options, mu_steps=args.mu_steps, cache_dir=args.cache_dir, progress=not args.quiet,
    )
    results["data"]["source"] = str(args.data)
    return results


def format_summary(results: dict) -> str:
    """A few lines for the terminal."""
    summary, own = results["summary"], results["own_split"]
    gap = summary["aiq_minus_zero_router"]
    cost = summary["cost_to_match_best_median"]
    return "\n".join([
        f"{results['data']['source']}: {results['router']['kind']} ({results['router']['encoder_kind']}) over "
        f"{summary['splits']} re-splits of {results['data']['n_prompts']} prompts",
        f"  AIQ − zero router: mean {gap['mean']:+.4f} (SE {gap['standard_error']:.4f}, 95% of the mean "
        f"[{gap['ci95_of_mean'][0]:+.4f}, {gap['ci95_of_mean'][1]:+.4f}]), range [{gap['min']:+.4f}, {gap['max']:+.4f}], "
        f"router ahead on {gap['share_above_zero']:.0%}",
        f"  best single model reached on {summary['best_single_reached_share']:.0%}; median cost to match it: "
        + ("never reached" if cost is None else f"{cost:.0%} of its cost"),
        *([] if summary["task_oracle_aiq_mean"] is None else [
            f"  mean AIQ: router {summary['aiq_mean']:.4f}, zero router {summary['zero_router_aiq_mean']:.4f}, "
            f"task oracle {summary['task_oracle_aiq_mean']:.4f} (each task's best model mix, with hindsight)"]),
        f"  the table's own split: {own['aiq_minus_zero_router']:+.4f} "
        f"(below {1 - own['share_of_resplits_below']:.0%} of the re-splits)",
    ])


def check_arguments(args: argparse.Namespace) -> None:
    """Bad options fail before any work, with what to give instead."""
    if args.splits < 2:
        raise BadInputError(f"--splits must be at least 2 (a spread needs two re-splits), got {args.splits}.")
    if args.test_fraction is not None and not 0 < args.test_fraction < 1:
        raise BadInputError(f"--test-fraction must be between 0 and 1, got {args.test_fraction}.")
    if args.mu_steps < 2:
        raise BadInputError(f"--mu-steps must be at least 2, got {args.mu_steps}.")
    if args.max_prompt_tokens is not None and args.max_prompt_tokens < 2:
        raise BadInputError(f"--max-prompt-tokens must be at least 2, got {args.max_prompt_tokens}.")
    if args.train_split == args.test_split:
        raise BadInputError(f"--train-split and --test-split are both {args.train_split!r}: the test split would be "
                            "pooled with itself. Name two different splits (e.g. train and test).")
    if args.hidden < 1 or args.ensemble < 1:
        raise BadInputError(f"--hidden and --ensemble must be at least 1, got {args.hidden} and {args.ensemble}.")
    if args.out is not None:
        out = Path(args.out)
        if out.suffix.lower() != ".json":
            raise BadInputError(f"--out writes JSON: give a file name ending in .json, not {args.out!r}.")
        if out.exists() and not args.overwrite:
            raise BadInputError(f"{args.out} already exists; pass --overwrite to replace it, or choose another --out.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.evaluation.resplit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="zeroeval-2024", help="a packaged table name or a SPROUT-layout folder (default: zeroeval-2024)")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default="test", help="the table's own test split, pooled with --train-split and ranked among the re-splits")
    parser.add_argument("--kind", choices=KINDS, default="knn")
    parser.add_argument("--encoder", choices=("transformer", "static"), default="transformer")
    parser.add_argument("--splits", type=int, default=30, help="fresh re-splits (default: 30)")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first re-split; the others follow")
    parser.add_argument("--test-fraction", type=float, help="share of each task held out (default: the table's own)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (folds, MLP initialisation)")
    parser.add_argument("--max-prompt-tokens", type=int, help="default: the packaged table's default router's, else the library's")
    parser.add_argument("--k-grid", type=k_grid_argument, default=DEFAULT_K_GRID, help="knn: the k values tried on each train part")
    parser.add_argument("--hidden", type=int, default=64, help="mlp: hidden width (default: 64)")
    parser.add_argument("--ensemble", type=int, default=5, help="mlp: seeds averaged (default: 5)")
    parser.add_argument("--mu-steps", type=int, default=201)
    parser.add_argument("--cache-dir", help="folder caching prompt embeddings between runs")
    parser.add_argument("--out", help="results JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from training.evaluation.evaluate import write_json

    args = build_parser().parse_args(argv)
    try:
        results = run_resplits(args)
    except (BadInputError, ValueError, OSError) as error:  # OSError: a missing --data folder or split
        print(f"python -m training.evaluation.resplit: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(format_summary(results))
    if args.out:
        print(f"written to {write_json(results, args.out)}")
    else:
        print(json.dumps(results["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
