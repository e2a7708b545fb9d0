"""
The dominated-candidate check: when one candidate is cheaper and better on average than another,
does the router still find the prompts where the dearer, worse one wins?

    python -m training.dominated --splits 10 --cache-dir /work/cache/emb --out dominated.json

On each table (default: both packaged ones) the pair (A, B) with A cheaper and better than B on the
train split by the largest quality margin is kept and every other candidate dropped. On `--splits`
re-splits of the pooled table (`training.resplit`) the kNN router is trained on the two as
`carrot train` trains it, then routes the test part over a μ sweep with each combination of its
reliability layers (see `training.ablation`). Reported, per combination: how often it picks the
dominated B (share of test prompts × μ), how often those picks are right (B scores above A on that
prompt), the same share for B's picks by chance (the share of prompts where B beats A), and AIQ −
zero router (the zero router is A alone: B is off the hull). Last line: JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

from training.ablation import LAYERS, TABLES, all_combinations, combination_name, fitted_layers, mean_and_error, set_layers


def dominated_pair(table) -> dict | None:
    """`{"cheaper_better", "dominated", "quality_margin", "cost_ratio"}` of the largest quality margin, or None."""
    quality = np.nanmean(table.scores, axis=0)
    cost = np.nanmean(table.cost(), axis=0)
    best = None
    for a in range(len(table.models)):
        for b in range(len(table.models)):
            if a != b and quality[a] > quality[b] and cost[a] < cost[b]:
                margin = float(quality[a] - quality[b])
                if best is None or margin > best["quality_margin"]:
                    best = {"cheaper_better": table.models[a], "dominated": table.models[b], "quality_margin": margin,
                            "cost_ratio": float(cost[b] / cost[a]), "mean_quality": [float(quality[a]), float(quality[b])],
                            "mean_cost": [float(cost[a]), float(cost[b])]}
    return best


def picks_of_dominated(router, test_table, test_embeddings, dominated: str, mu_grid) -> dict:
    """How often `router` picks `dominated` on `test_table` over `mu_grid`, and how often rightly."""
    from training.evaluate import router_predictions

    predictions = router_predictions(router, test_table, embeddings=test_embeddings)
    column = list(router.config.candidate_models).index(dominated)
    scores = np.nan_to_num(test_table.select_models(list(router.config.candidate_models)).scores, nan=0.0)
    other = 1 - column
    b_wins = scores[:, column] > scores[:, other]
    picks, right = 0, 0
    for mu in mu_grid:
        chosen = router.decide(predictions, mu=float(mu)).model_indices.numpy()
        picked = chosen == column
        picks += int(picked.sum())
        right += int((picked & b_wins).sum())
    total = len(test_table) * len(mu_grid)
    return {"pick_share": picks / total, "right_share_of_picks": right / picks if picks else None,
            "picks_at_mu0": None, "b_wins_share": float(b_wins.mean())}


def check_table(name: str, splits: int, cache_dir, mu_steps: int, k_grid, progress: bool) -> dict:
    from carrot_hub.building import new_router
    from carrot_hub.data.packaged import read_router_defaults, resolve_table_source

    from training.embeddings import embed_table
    from training.knn import train_knn_router
    from training.resplit import pooled_table, resplit_rows, score_split

    source = resolve_table_source(name)
    defaults = read_router_defaults(name)
    options = {key: defaults[key] for key in ("max_prompt_tokens", "truncation_side") if key in defaults}
    own_train, own_test, pooled, test_rows_in_pool = pooled_table(source)
    pair = dominated_pair(own_train)
    if pair is None:
        return {"pair": None, "note": "no candidate is cheaper and better than another on the train split"}
    base = new_router(pooled.models, pooled.prices, progress=False, **options)
    embeddings = torch.cat([
        embed_table(base, own_train, cache_dir=cache_dir, progress=progress),
        embed_table(base, own_test, cache_dir=cache_dir, progress=progress)[test_rows_in_pool],
    ])
    two = pooled.select_models([pair["cheaper_better"], pair["dominated"]])
    test_fraction = len(own_test) / (len(own_train) + len(own_test))
    mu_grid = np.linspace(0, 1, mu_steps)
    rows = []
    for seed in range(splits):
        train_rows, test_rows = resplit_rows(two.tasks, test_fraction, seed)
        router, _ = train_knn_router(two.subset(train_rows), k_grid=k_grid, embeddings=embeddings[train_rows], seed=0,
                                     progress=False, reliability_layers=LAYERS, **options)
        fitted = fitted_layers(router)
        row = {"seed": seed, "k": router.config.knn_k, "fitted": {key: value for key, value in fitted.items() if key != "calibration"}}
        for combo in all_combinations():
            set_layers(router, fitted, combo)
            result = picks_of_dominated(router, two.subset(test_rows), embeddings[test_rows], pair["dominated"], mu_grid)
            result["aiq_minus_zero_router"] = score_split(router, two.subset(test_rows), embeddings[test_rows], mu_steps)["aiq_minus_zero_router"]
            row[combination_name(combo)] = result
        rows.append(row)
        if progress:
            full = row[combination_name(LAYERS)]
            print(f"{name} split {seed}: all layers pick B on {full['pick_share']:.3f}, right {full['right_share_of_picks']}, "
                  f"none pick B on {row['none']['pick_share']:.3f}", file=sys.stderr)
    summary = {}
    for combo in all_combinations():
        label = combination_name(combo)
        rights = [row[label]["right_share_of_picks"] for row in rows if row[label]["right_share_of_picks"] is not None]
        summary[label] = {
            "pick_share": mean_and_error([row[label]["pick_share"] for row in rows]),
            "right_share_of_picks": mean_and_error(rights) if rights else None,
            "splits_with_picks": len(rights),
            "aiq_minus_zero_router": mean_and_error([row[label]["aiq_minus_zero_router"] for row in rows]),
        }
    return {"pair": pair, "b_wins_share": mean_and_error([row["none"]["b_wins_share"] for row in rows]),
            "by_layers": summary, "splits": rows}


def main(argv: Sequence[str] | None = None) -> int:
    from training.knn import DEFAULT_K_GRID
    from training.train import _k_grid

    parser = argparse.ArgumentParser(prog="python -m training.dominated", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", default=None, help=f"packaged table (default: {', '.join(TABLES)})")
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--mu-steps", type=int, default=101)
    parser.add_argument("--k-grid", type=_k_grid, default=DEFAULT_K_GRID)
    parser.add_argument("--cache-dir")
    parser.add_argument("--out", help="results JSON")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.splits < 2:
        print("error: --splits must be at least 2", file=sys.stderr)
        return 2
    started = time.perf_counter()
    results = {name: check_table(name, args.splits, args.cache_dir, args.mu_steps, args.k_grid, not args.quiet)
               for name in args.data or TABLES}
    results = {"tables": results, "seconds": round(time.perf_counter() - started, 1)}
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)
    brief = {}
    for name, table in results["tables"].items():
        if table.get("pair") is None:
            brief[name] = None
            continue
        brief[name] = {"pair": [table["pair"]["cheaper_better"], table["pair"]["dominated"]],
                       "b_wins_share": round(table["b_wins_share"]["mean"], 4),
                       **{label: {"pick_share": round(table["by_layers"][label]["pick_share"]["mean"], 4),
                                  "right": None if table["by_layers"][label]["right_share_of_picks"] is None
                                  else round(table["by_layers"][label]["right_share_of_picks"]["mean"], 4),
                                  "aiq_gain": round(table["by_layers"][label]["aiq_minus_zero_router"]["mean"], 5)}
                          for label in ("none", combination_name(LAYERS), *LAYERS)}}
    print(json.dumps(brief))
    return 0


if __name__ == "__main__":
    sys.exit(main())
