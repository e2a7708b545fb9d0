"""CARROT-KNN: a memory of the training prompts' embeddings, with k chosen by cross-validation."""

from __future__ import annotations

import time

import numpy as np
import torch

from carrot_hub.building import fit_knn
from carrot_hub.modeling_carrot import predicted_cost
from carrot_hub.reliability import KNN_DEFAULT_LAYERS, evidence_rows, fit_reliability, knn_held_out_predictor

from .embeddings import embed_table
from .evaluation.curves import decide_all, ground_truth
from .evaluation.evaluate import count_input_tokens
from .evaluation.metrics import aiq
from .prepare import check_training_table, new_training_router

DEFAULT_K_GRID = (4, 8, 16, 32, 64, 128, 192, 256, 384, 512)
CV_MU_STEPS = 201


def fold_indices(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """A seeded shuffle of `range(n)` cut into `folds` near-equal held-out index arrays."""
    if folds < 2:
        raise ValueError(f"folds must be at least 2 for cross-validation, got {folds}.")
    if n < folds:
        raise ValueError(f"Cannot cut {n} prompts into {folds} folds: use fewer folds or more data.")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, folds)]


def masked_brier(quality: torch.Tensor, scores: torch.Tensor) -> float:
    """Mean squared error of predicted quality `(n, n_models)` against scores (NaN = missing) over observed cells."""
    observed = ~torch.isnan(scores)
    return float(((quality - torch.nan_to_num(scores)) ** 2)[observed].mean())


def masked_log_token_mse(log_tokens: torch.Tensor, output_tokens: torch.Tensor) -> float:
    """MSE of predicted log(1 + tokens) `(n, n_models)` against observed output tokens (NaN = missing)."""
    observed = ~torch.isnan(output_tokens)
    target = torch.log1p(torch.nan_to_num(output_tokens).clamp(min=0))
    return float(((log_tokens - target) ** 2)[observed].mean())


