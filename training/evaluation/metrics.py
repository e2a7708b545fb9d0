"""
The field's router metrics, in plain numpy.

A router evaluated on a test split gives a set of points, one per setting of its knob (μ for
CARROT, a threshold for a two-model router): `costs (n_points,)` the mean realised dollar cost per
prompt and `qualities (n_points,)` the mean realised quality (true scores of the chosen models).

Definitions used here (each function's docstring says more):

- **Hull**: the non-decreasing upper concave hull of the points. It starts at the cheapest point
  (the highest one if several share that cost), follows the upper convex hull to the point of
  highest quality, and stays flat after it. Any point on a hull segment is reachable by
  randomising, prompt by prompt, between the two knob settings at its ends — which is what
  RouterBench does when it draws the hull.
- **AIQ** (RouterBench's average improvement in quality): the area under the hull from its
  cheapest point to `max_cost`, with the hull extended flat to `max_cost`, divided by `max_cost`
  (RouterBench's `calc_AIQ`: `trapz(hull) / max_x` after appending `(max_x, last_y)`). Routers
  compared together must share `max_cost` (the largest cost among all of them); the zero router
  (the hull of the single models) over the same `max_cost` is the baseline to beat.
- **Cost to match** a quality q: the least cost at which the hull reaches q (interpolated on the
  hull); `cost_to_reach(..., interpolate=False)` gives the least cost among the points themselves.
- **Oracle**: per prompt, the cheapest model with the best true score (for 0/1 scores: the
  cheapest correct model, or the cheapest model when none is correct).
- **APGR / CPT** (RouteLLM): for a strong/weak pair, x = fraction of prompts sent to the strong
  model, PGR(x) = (quality(x) − q_weak) / (q_strong − q_weak); APGR = ∫₀¹ PGR dx over the
  piecewise-linear curve through the points (with the all-weak (0, q_weak) and all-strong
  (1, q_strong) end points added), CPT(p) = the least x at which that curve reaches PGR ≥ p.
- **Prediction quality**: per model, AUROC and Brier score of predicted quality against the true
  score (observed cells only), and mean absolute error of predicted output tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The hull and AIQ live in the library, which also chooses settings by them (carrot_hub.reliability).
from carrot_hub.cost_quality import aiq, upper_hull  # noqa: F401  (re-exported)
from carrot_hub.cost_quality import as_points as _as_points
from carrot_hub.prediction_metrics import (  # noqa: F401  (re-exported)
    auroc,
    average_ranks,
    brier,
    expected_calibration_error,
)


def hull_quality_at(costs, qualities, at_cost) -> np.ndarray:
    """
    Quality of the hull at the given cost(s): linear between vertices, flat after the last one,
    NaN below the cheapest point (the router cannot be that cheap). `at_cost` scalar or `(k,)`.
    """
    hull_costs, hull_qualities = upper_hull(costs, qualities)
    at_cost = np.asarray(at_cost, dtype=np.float64)
    values = np.interp(at_cost, hull_costs, hull_qualities)
    return np.where(at_cost < hull_costs[0], np.nan, values)


def cost_to_reach(costs, qualities, target: float, interpolate: bool = True, atol: float = 1e-9) -> float | None:
    """
    The least mean cost at which the router reaches quality `target`, or None if it never does.

    With `interpolate=True` the cost is read off the hull (randomising between two knob settings
    is allowed); with `interpolate=False` it is the least cost among the points themselves.
    """
    costs, qualities = _as_points(costs, qualities)
    if not interpolate:
        reached = qualities >= target - atol
        return float(np.min(costs[reached])) if reached.any() else None
    hull_costs, hull_qualities = upper_hull(costs, qualities)
    if hull_qualities[-1] < target - atol:
        return None
    if hull_qualities[0] >= target - atol:
        return float(hull_costs[0])
    j = int(np.argmax(hull_qualities >= target - atol))  # first vertex at or above target
    x1, x2, y1, y2 = hull_costs[j - 1], hull_costs[j], hull_qualities[j - 1], hull_qualities[j]
    return float(x1 + (target - y1) * (x2 - x1) / (y2 - y1))


def best_single_model(qualities: Sequence[float], costs: Sequence[float]) -> int:
    """Index of the model with the highest mean quality (the cheaper one on ties)."""
    qualities, costs = np.asarray(qualities, float), np.asarray(costs, float)
    return int(np.lexsort((costs, -qualities))[0])


def task_hull(scores: np.ndarray, cost: np.ndarray, tasks: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """
    The frontier of routers that only know each prompt's task: every task's prompts go to one
    model, or a randomised mix, chosen with hindsight from each model's mean score and cost on that
    task (as the zero router chooses its model). With one task it is the zero router's hull; a
    router above it has learnt something about single prompts, not only which model suits which task.

    Args:
        scores, cost: true quality and dollars `(n_prompts, n_models)`, no missing cells.
        tasks: the task of each prompt, `n_prompts` labels.

    Returns:
        `(costs, qualities)`: the hull's vertices, as `upper_hull` gives them.
    """
    scores, cost, tasks = np.asarray(scores, float), np.asarray(cost, float), np.asarray(tasks)
    if len(tasks) != scores.shape[0]:
        raise ValueError(f"tasks has {len(tasks)} labels for {scores.shape[0]} prompts.")
    # Each task's own hull is concave, so the mix of tasks is: start every task at its cheapest
    # vertex, then take the tasks' hull segments in order of quality gained per dollar.
    start_cost = start_quality = 0.0
    segments = []
    for task in np.unique(tasks):
        rows = tasks == task
        share = rows.mean()
        costs, qualities = upper_hull(cost[rows].mean(0), scores[rows].mean(0))
        start_cost, start_quality = start_cost + share * costs[0], start_quality + share * qualities[0]
        for step_cost, step_quality in zip(np.diff(costs) * share, np.diff(qualities) * share):
            segments.append((step_quality / step_cost, step_cost, step_quality))
    segments.sort(key=lambda segment: -segment[0])
    steps = np.array([segment[1:] for segment in segments]).reshape(-1, 2)
    costs = start_cost + np.concatenate([[0.0], np.cumsum(steps[:, 0])])
    qualities = start_quality + np.concatenate([[0.0], np.cumsum(steps[:, 1])])
    return upper_hull(costs, qualities)


def oracle_choice(scores: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """
    Per prompt, the cheapest model with the best true score: `scores, cost (n, m)` → `(n,)` indices.
    Scores must already have missing cells filled (e.g. with 0 = wrong); costs must be finite.
    """
    scores, cost = np.asarray(scores, float), np.asarray(cost, float)
    best = scores.max(axis=1, keepdims=True)
    masked_cost = np.where(scores >= best, cost, np.inf)
    return masked_cost.argmin(axis=1)


def pgr_curve(strong_fraction, qualities, q_strong: float, q_weak: float) -> tuple[np.ndarray, np.ndarray]:
    """
    RouteLLM's performance-gap-recovered curve: `(x, pgr)` sorted by x = fraction of prompts sent
    to the strong model, with the all-weak (0, 0) and all-strong (1, 1) end points added; several
    points at one x keep the best. Requires q_strong > q_weak.
    """
    x, q = _as_points(strong_fraction, qualities)
    if np.any(x > 1 + 1e-12):
        raise ValueError("strong_fraction must be in [0, 1].")
    if not q_strong > q_weak:
        raise ValueError(
            f"The strong model's quality ({q_strong:.4f}) must exceed the weak model's ({q_weak:.4f}) "
            "for PGR to mean anything; choose another strong/weak pair."
        )
    pgr = (q - q_weak) / (q_strong - q_weak)
    x = np.concatenate([[0.0], np.clip(x, 0, 1), [1.0]])
    pgr = np.concatenate([[0.0], pgr, [1.0]])
    unique_x = np.unique(x)
    best = np.array([pgr[x == value].max() for value in unique_x])
    return unique_x, best


def apgr(strong_fraction, qualities, q_strong: float, q_weak: float) -> float:
    """RouteLLM's APGR: the area under the PGR curve over x ∈ [0, 1] (trapezoids)."""
    x, pgr = pgr_curve(strong_fraction, qualities, q_strong, q_weak)
    return float(np.sum((x[1:] - x[:-1]) * (pgr[1:] + pgr[:-1]) / 2))


