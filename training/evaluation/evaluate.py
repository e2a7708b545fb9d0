"""
Evaluate routers on a routing table's test split: sweep μ, record what the chosen models really
scored and cost, and report the field's metrics (see `training.evaluation.metrics`) next to baselines.

Realised quality and cost are the test table's true scores and dollars (see `training.evaluation.curves`
for missing cells). The router decides with its own price table, which must equal the table's for
the models evaluated (`on_price_mismatch="table"` routes with the table's prices instead).

Python:

```python
from training.evaluation.evaluate import evaluate_router
results = evaluate_router(router, test_table)          # JSON-ready dict
results["routers"]["carrot"]["aiq"], results["zero_router"]["aiq"]
```

Command line: `carrot evaluate ROUTER_FOLDER [--data SOURCE] [--split test] [--out r.json] [--plot c.png]`
(also `python -m training.evaluation.evaluate ...`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from carrot_hub.atomic_writing import atomic_file
from carrot_hub.errors import BadInputError
from carrot_hub.modeling_carrot import predicted_cost
from training.evaluation import metrics
from training.evaluation.baselines import no_training_baselines, trained_baselines
from training.evaluation.curves import CostQualityCurve, GroundTruth, ground_truth, oracle_curve
from training.evaluation.overlap import router_training_overlap, shared_prompts

DEFAULT_MU_STEPS = 101
CPT_LEVELS = (0.5, 0.8)
DEFAULT_TEST_SPLITS = ("test", "validation")  # what `carrot evaluate` judges on when no --split is given


# --------------------------------------------------------------------------- router evaluation


def align_models(router_models: Sequence[str], table, on_model_mismatch: str = "raise", router_data: str | None = None):
    """
    The test table restricted to the models the router can route to: returns `(table, allowed)`,
    with `allowed` None when the router's candidates and the table's models are the same set.
    `router_data` (the router's `config.training_data`) makes a mismatch error name both sides.
    """
    if on_model_mismatch not in ("raise", "intersect"):
        raise ValueError(f"on_model_mismatch must be 'raise' or 'intersect', not {on_model_mismatch!r}.")
    router_models, table_models = list(router_models), list(table.models)
    if set(router_models) == set(table_models):
        return table, None
    only_router = [m for m in router_models if m not in table_models]
    only_table = [m for m in table_models if m not in router_models]
    common = [m for m in router_models if m in table_models]
    if on_model_mismatch == "raise":
        data = (table.metadata or {}).get("source") if isinstance(table.metadata, dict) else None
        sides = ""
        if router_data or data:
            sides = f"The router was trained on {router_data or 'unrecorded data'} but the test data is {data or 'another table'}: "
        raise ValueError(
            f"{sides}the test data's models differ from the router's candidates (only in the router: {only_router or 'none'}; "
            f"only in the data: {only_table or 'none'}). Evaluate on the {len(common)} models they share with "
            "on_model_mismatch='intersect' (--intersect), or use matching data."
        )
    if len(common) < 2:
        raise ValueError(
            f"The router and the test data share {len(common)} model(s) ({', '.join(common) or 'none'}); "
            "routing needs at least two in common."
        )
    return table.select_models(common), common


def _check_prices(router, truth: GroundTruth, on_price_mismatch: str) -> dict | None:
    if on_price_mismatch not in ("raise", "table"):
        raise ValueError(f"on_price_mismatch must be 'raise' or 'table', not {on_price_mismatch!r}.")
    router_prices = router.config.prices
    differ = [
        m
        for m in truth.models
        if not (
            math.isclose(router_prices[m]["input"], truth.prices[m]["input"], rel_tol=1e-9, abs_tol=1e-12)
            and math.isclose(router_prices[m]["output"], truth.prices[m]["output"], rel_tol=1e-9, abs_tol=1e-12)
        )
    ]
    if not differ:
        return None
    if on_price_mismatch == "raise":
        first = differ[0]
        raise ValueError(
            f"The router's prices differ from the test data's for {differ} (e.g. {first}: router "
            f"{router_prices[first]}, data {truth.prices[first]}). Costs are judged with the data's prices; "
            "route with them too via on_price_mismatch='table' (--use-data-prices), or set the router's prices."
        )
    return {m: truth.prices[m] for m in truth.models}


def count_input_tokens(router, prompts: Sequence[str]) -> torch.Tensor:
    """Prompt tokens counted by the router's tokenizer, as `router.encode` does: `(n,)` float."""
    tokenizer = router.tokenizer
    ids = tokenizer(list(prompts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return torch.tensor([len(x) for x in ids], dtype=torch.float32)


def router_predictions(router, table, embeddings=None, batch_size: int = 64, progress: bool = False):
    """
    `PromptPredictions` for the table's prompts, from precomputed `embeddings (n, hidden)` (or a
    `PromptEncoding`) when given, else by encoding the prompts once.
    """
    from carrot_hub.modeling_carrot import PromptEncoding

    if embeddings is None:
        return router.predict(table.prompts, batch_size=batch_size, progress=progress)
    if isinstance(embeddings, PromptEncoding):
        encoding = embeddings
    else:
        embeddings = torch.as_tensor(embeddings, dtype=torch.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(table):
            raise ValueError(
                f"embeddings has shape {tuple(embeddings.shape)}; expected ({len(table)}, hidden), one row per test prompt."
            )
        encoding = PromptEncoding(embeddings, count_input_tokens(router, table.prompts), [False] * len(table))
    if encoding.embeddings.shape[0] != len(table):
        raise ValueError(f"The encoding has {encoding.embeddings.shape[0]} rows but the test table {len(table)} prompts.")
    hidden = router.embedding_size
    if encoding.embeddings.shape[1] != hidden:
        raise ValueError(
            f"The embeddings have width {encoding.embeddings.shape[1]} but the router's encoder gives {hidden}: "
            "they were made with another encoder."
        )
    return router.predict_encoded(encoding)


def router_curve(
    router,
    test_table,
    mu_grid=None,
    embeddings=None,
    on_model_mismatch: str = "raise",
    on_unscored_model: str = "raise",
    on_price_mismatch: str = "raise",
    pair: tuple[str, str] | None = None,
    name: str = "carrot",
    progress: bool = False,
) -> tuple[CostQualityCurve, GroundTruth]:
    """
    Predict once, decide for every μ with `router.decide` (no re-encoding), and score the decisions
    with the test table's true scores and costs. Returns the curve and the ground truth it used.
    """
    mu_grid = np.linspace(0, 1, DEFAULT_MU_STEPS) if mu_grid is None else np.asarray(mu_grid, dtype=np.float64)
    if mu_grid.ndim != 1 or mu_grid.size == 0 or np.any((mu_grid < 0) | (mu_grid > 1)):
        raise ValueError("mu_grid must be a non-empty 1-D array of values in [0, 1].")
    router_models = list(router.config.candidate_models)
    full_table = test_table
    table, allowed = align_models(router_models, test_table, on_model_mismatch, router_data=router.config.training_data)
    truth = ground_truth(table, on_unscored_model=on_unscored_model)
    if truth.dropped_models:
        allowed = list(truth.models)
    prices = _check_prices(router, truth, on_price_mismatch)
    predictions = router_predictions(router, full_table, embeddings=embeddings, progress=progress)
    to_truth = np.array([truth.column(m) if m in truth.models else -1 for m in router_models])

    def sweep(allowed_models, with_predictions=predictions):
        choices = np.empty((mu_grid.size, len(table)), dtype=np.int64)
        for row, mu in enumerate(mu_grid.tolist()):
            decision = router.decide(with_predictions, mu=mu, prices=prices, allowed=allowed_models)
            choices[row] = to_truth[decision.model_indices.numpy()]
        return choices

    choices = sweep(allowed)
    costs, qualities = truth.realised(choices)
    curve = CostQualityCurve(name, "router", "mu", mu_grid, costs, qualities, top=int(np.argmin(mu_grid)))
    curve.choices = choices
    curve.info = {"cost_scale": float(router.config.cost_scale), "predictor_kind": router.config.predictor_kind}
    known_tokens = with_true_output_tokens(predictions, truth, router_models)
    oracle_costs, oracle_qualities = truth.realised(sweep(allowed, known_tokens))
    curve.oracle_cost = CostQualityCurve(
        f"{name} (oracle cost)", "router", "mu", mu_grid, oracle_costs, oracle_qualities, top=curve.top,
        info={"definition": "the same router deciding with each prompt's true output tokens (its predicted quality kept)"},
    )
    if pair is not None:
        pair_choices = sweep(list(pair))
        curve.pair_fraction = (pair_choices == truth.column(pair[0])).mean(axis=1)
        curve.pair_qualities = truth.realised(pair_choices)[1]
    columns = [router_models.index(m) for m in truth.models]
    quality = predictions.quality.numpy()[:, columns]
    curve.prediction_quality = metrics.prediction_quality(
        truth.models,
        quality,
        truth.raw_scores,
        predictions.output_tokens.numpy()[:, columns],
        truth.output_tokens,
    )
    input_prices, output_prices = router.resolve_prices(prices)
    predicted_dollars = predicted_cost(predictions.input_tokens, predictions.output_tokens, input_prices, output_prices)
    curve.cost_prediction = metrics.cost_prediction_errors(
        truth.models,
        predicted_dollars.numpy()[:, columns],
        truth.cost,
        predictions.output_tokens.numpy()[:, columns],
        truth.output_tokens,
    )
    curve.prediction_quality.update(reliability_report(router, predictions, quality, truth, choices))
    curve.support = predictions.support.numpy() if predictions.support is not None else None
    return curve, truth


def with_true_output_tokens(predictions, truth: GroundTruth, router_models: Sequence[str]):
    """
    `predictions` with each cell's output tokens replaced by the test table's true count, where the
    table knows it (other cells keep the prediction): what an "oracle cost" router would see.
    """
    from dataclasses import replace

    tokens = predictions.output_tokens.clone()
    for column, model in enumerate(router_models):
        if model in truth.models:
            true = torch.as_tensor(truth.output_tokens[:, truth.column(model)], dtype=tokens.dtype)
            tokens[:, column] = torch.where(torch.isnan(true), tokens[:, column], true)
    return replace(predictions, output_tokens=tokens)


def reliability_report(router, predictions, quality: np.ndarray, truth: GroundTruth, choices: np.ndarray) -> dict:
    """
    How far the router's quality can be trusted on this split: `calibration` (ECE and the
    reliability diagram's bins over every observed cell), `chosen_quality_gap` (predicted minus
    realised quality of the chosen model, mean over prompts and over the μ sweep) and `support`
    (its mean and the share of prompts out of distribution; None for a router saved before support).
    """
    support = predictions.support.numpy() if predictions.support is not None else np.full(len(quality), np.nan)
    known = ~np.isnan(support)
    return {
        "calibration": metrics.expected_calibration_error(truth.raw_scores, quality),
        "chosen_quality_gap": metrics.chosen_quality_gap(quality, truth.scores, choices),
        "support": None if not known.any() else {
            "mean": float(support[known].mean()),
            "threshold": float(router.config.support_threshold),
            "out_of_distribution": float((support[known] <= router.config.support_threshold).mean()),
        },
    }


def shift_report(router, curve: CostQualityCurve, shifted_table, mu_grid, name: str, progress: bool = False, **options) -> dict:
    """
    The router on a second, "shifted" test set next to the first (whose curve is `curve`): the AUROC
    of `support` for telling the first set's prompts (positives) from the shifted ones, and the
    shifted set's calibration, chosen-model gap and share flagged out of distribution.
    """
    shifted_curve, _ = router_curve(router, shifted_table, mu_grid, name=f"{name} (shifted)", progress=progress, **options)
    report = {"n_prompts": len(shifted_table), "support_auroc": None}
    if curve.support is not None and shifted_curve.support is not None:
        in_support, out_support = curve.support, shifted_curve.support
        if not (np.isnan(in_support).any() or np.isnan(out_support).any()):
            labels = np.r_[np.ones(in_support.size), np.zeros(out_support.size)]
            report["support_auroc"] = metrics.auroc(labels, np.r_[in_support, out_support])
    prediction = shifted_curve.prediction_quality
    report.update({key: prediction[key] for key in ("calibration", "chosen_quality_gap", "support")})
    report["aiq"] = metrics.aiq(shifted_curve.costs, shifted_curve.qualities)
    if report["support_auroc"] is None:
        report["note"] = "support unknown: the router was saved before support existed"
    return report


def evaluate_router(
    router,
    test_table,
    mu_grid=None,
    embeddings=None,
    on_model_mismatch: str = "raise",
    on_unscored_model: str = "raise",
    on_price_mismatch: str = "raise",
    pair: tuple[str, str] | None = None,
    name: str = "carrot",
    progress: bool = False,
) -> dict:
    """
    Evaluate one router on a test table (see the module docstring for the ground truth).

    Args:
        router: a `CarrotRouter`.
        test_table: a `RoutingTable` with prices.
        mu_grid: μ values to sweep, default `np.linspace(0, 1, 101)`.
        embeddings: `(n, hidden)` precomputed embeddings of the test prompts (or a `PromptEncoding`).
        on_model_mismatch: `"raise"` if the test models differ from the router's candidates, or
            `"intersect"` to evaluate on the models they share (the router restricted by `allowed=`).
        on_unscored_model: `"raise"` or `"drop"` for a model with no observed score.
        on_price_mismatch: `"raise"` or `"table"` (route with the data's prices).
        pair: `(strong, weak)` for APGR/CPT; default `default_pair(truth)`.

    Returns:
        The results dict of [`summarize`] with the router under `results["routers"][name]`.
    """
    table, _ = align_models(router.config.candidate_models, test_table, on_model_mismatch, router.config.training_data)
    truth = ground_truth(table, on_unscored_model=on_unscored_model)
    pair = pair or default_pair(truth)
    curve, truth = router_curve(
        router, test_table, mu_grid, embeddings, on_model_mismatch, on_unscored_model, on_price_mismatch, pair, name, progress
    )
    return summarize([curve, *no_training_baselines(truth, pair)], truth, pair)


# ------------------------------------------------------------------------------------ summary


def default_pair(truth: GroundTruth) -> tuple[str, str] | None:
    """
    RouteLLM-style strong/weak pair: strong = the best single model; weak = the best model costing
    at most a tenth of it (else the cheapest model). None when no weak model is worse than strong.
    """
    mean_cost, mean_quality = truth.cost.mean(0), truth.scores.mean(0)
    strong = metrics.best_single_model(mean_quality, mean_cost)
    cheap = [j for j in range(len(truth.models)) if j != strong and mean_cost[j] <= mean_cost[strong] / 10]
    if cheap:
        weak = max(cheap, key=lambda j: (mean_quality[j], -mean_cost[j]))
    else:
        weak = min((j for j in range(len(truth.models)) if j != strong), key=lambda j: mean_cost[j])
    if not mean_quality[strong] > mean_quality[weak]:
        return None
    return truth.models[strong], truth.models[weak]


def _check_pair(truth: GroundTruth, pair) -> tuple[str, str] | None:
    if pair is None:
        return None
    strong, weak = pair
    for name in (strong, weak):
        if name not in truth.models:
            raise ValueError(f"The strong/weak pair names {name!r}, which is not a model of the test data ({truth.models}).")
    if strong == weak:
        raise ValueError("The strong and weak models of the pair must differ.")
    return strong, weak


def summarize(curves: Sequence[CostQualityCurve], truth: GroundTruth, pair: tuple[str, str] | None = None) -> dict:
    """
    The JSON-ready results of one evaluation: every curve's metrics on one shared cost range.

    Keys: `data` (prompts, models, missing cells, cost definition), `best_single`, `zero_router`,
    `task_oracle` (None with one task), `oracle`, `single_models`, `pair`, `aiq_max_cost`, `routers`
    and `baselines` (name → metrics: `aiq`, `quality_mu0`, `cost_mu0`, `cost_to_match_best`
    (fraction of the best single model's cost, hull-interpolated; None when never reached),
    `cost_to_match_best_points` (no interpolation), `apgr`, `cpt50`, `cpt80`, `prediction_quality`,
    `points`).
    """
    pair = _check_pair(truth, pair)
    mean_cost, mean_quality = truth.cost.mean(0), truth.scores.mean(0)
    best = metrics.best_single_model(mean_quality, mean_cost)
    best_quality, best_cost = float(mean_quality[best]), float(mean_cost[best])
    oracle = oracle_curve(truth)
    variants = [c.oracle_cost for c in curves if c.oracle_cost is not None]
    task_frontier = None
    if truth.tasks is not None and len(set(truth.tasks)) > 1:
        task_frontier = metrics.task_hull(truth.scores, truth.cost, truth.tasks)
    max_cost = float(max([mean_cost.max(), *[c.costs.max() for c in [*curves, *variants]], oracle.costs.max(),
                          *([] if task_frontier is None else [task_frontier[0].max()])]))

    def match(costs, qualities, interpolate):
        value = metrics.cost_to_reach(costs, qualities, best_quality, interpolate=interpolate)
        return None if value is None else value / best_cost

    pair_info = None
    if pair is not None:
        q_strong, q_weak = float(mean_quality[truth.column(pair[0])]), float(mean_quality[truth.column(pair[1])])
        if q_strong > q_weak:
            pair_info = {"strong": pair[0], "weak": pair[1], "strong_quality": q_strong, "weak_quality": q_weak}

    def describe(curve: CostQualityCurve) -> dict:
        entry = {
            "kind": curve.kind,
            "aiq": metrics.aiq(curve.costs, curve.qualities, max_cost),
            "quality_mu0": float(curve.qualities[curve.top]),
            "cost_mu0": float(curve.costs[curve.top]),
            "best_quality": float(curve.qualities.max()),
            "cost_to_match_best": match(curve.costs, curve.qualities, True),
            "cost_to_match_best_points": match(curve.costs, curve.qualities, False),
            "apgr": None,
            "cpt50": None,
            "cpt80": None,
        }
        if pair_info is not None and curve.pair_fraction is not None:
            args = (curve.pair_fraction, curve.pair_qualities, pair_info["strong_quality"], pair_info["weak_quality"])
            entry["apgr"] = metrics.apgr(*args)
            entry["cpt50"], entry["cpt80"] = (metrics.cpt(*args, level) for level in CPT_LEVELS)
        entry["prediction_quality"] = curve.prediction_quality
        if curve.cost_prediction is not None:
            entry["cost_prediction"] = curve.cost_prediction
        if curve.oracle_cost is not None:
            variant = curve.oracle_cost
            entry["oracle_cost"] = {
                "aiq": metrics.aiq(variant.costs, variant.qualities, max_cost),
                "quality_mu0": float(variant.qualities[variant.top]),
                "cost_to_match_best": match(variant.costs, variant.qualities, True),
                "definition": variant.info.get("definition"),
                "points": {"mu": variant.params.tolist(), "cost": variant.costs.tolist(), "quality": variant.qualities.tolist()},
            }
            entry["aiq_lost_to_cost_prediction"] = entry["oracle_cost"]["aiq"] - entry["aiq"]
        if curve.choices is not None:
            entry["aiq_vs_zero_router"] = metrics.aiq_vs_zero_router(truth.scores, truth.cost, curve.choices)
        entry["info"] = curve.info
        entry["points"] = {
            curve.param_name: curve.params.tolist(),
            "cost": curve.costs.tolist(),
            "quality": curve.qualities.tolist(),
        }
        if curve.pair_fraction is not None:
            entry["pair_points"] = {"strong_fraction": curve.pair_fraction.tolist(), "quality": curve.pair_qualities.tolist()}
        return entry

    results = {
        "data": {
            "n_prompts": truth.n_prompts,
            "models": truth.models,
            "missing_scores": truth.missing_scores,
            "missing_costs": truth.missing_costs,
            "dropped_models": truth.dropped_models,
            "quality": "true score of the chosen model; missing scores count as wrong (0)",
            "cost": "true dollars: the data's input and output token counts times its price table "
            "(missing token counts: the model's mean)",
            "prices": truth.prices,
        },
        "aiq_max_cost": max_cost,
        "best_single": {"model": truth.models[best], "quality": best_quality, "cost": best_cost},
        "single_models": {
            m: {"quality": float(mean_quality[j]), "cost": float(mean_cost[j])} for j, m in enumerate(truth.models)
        },
        "zero_router": {
            "aiq": metrics.aiq(mean_cost, mean_quality, max_cost),
            "quality_mu0": best_quality,
            "cost_to_match_best": 1.0,
            "hull": dict(zip(("cost", "quality"), (a.tolist() for a in metrics.upper_hull(mean_cost, mean_quality)))),
        },
        "oracle": {
            "quality": float(oracle.qualities[oracle.top]),
            "cost": float(oracle.costs[oracle.top]),
            "cost_fraction_of_best": float(oracle.costs[oracle.top]) / best_cost,
            "aiq": metrics.aiq(oracle.costs, oracle.qualities, max_cost),
            "aiq_point": metrics.aiq(oracle.costs[oracle.top : oracle.top + 1], oracle.qualities[oracle.top : oracle.top + 1], max_cost),
            "quality_mu0": float(oracle.qualities[oracle.top]),
            "cost_to_match_best": match(oracle.costs, oracle.qualities, True),
            "points": {"mu": oracle.params.tolist(), "cost": oracle.costs.tolist(), "quality": oracle.qualities.tolist()},
            "definition": "per prompt the cheapest model with the best true score; `aiq` sweeps μ with "
            "true scores and costs (the ceiling curve), `aiq_point` is the single μ=0 point",
        },
        "task_oracle": None if task_frontier is None else _task_oracle(*task_frontier, max_cost, match),
        "pair": pair_info,
        "routers": {},
        "baselines": {},
    }
    if pair_info is not None:
        results["pair"]["definition"] = (
            "RouteLLM's APGR and CPT with cost measured as the fraction of prompts sent to the strong model; "
            "multi-model routers are restricted to the pair (allowed=[strong, weak]) for these figures"
        )
    for curve in curves:
        section = "routers" if curve.kind == "router" else "baselines"
        results[section][curve.name] = describe(curve)
    return results


def _task_oracle(costs: np.ndarray, qualities: np.ndarray, max_cost: float, match) -> dict:
    """The results entry of the task-level routers' frontier (`metrics.task_hull`, vertices `(k,)` each)."""
    return {
        "aiq": metrics.aiq(costs, qualities, max_cost),
        "quality_mu0": float(qualities[-1]),
        "cost_mu0": float(costs[-1]),
        "cost_to_match_best": match(costs, qualities, True),
        "hull": {"cost": costs.tolist(), "quality": qualities.tolist()},
        "definition": "each task's prompts sent to the model mix that is best for that task, known with hindsight "
        "from the test split's per-task means (the zero router's hindsight, per task); what a router that "
        "learns only which model suits which task can reach at most",
    }


def format_table(results: dict) -> str:
    """The results as a fixed-width text table for the terminal."""
    header = (
        f"{'name':<28} {'AIQ':>6} {'q(μ=0)':>7} {'$ μ=0':>9} {'match':>7} {'APGR':>6} {'CPT50':>6} {'CPT80':>6} {'AUROC':>6}"
        f" {'$err':>6} {'AIQ-$':>7}"
    )
    lines = [header, "-" * len(header)]

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    def row(name, entry):
        prediction = entry.get("prediction_quality") or {}
        lines.append(
            f"{name:<28.28} {fmt(entry.get('aiq'), '6.4f')} {fmt(entry.get('quality_mu0'), '7.4f')} "
            f"{fmt(entry.get('cost_mu0', entry.get('cost')), '9.6f')} {fmt(entry.get('cost_to_match_best'), '7.1%')} "
            f"{fmt(entry.get('apgr'), '6.3f')} {fmt(entry.get('cpt50'), '6.1%')} {fmt(entry.get('cpt80'), '6.1%')} "
            f"{fmt(prediction.get('mean_auroc'), '6.3f')}{'*' if prediction.get('auroc_labels') == metrics.THRESHOLD_LABELS else ' '}"
            f"{fmt((entry.get('cost_prediction') or {}).get('mean_cost_relative_error'), '6.1%')} "
            f"{fmt(entry.get('aiq_lost_to_cost_prediction'), '7.4f')}"
        )

    for name, entry in results["routers"].items():
        row(name, entry)
    for name, entry in results["baselines"].items():
        row(name, entry)
    row("zero router (single models)", results["zero_router"])
    if results.get("task_oracle"):
        row("task oracle (best per task)", results["task_oracle"])
    row("oracle", results["oracle"])
    best = results["best_single"]
    lines.append(
        f"best single model: {best['model']} quality {best['quality']:.4f} at ${best['cost']:.6f}/prompt; "
        f"'match' = cost to reach its quality as a fraction of its cost"
    )
    lines.append(
        "'$err' = mean over candidates of |predicted − true| dollars / true dollars; "
        "'AIQ-$' = AIQ lost to cost prediction (the same router with true output tokens, minus it)"
    )
    if results.get("pair"):
        lines.append(f"APGR/CPT pair: strong {results['pair']['strong']}, weak {results['pair']['weak']}")
    versus = {name: entry["aiq_vs_zero_router"] for section in ("routers", "baselines")
              for name, entry in results[section].items() if entry.get("aiq_vs_zero_router")}
    if versus:
        resamples = next(iter(versus.values()))["resamples"]
        lines.append(f"AIQ − zero router [95% interval, {resamples:,} paired bootstrap resamples of the prompts]: " + "; ".join(
            f"{name} {v['difference']:+.4f} [{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]" for name, v in versus.items()))
    fractional = {name: entry["prediction_quality"] for section in ("routers", "baselines")
                  for name, entry in results[section].items()
                  if (entry.get("prediction_quality") or {}).get("auroc_labels") == metrics.THRESHOLD_LABELS}
    if fractional:
        rho = ", ".join(f"{name} {fmt(p.get('mean_spearman'), '.3f')}" for name, p in fractional.items())
        lines.append(f"AUROC*: the scores are fractional, so AUROC is against score ≥ 0.5; threshold-free, "
                     f"Spearman ρ of predicted and true score: {rho}")
    return "\n".join(lines)


def write_json(results: dict, path) -> Path:
    """Write results as JSON (refusing to replace a directory); returns the path."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; give a file name such as {path / 'results.json'}.")
    text = json.dumps(results, indent=2, allow_nan=False, default=_jsonable)
    with atomic_file(path) as handle:
        handle.write(text)
    return path


def _jsonable(value):
    """JSON fallback for numpy / torch values and paths found in training reports."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# ------------------------------------------------------------------------------ command line


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of `carrot evaluate` / `python -m training.evaluation.evaluate`."""
    parser.add_argument("router", nargs="+", help="router folder(s) (or Hub ids) to evaluate")
    parser.add_argument("--data", default=None,
                        help="routing data: a packaged table name (e.g. zeroeval-2024), a folder or a Hub id "
                             "(default: the packaged RouterBench zero-shot data)")
    parser.add_argument("--split", default=None,
                        help="split to evaluate on (default: test when the data has one, else validation; said on stderr)")
    parser.add_argument("--mu-steps", type=int, default=DEFAULT_MU_STEPS, help="number of μ values in [0, 1] (default: 101)")
    parser.add_argument("--pair", default=None, help="strong,weak models for APGR/CPT (default: best model, best model at ≤10%% of its cost)")
    parser.add_argument("--intersect", action="store_true", help="evaluate on the models shared by router and data")
    parser.add_argument("--drop-unscored", action="store_true", help="leave out models with no observed score")
    parser.add_argument("--use-data-prices", action="store_true", help="route with the data's prices when they differ from the router's")
    parser.add_argument(
        "--baselines",
        action="store_true",
        help="also train and evaluate the reference CARROT-KNN, RouterBench and RouteLLM-MF baselines on --train-split",
    )
    parser.add_argument("--train-split", default="train", help="split the --baselines are trained on (default: train)")
    parser.add_argument("--allow-overlap", action="store_true",
                        help="train the --baselines even on a split that is, or shares prompts with, the evaluated one")
    parser.add_argument("--cache-dir", default=None, help="cache prompt embeddings here")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--plot", default=None, help="write the cost–quality curves as a PNG here")
    parser.add_argument("--reliability-plot", default=None,
                        help="write the reliability diagram (mean score against mean predicted quality) as a PNG here")
    parser.add_argument("--shifted-data", default=None,
                        help="a second routing data source, e.g. tasks the router never saw: report the AUROC of "
                             "support for telling it from --data, and its calibration")
    parser.add_argument("--shifted-split", default="test", help="split of --shifted-data (default: test)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def run_evaluate(args: argparse.Namespace) -> int:
    """Run `carrot evaluate`: load router(s) and data, evaluate, print the table, write JSON / PNG."""
    from carrot_hub.modeling_carrot import CarrotRouter
    from carrot_hub.progress import quiet_progress_bars

    if args.mu_steps < 2:
        raise BadInputError(f"--mu-steps must be at least 2, got {args.mu_steps}.")
    check_output_file(args.out, "--out", ".json")  # before the run, not after it
    check_output_file(args.plot, "--plot", ".png")
    check_output_file(args.reliability_plot, "--reliability-plot", ".png")
    for source_router in args.router:
        check_router_source(source_router)
    pair = _pair_option(args.pair)
    source, described = _data_source(args.data)
    progress = not args.quiet
    split, table = load_test_split(source, args.split, progress=progress)
    note = "" if args.split or split == "test" else " (the data has no 'test' split)"
    print(f"Evaluating on {described}, split {split!r}{note}: {len(table)} prompts.", file=sys.stderr)
    train = _baseline_training_split(source, split, table, args) if args.baselines else None
    _check_pair_models(pair, table.models)
    mu_grid = np.linspace(0, 1, args.mu_steps)
    options = dict(
        on_model_mismatch="intersect" if args.intersect else "raise",
        on_unscored_model="drop" if args.drop_unscored else "raise",
        on_price_mismatch="table" if args.use_data_prices else "raise",
    )
    shifted = None
    if args.shifted_data:
        _, shifted = load_test_split(str(args.shifted_data), args.shifted_split, progress=progress)
    curves, truth, first_router, overlaps, shifts = [], None, None, {}, {}
    names = _unique_names(args.router)
    try:
        for name, source_router in zip(names, args.router):
            with quiet_progress_bars(not progress):
                router = CarrotRouter.from_pretrained(source_router)
            if first_router is None:
                first_router = router
            table_for_router, _ = align_models(
                router.config.candidate_models, table, options["on_model_mismatch"], router.config.training_data
            )
            router_truth = ground_truth(table_for_router, on_unscored_model=options["on_unscored_model"])
            if truth is not None and router_truth.models != truth.models:
                raise ValueError("The routers evaluated together must route over the same models; evaluate them one by one.")
            truth = router_truth
            pair = pair or default_pair(truth)
            encoding = router.encode(table.prompts, progress=progress)
            overlaps[name] = router_training_overlap(router, source_router, table.prompts, encoding.embeddings)
            curve, truth = router_curve(router, table, mu_grid, embeddings=encoding, pair=pair, name=name, progress=progress, **options)
            curves.append(curve)
            if shifted is not None:
                shifts[name] = shift_report(router, curve, shifted, mu_grid, name, progress=progress, **options)
        if train is not None:
            curves.extend(_trained_baselines_for(first_router, train, table, truth, pair, mu_grid, args))
    except ValueError as error:  # mismatched models or prices, unscored models: bad input for this data
        raise BadInputError(f"{error} (evaluated data: {described}, split {split!r})") from None
    results = summarize([*curves, *no_training_baselines(truth, pair)], truth, pair)
    results["data"]["source"], results["data"]["split"] = str(source), split
    results["data"]["router_training_overlap"] = overlaps
    for name, report in shifts.items():
        report["source"], report["split"] = str(args.shifted_data), args.shifted_split
        results["routers"][name]["shift"] = report
    print(format_table(results))
    print(format_reliability(results))
    for name, overlap in overlaps.items():
        if overlap and overlap["shared_prompts"]:
            print(f"warning: {name} was trained on {overlap['shared_prompts']} of the {overlap['of']} evaluated prompts "
                  f"({overlap['method']}); its figures are inflated on those.", file=sys.stderr)
    if args.out:
        print(f"results written to {write_json(results, args.out)}")
    if args.plot:
        from training.evaluation.plots import plot_curves

        print(f"curves drawn in {plot_curves(results, args.plot)}")
    if args.reliability_plot:
        from training.evaluation.plots import plot_reliability

        print(f"reliability diagram drawn in {plot_reliability(results, args.reliability_plot)}")
    return 0


def format_reliability(results: dict) -> str:
    """Per router: ECE, the chosen model's mean quality gap, the share out of distribution, and the shift check."""
    lines = []
    for name, entry in results["routers"].items():
        prediction = entry.get("prediction_quality") or {}
        if "calibration" not in prediction:
            continue
        gap = prediction["chosen_quality_gap"]["mean_gap"]
        support = prediction.get("support")
        support_text = "support unknown (router saved before support)" if support is None else (
            f"{support['out_of_distribution']:.1%} of prompts out of distribution (support ≤ {support['threshold']:g})")
        lines.append(f"{name}: ECE {prediction['calibration']['ece']:.4f}; chosen model's predicted − realised quality "
                     f"{gap:+.4f} (mean over μ); {support_text}")
        shift = entry.get("shift")
        if shift:
            auroc = "unknown" if shift["support_auroc"] is None else f"{shift['support_auroc']:.4f}"
            lines.append(f"  shifted set ({shift['n_prompts']} prompts): support AUROC {auroc}; ECE "
                         f"{shift['calibration']['ece']:.4f}; chosen model's predicted − realised quality "
                         f"{shift['chosen_quality_gap']['mean_gap']:+.4f}")
    return "\n".join(lines)


def _data_source(data) -> tuple[str, str]:
    """`(source, description)`: `--data`, else the packaged RouterBench copy (said, so no one mistakes it for theirs)."""
    if data is not None:
        from carrot_hub.data import resolve_table_source

        return resolve_table_source(data, strict=False), str(data)  # a packaged table's name reads its folder
    from carrot_hub.default import DEFAULT_DATA_DIR

    return str(DEFAULT_DATA_DIR), "the packaged RouterBench zero-shot data (no --data given)"


def load_test_split(source, split: str | None = None, progress: bool = False):
    """
    `(split, table)`: the named split, else the data's `test` split, else its `validation` split.
    A split that does not exist is bad input (`BadInputError`, exit code 2), naming the
    splits there are.
    """
    from carrot_hub.data import MissingSplitError, load_routing_table

    for candidate in [split] if split else list(DEFAULT_TEST_SPLITS):
        try:
            return candidate, load_routing_table(source, split=candidate, progress=progress)
        except MissingSplitError as error:
            if split:
                raise BadInputError(f"{error} Pass one of them with --split.") from None
            last = error
    raise BadInputError(f"{last} Neither {' nor '.join(map(repr, DEFAULT_TEST_SPLITS))} exists: pass the held-out split with --split.")


def _pair_option(text: str | None) -> tuple[str, str] | None:
    """`--pair strong,weak` as `(strong, weak)`; exit code 2 unless it names two different models."""
    if not text:
        return None
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise BadInputError(f"--pair takes two model names separated by a comma, got {text!r:.200}.")
    if parts[0] == parts[1]:
        raise BadInputError(f"--pair names {parts[0]!r:.100} twice: give a strong and a different weak model.")
    return parts[0], parts[1]


def _check_pair_models(pair: tuple[str, str] | None, models) -> None:
    """Exit code 2 when `--pair` names a model the evaluated data does not have."""
    unknown = [name for name in pair or () if name not in models]
    if unknown:
        raise BadInputError(f"--pair names {unknown[0]!r:.100}, which is not a model of the evaluated data "
                            f"(its models: {', '.join(models)}).")


def check_router_source(source: str) -> None:
    """A router argument that is neither a router folder nor shaped like a Hub id (owner/name) fails here, in one line."""
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise BadInputError(f"{source} is not a router folder: it has no config.json.")
        return
    from carrot_hub.hub_checks import HUB_ID

    if source.startswith(("/", ".", "~")) or not HUB_ID.match(source):
        raise BadInputError(f"No router folder {source}: it does not exist (and is not a Hub id such as owner/name).")


def check_output_file(path, option: str, suffix: str) -> None:
    """Refuse (exit code 2) an output file that cannot be written, before any work is done."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"{option} {path} is a folder; give a file name such as {path / ('results' + suffix)}.")
    if suffix == ".png" and path.suffix.lower() != ".png":
        raise BadInputError(f"{option} writes a PNG: give a file name ending in .png, not {str(path)!r}.")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise BadInputError(f"{option} {path}: {parent} is a file, not a folder.")
    if not path.absolute().parent.is_dir():  # never create folders the user did not ask for
        raise BadInputError(f"{option} {path}: the folder {path.parent} does not exist; create it first.")
    if parent is not None and not os.access(parent, os.W_OK):
        raise BadInputError(f"{option} {path}: cannot write into {parent}.")


def _baseline_training_split(source, split: str, test_table, args):
    """
    The table the --baselines are trained on. Training on the evaluated split, or on a split that
    shares prompts with it, inflates the baselines: refused unless `--allow-overlap`.
    """
    from carrot_hub.data import MissingSplitError, load_routing_table

    if args.train_split == split and not args.allow_overlap:
        raise BadInputError(
            f"--train-split {args.train_split!r} is the evaluated split: the baselines would be judged on their "
            "own training prompts. Train them on another split (--train-split), or pass --allow-overlap knowingly."
        )
    try:
        train = load_routing_table(source, split=args.train_split, progress=not args.quiet)
    except MissingSplitError as error:
        raise BadInputError(f"{error} The --baselines are trained on --train-split: name one that exists.") from None
    shared = shared_prompts(train.prompts, test_table.prompts)
    if shared and not args.allow_overlap:
        raise BadInputError(
            f"{shared} of the {len(test_table)} prompts of split {split!r} are also in --train-split "
            f"{args.train_split!r}: baselines trained there would be judged on prompts they have seen. Remove them "
            "from one split, or pass --allow-overlap knowingly."
        )
    return train


def _trained_baselines_for(router, train, test_table, truth: GroundTruth, pair, mu_grid, args) -> list:
    """The trained baselines, on embeddings of the router's encoder (computed once, cached with --cache-dir)."""
    from training.embeddings import embed_table

    missing = [m for m in truth.models if m not in train.models]
    if missing:
        raise ValueError(f"The --train-split {args.train_split!r} lacks models {missing}; the baselines cannot be trained.")
    train_truth = ground_truth(train.select_models(truth.models))
    train_embeddings = embed_table(router, train, cache_dir=args.cache_dir, progress=not args.quiet)
    test_embeddings = embed_table(router, test_table, cache_dir=args.cache_dir, progress=not args.quiet)
    return trained_baselines(train_embeddings, train_truth, test_embeddings, truth, pair, mu_grid, float(router.config.cost_scale))


def _unique_names(sources: Sequence[str]) -> list[str]:
    names, seen = [], {}
    for source in sources:
        base = Path(str(source).rstrip("/")).name or str(source)
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_evaluate_arguments(argparse.ArgumentParser(prog="python -m training.evaluation.evaluate", description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    try:
        return run_evaluate(args)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
