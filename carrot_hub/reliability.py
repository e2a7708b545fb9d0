"""Fitting what a router needs to say how far its predictions can be trusted (see `CarrotReliability`).

Everything here is chosen on the training data only, from two kinds of held-out evidence:

- *in distribution*: out-of-fold predictions (each training prompt predicted by a predictor that did
  not see it); they fit the per-candidate calibration map and the in-distribution band;
- *out of distribution*: each task of the training data (or, for data without several tasks, each
  cluster of its prompt embeddings) held out in turn, predicted by a predictor trained on the
  others. The tasks pick how support is measured (`support_k`) and the in-distribution threshold.
  The tasks and, beside them, `N_CLUSTERS` k-means clusters of all the prompts ([`quality_groups`])
  pick how far quality moves toward the prior when support falls (`shrink_floor`), the
  out-of-distribution band, and how far quality out of distribution is put toward the band's lower
  end (`ood_pessimism`): a table has few tasks, each far from the others (two, when one of
  RouterBench's three is held out to check the router); with two, the easier one is
  under-estimated whatever is chosen, so the choice rests on one example of an unseen group. The
  clusters add groups of other sizes and distances.

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
  floor, by out-of-fold routing AIQ of the cross-fitted predictions the router uses (calibrated when
  the calibration layer is on, raw when it is off; the λ of the other side is reported too); the
  floor is then chosen for the shrunk predictions (the weights multiply).
- **ood_pessimism** p and **ood_pessimism_support** s_p (quality is lowered by
  p · (1 − min(1, support / s_p)) · spread_out; p = 1 puts it at the band's lower end at support
  0): out of distribution the chosen model's quality is over-stated for a reason no held-out
  evidence can remove. Measured leave-one-task-out on RouterBench and ZeroEval (kNN), the winner's
  curse of picking the argmax of noisy predictions is 0.002–0.006 of the over-estimate; the rest
  (0.15–0.32 on the harder held-out tasks) is the task being harder than the tasks the prior
  comes from, and a held-out task is as likely to be easier (an under-estimate of the same size).
  Shrinking toward the prior cannot fix that; only a cautious estimate can, so out of distribution
  the router acts on, and reports, a lower quantile of where held-out tasks have landed around the
  prior (the band's width `spread_out` is that evidence). The price: easier unseen tasks are
  under-estimated more, and prompts out of distribution go to candidates whose quality held up
  across tasks, which tend to cost more. The pair is chosen from {0, 0.25, 0.5, 0.75, 1} ×
  `THRESHOLD_GRID`: the one whose held-out groups over-estimate the chosen model least (mean over
  groups of the positive part, each group lowered by the band of the *other* groups' deviations),
  among those that leave decisions in distribution as they were: the training prompts, with
  out-of-fold quality and their leave-one-out support, routed over the μ sweep with true costs,
  lose at most `IN_DISTRIBUTION_TOLERANCE` of realised utility ((1 − μ)·score − μ·cost/cost_scale,
  mean over μ; upper bound: mean + 2 standard errors, paired) and their ECE rises at most
  `IN_DISTRIBUTION_ECE_TOLERANCE`. Ties go to less pessimism, then the narrower ramp. With fewer
  than two held-out groups there is no evidence of the spread, and p = 0.
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
from .prediction_metrics import auroc, brier, expected_calibration_error
from .prior_shrinkage import choose_prior_shrink, leave_one_out_prior

SUPPORT_K_GRID = (1, 2, 4, 8, 16, 32, 64)
THRESHOLD_GRID = (0.005, 0.01, 0.02, 0.05, 0.1)
FLOOR_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
PESSIMISM_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
# Pessimism may cost decisions in distribution at most this much realised utility (quality units:
# half the 0.002 of AIQ the issue allows), judged by the loss's upper bound (mean + 2 standard errors).
IN_DISTRIBUTION_TOLERANCE = 0.001
IN_DISTRIBUTION_ECE_TOLERANCE = 0.001  # and its out-of-fold ECE may rise at most this much
EVIDENCE_MU_STEPS = 21
CALIBRATION_METHODS = ("identity", "isotonic", "platt")
MAX_KNOTS = 64
BAND_Z = 1.2816  # an 80% two-sided normal band
MIN_GROUP_SIZE = 20
N_CLUSTERS = 4  # k-means clusters held out (for data without tasks; beside the tasks for the quality adjustments)
SAME_GROUP_OVERLAP = 0.9  # a cluster overlapping a task this much (Jaccard) is that task again, not a further group
MIN_VALIDATION_PROMPTS = 2 * MIN_GROUP_SIZE  # fewer: a fine-tuned router keeps support and prior only
HELD_OUT_PROXY_K = 32  # neighbours of the kNN that stands in for a fine-tuned predictor on held-out groups
HELD_IN_FRACTION = 0.2
NEIGHBOUR_DEPTH_FACTOR = 4  # the shared neighbour lists hold this many times the largest support k
# Past these sizes the held-out evidence is read off seeded samples, so that its cost grows as the
# table does, not as its square: the prompts standing for the whole table (out-of-fold calibration,
# the in-distribution checks, support references) and, per held-out group, its prompts. Each rule's
# statistic is a mean over prompts (a share, an AUROC, an over-estimate, a Brier score), so a sample
# of 4,096 estimates it within a standard error of at most 0.5 / 64 ≈ 0.008, and much less for the
# differences that decide (paired on the same prompts). Tables at or below these sizes (both packaged
# ones) use every prompt, as before.
MAX_EVIDENCE_ROWS = 8192
MAX_GROUP_ROWS = 4096
RELIABILITY_LAYERS = ("calibration", "prior_shrink", "ood_shrink", "caution")
DEFAULT_LAYERS = frozenset(RELIABILITY_LAYERS)  # MLP and fine-tuned routers: not ablated yet, every layer
# The layers a kNN router uses unless told otherwise: those that won out of fold on both packaged
# tables' re-splits and lost on no held-out task (`python -m training.ablation`; the numbers in
# docs/quality.md). prior_shrink alone qualifies: calibration chose identity on every split (nothing
# to win), the support ramp (ood_shrink) lost on RouterBench's re-splits, and the cautious estimate
# lost 0.019 AIQ on RouterBench's held-out ARC-Challenge. The others are still fitted and reported.
KNN_DEFAULT_LAYERS = frozenset({"prior_shrink"})
MAX_HELD_OUT_GROUPS = 16  # tasks held out in turn, at most (a seeded sample of them when a table has more)


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
    clipped = np.clip(x, 1e-4, 1 - 1e-4)
    a, b = _logistic_fit(np.log(clipped / (1 - clipped)), np.asarray(y, float))
    a = max(a, 0.0)
    grid = np.unique(np.concatenate([[0.0], np.quantile(x, np.linspace(0, 1, max_knots - 2)), [1.0]]))
    grid_logit = np.log(np.clip(grid, 1e-4, 1 - 1e-4) / (1 - np.clip(grid, 1e-4, 1 - 1e-4)))
    return _strictly_increasing(grid, 1 / (1 + np.exp(-np.clip(a * grid_logit + b, -50.0, 50.0))))  # no overflow warning


def _logistic_fit(feature: np.ndarray, target: np.ndarray, iterations: int = 100) -> tuple[float, float]:
    """
    `(a, b)` minimising the mean binary cross-entropy of sigmoid(a · feature + b) against `target`
    in [0, 1]: Newton's method from (1, 0) with step halving (the loss is convex; a few O(n) steps,
    where a general-purpose optimiser with autograd took seconds per candidate on large tables).
    """
    design = np.stack([feature, np.ones_like(feature)], axis=1)
    params = np.array([1.0, 0.0])

    def loss(theta):
        z = design @ theta
        return float(np.mean(np.logaddexp(0.0, z) - target * z))

    current = loss(params)
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-np.clip(design @ params, -500, 500)))
        gradient = design.T @ (p - target) / target.size
        hessian = (design * (p * (1 - p))[:, None]).T @ design / target.size + 1e-12 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while scale > 1e-6:
            candidate = params - scale * step
            candidate_loss = loss(candidate)
            if candidate_loss <= current:
                break
            scale /= 2
        else:
            break
        converged = current - candidate_loss < 1e-12 and np.abs(scale * step).max() < 1e-9
        params, current = candidate, candidate_loss
        if converged:
            break
    return float(params[0]), float(params[1])


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
    """Brier score of `quality (n, m)` against `scores` (NaN = missing) over the observed cells."""
    return brier(scores, quality)


def masked_ece(quality: np.ndarray, scores: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of `quality (n, m)` against `scores` (NaN = missing); 0 when nothing is observed."""
    if not (~np.isnan(scores)).any():
        return 0.0
    return expected_calibration_error(scores, quality, bins)["ece"]


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
    return _rank_in(reference, top_k_mean_similarity(embeddings, memory, k))


