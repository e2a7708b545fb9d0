"""
Baselines evaluated next to CARROT on the same test split, all from prompt embeddings computed once.

- `random`: mixing the cheapest and the best single model, sending a prompt to the best one with
  probability p swept over [0, 1]. Its expected (cost, quality) is reported (no sampling noise).
- single models and the oracle (cheapest model with the best true score, per prompt); the oracle
  is also swept over μ with true scores and costs to draw the ceiling curve.
- `carrot-knn-reference`: CARROT-KNN as the authors' code (somerstep/CARROT,
  `carrot/train_and_infer.py` and `utils.route`) does it on RouterBench: a cosine k-NN regressor of
  the 0/1 scores (one k for all models, chosen by 5-fold CV (unshuffled folds) on R² over
  k ∈ {2, 4, ..., 512}), another of the per-model standardised dollar cost (its own k), and the
  rule argmax (1 − λ)·q̂ − λ·100·ĉ over λ ∈ {0, 0.001, ..., 1} (their hard-coded multiplier 100).
  Differences, by necessity: embeddings come from our router's encoder (all-MiniLM-L6-v2) rather
  than OpenAI's text-embedding-3-small; the cost regressed and judged is the data's true cost
  (tokens × list prices) rather than RouterBench's recorded `total_cost`; missing scores count as
  0 (the reference had none to handle); the k-NN is a numpy/torch re-implementation of
  scikit-learn's brute-force cosine `KNeighborsRegressor` (scikit-learn is not a dependency).
- `routerbench`: RouterBench's rule — the same predicted quality as the reference k-NN, but each
  model's AVERAGE training cost instead of a per-prompt prediction (the reference code averaged
  test costs; we use the training split so that nothing is learnt from the test set).
- `routellm-mf`: RouteLLM's matrix factorisation between a strong and a weak model: model
  embeddings v_m and a projection P of the prompt embedding e_x, score s(m, x) = w·(v_m ⊙ P e_x),
  P(a beats b | x) = σ(s(a, x) − s(b, x)), trained with BCE on pairwise wins from the training split
  (every pair of models on every prompt: the better score wins; on a tie the cheaper model wins,
  since paying more bought nothing — dropping ties instead leaves the score blind to prompts that
  the weak model handles, and made MF worse than random routing on this data). A prompt goes to the
  strong model when P(strong beats weak) ≥ threshold; sweeping the threshold gives the curve.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from training.evaluation import metrics
from training.evaluation.curves import CostQualityCurve, GroundTruth, curve_from_predictions, decide_all

REFERENCE_K_GRID = tuple(2**i for i in range(1, 10))
REFERENCE_COST_MULTIPLIER = 100.0
REFERENCE_LAMBDA_GRID = np.arange(0, 1.001, 0.001)


# ------------------------------------------------------------------------- no training needed


def random_mixing_curve(truth: GroundTruth, n_points: int = 101, pair: tuple[str, str] | None = None) -> CostQualityCurve:
    """Expected points of sending each prompt to the best model with probability p, else the cheapest."""
    mean_cost, mean_quality = truth.cost.mean(0), truth.scores.mean(0)
    best = metrics.best_single_model(mean_quality, mean_cost)
    cheapest = int(np.lexsort((-mean_quality, mean_cost))[0])
    p = np.linspace(0, 1, n_points)
    curve = CostQualityCurve(
        "random",
        "baseline",
        "p",
        p,
        (1 - p) * mean_cost[cheapest] + p * mean_cost[best],
        (1 - p) * mean_quality[cheapest] + p * mean_quality[best],
        top=n_points - 1,
        info={"cheap_model": truth.models[cheapest], "best_model": truth.models[best]},
    )
    if pair is not None:
        strong, weak = truth.column(pair[0]), truth.column(pair[1])
        curve.pair_fraction = p.copy()
        curve.pair_qualities = (1 - p) * mean_quality[weak] + p * mean_quality[strong]
    return curve


def no_training_baselines(truth: GroundTruth, pair: tuple[str, str] | None = None) -> list[CostQualityCurve]:
    """The baselines that need no training data: random mixing (single models and the oracle are always reported)."""
    return [random_mixing_curve(truth, pair=pair)]


# ----------------------------------------------------------------------- reference CARROT-KNN


def _cosine_neighbours(queries: torch.Tensor, memory: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Indices `(n_queries, k)` of the k most cosine-similar memory rows, most similar first."""
    queries = F.normalize(queries.double(), dim=1)
    memory = F.normalize(memory.double(), dim=1)
    k = min(k, memory.shape[0])
    parts = [(queries[s : s + chunk] @ memory.T).topk(k, dim=1).indices for s in range(0, queries.shape[0], chunk)]
    return torch.cat(parts)


