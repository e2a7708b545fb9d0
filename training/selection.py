"""
Choosing hyper-parameters by out-of-fold routing on a train split (never the test split).

Every choice is scored the same way: out-of-fold predictions of the whole train table (each prompt
predicted by a model that did not see it) are routed over a μ sweep with CARROT's rule, and the
resulting (cost, quality) points are scored by AIQ with the train table's true scores and costs.
The kNN's k (`training.knn`), the MLP heads' width and weight decay, and how many prompt tokens
the encoder keeps are chosen this way, per table.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from carrot_hub.modeling_carrot import predicted_cost

from .evaluation.curves import decide_all, ground_truth
from .evaluation.evaluate import count_input_tokens
from .knn import CV_MU_STEPS, fold_indices
from .evaluation.metrics import aiq

def out_of_fold_aiq(router, table, quality: torch.Tensor, output_tokens: torch.Tensor, mu_steps: int = CV_MU_STEPS) -> float:
    """
    AIQ of routing `table` with out-of-fold predictions `quality, output_tokens (n, n_models)`:
    CARROT's rule with `router`'s prices and cost scale over `mu_steps` values of μ, scored with the
    table's true scores and costs; max cost = the dearest single model's mean cost (or the curve's).
    """
    truth = ground_truth(table)
    input_prices, output_prices = router.resolve_prices()
    cost = predicted_cost(count_input_tokens(router, table.prompts), output_tokens, input_prices, output_prices)
    choices = decide_all(quality, cost, np.linspace(0.0, 1.0, mu_steps), router.config.cost_scale)
    costs, qualities = truth.realised(choices)
    # The dearest single model's mean cost, or more when the dearest pick per prompt costs more.
    return aiq(costs, qualities, max_cost=max(float(truth.cost.mean(0).max()), float(np.max(costs))))


def parse_grid(text: str | Sequence, kind=float, name: str = "grid") -> list:
    """`"64,256"` (or a sequence) → `[64, 256]` of `kind`; a clear error for anything else."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = [kind(str(part).strip()) for part in parts if str(part).strip()]
    except ValueError:
        raise ValueError(f"{name} takes comma-separated numbers, got {text!r}.") from None
    if not values:
        raise ValueError(f"{name} is empty; give at least one value.")
    return values


def cross_validate_heads(
    train_table,
    embeddings: torch.Tensor,
    hidden_grid: Sequence[int],
    weight_decay_grid: Sequence[float],
    folds: int = 5,
    seed: int = 0,
    encoder: str | None = None,
    **heads_options,
) -> dict:
    """
    Score every (hidden, weight decay) pair of MLP heads by out-of-fold routing AIQ on `train_table`
    (one seed per fold; each fold's heads early-stop on a seeded tenth of its own training rows).

    Args:
        embeddings: `(n, hidden)` embeddings of `train_table`'s prompts.
        heads_options: further `train_heads_router` options (dropout, lr, max_epochs, ...).

    Returns:
        `{"grid": [{"hidden", "weight_decay", "aiq"}...], "best": {"hidden", "weight_decay"}, "folds", "seed"}`;
        the best has the highest AIQ (ties: the smaller, more regularised heads).
    """
    from .heads import train_heads_router

    embeddings = torch.as_tensor(embeddings, dtype=torch.float32)
    n, n_models = len(train_table), len(train_table.models)
    held_out_folds = fold_indices(n, folds, seed)
    grid = []
    router = None
    for hidden, weight_decay in itertools.product(hidden_grid, weight_decay_grid):
        quality, tokens = torch.zeros(n, n_models), torch.zeros(n, n_models)
        for fold, held_out in enumerate(held_out_folds):
            kept = np.setdiff1d(np.arange(n), held_out)
            router, _ = train_heads_router(
                train_table.subset(kept),
                seed=seed + fold,
                encoder=encoder,
                embeddings=embeddings[kept],
                hidden=int(hidden),
                weight_decay=float(weight_decay),
                progress=False,
                **heads_options,
            )
            with torch.no_grad():
                quality[held_out], tokens[held_out] = router.predict_from_embeddings(embeddings[held_out])
        grid.append({"hidden": int(hidden), "weight_decay": float(weight_decay), "aiq": out_of_fold_aiq(router, train_table, quality, tokens)})
    best = max(grid, key=lambda row: (round(row["aiq"], 12), -row["hidden"], row["weight_decay"]))
    return {
        "criterion": "out-of-fold AIQ of routing on the train split",
        "folds": folds,
        "seed": seed,
        "grid": grid,
        "best": {"hidden": best["hidden"], "weight_decay": best["weight_decay"]},
    }


__all__ = ["CV_MU_STEPS", "cross_validate_heads", "fold_indices", "out_of_fold_aiq", "parse_grid"]