def _rank_in(reference: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """Support: the fraction of the sorted `reference (n_ref,)` at or below each `similarity (n,)`."""
    return torch.searchsorted(reference, similarity, right=True).float() / reference.shape[0]


class NeighbourLists:
    """
    The `depth` most similar other prompts of each probe row (all rows, or the `rows` given), most
    similar first: one search of the probe rows against all of `embeddings (n, hidden)` (in
    chunks), shared by every held-out group and every k of the support fit, which used to search
    again per group, per k and per side.

    A row's k most similar rows within a memory (the prompts outside an `excluded` set) are the
    first k of its list that are not excluded, whenever the list holds k of them; rows whose list
    runs short (most of a held-out group's own rows: their nearest prompts are in the group) and
    rows that are not probes are searched against the memory directly. So every mean is exactly
    what a search of that memory finds: the same similarities, summed in the same order.
    """

    def __init__(self, embeddings: torch.Tensor, depth: int, rows: np.ndarray | None = None, chunk_size: int = 1024):
        self.embeddings = torch.as_tensor(embeddings, dtype=torch.float32)
        n = self.embeddings.shape[0]
        probes = torch.arange(n) if rows is None else torch.as_tensor(np.asarray(rows), dtype=torch.int64)
        self.position = torch.full((n,), -1, dtype=torch.int64)
        self.position[probes] = torch.arange(probes.shape[0])
        self.depth = max(1, min(int(depth), n - 1))
        self.chunk_size = chunk_size
        self.values = torch.empty(probes.shape[0], self.depth)
        self.indices = torch.empty(probes.shape[0], self.depth, dtype=torch.int64)
        for start in range(0, probes.shape[0], chunk_size):
            part = probes[start : start + chunk_size]
            similarity = self.embeddings[part] @ self.embeddings.T
            similarity[torch.arange(part.shape[0]), part] = -math.inf
            self.values[start : start + part.shape[0]], self.indices[start : start + part.shape[0]] = similarity.topk(self.depth, dim=1)

    def top_k_means(self, rows: np.ndarray, excluded: torch.Tensor, k_grid) -> torch.Tensor:
        """
        Mean similarity of each of `rows` to its k most similar prompts outside `excluded (n,)` bool
        (and other than itself), for each k of `k_grid`: `(len(rows), len(k_grid))`. k is cut to
        the prompts there are (as `top_k_mean_similarity` cuts it).
        """
        rows = torch.as_tensor(np.asarray(rows), dtype=torch.int64)
        out = torch.empty(rows.shape[0], len(k_grid))
        if rows.shape[0] == 0:
            return out
        available = int((~excluded).sum()) - int((~excluded[rows]).any())  # rows inside the memory leave themselves out
        ks = [max(1, min(int(k), available)) for k in k_grid]
        k_max = max(ks)
        position = self.position[rows]
        short = position < 0
        probed = torch.nonzero(~short).flatten()
        if probed.numel():
            valid = ~excluded[self.indices[position[probed]]]  # (len(probed), depth)
            rank = valid.cumsum(1)
            enough = rank[:, -1] >= k_max
            short[probed[~enough]] = True
            listed = probed[enough]
            keep = valid[enough] & (rank[enough] <= k_max)
            nearest = self.values[position[listed]][keep].view(listed.numel(), k_max)  # row-major: most similar first
            for column, k in enumerate(ks):
                out[listed, column] = nearest[:, 0] if k == 1 else nearest[:, :k].contiguous().mean(1)
        searched = torch.nonzero(short).flatten()
        memory = self.embeddings[~excluded]
        memory_rows = torch.nonzero(~excluded).flatten()
        for start in range(0, searched.numel(), self.chunk_size):
            part = searched[start : start + self.chunk_size]
            similarity = self.embeddings[rows[part]] @ memory.T
            similarity[memory_rows[None, :] == rows[part][:, None]] = -math.inf
            nearest = similarity.topk(k_max, dim=1).values
            for column, k in enumerate(ks):
                out[part, column] = nearest[:, 0] if k == 1 else nearest[:, :k].contiguous().mean(1)
        return out

    def support(self, rows: np.ndarray, memory_excluded: torch.Tensor, k: int, reference_rows: np.ndarray | None = None) -> torch.Tensor:
        """
        Support `(len(rows),)` of `rows` (all excluded) against the prompts outside
        `memory_excluded`, their leave-one-out similarities the reference (those of
        `reference_rows` only, a sample of them, when given).
        """
        memory = torch.nonzero(~memory_excluded).flatten().numpy()
        if reference_rows is not None:
            memory = np.intersect1d(memory, reference_rows)
        reference = self.top_k_means(memory, memory_excluded, [k])[:, 0].sort().values
        return _rank_in(reference, self.top_k_means(rows, memory_excluded, [k])[:, 0])


def sample_rows(rows: np.ndarray, cap: int, seed: int = 0) -> np.ndarray:
    """`rows` when there are at most `cap`, else a seeded sample of `cap` of them (sorted)."""
    rows = np.asarray(rows)
    if rows.size <= cap:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=cap, replace=False))