def cpt(strong_fraction, qualities, q_strong: float, q_weak: float, level: float) -> float:
    """
    RouteLLM's CPT(level): the least fraction of calls to the strong model at which the PGR curve
    (linear between points) reaches `level` (e.g. 0.5 for CPT(50%)). Always ≤ 1, since the
    all-strong end point has PGR 1.
    """
    x, pgr = pgr_curve(strong_fraction, qualities, q_strong, q_weak)
    if pgr[0] >= level:
        return float(x[0])
    j = int(np.argmax(pgr >= level))
    x1, x2, y1, y2 = x[j - 1], x[j], pgr[j - 1], pgr[j]
    return float(x1 + (level - y1) * (x2 - x1) / (y2 - y1))


BINARY_LABELS = "0/1 scores"
THRESHOLD_LABELS = "score >= 0.5 (fractional scores)"


def spearman(true_scores, predictions) -> float | None:
    """
    Spearman's rank correlation of `predictions (n,)` with `true_scores (n,)` (any values; ties get
    average ranks): threshold-free, so it also judges fractional scores. None when either is constant.
    """
    true_ranks = average_ranks(np.asarray(true_scores, dtype=np.float64).reshape(-1))
    predicted_ranks = average_ranks(np.asarray(predictions, dtype=np.float64).reshape(-1))
    if true_ranks.std() == 0 or predicted_ranks.std() == 0:
        return None
    return float(np.corrcoef(true_ranks, predicted_ranks)[0, 1])


