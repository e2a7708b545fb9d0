"""
Re-choosing a grown kNN router's k and prior shrinkage (λ) from its own memory, out of fold: an
experiment of `training.evaluation.label_ceiling --refit`, not part of `carrot serve --learn`.

`carrot train --kind knn` chooses k and λ by out-of-fold routing AIQ on the training table. A router
that then grows by `remember()` (`carrot serve --learn`, `carrot learn`) keeps them, and they were
right for the memory it started with, not for the one it has: a start router on a few hundred
prompts often chose a wide k (up to most of its memory) or λ = 1 (every prediction moved all the
way to the candidate's prior), and then no number of labels changes what it predicts.
`training.evaluation.label_ceiling` measured it: on RouterBench re-splits whose start router chose
λ = 1, every label of every traffic prompt left AIQ where it was.

Measured there (docs/exploration.md): re-choosing helps a memory whose traffic prompts carry every
candidate's label (then thousands of rows are fully scored), and does not help the labels that
exploration or user feedback give (one or two per prompt): the folds then hold only the start
router's couple of hundred fully scored rows, the choice is noisy and lands on extreme values
(k = 4 or 512, λ = 1), and AIQ moved by less than its spread. So `--learn` keeps the start router's k and λ.

`refit_knn` scores every (k, λ) of a grid on the memory as it is now: the rows whose every candidate
is scored (the training rows, and remembered prompts labelled for all of them) are cut into folds;
each fold is predicted from all the other rows, remembered rows with a few labels included (they
are what changed); the out-of-fold predictions, shrunk by each λ with the router's own calibration
and prior, are routed over a μ sweep and scored with the rows' true scores (`routing_aiq`). Costs
are the rows' observed output tokens at the output prices: the memory keeps no prompt lengths, so
input cost, the same tokens for every candidate of a prompt, is left out of the sweep's trade-off.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from carrot_hub.knn_memory_carrot import CarrotKNNMemory
from carrot_hub.prior_shrinkage import PRIOR_SHRINK_GRID, routing_aiq

from .knn import DEFAULT_K_GRID, neighbour_means_by_k

MIN_PROBES = 50  # fewer fully scored rows than this: the out-of-fold AIQ is too noisy to move anything
MAX_PROBES = 2048  # rows predicted per refit (a seeded sample beyond), so a refit stays well under a second
FOLDS = 5


def _nan_where_unobserved(values: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    return torch.where(observed > 0, values, torch.full_like(values, math.nan))


def refit_knn(router, k_grid=DEFAULT_K_GRID, shrink_grid=PRIOR_SHRINK_GRID, folds: int = FOLDS, seed: int = 0,
              max_probes: int = MAX_PROBES, apply: bool = True) -> dict:
    """
    Choose `router`'s k (and λ, `config.prior_shrink`, when it has reliability layers) by out-of-fold
    routing AIQ on its memory as it is now (see the module docstring), and set them when `apply`.

    Returns a JSON-ready report: `{"refitted": bool, "k", "prior_shrink", "previous": {...},
    "probes", "memory_rows", "aiq": {"k=..., λ=...": AIQ}, "reason"?}`; `refitted` is False (nothing
    changed) when fewer than `MIN_PROBES` rows have every candidate scored.
    """
    if router.config.predictor_kind != "knn":
        raise TypeError("refit_knn re-chooses a kNN router's k; this router predicts with MLP heads.")
    memory = router.predictor
    embeddings, quality, quality_observed, log_tokens, tokens_observed = (t.detach().float().cpu() for t in memory._rows())
    n_memory, n_models = quality.shape
    previous = {"k": int(router.config.knn_k), "prior_shrink": float(router.config.prior_shrink)}
    full = torch.nonzero((quality_observed.sum(1) == n_models) & (tokens_observed.sum(1) == n_models)).flatten().numpy()
    report = {"refitted": False, "previous": previous, "memory_rows": int(n_memory), "probes": int(min(len(full), max_probes))}
    if len(full) < max(MIN_PROBES, folds):
        return {**report, "reason": f"{len(full)} rows have every candidate scored; at least {max(MIN_PROBES, folds)} are needed"}
    rng = np.random.default_rng(seed)
    probes = np.sort(rng.choice(full, max_probes, replace=False)) if len(full) > max_probes else full
    k_grid = sorted({int(k) for k in k_grid if int(k) >= 1})
    oof_quality = torch.zeros(len(k_grid), len(probes), n_models)
    scratch = CarrotKNNMemory(router.config, embeddings.shape[1])
    q_nan = _nan_where_unobserved(quality, quality_observed)
    t_nan = _nan_where_unobserved(torch.expm1(log_tokens), tokens_observed)
    for fold in np.array_split(rng.permutation(len(probes)), folds):
        held_out = probes[np.sort(fold)]
        kept = np.setdiff1d(np.arange(n_memory), held_out)
        scratch.fill(embeddings[kept], q_nan[kept], t_nan[kept])
        with torch.no_grad():
            fold_quality, _ = neighbour_means_by_k(scratch, embeddings[held_out], k_grid)
        oof_quality[:, np.searchsorted(probes, held_out)] = fold_quality
    scores = quality[probes].numpy()
    _, output_prices = router.resolve_prices()
    cost = (torch.expm1(log_tokens[probes]) * output_prices[None, :].float()).numpy() / 1e6
    reliability = router.reliability
    shrinks = sorted({float(s) for s in shrink_grid}) if reliability is not None else [previous["prior_shrink"]]
    results = {}
    for column, k in enumerate(k_grid):
        for shrink in shrinks:
            predicted = oof_quality[column]
            if reliability is not None:  # the router's calibration and prior, in distribution (full trust)
                ones = torch.ones(predicted.shape[0])
                predicted = reliability.adjust(predicted, ones, 0.0, 1.0, shrink)[0]
            results[(k, shrink)] = routing_aiq(predicted.numpy(), cost, scores, router.config.cost_scale)
    best = min(results, key=lambda key: (-round(results[key], 9), key[1], key[0]))  # ties: less shrinkage, smaller k
    if apply:
        router.config.knn_k = memory.k = best[0]
        router.config.prior_shrink = best[1]
    return {**report, "refitted": True, "k": best[0], "prior_shrink": best[1], "probes": int(len(probes)),
            "aiq": {f"k={k}, λ={s:g}": round(v, 6) for (k, s), v in results.items()}}
