"""
What a test split says really happened, and cost–quality curves scored against it.

Ground truth, stated once:
- realised quality is the table's TRUE score of the chosen model; a missing score counts as wrong
  (0), because a deployed router that picked that model would have got no usable answer on record.
  The number of missing cells is reported. A model whose scores are ALL missing cannot be judged:
  evaluation refuses it unless told to drop it (`on_unscored_model="drop"`).
- realised cost is the table's TRUE dollar cost, `table.cost()`: its token counts (input and
  output) times its price table, the same definition the router predicts. A missing token count
  is filled with that model's mean cost over the prompts where it is known (reported).

Routers (`training.evaluation.evaluate`) and baselines (`training.evaluation.baselines`) both turn their predictions into
a [`CostQualityCurve`] here. The imports go one way: evaluate → baselines → curves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from training.evaluation import metrics


# --------------------------------------------------------------------------------- ground truth


@dataclass
class GroundTruth:
    """
    What the test split says really happened.

    Attributes:
        models (`list[str]`): column order.
        scores (`np.ndarray` float64 `(n, m)`): true scores, missing filled with 0 (= wrong).
        cost (`np.ndarray` float64 `(n, m)`): true dollars, missing filled with the model's mean.
        raw_scores (`np.ndarray` `(n, m)`): the scores with NaN kept (for prediction metrics).
        output_tokens (`np.ndarray` `(n, m)`): true output tokens, NaN = missing.
        prices (`dict`): the price table the costs come from.
        missing_scores, missing_costs (`int`): cells filled as described.
        tasks (`list[str]` or None): the task of each prompt.
    """

    models: list[str]
    scores: np.ndarray
    cost: np.ndarray
    raw_scores: np.ndarray
    output_tokens: np.ndarray
    prices: dict
    missing_scores: int = 0
    missing_costs: int = 0
    dropped_models: list[str] = field(default_factory=list)
    tasks: list[str] | None = None

    @property
    def n_prompts(self) -> int:
        return self.scores.shape[0]

    def column(self, model: str) -> int:
        return self.models.index(model)

    def realised(self, choices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`choices (k, n)` column indices → mean true cost `(k,)` and mean true quality `(k,)`."""
        choices = np.asarray(choices, dtype=np.int64)
        rows = np.arange(self.n_prompts)[None, :]
        return self.cost[rows, choices].mean(axis=1), self.scores[rows, choices].mean(axis=1)


def ground_truth(table, on_unscored_model: str = "raise") -> GroundTruth:
    """
    The true scores and costs of a routing table (see the module docstring for missing cells).

    Raises `ValueError` for a table with fewer than two models, no prices, or a model with no
    observed score (unless `on_unscored_model="drop"`, which leaves such models out).
    """
    if on_unscored_model not in ("raise", "drop"):
        raise ValueError(f"on_unscored_model must be 'raise' or 'drop', not {on_unscored_model!r}.")
    if len(table) == 0:
        raise ValueError("The test table has no prompts: there is nothing to evaluate.")
    unscored = [m for j, m in enumerate(table.models) if np.isnan(table.scores[:, j]).all()]
    dropped = []
    if unscored:
        if on_unscored_model == "raise":
            raise ValueError(
                f"No prompt of the test table has a score for {unscored}: such a model cannot be judged. "
                "Remove it (table.select_models(...)) or pass on_unscored_model='drop' (--drop-unscored)."
            )
        table = table.select_models([m for m in table.models if m not in unscored])
        dropped = unscored
    if len(table.models) < 2:
        raise ValueError(
            f"Routing needs at least two candidate models; the test table has {len(table.models)} "
            f"({', '.join(table.models) or 'none'}). Evaluate on data that covers two or more models."
        )
    if table.prices is None:
        raise ValueError("The test table has no price table: true costs need {model: {'input', 'output'}} prices.")
    cost = np.asarray(table.cost(), dtype=np.float64)
    missing_cost = np.isnan(cost)
    if missing_cost.all(axis=0).any():
        bad = [m for j, m in enumerate(table.models) if missing_cost[:, j].all()]
        raise ValueError(f"No prompt of the test table has token counts for {bad}: their cost is unknown.")
    cost = np.where(missing_cost, np.nanmean(cost, axis=0, keepdims=True), cost)
    raw_scores = np.asarray(table.scores, dtype=np.float64)
    return GroundTruth(
        models=list(table.models),
        scores=np.nan_to_num(raw_scores, nan=0.0),
        cost=cost,
        raw_scores=raw_scores,
        output_tokens=np.asarray(table.output_tokens, dtype=np.float64),
        prices={m: dict(table.prices[m]) for m in table.models},
        missing_scores=int(np.isnan(raw_scores).sum()),
        missing_costs=int(missing_cost.sum()),
        dropped_models=dropped,
        tasks=list(table.tasks),
    )


# ------------------------------------------------------------------------------------- curves