def prediction_quality(
    models: Sequence[str],
    predicted_quality: np.ndarray,
    true_scores: np.ndarray,
    predicted_output_tokens: np.ndarray | None = None,
    true_output_tokens: np.ndarray | None = None,
) -> dict:
    """
    How good a router's predictions are, per model and on average (unweighted mean over models).

    All arrays `(n_prompts, n_models)`; NaN in the true arrays marks missing cells, which are left
    out (an unknown truth cannot be scored). AUROC needs two classes: on 0/1 scores it is the usual
    one; when a model's scores are fractional it is computed against `score ≥ 0.5` (said in
    `auroc_labels`), and `spearman` (rank correlation with the true score) judges the predictions
    without any threshold. Both are None for a model whose observed scores are all alike. Returns
    `{"per_model": {model: {"auroc", "auroc_labels", "spearman", "brier", "output_tokens_mae",
    "n_observed"}}, "mean_auroc", "auroc_labels", "mean_spearman", "mean_brier", "mean_output_tokens_mae"}`.
    """
    predicted_quality = np.asarray(predicted_quality, dtype=np.float64)
    true_scores = np.asarray(true_scores, dtype=np.float64)
    per_model, aurocs, spearmans, briers, maes, label_kinds = {}, [], [], [], [], set()
    for column, name in enumerate(models):
        observed = ~np.isnan(true_scores[:, column])
        labels, predictions = true_scores[observed, column], predicted_quality[observed, column]
        entry = {"n_observed": int(observed.sum()), "auroc": None, "auroc_labels": None, "spearman": None,
                 "brier": None, "output_tokens_mae": None}
        if observed.any():
            entry["brier"] = brier(labels, predictions)
            briers.append(entry["brier"])
            binary = bool(np.all((labels == 0) | (labels == 1)))
            entry["auroc_labels"] = BINARY_LABELS if binary else THRESHOLD_LABELS
            entry["auroc"] = auroc(labels if binary else (labels >= 0.5).astype(np.float64), predictions)
            if entry["auroc"] is not None:
                aurocs.append(entry["auroc"])
                label_kinds.add(entry["auroc_labels"])
            entry["spearman"] = spearman(labels, predictions)
            if entry["spearman"] is not None:
                spearmans.append(entry["spearman"])
        if predicted_output_tokens is not None and true_output_tokens is not None:
            tokens_true = np.asarray(true_output_tokens, dtype=np.float64)[:, column]
            tokens_observed = ~np.isnan(tokens_true)
            if tokens_observed.any():
                error = np.abs(np.asarray(predicted_output_tokens, np.float64)[tokens_observed, column] - tokens_true[tokens_observed])
                entry["output_tokens_mae"] = float(error.mean())
                maes.append(entry["output_tokens_mae"])
        per_model[name] = entry
    return {
        "per_model": per_model,
        "mean_auroc": float(np.mean(aurocs)) if aurocs else None,
        "auroc_labels": THRESHOLD_LABELS if THRESHOLD_LABELS in label_kinds else (BINARY_LABELS if label_kinds else None),
        "mean_spearman": float(np.mean(spearmans)) if spearmans else None,
        "mean_brier": float(np.mean(briers)) if briers else None,
        "mean_output_tokens_mae": float(np.mean(maes)) if maes else None,
    }


