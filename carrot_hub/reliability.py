"""Fitting what a router needs to say how far its predictions can be trusted (see `CarrotReliability`).

Everything here is chosen on the training data only, from two kinds of held-out evidence:

- *in distribution*: out-of-fold predictions (each training prompt predicted by a predictor that did
  not see it); they fit the per-candidate calibration map and the in-distribution band;
- *out of distribution*: each task of the training data (or, for data without several tasks, each
  cluster of its prompt embeddings) held out in turn, predicted by a predictor trained on the
  others. It picks how support is measured (`support_k`), the in-distribution threshold, how far
  quality moves toward the prior when support falls (`shrink_floor`) and the out-of-distribution
  band.

The rules, and why:

- **support_k**: the neighbour count whose support best separates held-out-task prompts from
  held-out prompts of the seen tasks (highest mean AUROC over the held-out groups).
- **support_threshold**: from {0.005, 0.01, 0.02, 0.05, 0.1}, the one with the best balanced accuracy
  (mean of the two recall rates) between those same two sets; ties go to the smaller threshold, which
  flags fewer prompts like the training ones (about `threshold` of them, by construction).
- **calibration**: per candidate, isotonic regression or Platt scaling (on the logit of the
  prediction) or none, whichever has the lowest cross-fitted Brier score on the out-of-fold
  predictions (summed over candidates).
- **shrink_floor** (w at support 0; w rises linearly to 1 at the threshold, so decisions in
  distribution use the calibrated prediction only): from {0, 0.25, 0.5, 0.75, 1}, the one whose
  held-out-group prompts, routed over a μ sweep with their true costs, over-estimate the chosen
  model's quality least (mean over groups of the positive part of the mean gap; ties go to the
  larger floor, which changes less). Out of distribution a prediction is mostly noise, and routing
  picks the candidate whose noise is highest, so the chosen model's quality is over-estimated; the
  prior carries no such selection bias. The Brier-optimal (least-squares) floor is reported next to
  it: on RouterBench it sits near 1, because a held-out task's mean differs from the prior by more
  than the noise does, and the Brier score cannot see the selection bias that costs money.
- **prior_shrink** (λ, in distribution too; see `carrot_hub.prior_shrinkage`): chosen before the
  floor, by out-of-fold routing AIQ of the cross-fitted calibrated predictions; the floor is then
  chosen for the shrunk predictions (the weights multiply).
- **spread**: `spread_in` is the 80% normal band (1.2816 σ) of the cross-fitted calibration error
  (RMS gap between mean prediction and mean score over ten quantile bins); `spread_out` that of how
  far a held-out group's mean score fell from the prior of the other groups (RMS over groups).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .modeling_carrot import CarrotKNNMemory, top_k_mean_similarity
from .prior_shrinkage import choose_prior_shrink, leave_one_out_prior

SUPPORT_K_GRID = (1, 2, 4, 8, 16, 32, 64)
THRESHOLD_GRID = (0.005, 0.01, 0.02, 0.05, 0.1)
FLOOR_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
EVIDENCE_MU_STEPS = 21
CALIBRATION_METHODS = ("identity", "isotonic", "platt")
MAX_KNOTS = 64
BAND_Z = 1.2816  # an 80% two-sided normal band
MIN_GROUP_SIZE = 20
HELD_IN_FRACTION = 0.2


# ------------------------------------------------------------------------------- calibration maps


def isotonic_knots(x: np.ndarray, y: np.ndarray, max_knots: int = MAX_KNOTS) -> tuple[np.ndarray, np.ndarray]:
    """
    Isotonic (non-decreasing) regression of `y` on `x` (pool-adjacent-violators) as piecewise-linear
    knots through the blocks' mean (x, y), at most `max_knots` of them: `(n_knots,)` x and y.
    """
    order = np.argsort(x, kind="mergesort")
    xs, ys = np.asarray(x, float)[order], np.asarray(y, float)[order]
    sums_y, sums_x, counts = [], [], []
    for xi, yi in zip(xs, ys):
        sums_y.append(yi)
        sums_x.append(xi)
        counts.append(1.0)
        while len(counts) > 1 and sums_y[-2] / counts[-2] >= sums_y[-1] / counts[-1]:
            y_last, x_last, c_last = sums_y.pop(), sums_x.pop(), counts.pop()
            sums_y[-1] += y_last
            sums_x[-1] += x_last
            counts[-1] += c_last
    counts = np.array(counts)
    knots_x, knots_y = np.array(sums_x) / counts, np.array(sums_y) / counts
    if knots_x.size > max_knots:  # resample the map at quantiles of the predictions
        grid = np.quantile(xs, np.linspace(0, 1, max_knots))
        knots_x, knots_y = grid, np.interp(grid, knots_x, knots_y)
    return _strictly_increasing(knots_x, knots_y)


def platt_knots(x: np.ndarray, y: np.ndarray, max_knots: int = MAX_KNOTS) -> tuple[np.ndarray, np.ndarray]:
    """
    Platt scaling: y ≈ sigmoid(a · logit(x) + b) fitted by logistic regression (a ≥ 0 keeps it
    monotone), sampled at `max_knots` quantiles of `x`.
    """
    x = np.asarray(x, float)
    logit = torch.tensor(np.log(np.clip(x, 1e-4, 1 - 1e-4) / (1 - np.clip(x, 1e-4, 1 - 1e-4))))
    target = torch.tensor(np.asarray(y, float))
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(params[0] * logit + params[1], target)
        loss.backward()
        return loss

    optimizer.step(closure)
    a, b = max(float(params[0].detach()), 0.0), float(params[1].detach())
    grid = np.unique(np.concatenate([[0.0], np.quantile(x, np.linspace(0, 1, max_knots - 2)), [1.0]]))
    grid_logit = np.log(np.clip(grid, 1e-4, 1 - 1e-4) / (1 - np.clip(grid, 1e-4, 1 - 1e-4)))
    return _strictly_increasing(grid, 1 / (1 + np.exp(-np.clip(a * grid_logit + b, -50.0, 50.0))))  # no overflow warning


def _strictly_increasing(knots_x, knots_y):
    keep = np.concatenate([[True], np.diff(knots_x) > 1e-9])
    knots_x, knots_y = knots_x[keep], np.maximum.accumulate(knots_y[keep])
    if knots_x.size == 1:
        knots_x, knots_y = np.array([knots_x[0], knots_x[0] + 1e-6]), np.repeat(knots_y, 2)
    return knots_x, knots_y


def fit_map(method: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots of one candidate's calibration map by `method` (`"identity"`, `"isotonic"` or `"platt"`)."""
    if method == "identity" or x.size < 2:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    if method == "isotonic":
        return isotonic_knots(x, y)
    if method == "platt":
        return platt_knots(x, y)
    raise ValueError(f"Unknown calibration method {method!r}; use one of {CALIBRATION_METHODS}.")


