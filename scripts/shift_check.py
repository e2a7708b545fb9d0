"""Shift check: how a router behaves on a task it was never trained on (leave one task out).

    python scripts/shift_check.py [--kind knn|mlp] [--data FOLDER] [--cache-dir /work/cache/emb]

For each task T of the data (RouterBench zero-shot: ARC-Challenge, MBPP, Winogrande): train a
router on the train split of the *other* tasks (its support threshold, calibration and shrinkage
chosen inside that training data only), then route the test split: the other tasks' prompts are in
distribution, T's prompts are the shifted set. Reported per held-out task and on average:

- `support_auroc`: AUROC of `support` for telling in-distribution test prompts from shifted ones;
- `overestimate` on the shifted prompts: predicted minus realised quality of the chosen model,
  mean over prompts and over 101 μ in [0, 1], for today's predictions (`raw`: the predictor
  alone, no calibration or support), for the router's (`router`) and for the router's central
  estimate (`central`: the same router with `ood_pessimism` 0); the mean also takes each task's
  positive part (an easier task's under-estimate does not offset a harder one's over-estimate);
- `ece` (15 bins, every observed cell) in distribution and shifted, raw and router;
- `aiq_in_distribution`: AIQ of routing the in-distribution test prompts, raw and router;
- `aiq_shifted`: the same on T's prompts, beside T's zero router (its single models' hull, known
  with hindsight on T: what a router that had seen T could not do worse than);
- `band_coverage`: share of candidates whose realised mean score on T lies within the mean
  `[quality_low, quality_high]` the router gave T's prompts;
- `flagged`: share of prompts with `in_distribution == False`, in distribution and shifted.

Prints one JSON object (the last line of output); `--out` also writes it to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

MU_STEPS = 101


@contextmanager
def without_pessimism(router):
    """The same router with `ood_pessimism` 0 for the duration: its central estimate out of distribution."""
    pessimism, router.config.ood_pessimism = router.config.ood_pessimism, 0.0
    try:
        yield router
    finally:
        router.config.ood_pessimism = pessimism


@contextmanager
def without_reliability(router):
    """The same predictor with no calibration or support, for the duration: today's raw predictions."""
    reliability, router.reliability = router.reliability, None
    try:
        yield router
    finally:
        router.reliability = reliability


def evaluate_split(router, table, embeddings, mu_grid):
    from carrot_hub.modeling_carrot import PromptEncoding
    from training.evaluation.curves import decide_all, ground_truth
    from training.evaluation.evaluate import count_input_tokens
    from training.evaluation.metrics import aiq, chosen_quality_gap, expected_calibration_error

    truth = ground_truth(table)
    encoding = PromptEncoding(embeddings, count_input_tokens(router, table.prompts), [False] * len(table))
    predictions = router.predict_encoded(encoding)
    cost = router.decide(predictions, mu=0.0).cost
    choices = decide_all(predictions.quality, cost, mu_grid, router.config.cost_scale)
    costs, qualities = truth.realised(choices)
    max_cost = float(max(costs.max(), truth.cost.mean(0).max()))
    return {
        "predictions": predictions,
        "truth": truth,
        "ece": expected_calibration_error(truth.raw_scores, predictions.quality.numpy())["ece"],
        "gap": chosen_quality_gap(predictions.quality.numpy(), truth.scores, choices)["mean_gap"],
        "curve": (costs, qualities),
        "aiq": aiq(costs, qualities, max_cost=max_cost),
        "zero_router_aiq": aiq(truth.cost.mean(0), truth.scores.mean(0), max_cost=max_cost),
    }