def evidence_rows(n: int, seed: int = 0) -> np.ndarray:
    """The prompts that stand for a table of `n` in the held-out evidence: all, or `MAX_EVIDENCE_ROWS` of them (seeded)."""
    return sample_rows(np.arange(n), MAX_EVIDENCE_ROWS, seed)


def _mask(n: int, *row_sets) -> torch.Tensor:
    """`(n,)` bool, True on every row of `row_sets`."""
    mask = torch.zeros(n, dtype=torch.bool)
    for rows in row_sets:
        mask[torch.as_tensor(np.asarray(rows), dtype=torch.int64)] = True
    return mask


def held_out_groups(table, embeddings: torch.Tensor, seed: int = 0, n_clusters: int = N_CLUSTERS) -> tuple[list[np.ndarray], str]:
    """
    Row groups to hold out one at a time: the table's tasks when it has at least two with
    `MIN_GROUP_SIZE` prompts each, else `n_clusters` k-means clusters of the embeddings.
    """
    tasks = np.asarray(list(table.tasks), dtype=object)
    names = [t for t in dict.fromkeys(tasks.tolist()) if (tasks == t).sum() >= MIN_GROUP_SIZE]
    if len(names) > MAX_HELD_OUT_GROUPS:  # a seeded sample of the tasks: each held out costs a search of the rest
        chosen = np.sort(np.random.default_rng(seed).choice(len(names), size=MAX_HELD_OUT_GROUPS, replace=False))
        kept = [names[i] for i in chosen]
        return [np.flatnonzero(tasks == t) for t in kept], (
            f"tasks: {MAX_HELD_OUT_GROUPS} of {len(names)}, a seeded sample: " + ", ".join(map(str, kept)))
    if len(names) >= 2:
        return [np.flatnonzero(tasks == t) for t in names], "tasks: " + ", ".join(map(str, names))
    groups = cluster_groups(embeddings, n_clusters, seed=seed)
    return groups, f"{len(groups)} k-means clusters of the prompt embeddings (the data has fewer than two tasks)"