def neighbour_means_by_k(memory, embeddings: torch.Tensor, k_grid, chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """
    What the filled kNN `memory` (a `CarrotKNNMemory`) predicts for `embeddings (batch, hidden)` at
    every k of `k_grid`, from one similarity product and one sorted search per chunk of prompts
    (searching again per k made cross-validation cost `len(k_grid)` searches):
    quality and log1p(tokens), each `(len(k_grid), batch, n_models)`.

    Per column, the mean over its k nearest observed rows is read off running sums along the
    neighbours, most similar first: the sum up to where the observed count reaches k (all of them
    when it never does, as the memory's own search gives).
    """
    rows = memory._rows()
    targets, unobserved = memory._stacked_targets(*rows[1:])
    n_memory, n_columns = rows[0].shape[0], targets.shape[1] // 2
    ks = [max(1, min(int(k), n_memory)) for k in k_grid]
    depth = min(n_memory, max(ks) + unobserved)
    out = torch.empty(len(ks), embeddings.shape[0], n_columns)
    for start in range(0, embeddings.shape[0], chunk_size):
        similarity = embeddings[start : start + chunk_size].to(rows[0].dtype) @ rows[0].T
        nearest = similarity.topk(depth, dim=1).indices  # most similar first
        del similarity
        gathered = targets[nearest]  # (chunk, depth, 2 * n_columns)
        sums = gathered[..., :n_columns].cumsum(1).transpose(1, 2).contiguous()  # (chunk, n_columns, depth)
        counts = gathered[..., n_columns:].cumsum(1).transpose(1, 2).contiguous()
        for column, k in enumerate(ks):
            at = torch.searchsorted(counts, torch.full(counts.shape[:2] + (1,), float(k)), right=False).clamp(max=depth - 1)
            total, count = sums.gather(2, at)[..., 0], counts.gather(2, at)[..., 0]
            out[column, start : start + nearest.shape[0]] = total / count.clamp(min=1)
    n_models = n_columns // 2
    return out[..., :n_models], out[..., n_models:]


def cross_validate_k(
    router, embeddings: torch.Tensor, table, k_grid, folds: int = 5, seed: int = 0, mu_steps: int = CV_MU_STEPS
) -> dict:
    """
    Score every k of `k_grid` by `folds`-fold cross-validation on `table`: the router's kNN memory
    is filled with the other folds and predicts the held-out one. The out-of-fold predictions of
    the whole table (on tables larger than `MAX_EVIDENCE_ROWS`, of the seeded sample
    `carrot_hub.reliability.evidence_rows`; the other rows are left at 0) are then routed like a
    test split: CARROT's rule over `mu_steps` values of μ, scored with the table's true scores and costs.

    Args:
        router: a kNN `CarrotRouter` whose memory is overwritten.
        embeddings: `(n, hidden)` embeddings of `table`'s prompts.

    Returns:
        `{"k_grid", "oof_quality", "aiq", "brier", "log_token_mse"}`, each aligned with `k_grid` (the
        out-of-fold quality predictions `(len(k_grid), n, n_models)`, not JSON); the
        out-of-fold AIQ of routing (max cost: the dearest single model, or the dearest curve), the Brier score of the
        quality predictions and the squared error of log(1 + output tokens), over observed cells.
    """
    scores = torch.as_tensor(table.scores, dtype=torch.float32)
    output_tokens = torch.as_tensor(table.output_tokens, dtype=torch.float32)
    n, n_models = scores.shape
    probes = evidence_rows(n, seed)  # all prompts, or on a large table a seeded sample (cost n·sample, not n²)
    oof_quality = torch.zeros(len(k_grid), n, n_models)
    oof_log_tokens = torch.zeros(len(k_grid), n, n_models)
    for fold in fold_indices(n, folds, seed):
        held_out = np.intersect1d(fold, probes)
        kept = np.setdiff1d(np.arange(n), fold)
        router.predictor.fill(embeddings[kept], scores[kept], output_tokens[kept])
        with torch.no_grad():
            quality, log_tokens = neighbour_means_by_k(router.predictor, embeddings[held_out], k_grid)
        oof_quality[:, held_out], oof_log_tokens[:, held_out] = quality, log_tokens
    evaluated = table if probes.size == n else table.subset(probes)
    truth = ground_truth(evaluated)
    input_tokens = count_input_tokens(router, evaluated.prompts)
    input_prices, output_prices = router.resolve_prices()
    mu_grid = np.linspace(0.0, 1.0, mu_steps)
    curves = []
    for column in range(len(k_grid)):
        log_tokens = oof_log_tokens[column, probes]
        cost = predicted_cost(input_tokens, router._tokens_from_log(log_tokens), input_prices, output_prices)
        choices = decide_all(oof_quality[column, probes], cost, mu_grid, router.config.cost_scale)
        curves.append(truth.realised(choices))
    # One cost range for every k: the dearest single model's mean cost, or more when picking the
    # dearest model per prompt costs more than that on average (then every curve is cut there).
    max_cost = max(float(truth.cost.mean(0).max()), *(float(np.max(costs)) for costs, _ in curves))
    routing_aiq = [aiq(costs, qualities, max_cost=max_cost) for costs, qualities in curves]
    return {
        "k_grid": [int(k) for k in k_grid],
        "oof_quality": oof_quality,
        "aiq": routing_aiq,
        "brier": [masked_brier(quality[probes], scores[probes]) for quality in oof_quality],
        "log_token_mse": [masked_log_token_mse(log_tokens[probes], output_tokens[probes]) for log_tokens in oof_log_tokens],
        **({"evaluated_prompts": int(probes.size)} if probes.size < n else {}),
    }


def best_k(cv: dict) -> int:
    """The k of highest out-of-fold AIQ; among equal AIQs, the lowest Brier score."""
    best = max(range(len(cv["k_grid"])), key=lambda i: (round(cv["aiq"][i], 12), -cv["brier"][i]))
    return cv["k_grid"][best]


def train_knn_router(
    train_table,
    k_grid=DEFAULT_K_GRID,
    folds: int = 5,
    seed: int = 0,
    encoder: str | None = None,
    embeddings: torch.Tensor | None = None,
    cost_scale: float | None = None,
    drop_unscored_models: bool = False,
    cache_dir=None,
    progress: bool = True,
    reliability_layers=None,
    **config_fields,
):
    """
    Train CARROT-KNN on `train_table`.

    k is the value of `k_grid` whose out-of-fold predictions route best: the highest AIQ over a μ
    sweep scored with the training table's true scores and costs (what the router is for, rather
    than a proxy: on RouterBench the Brier score keeps falling past the k that routes best). The
    Brier score and the token error are reported next to it. The final memory holds every
    training prompt.

    Args:
        train_table: a `RoutingTable` with prices.
        k_grid: the candidate values of k (values above the memory size act as the memory size).
        folds, seed: the cross-validation folds and their seeded shuffle.
        encoder: folder or Hub id of a BERT-family encoder (default all-MiniLM-L6-v2); with
            `encoder_kind="static"` (a config field) the encoder a static table is distilled from.
        embeddings: `(n_prompts, hidden)` precomputed with this encoder and the same prompt cutting
            (see `training.embeddings.embed_table`); computed when None.
        cost_scale: dollars per quality point at μ = 0.5 (default: `default_cost_scale(train_table)`).
        drop_unscored_models: leave out candidates whose scores are all missing instead of failing.
        reliability_layers: the reliability layers the router uses (default
            `carrot_hub.reliability.KNN_DEFAULT_LAYERS`; see `fit_reliability`).
        config_fields: further `CarrotConfig` fields (e.g. `max_prompt_tokens`, `truncation_side`).

    Returns:
        `(router, report)`: the kNN `CarrotRouter` and a JSON-serialisable dict with the grid, the
        scores and the chosen k.
    """
    train_table = check_training_table(train_table, drop_unscored_models=drop_unscored_models)
    k_grid = sorted({int(k) for k in k_grid})
    if not k_grid or k_grid[0] < 1:
        raise ValueError(f"k_grid must hold positive integers, got {k_grid}.")
    router = new_training_router(train_table, "knn", encoder=encoder, cost_scale=cost_scale, **config_fields)
    if embeddings is None:
        embeddings = embed_table(router, train_table, cache_dir=cache_dir, progress=progress)
    embeddings = torch.as_tensor(embeddings, dtype=torch.float32)
    if embeddings.shape[0] != len(train_table):
        raise ValueError(
            f"embeddings has {embeddings.shape[0]} rows but the table has {len(train_table)} prompts."
        )
    began = time.perf_counter()
    cv = cross_validate_k(router, embeddings, train_table, k_grid, folds=folds, seed=seed)
    stage_seconds = {"cross_validation": round(time.perf_counter() - began, 2)}
    oof_quality = cv.pop("oof_quality")
    chosen_k = best_k(cv)
    router.config.knn_k = chosen_k
    router.predictor.k = chosen_k
    began = time.perf_counter()
    fit_knn(router, embeddings, train_table, support=False)  # the reliability fit below fits support and the prior
    stage_seconds["memory"] = round(time.perf_counter() - began, 2)
    began = time.perf_counter()
    reliability = fit_reliability(
        router, train_table, embeddings, oof_quality[cv["k_grid"].index(chosen_k)].numpy(),
        knn_held_out_predictor(embeddings, train_table, chosen_k), seed=seed,
        layers=KNN_DEFAULT_LAYERS if reliability_layers is None else reliability_layers,
    )
    stage_seconds["reliability"] = round(time.perf_counter() - began, 2)
    report = {
        "predictor_kind": "knn",
        "encoder_kind": router.config.encoder_kind,
        "n_train_prompts": len(train_table),
        "candidate_models": list(train_table.models),
        "cost_scale": router.config.cost_scale,
        "cv_folds": folds,
        "cv_seed": seed,
        "cv_criterion": "out-of-fold AIQ of routing (ties: Brier)",
        **cv,
        "k": chosen_k,
        "reliability": reliability,
        "stage_seconds": stage_seconds,
    }
    return router, report