def train_router(kind, table, embeddings, seed):
    if kind == "knn":
        from training.knn import train_knn_router

        return train_knn_router(table, embeddings=embeddings, seed=seed, progress=False)
    from training.heads import train_heads_router

    return train_heads_router(table, embeddings=embeddings, seed=seed, progress=False, hidden=64, weight_decay=0.1,
                              ensemble=int(os.environ.get("SHIFT_CHECK_ENSEMBLE", "5")))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("knn", "mlp"), default="knn")
    parser.add_argument("--data", default=None, help="SPROUT-layout folder with train and test splits (default: packaged RouterBench)")
    parser.add_argument("--cache-dir", default=None, help="embedding cache folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    from carrot_hub.building import new_router
    from carrot_hub.data import load_routing_table
    from carrot_hub.default import DEFAULT_DATA_DIR
    from training.embeddings import embed_table
    from training.evaluation.metrics import auroc

    source = args.data or str(DEFAULT_DATA_DIR)
    train = load_routing_table(source, split="train", progress=False)
    test = load_routing_table(source, split="test", progress=False).select_models(train.models)
    base = new_router(train.models, train.prices)
    train_embeddings = embed_table(base, train, cache_dir=args.cache_dir, progress=False)
    test_embeddings = embed_table(base, test, cache_dir=args.cache_dir, progress=False)
    mu_grid = np.linspace(0, 1, MU_STEPS)
    train_tasks, test_tasks = np.array(train.tasks, dtype=object), np.array(test.tasks, dtype=object)
    results, started = {}, time.perf_counter()
    for task in dict.fromkeys(train.tasks):
        kept = np.flatnonzero(train_tasks != task)
        router, report = train_router(args.kind, train.subset(kept), train_embeddings[torch.as_tensor(kept)], args.seed)
        entry = {"n_train": int(kept.size)}
        for name, rows in (("in", np.flatnonzero(test_tasks != task)), ("shifted", np.flatnonzero(test_tasks == task))):
            table, embeddings = test.subset(rows), test_embeddings[torch.as_tensor(rows)]
            entry[name] = {"router": evaluate_split(router, table, embeddings, mu_grid), "n": int(rows.size)}
            with without_reliability(router) as raw:
                entry[name]["raw"] = evaluate_split(raw, table, embeddings, mu_grid)
            with without_pessimism(router) as central:
                entry[name]["central"] = evaluate_split(central, table, embeddings, mu_grid)
        support_in = entry["in"]["router"]["predictions"].support.numpy()
        support_out = entry["shifted"]["router"]["predictions"].support.numpy()
        shifted = entry["shifted"]["router"]
        realised_mean = np.nanmean(shifted["truth"].raw_scores, axis=0)
        low = shifted["predictions"].quality_low.numpy().mean(0)
        high = shifted["predictions"].quality_high.numpy().mean(0)
        results[task] = {
            "n_train": entry["n_train"],
            "n_in": entry["in"]["n"],
            "n_shifted": entry["shifted"]["n"],
            "support_auroc": auroc(np.r_[np.ones(support_in.size), np.zeros(support_out.size)], np.r_[support_in, support_out]),
            "overestimate": {"raw": entry["shifted"]["raw"]["gap"], "central": entry["shifted"]["central"]["gap"],
                             "router": shifted["gap"]},
            "overestimate_in_distribution": {"raw": entry["in"]["raw"]["gap"], "router": entry["in"]["router"]["gap"]},
            "ece": {
                "in_raw": entry["in"]["raw"]["ece"], "in_central": entry["in"]["central"]["ece"],
                "in_router": entry["in"]["router"]["ece"],
                "shifted_raw": entry["shifted"]["raw"]["ece"], "shifted_router": shifted["ece"],
            },
            "aiq_in_distribution": {"raw": entry["in"]["raw"]["aiq"], "central": entry["in"]["central"]["aiq"],
                                    "router": entry["in"]["router"]["aiq"]},
            "aiq_shifted": {"raw": entry["shifted"]["raw"]["aiq"], "central": entry["shifted"]["central"]["aiq"],
                            "router": shifted["aiq"], "zero_router": shifted["zero_router_aiq"]},
            "band_coverage": float(np.mean((realised_mean >= low) & (realised_mean <= high))),
            "flagged": {"in": float((support_in <= router.config.support_threshold).mean()),
                        "shifted": float((support_out <= router.config.support_threshold).mean())},
            "chosen": {
                "support_k": router.config.support_k,
                "support_threshold": router.config.support_threshold,
                "calibration": router.config.calibration_method,
                "shrink_floor": router.config.shrink_floor,
                "ood_pessimism": router.config.ood_pessimism,
                "ood_pessimism_support": router.config.ood_pessimism_support,
                **({"knn_k": router.config.knn_k} if args.kind == "knn" else {}),
            },
        }
    tasks = list(results)

    def mean(path):
        values = []
        for task in tasks:
            value = results[task]
            for key in path:
                value = value[key]
            values.append(value)
        return float(np.mean(values))

    summary = {
        "kind": args.kind,
        "data": source,
        "held_out_tasks": tasks,
        "mean": {
            "support_auroc": mean(["support_auroc"]),
            "overestimate_raw": mean(["overestimate", "raw"]),
            "overestimate_router": mean(["overestimate", "router"]),
            "overestimate_ratio": mean(["overestimate", "router"]) / mean(["overestimate", "raw"]),
            # the positive part per task: an under-estimate on an easier task does not offset a harder one's
            "overestimate_central": mean(["overestimate", "central"]),
            "overestimate_positive_raw": float(np.mean([max(results[t]["overestimate"]["raw"], 0.0) for t in tasks])),
            "overestimate_positive_central": float(np.mean([max(results[t]["overestimate"]["central"], 0.0) for t in tasks])),
            "overestimate_positive_router": float(np.mean([max(results[t]["overestimate"]["router"], 0.0) for t in tasks])),
            "abs_gap_raw": float(np.mean([abs(results[t]["overestimate"]["raw"]) for t in tasks])),
            "abs_gap_router": float(np.mean([abs(results[t]["overestimate"]["router"]) for t in tasks])),
            "ece_in_central": mean(["ece", "in_central"]),
            "ece_in_router": mean(["ece", "in_router"]),
            "ece_shifted_raw": mean(["ece", "shifted_raw"]),
            "ece_shifted_router": mean(["ece", "shifted_router"]),
            "aiq_in_raw": mean(["aiq_in_distribution", "raw"]),
            "aiq_in_central": mean(["aiq_in_distribution", "central"]),
            "aiq_in_router": mean(["aiq_in_distribution", "router"]),
            "aiq_shifted_raw": mean(["aiq_shifted", "raw"]),
            "aiq_shifted_central": mean(["aiq_shifted", "central"]),
            "aiq_shifted_router": mean(["aiq_shifted", "router"]),
            # the single models' hull on the held-out task, chosen with hindsight there: the bar on an unseen task
            "aiq_shifted_zero_router": mean(["aiq_shifted", "zero_router"]),
            "band_coverage": mean(["band_coverage"]),
        },
        "per_task": results,
        "seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(summary)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