def _r2_uniform(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """scikit-learn's r2_score(multioutput='uniform_average') with force_finite=True."""
    numerator = ((y_true - y_pred) ** 2).sum(0)
    denominator = ((y_true - y_true.mean(0)) ** 2).sum(0)
    scores = np.where(denominator > 0, 1 - numerator / np.where(denominator > 0, denominator, 1), np.where(numerator > 0, 0.0, 1.0))
    return float(scores.mean())


def _kfold(n: int, folds: int) -> list[np.ndarray]:
    """scikit-learn's unshuffled KFold: the first n % folds folds get one extra row."""
    sizes = np.full(folds, n // folds)
    sizes[: n % folds] += 1
    edges = np.concatenate([[0], np.cumsum(sizes)])
    return [np.arange(edges[i], edges[i + 1]) for i in range(folds)]


def knn_cv_pick(
    embeddings: torch.Tensor, targets: np.ndarray, k_grid: Sequence[int] = REFERENCE_K_GRID, folds: int = 5, seed: int = 0
) -> tuple[int, dict]:
    """
    The reference's `tune_n_neighbors(task='regression')`: mean 5-fold R² per k, best k.
    `embeddings (n, hidden)`, `targets (n, t)`. Returns `(k, {k: mean R²})`.

    The reference's folds are unshuffled, but its training split came out of a shuffled
    `train_test_split`; our tables are often grouped by task, so the rows are put in a seeded
    random order first (unshuffled folds of task-grouped rows would each hold out whole tasks).
    """
    n = embeddings.shape[0]
    if n < folds:
        raise ValueError(f"k-NN cross-validation needs at least {folds} training prompts, got {n}.")
    order = np.random.default_rng(seed).permutation(n)
    embeddings, targets = embeddings[torch.as_tensor(order)], targets[order]
    scores = {k: [] for k in k_grid}
    for held_out in _kfold(n, folds):
        train = np.setdiff1d(np.arange(n), held_out)
        neighbours = _cosine_neighbours(embeddings[held_out], embeddings[train], max(k_grid)).numpy()
        for k in k_grid:
            if k > len(train):
                continue
            prediction = targets[train][neighbours[:, :k]].mean(1)
            scores[k].append(_r2_uniform(targets[held_out], prediction))
    means = {k: float(np.mean(v)) for k, v in scores.items() if v}
    best = max(means, key=lambda k: (means[k], -k))
    return int(best), means


def knn_regress(train_embeddings: torch.Tensor, targets: np.ndarray, test_embeddings: torch.Tensor, k: int) -> np.ndarray:
    """Mean target `(n_test, t)` of the k nearest training prompts (cosine)."""
    neighbours = _cosine_neighbours(test_embeddings, train_embeddings, k).numpy()
    return targets[neighbours].mean(1)


def reference_knn_predictions(
    train_embeddings,
    train_truth: GroundTruth,
    test_embeddings,
    k_grid: Sequence[int] = REFERENCE_K_GRID,
    folds: int = 5,
    seed: int = 0,
) -> dict:
    """
    The reference CARROT-KNN's predictions for the test prompts: quality `(n_test, m)` (scores with
    missing = 0) and dollar cost `(n_test, m)` (k-NN of the per-model standardised cost), with the
    cross-validation report.
    """
    train_embeddings = torch.as_tensor(train_embeddings, dtype=torch.float32)
    test_embeddings = torch.as_tensor(test_embeddings, dtype=torch.float32)
    scores = train_truth.scores
    cost_mean, cost_std = train_truth.cost.mean(0, keepdims=True), train_truth.cost.std(0, keepdims=True)
    standardised = (train_truth.cost - cost_mean) / np.where(cost_std > 0, cost_std, 1.0)
    k_quality, quality_cv = knn_cv_pick(train_embeddings, scores, k_grid, folds, seed)
    k_cost, cost_cv = knn_cv_pick(train_embeddings, standardised, k_grid, folds, seed)
    quality = knn_regress(train_embeddings, scores, test_embeddings, k_quality)
    cost = cost_mean + np.where(cost_std > 0, cost_std, 1.0) * knn_regress(train_embeddings, standardised, test_embeddings, k_cost)
    return {
        "quality": quality,
        "cost": cost,
        "k_quality": k_quality,
        "k_cost": k_cost,
        "cv_r2_quality": {str(k): v for k, v in quality_cv.items()},
        "cv_r2_cost": {str(k): v for k, v in cost_cv.items()},
    }


# ------------------------------------------------------------------------ RouteLLM MF router


class MatrixFactorization(nn.Module):
    """RouteLLM's MF scorer: s(m, x) = w·(normalize(v_m) ⊙ P e_x); `(batch, hidden)` → `(batch, n_models)`."""

    def __init__(self, n_models: int, text_dim: int, dim: int = 128):
        super().__init__()
        self.model_embeddings = nn.Embedding(n_models, dim)
        self.text_proj = nn.Linear(text_dim, dim, bias=False)
        self.classifier = nn.Linear(dim, 1, bias=False)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        models = F.normalize(self.model_embeddings.weight, p=2, dim=1)  # (n_models, dim)
        projected = self.text_proj(embeddings)  # (batch, dim)
        return self.classifier(projected[:, None, :] * models[None, :, :]).squeeze(-1)


def train_mf(
    train_embeddings,
    train_truth: GroundTruth,
    dim: int = 128,
    epochs: int = 10,
    batch_size: int = 1024,
    lr: float = 3e-3,
    weight_decay: float = 1e-5,
    noise: float = 0.05,
    val_fraction: float = 0.1,
    seed: int = 0,
    ties: str = "cheaper",
) -> tuple[MatrixFactorization, dict]:
    """
    Train RouteLLM's MF on pairwise wins (model a's score > model b's on a prompt; on a tie the
    model with the lower mean training cost wins, or `ties="drop"` leaves ties out), with
    RouteLLM's Gaussian noise on the prompt embedding, keeping the weights of the best validation
    loss (a held-out 10% of the prompts). RouteLLM's lr 3e-4 / batch 64 / 100 epochs are scaled to
    larger batches and fewer epochs to keep the run short on a CPU.
    """
    if ties not in ("cheaper", "drop"):
        raise ValueError(f"ties must be 'cheaper' or 'drop', not {ties!r}.")
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.as_tensor(train_embeddings, dtype=torch.float32)
    scores = torch.as_tensor(train_truth.scores)
    n, n_models = scores.shape
    permutation = torch.randperm(n, generator=generator)
    n_val = max(1, int(n * val_fraction))
    split = {"val": permutation[:n_val], "train": permutation[n_val:]}

    mean_cost = torch.as_tensor(train_truth.cost.mean(0))

    def pairs(rows):
        a, b = torch.triu_indices(n_models, n_models, offset=1)
        diff = scores[rows][:, a] - scores[rows][:, b]  # (rows, n_pairs)
        if ties == "cheaper":
            a_cheaper = (mean_cost[a] <= mean_cost[b])[None, :].expand_as(diff)
            a_wins = (diff > 0) | ((diff == 0) & a_cheaper)
            row_index, pair_index = torch.nonzero(torch.ones_like(diff, dtype=torch.bool), as_tuple=True)
        else:
            a_wins = diff > 0
            row_index, pair_index = torch.nonzero(diff != 0, as_tuple=True)
        a_won = a_wins[row_index, pair_index]
        winner = torch.where(a_won, a[pair_index], b[pair_index])
        loser = torch.where(a_won, b[pair_index], a[pair_index])
        return rows[row_index], winner, loser

    train_pairs, val_pairs = pairs(split["train"]), pairs(split["val"])
    if train_pairs[0].numel() == 0:
        raise ValueError("The training split has no prompt on which two models' scores differ: MF cannot learn anything.")
    torch.manual_seed(seed)
    model = MatrixFactorization(n_models, embeddings.shape[1], dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)

    def loss_of(rows, winner, loser, add_noise):
        x = embeddings[rows]
        if add_noise:
            x = x + torch.randn(x.shape, generator=generator) * noise
        s = model(x)
        margin = s.gather(1, winner[:, None]) - s.gather(1, loser[:, None])
        return F.binary_cross_entropy_with_logits(margin.squeeze(1), torch.ones_like(margin.squeeze(1)))

    best_loss, best_state, history = float("inf"), None, []
    n_train = train_pairs[0].numel()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n_train, generator=generator)
        for start in range(0, n_train, batch_size):
            index = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_of(*(t[index] for t in train_pairs), add_noise=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(loss_of(*val_pairs, add_noise=False)) if val_pairs[0].numel() else float(loss)
        history.append(val_loss)
        if val_loss < best_loss:
            best_loss, best_state = val_loss, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    return model, {"val_loss": best_loss, "epochs": epochs, "n_train_pairs": n_train, "best_epoch": int(np.argmin(history))}


def mf_curve(
    model: MatrixFactorization, test_embeddings, truth: GroundTruth, pair: tuple[str, str], info: dict | None = None
) -> CostQualityCurve:
    """Threshold sweep of P(strong beats weak): every distinct split of the test prompts is one point."""
    strong, weak = truth.column(pair[0]), truth.column(pair[1])
    with torch.no_grad():
        s = model(torch.as_tensor(test_embeddings, dtype=torch.float32))
    p_strong = torch.sigmoid(s[:, strong] - s[:, weak]).double().numpy()
    thresholds = np.concatenate([np.unique(p_strong), [np.inf]])  # ascending: all strong → all weak
    to_strong = p_strong[None, :] >= thresholds[:, None]  # (k, n)
    choices = np.where(to_strong, strong, weak)
    costs, qualities = truth.realised(choices)
    curve = CostQualityCurve("routellm-mf", "baseline", "threshold", thresholds, costs, qualities, top=0, info=dict(info or {}))
    curve.choices = choices
    curve.params = np.where(np.isfinite(thresholds), thresholds, 1.0 + 1e-9)  # JSON has no infinity
    curve.pair_fraction = to_strong.mean(axis=1)
    curve.pair_qualities = qualities.copy()
    # Prediction quality: P(strong beats weak) against "strong right and weak wrong" would mix two
    # questions; report nothing rather than a misleading number.
    return curve


# ------------------------------------------------------------------------------------ all of them


def trained_baselines(
    train_embeddings,
    train_truth: GroundTruth,
    test_embeddings,
    test_truth: GroundTruth,
    pair: tuple[str, str] | None,
    mu_grid: np.ndarray,
    cost_scale: float,
    seed: int = 0,
    mf_epochs: int = 10,
) -> list[CostQualityCurve]:
    """
    Reference CARROT-KNN, the RouterBench rule and RouteLLM MF, trained on the training split's
    embeddings and truth (same models, same column order as the test truth).
    """
    if train_truth.models != test_truth.models:
        raise ValueError(f"Train and test models differ: {train_truth.models} vs {test_truth.models}.")
    reference = reference_knn_predictions(train_embeddings, train_truth, test_embeddings, seed=seed)
    info = {key: reference[key] for key in ("k_quality", "k_cost", "cv_r2_quality", "cv_r2_cost")}
    info["cost_multiplier"] = REFERENCE_COST_MULTIPLIER
    knn = curve_from_predictions(
        "carrot-knn-reference",
        test_truth,
        reference["quality"],
        REFERENCE_COST_MULTIPLIER * reference["cost"],
        REFERENCE_LAMBDA_GRID,
        1.0,
        pair,
        info=info,
    )
    knn.prediction_quality = metrics.prediction_quality(test_truth.models, reference["quality"], test_truth.raw_scores)
    knn.cost_prediction = metrics.cost_prediction_errors(test_truth.models, reference["cost"], test_truth.cost)
    average_cost = np.broadcast_to(train_truth.cost.mean(0, keepdims=True), reference["cost"].shape)
    routerbench = curve_from_predictions(
        "routerbench",
        test_truth,
        reference["quality"],
        average_cost,
        mu_grid,
        cost_scale,
        pair,
        info={"quality_predictor": "carrot-knn-reference", "cost": "each model's mean training cost", "cost_scale": cost_scale},
    )
    routerbench.prediction_quality = knn.prediction_quality
    routerbench.cost_prediction = metrics.cost_prediction_errors(test_truth.models, average_cost, test_truth.cost)
    curves = [knn, routerbench]
    if pair is not None:
        model, mf_info = train_mf(train_embeddings, train_truth, epochs=mf_epochs, seed=seed)
        curves.append(mf_curve(model, test_embeddings, test_truth, pair, info={**mf_info, "strong": pair[0], "weak": pair[1]}))
    return curves


__all__ = [
    "random_mixing_curve",
    "no_training_baselines",
    "knn_cv_pick",
    "knn_regress",
    "reference_knn_predictions",
    "MatrixFactorization",
    "train_mf",
    "mf_curve",
    "trained_baselines",
]