def _absolute_errors(predicted: np.ndarray, true: np.ndarray) -> dict:
    """MAE, relative error Σ|p − t| / Σt and bias Σ(p − t) / Σt over the cells where `true` is known."""
    observed = ~np.isnan(true)
    if not observed.any():
        return {"mae": None, "relative_error": None, "bias": None}
    error = predicted[observed] - true[observed]
    total = float(np.abs(true[observed]).sum())
    return {
        "mae": float(np.abs(error).mean()),
        "relative_error": float(np.abs(error).sum() / total) if total > 0 else None,
        "bias": float(error.sum() / total) if total > 0 else None,
    }


def cost_prediction_errors(
    models: Sequence[str],
    predicted_cost: np.ndarray,
    true_cost: np.ndarray,
    predicted_output_tokens: np.ndarray | None = None,
    true_output_tokens: np.ndarray | None = None,
) -> dict:
    """
    How well a router predicts what each candidate will cost, per candidate and on average.

    All arrays `(n_prompts, n_models)`, NaN in the true arrays = unknown (left out). For output
    tokens and for dollars: `mae` (tokens, or US$ per prompt), `relative_error` = Σ|predicted − true|
    / Σ true (the MAE as a fraction of the mean true value; robust to prompts with 0 tokens), and
    `bias` = Σ(predicted − true) / Σ true (negative: the router expects the model to be cheaper than
    it is). `mean_*` are unweighted means over candidates.

    Returns `{"per_model": {model: {"output_tokens": {...}, "cost": {...}}}, "mean_output_tokens_mae",
    "mean_output_tokens_relative_error", "mean_cost_mae", "mean_cost_relative_error", "mean_cost_bias"}`.
    """
    predicted_cost = np.asarray(predicted_cost, dtype=np.float64)
    true_cost = np.asarray(true_cost, dtype=np.float64)
    with_tokens = predicted_output_tokens is not None and true_output_tokens is not None
    if with_tokens:
        predicted_output_tokens = np.asarray(predicted_output_tokens, dtype=np.float64)
        true_output_tokens = np.asarray(true_output_tokens, dtype=np.float64)
    per_model = {}
    for column, name in enumerate(models):
        entry = {"cost": _absolute_errors(predicted_cost[:, column], true_cost[:, column])}
        if with_tokens:
            entry["output_tokens"] = _absolute_errors(predicted_output_tokens[:, column], true_output_tokens[:, column])
        per_model[name] = entry

    def mean(part: str, key: str):
        values = [e[part][key] for e in per_model.values() if part in e and e[part][key] is not None]
        return float(np.mean(values)) if values else None

    return {
        "per_model": per_model,
        "mean_output_tokens_mae": mean("output_tokens", "mae"),
        "mean_output_tokens_relative_error": mean("output_tokens", "relative_error"),
        "mean_output_tokens_bias": mean("output_tokens", "bias"),
        "mean_cost_mae": mean("cost", "mae"),
        "mean_cost_relative_error": mean("cost", "relative_error"),
        "mean_cost_bias": mean("cost", "bias"),
    }


