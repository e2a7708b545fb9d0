"""
How far a router's in-distribution predictions move toward each candidate's prior (`prior_shrink`,
λ; see `CarrotReliability`), chosen by out-of-fold routing AIQ on the training data.

Why: a per-prompt quality prediction (a kNN mean over k neighbours, or MLP heads) is a noisy
estimate, and CARROT's rule at small μ picks, per prompt, the candidate whose estimate is highest,
so it favours the candidates whose noise happens to be high; each candidate's mean training score
(its prior) carries no such selection bias but knows nothing of the prompt. Moving every prediction
a fraction λ of the way to the prior trades the two. λ is the value of `PRIOR_SHRINK_GRID` whose
shrunk out-of-fold predictions route best: the highest AIQ over a μ sweep scored with the training
table's true scores and costs (ties go to the smaller λ, which changes less; λ = 0 is no shrinkage).
Decisions use the true costs, because λ moves quality only.
"""

from __future__ import annotations

import numpy as np
import torch

from .cost_quality import aiq
from .modeling_carrot import choose_candidates

PRIOR_SHRINK_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)
SHRINK_MU_STEPS = 201


def leave_one_out_prior(scores: np.ndarray) -> np.ndarray:
    """Per row, each candidate's mean observed score over the other rows: `(n, m)` (0.5 where none)."""
    observed = ~np.isnan(scores)
    values = np.nan_to_num(scores)
    total, count = values.sum(0, keepdims=True) - values, observed.sum(0, keepdims=True) - observed
    with np.errstate(all="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), 0.5)


def routing_aiq(quality: np.ndarray, cost: np.ndarray, scores: np.ndarray, cost_scale: float, mu_steps: int = SHRINK_MU_STEPS) -> float:
    """
    AIQ of CARROT's rule over `mu_steps` μ in [0, 1] with `quality` and `cost` `(n, m)` (dollars,
    also the realised cost), scored with the true `scores` `(n, m)` (missing = 0, wrong); the cost
    range ends at the dearest single model's mean cost, or the curve's dearest point.
    """
    quality, cost = torch.as_tensor(quality, dtype=torch.float64), torch.as_tensor(cost, dtype=torch.float64)
    realised_scores = np.nan_to_num(scores, nan=0.0)
    rows = np.arange(quality.shape[0])[None, :]
    costs, qualities = [], []
    for mu in torch.linspace(0, 1, mu_steps, dtype=torch.float64).split(25):  # bounded memory on large tables
        chosen = choose_candidates(quality, cost, mu, float(cost_scale))[0].numpy()
        costs.append(cost.numpy()[rows, chosen].mean(1))
        qualities.append(realised_scores[rows, chosen].mean(1))
    costs, qualities = np.concatenate(costs), np.concatenate(qualities)
    return aiq(costs, qualities, max_cost=max(float(cost.numpy().mean(0).max()), float(costs.max())))


def choose_prior_shrink(
    calibrated: np.ndarray, prior: np.ndarray, scores: np.ndarray, cost: np.ndarray, cost_scale: float, grid=PRIOR_SHRINK_GRID
) -> tuple[float, dict]:
    """
    λ of `grid` whose `prior + (1 − λ)·(calibrated − prior)` routes best (`routing_aiq`; ties: the
    smaller λ), from out-of-fold `calibrated`, per-row `prior`, true `scores` and `cost`, all `(n, m)`.
    Returns `(λ, {λ: AIQ})`.
    """
    by_shrink = {float(lam): routing_aiq(prior + (1 - lam) * (calibrated - prior), cost, scores, cost_scale) for lam in grid}
    return min(by_shrink, key=lambda lam: (-round(by_shrink[lam], 9), lam)), by_shrink


__all__ = ["PRIOR_SHRINK_GRID", "choose_prior_shrink", "leave_one_out_prior", "routing_aiq"]