def cluster_groups(embeddings: torch.Tensor, n_clusters: int = N_CLUSTERS, seed: int = 0) -> list[np.ndarray]:
    """Row groups (index arrays): the `n_clusters` k-means clusters of `embeddings (n, hidden)` with `MIN_GROUP_SIZE` rows or more."""
    labels = spherical_kmeans(embeddings, n_clusters, seed=seed)
    groups = [np.flatnonzero(labels == c) for c in range(n_clusters)]
    return [g for g in groups if g.size >= MIN_GROUP_SIZE]


def quality_groups(groups: list[np.ndarray], grouping: str, embeddings: torch.Tensor, seed: int = 0) -> tuple[list[np.ndarray], str]:
    """
    The held-out groups that choose the quality adjustments out of distribution (floor, band,
    pessimism): the groups of [`held_out_groups`] and, when those are tasks, also the `N_CLUSTERS`
    k-means clusters of all the prompts, less those that are a task again (Jaccard overlap with it
    at least `SAME_GROUP_OVERLAP`) or leave fewer than `MIN_GROUP_SIZE` prompts to train on. On
    RouterBench the clusters are each within one task: the tasks that differ most come back whole,
    the others are cut in two or three. Support (k and threshold) is still chosen on the tasks
    alone: it is to tell unseen tasks apart. Returns the groups (tasks first) and their description.
    """
    if not grouping.startswith("tasks"):
        return groups, grouping

    def overlap(a, b):
        return np.intersect1d(a, b).size / np.union1d(a, b).size

    n = embeddings.shape[0]
    clusters = [
        cluster for cluster in cluster_groups(embeddings, seed=seed)
        if cluster.size <= n - MIN_GROUP_SIZE and all(overlap(cluster, task) < SAME_GROUP_OVERLAP for task in groups)
    ]
    return groups + clusters, f"{grouping}; and {len(clusters)} k-means clusters of all the prompts"


def disjoint_groups(groups: list[np.ndarray], index: int) -> np.ndarray:
    """
    Indices of the groups that share no row with `groups[index]`; all the others when none does (a
    cluster across every task; tasks are disjoint, so a task or a cluster within one always has some).
    """
    others = [other for other in range(len(groups)) if other != index]
    disjoint = [other for other in others if np.intersect1d(groups[other], groups[index]).size == 0]
    return np.array(disjoint or others, dtype=int)


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
    embeddings: torch.Tensor, groups: list[np.ndarray], seed: int = 0, k_grid=SUPPORT_K_GRID, threshold_grid=THRESHOLD_GRID,
    neighbours: NeighbourLists | None = None, probes: np.ndarray | None = None,
) -> dict:
    """
    For each group: a memory of the other groups' prompts (less a seeded `HELD_IN_FRACTION` held in),
    the support of the group's prompts (out) and of the held-in prompts (in), for every k (one
    neighbour search per side serves every k; `neighbours` is searched once when not given). With
    `probes` (a sample of the rows), the reference and held-in prompts are those among them and each
    group's prompts a sample of `MAX_GROUP_ROWS`; the memories stay whole. Returns
    `{"k_grid", "auroc" (per k, mean over groups), "k", "threshold_grid", "balanced_accuracy", "threshold"}`.
    """
    from_groups = []
    rng = np.random.default_rng(seed)
    n = embeddings.shape[0]
    neighbours = neighbours or NeighbourLists(embeddings, NEIGHBOUR_DEPTH_FACTOR * max(k_grid))
    for group in groups:
        others = rng.permutation(np.setdiff1d(np.arange(n), group))
        n_in = max(1, int(round(HELD_IN_FRACTION * others.size)))
        held_in, memory = others[:n_in], others[n_in:]
        from_groups.append((group, held_in, memory))
    supports = {}
    for index, (group, held_in, memory) in enumerate(from_groups):
        excluded = _mask(n, group, held_in)
        if probes is not None:
            memory, held_in, group = np.intersect1d(memory, probes), np.intersect1d(held_in, probes), sample_rows(group, MAX_GROUP_ROWS, seed + index)
        reference = neighbours.top_k_means(memory, excluded, k_grid).sort(0).values
        inside, outside = neighbours.top_k_means(held_in, excluded, k_grid), neighbours.top_k_means(group, excluded, k_grid)
        for column, k in enumerate(k_grid):
            supports[(k, index)] = (
                _rank_in(reference[:, column].contiguous(), inside[:, column].contiguous()).numpy(),
                _rank_in(reference[:, column].contiguous(), outside[:, column].contiguous()).numpy(),
            )
    aurocs = [float(np.mean([_held_out_auroc(*supports[(k, index)]) for index in range(len(from_groups))])) for k in k_grid]
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