def chosen_quality_gap(predicted_quality, true_scores, choices) -> dict:
    """
    How far the predicted quality of the chosen model is from what it really scored.

    Args:
        predicted_quality: `(n, m)` predictions; true_scores: `(n, m)` with missing cells filled
            (e.g. 0 = wrong); choices: `(k, n)` chosen column per μ (or `(n,)`).

    Returns:
        `{"mean_gap"` (predicted − realised, mean over prompts then over the k μ values; positive =
        over-estimate), `"mean_abs_gap"` (of the per-μ mean gaps), `"per_mu"` (k mean gaps)}.
    """
    predicted_quality = np.asarray(predicted_quality, dtype=np.float64)
    true_scores = np.asarray(true_scores, dtype=np.float64)
    choices = np.atleast_2d(np.asarray(choices, dtype=np.int64))
    rows = np.arange(predicted_quality.shape[0])[None, :]
    gaps = (predicted_quality[rows, choices] - true_scores[rows, choices]).mean(axis=1)
    return {"mean_gap": float(gaps.mean()), "mean_abs_gap": float(np.abs(gaps).mean()), "per_mu": gaps.tolist()}


__all__ = [
    "expected_calibration_error",
    "chosen_quality_gap",
    "upper_hull",
    "hull_quality_at",
    "aiq",
    "cost_to_reach",
    "best_single_model",
    "oracle_choice",
    "task_hull",
    "pgr_curve",
    "apgr",
    "cpt",
    "auroc",
    "brier",
    "spearman",
    "prediction_quality",
    "cost_prediction_errors",
]


def aiq_vs_zero_router(scores, cost, choices, resamples: int = 1000, seed: int = 0) -> dict:
    """
    A router's AIQ minus the zero router's (the hull of the single models), with a 95% interval
    from a paired bootstrap over the prompts: each resample draws the prompts with replacement and
    scores both on the same draw. Tells a real difference from the noise of a small test split.

    Args:
        scores, cost: true quality and dollars `(n_prompts, n_models)`.
        choices: the router's chosen column per knob value and prompt `(n_points, n_prompts)`.

    Each AIQ uses its own draw's cost range (the most expensive point, router or single model).
    Returns `difference` (on the prompts as given), `ci95` `[low, high]`, `share_above` (fraction of
    resamples where the router is ahead), `resamples`, `seed`.
    """
    scores, cost = np.asarray(scores, dtype=np.float64), np.asarray(cost, dtype=np.float64)
    choices = np.asarray(choices, dtype=np.int64)
    if scores.shape != cost.shape or choices.ndim != 2 or choices.shape[1] != scores.shape[0]:
        raise ValueError(
            f"scores {scores.shape} and cost {cost.shape} must be (n_prompts, n_models) and choices "
            f"{choices.shape} (n_points, n_prompts)."
        )
    choices = np.unique(choices, axis=0)  # knob values that choose alike give one point in every draw
    rows = np.arange(scores.shape[0])[None, :]
    chosen_quality, chosen_cost = scores[rows, choices], cost[rows, choices]  # (n_points, n_prompts)

    def difference(weights: np.ndarray) -> float:  # weights (n_prompts,): how often each prompt is drawn
        total = weights.sum()
        router_q, router_c = chosen_quality @ weights / total, chosen_cost @ weights / total
        single_q, single_c = weights @ scores / total, weights @ cost / total
        max_cost = max(router_c.max(), single_c.max())
        return aiq(router_c, router_q, max_cost) - aiq(single_c, single_q, max_cost)

    rng = np.random.default_rng(seed)
    n = scores.shape[0]
    draws = np.array([difference(w) for w in rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)])
    return {
        "difference": difference(np.ones(n)),
        "ci95": [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))],
        "share_above": float((draws > 0).mean()),
        "resamples": int(resamples),
        "seed": int(seed),
    }