def apply_map(knots: tuple[np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    return np.interp(x, knots[0], knots[1])


def fit_calibration(method: str, quality: np.ndarray, scores: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """One map per candidate from predictions `quality (n, m)` and scores `(n, m)` (NaN = missing)."""
    maps = []
    for column in range(quality.shape[1]):
        observed = ~np.isnan(scores[:, column])
        maps.append(fit_map(method, quality[observed, column], scores[observed, column]))
    return maps


def calibrate(maps, quality: np.ndarray) -> np.ndarray:
    return np.stack([apply_map(knots, quality[:, j]) for j, knots in enumerate(maps)], axis=1)


def cross_fitted(method: str, quality: np.ndarray, scores: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Each row calibrated by a map fitted on the other folds: `(n, m)`."""
    n = quality.shape[0]
    out = np.empty_like(quality, dtype=float)
    for held_out in np.array_split(np.random.default_rng(seed).permutation(n), folds):
        kept = np.setdiff1d(np.arange(n), held_out)
        out[held_out] = calibrate(fit_calibration(method, quality[kept], scores[kept]), quality[held_out])
    return out


def masked_brier(quality: np.ndarray, scores: np.ndarray) -> float:
    observed = ~np.isnan(scores)
    return float(np.mean((quality[observed] - scores[observed]) ** 2))


def choose_calibration(quality: np.ndarray, scores: np.ndarray, seed: int = 0) -> tuple[str, dict]:
    """The method of lowest cross-fitted Brier score on out-of-fold `quality (n, m)`, and every method's score."""
    briers = {method: masked_brier(cross_fitted(method, quality, scores, seed=seed), scores) for method in CALIBRATION_METHODS}
    best = min(CALIBRATION_METHODS, key=lambda method: (round(briers[method], 9), CALIBRATION_METHODS.index(method)))
    return best, briers


def maps_to_knots(maps) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-candidate knots padded to one length (the last knot repeated): two `(m, n_knots)` tensors."""
    n_knots = max(len(knots[0]) for knots in maps)
    xs = [np.pad(knots[0], (0, n_knots - len(knots[0])), mode="edge") for knots in maps]
    ys = [np.pad(knots[1], (0, n_knots - len(knots[1])), mode="edge") for knots in maps]
    return torch.tensor(np.stack(xs), dtype=torch.float32), torch.tensor(np.stack(ys), dtype=torch.float32)


def binned_calibration_gap(quality: np.ndarray, scores: np.ndarray, bins: int = 10) -> float:
    """RMS over `bins` quantile bins of (mean score − mean prediction), weighted by bin size; one candidate."""
    observed = ~np.isnan(scores)
    quality, scores = quality[observed], scores[observed]
    if quality.size == 0:
        return 0.0
    order = np.argsort(quality, kind="mergesort")
    gaps = [(scores[part].mean() - quality[part].mean(), part.size) for part in np.array_split(order, bins) if part.size]
    return float(math.sqrt(sum(g * g * c for g, c in gaps) / sum(c for _, c in gaps)))


# --------------------------------------------------------------------------------------- support


def support_of(embeddings: torch.Tensor, memory: torch.Tensor, k: int) -> torch.Tensor:
    """Support `(n,)` of `embeddings` against `memory`, with `memory`'s own leave-one-out reference."""
    reference = top_k_mean_similarity(memory, memory, k, exclude_self=True).sort().values
    similarity = top_k_mean_similarity(embeddings, memory, k)
    return torch.searchsorted(reference, similarity, right=True).float() / reference.shape[0]


def held_out_groups(table, embeddings: torch.Tensor, seed: int = 0, n_clusters: int = 4) -> tuple[list[np.ndarray], str]:
    """
    Row groups to hold out one at a time: the table's tasks when it has at least two with
    `MIN_GROUP_SIZE` prompts each, else `n_clusters` k-means clusters of the embeddings.
    """
    tasks = np.asarray(list(table.tasks), dtype=object)
    names = [t for t in dict.fromkeys(tasks.tolist()) if (tasks == t).sum() >= MIN_GROUP_SIZE]
    if len(names) >= 2:
        return [np.flatnonzero(tasks == t) for t in names], "tasks: " + ", ".join(map(str, names))
    labels = spherical_kmeans(embeddings, n_clusters, seed=seed)
    groups = [np.flatnonzero(labels == c) for c in range(n_clusters)]
    groups = [g for g in groups if g.size >= MIN_GROUP_SIZE]
    return groups, f"{len(groups)} k-means clusters of the prompt embeddings (the data has fewer than two tasks)"


def spherical_kmeans(embeddings: torch.Tensor, n_clusters: int, seed: int = 0, iterations: int = 30) -> np.ndarray:
    """Cluster labels `(n,)` of L2-normalised `embeddings` by cosine k-means (seeded k-means++ start)."""
    generator = np.random.default_rng(seed)
    points = embeddings.float()
    n = points.shape[0]
    centres = [points[int(generator.integers(n))]]
    for _ in range(1, min(n_clusters, n)):
        distance = (1 - (points @ torch.stack(centres).T).max(1).values).clamp(min=0).double().numpy()
        probabilities = distance / distance.sum() if distance.sum() > 0 else np.full(n, 1 / n)
        centres.append(points[int(generator.choice(n, p=probabilities))])
    centres = torch.stack(centres)
    for _ in range(iterations):
        labels = (points @ centres.T).argmax(1)
        for c in range(centres.shape[0]):
            members = points[labels == c]
            if members.shape[0]:
                centres[c] = torch.nn.functional.normalize(members.mean(0), dim=0)
    return (points @ centres.T).argmax(1).numpy()


def support_evidence(
    embeddings: torch.Tensor, groups: list[np.ndarray], seed: int = 0, k_grid=SUPPORT_K_GRID, threshold_grid=THRESHOLD_GRID
) -> dict:
    """
    For each group: a memory of the other groups' prompts (less a seeded `HELD_IN_FRACTION` held in),
    the support of the group's prompts (out) and of the held-in prompts (in), for every k. Returns
    `{"k_grid", "auroc" (per k, mean over groups), "k", "threshold_grid", "balanced_accuracy", "threshold"}`.
    """
    from_groups = []
    rng = np.random.default_rng(seed)
    n = embeddings.shape[0]
    for group in groups:
        others = rng.permutation(np.setdiff1d(np.arange(n), group))
        n_in = max(1, int(round(HELD_IN_FRACTION * others.size)))
        held_in, memory = others[:n_in], others[n_in:]
        from_groups.append((group, held_in, memory))
    aurocs = []
    supports = {}
    for k in k_grid:
        per_group = []
        for index, (group, held_in, memory) in enumerate(from_groups):
            memory_embeddings = embeddings[memory]
            support_out = support_of(embeddings[group], memory_embeddings, k).numpy()
            support_in = support_of(embeddings[held_in], memory_embeddings, k).numpy()
            supports[(k, index)] = (support_in, support_out)
            per_group.append(_auroc(support_in, support_out))
        aurocs.append(float(np.mean(per_group)))
    best_k = k_grid[int(np.argmax(np.round(aurocs, 6)))]
    accuracies = []
    for threshold in threshold_grid:
        per_group = []
        for index in range(len(from_groups)):
            support_in, support_out = supports[(best_k, index)]
            per_group.append(((support_in > threshold).mean() + (support_out <= threshold).mean()) / 2)
        accuracies.append(float(np.mean(per_group)))
    best_threshold = threshold_grid[int(np.argmax(np.round(accuracies, 6)))]
    return {
        "k_grid": list(k_grid),
        "auroc": aurocs,
        "k": int(best_k),
        "threshold_grid": list(threshold_grid),
        "balanced_accuracy": accuracies,
        "threshold": float(best_threshold),
    }


def _auroc(support_in: np.ndarray, support_out: np.ndarray) -> float:
    """P(support of an in-distribution prompt > that of a held-out-group prompt), ties half."""
    values = np.concatenate([support_in, support_out])
    ranks = _average_ranks(values)
    n_in, n_out = support_in.size, support_out.size
    return float((ranks[:n_in].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.size)
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


# -------------------------------------------------------------------------------------- the fit


def shrink_weight(support: np.ndarray, threshold: float, floor: float, prior_shrink: float = 0.0) -> np.ndarray:
    """w(support) = (1 − λ) · (floor + (1 − floor) · min(1, support / threshold)), as `CarrotReliability.adjust` applies it."""
    trust = np.clip(support / threshold, 0, 1) if threshold > 0 else np.ones_like(support)
    return (1 - prior_shrink) * (floor + (1 - floor) * trust)


def least_squares_floor(calibrated, prior, scores, support, threshold) -> float:
    """
    The floor in [0, 1] minimising Σ (prior + w·(calibrated − prior) − score)² over observed cells;
    `calibrated`, `prior`, `scores` `(n, m)`, `support` `(n,)`.
    """
    ramp = np.clip(support / threshold, 0, 1)[:, None] if threshold > 0 else np.ones((support.size, 1))
    delta = calibrated - prior
    residual = scores - prior - ramp * delta
    lever = (1 - ramp) * delta
    observed = ~np.isnan(scores)
    denominator = float((lever[observed] ** 2).sum())
    if denominator <= 0:
        return 1.0
    return float(np.clip((lever[observed] * residual[observed]).sum() / denominator, 0.0, 1.0))


def chosen_overestimate(
    cells: dict, index: int, threshold: float, floor: float, cost_scale: float, prior_shrink: float = 0.0
) -> float:
    """
    Held-out group `index`: its prompts' quality (calibrated, shrunk with `floor` and `prior_shrink`)
    routed with true costs over `EVIDENCE_MU_STEPS` μ; the chosen model's predicted minus true score
    (missing = 0), mean over prompts and μ.
    """
    prior, calibrated = cells["prior"][index], cells["calibrated"][index]
    weight = shrink_weight(cells["support"][index], threshold, floor, prior_shrink)
    quality = prior + weight[:, None] * (calibrated - prior)
    scores = np.nan_to_num(cells["scores"][index], nan=0.0)
    rows = np.arange(quality.shape[0])
    gaps = []
    for mu in np.linspace(0, 1, EVIDENCE_MU_STEPS):
        chosen = ((1 - mu) * quality - mu * cells["cost"][index] / cost_scale).argmax(1)
        gaps.append(float((quality[rows, chosen] - scores[rows, chosen]).mean()))
    return float(np.mean(gaps))


def fit_reliability(
    router,
    table,
    embeddings: torch.Tensor,
    oof_quality: np.ndarray,
    predict_held_out: Callable[[np.ndarray, np.ndarray], np.ndarray],
    seed: int = 0,
) -> dict:
    """
    Fit and store in `router` its support statistics, calibration maps, prior, shrinkage floor and
    band (see the module docstring for the rules), from the training `table`, its prompts'
    `embeddings (n, hidden)` (the router's encoder), out-of-fold raw predictions `oof_quality (n, m)`
    and `predict_held_out(train_rows, test_rows) → (len(test_rows), m)` raw quality of a predictor
    trained on `train_rows` only. Returns a JSON-ready report of the evidence and the choices.
    """
    scores = np.asarray(table.scores, dtype=np.float64)
    oof_quality = np.asarray(oof_quality, dtype=np.float64)
    embeddings = torch.as_tensor(embeddings, dtype=torch.float32)
    n_models = scores.shape[1]
    groups, grouping = held_out_groups(table, embeddings, seed=seed)
    report = {"grouping": grouping, "n_groups": len(groups)}

    if len(groups) >= 2:
        evidence = support_evidence(embeddings, groups, seed=seed)
        k, threshold = evidence["k"], evidence["threshold"]
    else:
        evidence, k, threshold = None, router.config.support_k, router.config.support_threshold
    report["support"] = evidence or "fewer than two groups to hold out: the config's support_k and threshold"
    router.fit_support(None if router.config.predictor_kind == "knn" else embeddings, k=k, threshold=threshold)

    method, briers = choose_calibration(oof_quality, scores, seed=seed)
    maps = fit_calibration(method, oof_quality, scores)
    with np.errstate(all="ignore"):
        prior = np.nan_to_num(np.nanmean(scores, axis=0), nan=0.5)
    crossed = cross_fitted(method, oof_quality, scores, seed=seed)
    spread_in = np.array([max(BAND_Z * binned_calibration_gap(crossed[:, j], scores[:, j]), 0.005) for j in range(n_models)])
    report["calibration"] = {"method": method, "cross_fitted_brier": briers}
    true_cost = np.asarray(table.cost(), dtype=np.float64)
    true_cost = np.where(np.isnan(true_cost), np.nanmean(true_cost, axis=0, keepdims=True), true_cost)
    prior_shrink, shrink_aiq = choose_prior_shrink(crossed, leave_one_out_prior(scores), scores, true_cost, router.config.cost_scale)
    report["prior_shrink_choice"] = {
        "chosen": prior_shrink,
        "criterion": "out-of-fold routing AIQ of the cross-fitted calibrated predictions (true costs; ties: smaller)",
        "out_of_fold_aiq": {str(lam): value for lam, value in shrink_aiq.items()},
    }

    floor, spread_out = 1.0, np.full(n_models, BAND_Z * 0.5)
    if len(groups) >= 2:
        cells = {"calibrated": [], "prior": [], "scores": [], "support": [], "raw": [], "cost": []}
        deviations = []
        n = scores.shape[0]
        for group in groups:
            others = np.setdiff1d(np.arange(n), group)
            group_maps = fit_calibration(method, oof_quality[others], scores[others])
            raw = np.asarray(predict_held_out(others, group), dtype=np.float64)
            with np.errstate(all="ignore"):
                group_prior = np.nan_to_num(np.nanmean(scores[others], axis=0), nan=0.5)
                deviations.append(np.nanmean(scores[group], axis=0) - group_prior)
            cells["raw"].append(raw)
            cells["calibrated"].append(calibrate(group_maps, raw))
            cells["prior"].append(np.broadcast_to(group_prior, raw.shape).copy())
            cells["scores"].append(scores[group])
            cells["cost"].append(true_cost[group])
            cells["support"].append(support_of(embeddings[group], embeddings[others], k).numpy())
        joined = {name: np.concatenate(parts) for name, parts in cells.items()}
        brier_floor = least_squares_floor(joined["calibrated"], joined["prior"], joined["scores"], joined["support"], threshold)
        overestimates = {
            candidate: float(np.mean([
                max(chosen_overestimate(cells, index, threshold, candidate, router.config.cost_scale, prior_shrink), 0.0)
                for index in range(len(groups))
            ]))
            for candidate in FLOOR_GRID
        }
        floor = min(FLOOR_GRID, key=lambda candidate: (round(overestimates[candidate], 6), -candidate))
        weight = shrink_weight(joined["support"], threshold, floor, prior_shrink)[:, None]
        deviations = np.nan_to_num(np.stack(deviations), nan=0.0)
        spread_out = BAND_Z * np.sqrt((deviations**2).mean(axis=0))
        report["held_out_groups"] = {
            "shrink_floor": floor,
            "chosen_overestimate_by_floor": {str(k): v for k, v in overestimates.items()},
            "least_squares_floor": brier_floor,
            "brier": {
                name: masked_brier(value, joined["scores"])
                for name, value in (
                    ("raw", joined["raw"]),
                    ("calibrated", joined["calibrated"]),
                    ("prior", joined["prior"]),
                    ("shrunk", joined["prior"] + weight * (joined["calibrated"] - joined["prior"])),
                )
            },
            "mean_score_minus_prior": deviations.tolist(),
        }
    knots_x, knots_y = maps_to_knots(maps)
    router.set_calibration(
        knots_x, knots_y, torch.tensor(prior, dtype=torch.float32), torch.tensor(spread_in, dtype=torch.float32),
        torch.tensor(np.maximum(spread_out, spread_in), dtype=torch.float32), method=method, shrink_floor=floor,
        prior_shrink=prior_shrink,
    )
    report.update(
        {
            "support_k": router.config.support_k,
            "support_threshold": router.config.support_threshold,
            "shrink_floor": floor,
            "prior_shrink": prior_shrink,
            "prior": prior.tolist(),
            "spread_in": spread_in.tolist(),
            "spread_out": np.maximum(spread_out, spread_in).tolist(),
        }
    )
    return report


def knn_held_out_predictor(embeddings: torch.Tensor, table, k: int):
    """`predict(train_rows, test_rows)`: CARROT-KNN quality `(len(test_rows), n_models)` from a memory of `train_rows` only."""
    embeddings = torch.as_tensor(embeddings, dtype=torch.float32)
    scores = torch.as_tensor(table.scores, dtype=torch.float32)
    observed = (~torch.isnan(scores)).float()
    values = torch.nan_to_num(scores)

    def predict(train_rows, test_rows):
        train_rows, test_rows = torch.as_tensor(train_rows), torch.as_tensor(test_rows)
        similarity = embeddings[test_rows] @ embeddings[train_rows].T
        with torch.no_grad():
            return CarrotKNNMemory.observed_neighbour_mean(similarity, values[train_rows], observed[train_rows], k).numpy()

    return predict


def fit_knn_reliability(router, table, embeddings: torch.Tensor, folds: int = 5, seed: int = 0) -> dict:
    """[`fit_reliability`] for a filled kNN router: out-of-fold predictions at its k from `folds` seeded folds."""
    predict = knn_held_out_predictor(embeddings, table, router.config.knn_k)
    n = len(table)
    oof = np.zeros(np.asarray(table.scores).shape)
    for held_out in np.array_split(np.random.default_rng(seed).permutation(n), folds):
        oof[held_out] = predict(np.setdiff1d(np.arange(n), held_out), np.sort(held_out))
    return fit_reliability(router, table, embeddings, oof, predict, seed=seed)


__all__ = [
    "fit_reliability",
    "fit_knn_reliability",
    "knn_held_out_predictor",
    "choose_calibration",
    "fit_calibration",
    "calibrate",
    "isotonic_knots",
    "platt_knots",
    "support_evidence",
    "support_of",
    "held_out_groups",
    "spherical_kmeans",
    "shrink_weight",
]