@dataclass
class CostQualityCurve:
    """
    One router's (or baseline's) points on the test split.

    Attributes:
        name, kind: e.g. `"carrot-knn"`, `"router"` | `"baseline"`.
        param_name (`str`): the knob, `"mu"`, `"threshold"` or `"p"`.
        params, costs, qualities (`np.ndarray` `(k,)`): knob value, mean true cost, mean true quality.
        top (`int`): index of the quality-seeking end of the knob (μ = 0).
        pair_fraction, pair_qualities (`np.ndarray` `(k2,)` or None): the same router restricted to
            the strong/weak pair: fraction of prompts sent to the strong model, and quality.
        prediction_quality (`dict` or None): see `metrics.prediction_quality`.
        support (`np.ndarray` `(n,)` or None): a router's support per test prompt (NaN = unknown).
        info (`dict`): anything else worth reporting (chosen k, cost scale, ...).
        cost_prediction (`dict` or None): errors of the predicted output tokens and dollars, see
            `metrics.cost_prediction_errors`.
        oracle_cost (`CostQualityCurve` or None): the same router deciding with each prompt's TRUE
            output tokens instead of its predicted ones; the AIQ gap is what cost prediction costs.
        choices (`np.ndarray` `(k, n)` or None): the column chosen per knob value and prompt (what
            the bootstrap against the zero router resamples).
    """

    name: str
    kind: str
    param_name: str
    params: np.ndarray
    costs: np.ndarray
    qualities: np.ndarray
    top: int = 0
    pair_fraction: np.ndarray | None = None
    pair_qualities: np.ndarray | None = None
    prediction_quality: dict | None = None
    info: dict = field(default_factory=dict)
    cost_prediction: dict | None = None
    oracle_cost: "CostQualityCurve | None" = None
    support: np.ndarray | None = None
    choices: np.ndarray | None = None


def decide_all(
    quality: torch.Tensor | np.ndarray,
    cost: torch.Tensor | np.ndarray,
    mu_grid: np.ndarray,
    cost_scale: float,
    allowed_columns: Sequence[int] | None = None,
) -> np.ndarray:
    """
    CARROT's rule for every μ at once from predictions `quality, cost (n, m)`: → choices `(n_mu, n)`.
    `allowed_columns` restricts the choice (e.g. to a strong/weak pair).
    """
    from carrot_hub.modeling_carrot import choose_candidates

    quality = torch.tensor(np.asarray(quality, dtype=np.float64))  # a copy: inputs may be read-only views
    cost = torch.tensor(np.asarray(cost, dtype=np.float64))
    mask = None
    if allowed_columns is not None:
        mask = torch.zeros(quality.shape[1], dtype=torch.bool)
        mask[list(allowed_columns)] = True
    mu = torch.as_tensor(np.asarray(mu_grid, dtype=np.float64))
    indices, _, _ = choose_candidates(quality, cost, mu, float(cost_scale), mask)
    return indices.numpy()


def curve_from_predictions(
    name: str,
    truth: GroundTruth,
    quality: np.ndarray,
    cost: np.ndarray,
    mu_grid: np.ndarray,
    cost_scale: float,
    pair: tuple[str, str] | None = None,
    kind: str = "baseline",
    info: dict | None = None,
) -> CostQualityCurve:
    """A curve from predicted quality and predicted dollar cost `(n, m)` in the truth's column order."""
    choices = decide_all(quality, cost, mu_grid, cost_scale)
    costs, qualities = truth.realised(choices)
    curve = CostQualityCurve(name, kind, "mu", np.asarray(mu_grid, float), costs, qualities, top=int(np.argmin(mu_grid)), info=dict(info or {}))
    curve.choices = choices
    if pair is not None:
        strong, weak = truth.column(pair[0]), truth.column(pair[1])
        pair_choices = decide_all(quality, cost, mu_grid, cost_scale, allowed_columns=[strong, weak])
        curve.pair_fraction = (pair_choices == strong).mean(axis=1)
        curve.pair_qualities = truth.realised(pair_choices)[1]
    return curve


def oracle_curve(truth: GroundTruth, n_points: int = 201) -> CostQualityCurve:
    """
    The oracle swept over μ with TRUE scores and costs (cost scale: the best model's mean cost);
    μ = 0 is the oracle proper: per prompt the cheapest model with the best true score.
    """
    mean_cost, mean_quality = truth.cost.mean(0), truth.scores.mean(0)
    scale = float(mean_cost[metrics.best_single_model(mean_quality, mean_cost)]) or 1.0
    mu = np.linspace(0, 1, n_points)
    choices = decide_all(truth.scores, truth.cost, mu, scale)
    # μ = 0 ties between equally correct models must go to the cheapest one.
    choices[0] = metrics.oracle_choice(truth.scores, truth.cost)
    costs, qualities = truth.realised(choices)
    return CostQualityCurve("oracle", "oracle", "mu", mu, costs, qualities, top=0)