# -------------------------------------------------------------------------------------- the fit


def _held_out_auroc(support_in: np.ndarray, support_out: np.ndarray) -> float:
    """P(support of a held-in prompt > that of a held-out-group prompt), ties half."""
    return auroc(np.r_[np.ones(support_in.size), np.zeros(support_out.size)], np.r_[support_in, support_out])


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


def adjusted_quality(
    calibrated, prior, support, threshold: float, floor: float, pessimism: float = 0.0, spread_out=0.0,
    pessimism_support: float = 1.0, prior_shrink: float = 0.0,
):
    """
    Quality as `CarrotReliability.adjust` makes it from calibrated quality `(n, m)`, the prior
    `(m,)` or `(n, m)`, support `(n,)` and the band's half-width out of distribution `(m,)`: `(n, m)`.
    """
    quality = prior + shrink_weight(support, threshold, floor, prior_shrink)[:, None] * (calibrated - prior)
    if pessimism > 0:
        caution = 1 - np.clip(support / pessimism_support, 0, 1)[:, None]
        quality = np.clip(quality - pessimism * caution * np.asarray(spread_out), 0, 1)
    return quality


def routed_over_mu(quality: np.ndarray, scores: np.ndarray, cost: np.ndarray, cost_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """
    Route `quality (n, m)` with true `cost (n, m)` over `EVIDENCE_MU_STEPS` μ in [0, 1]; per prompt,
    mean over μ of the chosen model's predicted minus true score (missing = 0) and of the realised
    utility (1 − μ)·score − μ·cost/cost_scale: two `(n,)` arrays.
    """
    scores = np.nan_to_num(scores, nan=0.0)
    rows = np.arange(quality.shape[0])
    gap, utility = np.zeros(quality.shape[0]), np.zeros(quality.shape[0])
    for mu in np.linspace(0, 1, EVIDENCE_MU_STEPS):
        chosen = ((1 - mu) * quality - mu * cost / cost_scale).argmax(1)
        gap += quality[rows, chosen] - scores[rows, chosen]
        utility += (1 - mu) * scores[rows, chosen] - mu * cost[rows, chosen] / cost_scale
    return gap / EVIDENCE_MU_STEPS, utility / EVIDENCE_MU_STEPS


def chosen_overestimate(
    cells: dict, index: int, threshold: float, floor: float, cost_scale: float, prior_shrink: float = 0.0,
    pessimism: float = 0.0, pessimism_support: float = 1.0,
) -> float:
    """
    Held-out group `index`: its prompts' quality (calibrated, shrunk with `floor` and `prior_shrink`, lowered with
    `pessimism` by the group's band `cells["band"][index]`) routed with true costs over
    `EVIDENCE_MU_STEPS` μ; the chosen model's predicted minus true score (missing = 0), mean over
    prompts and μ.
    """
    band = cells["band"][index] if "band" in cells else 0.0
    quality = adjusted_quality(
        cells["calibrated"][index], cells["prior"][index], cells["support"][index], threshold, floor,
        pessimism, band, pessimism_support, prior_shrink,
    )
    return float(routed_over_mu(quality, cells["scores"][index], cells["cost"][index], cost_scale)[0].mean())


def leave_one_out_support(
    embeddings: torch.Tensor, k: int, neighbours: NeighbourLists | None = None, rows: np.ndarray | None = None
) -> np.ndarray:
    """
    Support `(n,)` of each training prompt against the others (about uniform on [0, 1] by
    construction); of `rows` only, against their own similarities, when given: `(len(rows),)`.
    """
    if neighbours is None:
        similarity = top_k_mean_similarity(embeddings, embeddings, k, exclude_self=True)
    else:
        rows = np.arange(embeddings.shape[0]) if rows is None else rows
        similarity = neighbours.top_k_means(rows, _mask(embeddings.shape[0]), [k])[:, 0]
    return _rank_in(similarity.sort().values, similarity).numpy()


def in_distribution_loss(
    calibrated: np.ndarray, prior: np.ndarray, support: np.ndarray, scores: np.ndarray, cost: np.ndarray,
    threshold: float, floor: float, band: np.ndarray, cost_scale: float, pessimism: float, pessimism_support: float,
    prior_shrink: float = 0.0,
) -> tuple[float, float, float]:
    """
    What `pessimism` (ramping out at `pessimism_support`) costs in distribution: training prompts
    with out-of-fold `calibrated (n, m)` quality and leave-one-out `support (n,)`, routed with true
    `cost (n, m)` over the μ sweep. Returns the mean per-prompt realised-utility loss against no
    pessimism, its standard error (paired), and the change in ECE ([`masked_ece`]).
    """
    def utility(level):
        quality = adjusted_quality(calibrated, prior, support, threshold, floor, level, band, pessimism_support, prior_shrink)
        return routed_over_mu(quality, scores, cost, cost_scale)[1], masked_ece(quality, scores)

    (before, ece_before), (after, ece_after) = utility(0.0), utility(pessimism)
    loss = before - after
    standard_error = float(loss.std(ddof=1) / math.sqrt(loss.size)) if loss.size > 1 else 0.0
    return float(loss.mean()), standard_error, ece_after - ece_before


def choose_pessimism(
    cells: dict, n_groups: int, in_distribution: dict, threshold: float, floor: float, cost_scale: float,
    prior_shrink: float = 0.0, grid=PESSIMISM_GRID, support_grid=THRESHOLD_GRID,
) -> tuple[tuple[float, float], dict]:
    """
    `(ood_pessimism, ood_pessimism_support)`: among the pairs of `grid` × `support_grid` whose
    in-distribution loss ([`in_distribution_loss`] with `in_distribution`'s arrays) plus two standard
    errors is at most `IN_DISTRIBUTION_TOLERANCE` and whose out-of-fold ECE rises at most
    `IN_DISTRIBUTION_ECE_TOLERANCE`, the one whose held-out groups over-estimate the chosen model least (mean over
    groups of the positive part); ties go to less pessimism, then to the narrower ramp. Returns it and
    the evidence per pair.
    """
    evidence, best = {}, None
    for pessimism in grid:
        for support in support_grid if pessimism > 0 else support_grid[:1]:
            loss, standard_error, ece_change = in_distribution_loss(
                **in_distribution, threshold=threshold, floor=floor, cost_scale=cost_scale,
                pessimism=pessimism, pessimism_support=support, prior_shrink=prior_shrink,
            )
            gaps = [
                chosen_overestimate(cells, index, threshold, floor, cost_scale, prior_shrink, pessimism, support)
                for index in range(n_groups)
            ]
            overestimate = float(np.mean(np.maximum(gaps, 0.0)))
            allowed = loss + 2 * standard_error <= IN_DISTRIBUTION_TOLERANCE and ece_change <= IN_DISTRIBUTION_ECE_TOLERANCE
            evidence[f"{pessimism}@{support}"] = {
                "in_distribution_utility_loss": loss, "standard_error": standard_error, "ece_change": ece_change,
                "allowed": allowed,
                "held_out_chosen_gap": gaps, "held_out_overestimate": overestimate,
            }
            key = (round(overestimate, 6), pessimism, support)
            if allowed and (best is None or key < best[0]):
                best = (key, (float(pessimism), float(support)))
    return best[1], evidence


def fit_reliability(
    router,
    table,
    embeddings: torch.Tensor,
    oof_quality: np.ndarray,
    predict_held_out: Callable[[np.ndarray, np.ndarray], np.ndarray],
    seed: int = 0,
    layers=None,
) -> dict:
    """
    Fit and store in `router` its support statistics, calibration maps, prior, shrinkage floor and
    band (see the module docstring for the rules), from the training `table`, its prompts'
    `embeddings (n, hidden)` (the router's encoder), out-of-fold raw predictions `oof_quality (n, m)`
    and `predict_held_out(train_rows, test_rows) → (len(test_rows), m)` raw quality of a predictor
    trained on `train_rows` only. Returns a JSON-ready report of the evidence and the choices.

    `layers` (default `DEFAULT_LAYERS`) are the layers the router uses: each is fitted as the rules
    say, and a layer left out is set to no change afterwards (calibration: identity; prior_shrink:
    λ = 0; ood_shrink: floor 1; caution: p = 0), as `training.ablation` measures it.

    On tables of more than `MAX_EVIDENCE_ROWS` prompts only the rows of `evidence_rows(n, seed)` of
    `oof_quality` are read (the others may be left at anything), and each held-out group is queried
    on a sample of `MAX_GROUP_ROWS` of its prompts: the cost grows with n, not n².
    """
    scores = np.asarray(table.scores, dtype=np.float64)
    oof_quality = np.asarray(oof_quality, dtype=np.float64)
    embeddings = torch.as_tensor(embeddings, dtype=torch.float32)
    n_models = scores.shape[1]
    groups, grouping = held_out_groups(table, embeddings, seed=seed)
    report = {"grouping": grouping, "n_groups": len(groups)}

    n = scores.shape[0]
    probes = evidence_rows(n, seed)  # every prompt up to MAX_EVIDENCE_ROWS, else a seeded sample (see there)
    if probes.size < n:
        report["evidence_sample"] = f"{probes.size} of {n} prompts (seeded), {MAX_GROUP_ROWS} at most per held-out group"
    neighbours = NeighbourLists(embeddings, NEIGHBOUR_DEPTH_FACTOR * max(SUPPORT_K_GRID), rows=probes)  # one search for every group
    if len(groups) >= 2:
        evidence = support_evidence(embeddings, groups, seed=seed, neighbours=neighbours, probes=probes)
        k, threshold = evidence["k"], evidence["threshold"]
    else:
        evidence, k, threshold = None, router.config.support_k, router.config.support_threshold
    report["support"] = evidence or "fewer than two groups to hold out: the config's support_k and threshold"
    router.fit_support(None if router.config.predictor_kind == "knn" else embeddings, k=k, threshold=threshold)

    with np.errstate(all="ignore"):
        prior = np.nan_to_num(np.nanmean(scores, axis=0), nan=0.5)
    all_scores, all_oof = scores, oof_quality
    scores, oof_quality = scores[probes], oof_quality[probes]  # out-of-fold evidence: the probes only
    layers = frozenset(DEFAULT_LAYERS if layers is None else layers)
    unknown = sorted(layers - set(RELIABILITY_LAYERS))
    if unknown:
        raise ValueError(f"Unknown reliability layers {unknown}; choose from {', '.join(RELIABILITY_LAYERS)}.")
    chosen_method, briers = choose_calibration(oof_quality, scores, seed=seed)
    # Without the calibration layer the router acts on raw predictions, so every later choice (λ, the
    # floor, the pessimism) is made for raw ones: λ chosen for calibrated predictions and applied to
    # raw ones is not what the out-of-fold evidence chose (on two-candidate re-splits, isotonic
    # predictions chose λ = 0.2 or 0.5 where raw ones chose less or more; see docs/quality.md).
    method = chosen_method if "calibration" in layers else "identity"
    maps = fit_calibration(method, oof_quality, scores)
    crossed = cross_fitted(method, oof_quality, scores, seed=seed)
    spread_in = np.array([max(BAND_Z * binned_calibration_gap(crossed[:, j], scores[:, j]), 0.005) for j in range(n_models)])
    report["calibration"] = {"method": method, "chosen": chosen_method, "cross_fitted_brier": briers}
    true_cost = np.asarray(table.cost(), dtype=np.float64)
    all_cost = np.where(np.isnan(true_cost), np.nanmean(true_cost, axis=0, keepdims=True), true_cost)
    true_cost = all_cost[probes]
    loo_prior = leave_one_out_prior(all_scores)[probes]
    prior_shrink, shrink_aiq = choose_prior_shrink(crossed, loo_prior, scores, true_cost, router.config.cost_scale)
    report["prior_shrink_choice"] = {
        "chosen": prior_shrink,
        "criterion": "out-of-fold routing AIQ of the cross-fitted predictions the router uses (calibrated with "
                     "the calibration in use; true costs; ties: smaller)",
        "calibration_in_use": method,
        "out_of_fold_aiq": {str(lam): value for lam, value in shrink_aiq.items()},
    }
    # λ for the other side of the calibration switch too (reported; `training.ablation` switches with it)
    if chosen_method == "identity":
        calibrated_shrink = uncalibrated_shrink = prior_shrink
    elif method == "identity":
        uncalibrated_shrink = prior_shrink
        calibrated_shrink = choose_prior_shrink(cross_fitted(chosen_method, oof_quality, scores, seed=seed), loo_prior, scores,
                                                true_cost, router.config.cost_scale)[0]
    else:
        calibrated_shrink = prior_shrink
        uncalibrated_shrink = choose_prior_shrink(oof_quality, loo_prior, scores, true_cost, router.config.cost_scale)[0]
    report["prior_shrink_choice"].update({"calibrated": calibrated_shrink, "uncalibrated": uncalibrated_shrink})

    floor, spread_out, pessimism, pessimism_support = 1.0, np.full(n_models, BAND_Z * 0.5), 0.0, threshold
    if len(groups) >= 2:
        groups, report["quality_grouping"] = quality_groups(groups, grouping, embeddings, seed=seed)
        cells = {"calibrated": [], "prior": [], "scores": [], "support": [], "raw": [], "cost": []}
        deviations = []
        for index, group in enumerate(groups):
            others = np.setdiff1d(np.arange(n), group)
            fitted_on = np.isin(probes, others)  # the probes outside the group
            group_maps = fit_calibration(method, oof_quality[fitted_on], scores[fitted_on])
            queried = sample_rows(group, MAX_GROUP_ROWS, seed + index)
            raw = np.asarray(predict_held_out(others, queried), dtype=np.float64)
            with np.errstate(all="ignore"):
                group_prior = np.nan_to_num(np.nanmean(all_scores[others], axis=0), nan=0.5)
                deviations.append(np.nanmean(all_scores[group], axis=0) - group_prior)
            cells["raw"].append(raw)
            cells["calibrated"].append(calibrate(group_maps, raw))
            cells["prior"].append(np.broadcast_to(group_prior, raw.shape).copy())
            cells["scores"].append(all_scores[queried])
            cells["cost"].append(all_cost[queried])
            cells["support"].append(neighbours.support(queried, _mask(n, group), k, reference_rows=probes).numpy())
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
        # each held-out group's band from the deviations of the groups that share none of its prompts
        # (no group sees its own scores; a cluster and the task it is cut from overlap)
        cells["band"] = [
            np.maximum(BAND_Z * np.sqrt((deviations[disjoint_groups(groups, index)] ** 2).mean(axis=0)), spread_in)
            for index in range(len(groups))
        ]
        (pessimism, pessimism_support), evidence_by_pair = choose_pessimism(
            cells, len(groups),
            {"calibrated": crossed, "prior": prior, "support": leave_one_out_support(embeddings, k, neighbours, rows=probes), "scores": scores,
             "cost": true_cost, "band": np.maximum(spread_out, spread_in)},
            threshold, floor, router.config.cost_scale, prior_shrink,
        )
        report["ood_pessimism"] = {"chosen": pessimism, "support": pessimism_support, "evidence": evidence_by_pair}
    fitted = {"calibration": chosen_method, "prior_shrink": calibrated_shrink, "prior_shrink_uncalibrated": uncalibrated_shrink,
              "ood_shrink": floor, "caution": pessimism}
    prior_shrink = prior_shrink if "prior_shrink" in layers else 0.0
    floor = floor if "ood_shrink" in layers else 1.0
    pessimism = pessimism if "caution" in layers else 0.0
    report["layers"] = {"on": sorted(layers), "fitted": fitted,
                        "used": {"calibration": method, "prior_shrink": prior_shrink, "ood_shrink": floor, "caution": pessimism}}
    knots_x, knots_y = maps_to_knots(maps)
    router.set_calibration(
        knots_x, knots_y, torch.tensor(prior, dtype=torch.float32), torch.tensor(spread_in, dtype=torch.float32),
        torch.tensor(np.maximum(spread_out, spread_in), dtype=torch.float32), method=method, shrink_floor=floor,
        prior_shrink=prior_shrink, ood_pessimism=pessimism, ood_pessimism_support=pessimism_support,
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

    def predict(train_rows, test_rows, chunk_size: int = 1024):
        train_rows, test_rows = torch.as_tensor(train_rows), torch.as_tensor(test_rows)
        memory, memory_values, memory_observed = embeddings[train_rows], values[train_rows], observed[train_rows]
        parts = []
        with torch.no_grad():  # in chunks of test rows: a whole group against the rest takes gigabytes on large tables
            for start in range(0, test_rows.shape[0], chunk_size):
                similarity = embeddings[test_rows[start : start + chunk_size]] @ memory.T
                parts.append(CarrotKNNMemory.observed_neighbour_mean(similarity, memory_values, memory_observed, k))
        return torch.cat(parts).numpy() if parts else np.zeros((0, values.shape[1]), dtype=np.float32)

    return predict


def fit_knn_reliability(router, table, embeddings: torch.Tensor, folds: int = 5, seed: int = 0, layers=None) -> dict:
    """
    [`fit_reliability`] for a filled kNN router: out-of-fold predictions at its k from `folds` seeded
    folds; `layers` default to `KNN_DEFAULT_LAYERS`.
    """
    predict = knn_held_out_predictor(embeddings, table, router.config.knn_k)
    n = len(table)
    oof = np.zeros(np.asarray(table.scores).shape)  # the fit reads the probes' rows only (`evidence_rows`)
    probes = evidence_rows(n, seed)
    for fold in np.array_split(np.random.default_rng(seed).permutation(n), folds):
        held_out = np.intersect1d(fold, probes)  # sorted: predictions come back in this order, so rows are written in it too
        oof[held_out] = predict(np.setdiff1d(np.arange(n), fold), held_out)
    return fit_reliability(router, table, embeddings, oof, predict, seed=seed,
                           layers=KNN_DEFAULT_LAYERS if layers is None else layers)


def fit_validation_reliability(
    router, fit_embeddings: torch.Tensor, validation_table, validation_embeddings: torch.Tensor, seed: int = 0
) -> dict | None:
    """
    [`fit_reliability`] for a router whose predictor cannot be refitted per fold (a fine-tuned
    encoder: refitting would multiply the fine-tuning), from prompts it was not trained on.

    - its predictions on `validation_table` (held out of fine-tuning) stand for out-of-fold ones: they
      fit the calibration and the in-distribution checks;
    - held-out groups (tasks or clusters of the validation prompts) are predicted by a kNN
      (`HELD_OUT_PROXY_K` neighbours) on the router's own embeddings of the other groups' validation
      prompts: out of distribution a prediction carries little beyond the level it borrows from the
      seen tasks (see the module docstring), which any predictor of those tasks borrows alike;
    - support is then measured against `fit_embeddings (n_fit, hidden)`, every prompt it was trained
      on (the calibration, prior, band and choices are kept).

    `validation_embeddings (n_val, hidden)` are the router's. Returns the report, or None (the router
    left as it is) with fewer than `MIN_VALIDATION_PROMPTS` validation prompts.
    """
    if len(validation_table) < MIN_VALIDATION_PROMPTS:
        return None
    validation_embeddings = torch.as_tensor(validation_embeddings, dtype=torch.float32)
    with torch.no_grad():
        quality, _ = router.predict_raw(validation_embeddings.to(router.predictor_device))
    proxy_k = min(HELD_OUT_PROXY_K, len(validation_table) - 1)
    predict = knn_held_out_predictor(validation_embeddings, validation_table, proxy_k)
    report = fit_reliability(router, validation_table, validation_embeddings, quality.float().cpu().numpy(), predict, seed=seed)
    router.fit_support(fit_embeddings, k=router.config.support_k, threshold=router.config.support_threshold)
    report["fitted_on"] = (
        f"the router's predictions on {len(validation_table)} validation prompts; held-out groups predicted by a "
        f"kNN (k = {proxy_k}) on its embeddings; support against {len(fit_embeddings)} training prompts"
    )
    return report


__all__ = [
    "DEFAULT_LAYERS",
    "KNN_DEFAULT_LAYERS",
    "RELIABILITY_LAYERS",
    "NeighbourLists",
    "evidence_rows",
    "fit_reliability",
    "fit_knn_reliability",
    "fit_validation_reliability",
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
    "adjusted_quality",
    "choose_pessimism",
    "leave_one_out_support",
]
