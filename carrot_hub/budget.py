"""Choosing μ for a budget: what a router would spend and deliver on the user's own prompts.

The predictions are made once (one encoder pass); every μ after that is a matrix operation. Per
prompt, both the chosen model's predicted cost and its predicted quality are non-increasing in μ
(the rule maximises quality − λ·cost with λ = μ / (1 − μ) increasing), so the means are monotone
step functions of μ and a target is met by bisection.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .configuration_carrot import check_mu
from .modeling_carrot import CarrotRouter, PromptPredictions, RoutingOptions, choose_candidates, predicted_cost

PER_PROMPTS = 1000  # spend is reported per 1,000 prompts


@dataclass
class CalibrationPoint:
    """The router's predicted behaviour at one μ, averaged over the prompts."""

    mu: float
    cost_per_1000: float  # US dollars per 1,000 prompts (predicted cost of the chosen models)
    mean_quality: float  # mean predicted quality of the chosen models
    model_share: dict[str, float]  # fraction of prompts routed to each candidate


@dataclass
class Calibrator:
    """
    Decisions for any μ from predictions made once.

    Args:
        quality (`torch.FloatTensor` of shape `(n_prompts, n_models)`): predicted quality.
        cost (`torch.FloatTensor` of shape `(n_prompts, n_models)`): predicted dollars with the prices in force.
        cost_scale (`float`): the router's cost scale.
        candidate_models (`list[str]`): column names.
        allowed_mask (`torch.BoolTensor` of shape `(n_models,)`, *optional*), max_cost (`float`, *optional*):
            the routing constraints, as in [`CarrotRouter.route`].
    """

    quality: torch.Tensor
    cost: torch.Tensor
    cost_scale: float
    candidate_models: list[str]
    allowed_mask: torch.Tensor | None = None
    max_cost: float | None = None

    @classmethod
    def from_predictions(
        cls,
        router: CarrotRouter,
        predictions: PromptPredictions,
        prices: Mapping | None = None,
        allowed: Sequence[str] | None = None,
        max_cost: float | None = None,
        options: RoutingOptions | None = None,
    ) -> "Calibrator":
        """
        Bind `predictions` (from `router.predict(prompts)`) to the prices and constraints of one
        routing setup: `options` from `router.routing_options(...)`, or the separate values. μ is
        what the calibrator varies, and spend is predicted under the "predict" ood policy.
        """
        if len(predictions) == 0:
            raise ValueError("There are no prompts to calibrate on.")
        if options is None:
            options = router.routing_options(prices=prices, allowed=allowed, max_cost=max_cost)
        elif prices is not None or allowed is not None or max_cost is not None:
            raise ValueError("Pass either options= or prices/allowed/max_cost, not both.")
        cost = predicted_cost(predictions.input_tokens, predictions.output_tokens, *options.price_tensors())
        return cls(
            predictions.quality.float(), cost.float(), float(router.config.cost_scale),
            list(options.candidate_models), options.allowed_mask(), options.max_cost,
        )

    def choices(self, mus: torch.Tensor, mu_chunk: int = 64) -> torch.Tensor:
        """Chosen candidate per μ and prompt: `mus (n_mu,)` → indices `(n_mu, n_prompts)`.

        μ values are processed `mu_chunk` at a time so the `(n_mu, n_prompts, n_models)` utility
        never has to exist whole.
        """
        mus = torch.as_tensor(mus, dtype=self.quality.dtype).reshape(-1)
        out = torch.empty(mus.shape[0], self.quality.shape[0], dtype=torch.long)
        for start in range(0, mus.shape[0], mu_chunk):
            chunk = mus[start : start + mu_chunk]
            indices, _, _ = choose_candidates(
                self.quality, self.cost, chunk, self.cost_scale, self.allowed_mask, self.max_cost
            )
            out[start : start + chunk.shape[0]] = indices
        return out

    def curve(self, mus: Sequence[float] | torch.Tensor) -> list[CalibrationPoint]:
        """Predicted spend per 1,000 prompts, mean quality and model shares at each μ."""
        mus = torch.as_tensor([check_mu(float(m)) for m in mus], dtype=self.quality.dtype)
        indices = self.choices(mus)  # (n_mu, n)
        chosen_cost = self.cost.gather(1, indices.T).T  # (n_mu, n)
        chosen_quality = self.quality.gather(1, indices.T).T
        n_models = len(self.candidate_models)
        counts = torch.zeros(indices.shape[0], n_models).scatter_add_(1, indices, torch.ones_like(indices, dtype=torch.float32))
        shares = counts / indices.shape[1]
        return [
            CalibrationPoint(
                mu=float(mus[i]),
                cost_per_1000=float(chosen_cost[i].mean()) * PER_PROMPTS,
                mean_quality=float(chosen_quality[i].mean()),
                model_share={name: float(shares[i, j]) for j, name in enumerate(self.candidate_models) if shares[i, j] > 0},
            )
            for i in range(indices.shape[0])
        ]

    def point(self, mu: float) -> CalibrationPoint:
        return self.curve([mu])[0]

    def solve_for_spend(self, target_per_1000: float, tolerance: float = 1e-6) -> CalibrationPoint:
        """
        The smallest μ (so the best quality) whose predicted spend per 1,000 prompts is at most
        `target_per_1000` dollars. Raises `ValueError` if even μ = 1 (always the cheapest) spends more.
        """
        if not math.isfinite(target_per_1000) or target_per_1000 < 0:
            raise ValueError(f"The target spend must be a finite number of dollars ≥ 0, got {target_per_1000!r}.")
        if self.point(0.0).cost_per_1000 <= target_per_1000:
            return self.point(0.0)
        cheapest = self.point(1.0)
        if cheapest.cost_per_1000 > target_per_1000:
            raise ValueError(
                f"No μ meets a spend of ${target_per_1000:g} per 1,000 prompts: even μ = 1 (the cheapest "
                f"candidates) is predicted to spend ${cheapest.cost_per_1000:.4g}. Raise the target, "
                "lower prices, or allow cheaper models."
            )
        low, high = 0.0, 1.0  # spend(low) > target ≥ spend(high)
        while high - low > tolerance:
            middle = (low + high) / 2
            if self.point(middle).cost_per_1000 <= target_per_1000:
                high = middle
            else:
                low = middle
        return self.point(high)

    def solve_for_quality(self, target_quality: float, tolerance: float = 1e-6) -> CalibrationPoint:
        """
        The largest μ (so the lowest spend) whose mean predicted quality is at least
        `target_quality`. Raises `ValueError` if even μ = 0 (best predicted quality) falls short.
        """
        if not math.isfinite(target_quality):
            raise ValueError(f"The target quality must be a finite number, got {target_quality!r}.")
        if self.point(1.0).mean_quality >= target_quality:
            return self.point(1.0)
        best = self.point(0.0)
        if best.mean_quality < target_quality:
            raise ValueError(
                f"No μ reaches a mean predicted quality of {target_quality:g}: the best the router predicts "
                f"(μ = 0) is {best.mean_quality:.4f}. Lower the target or allow more models."
            )
        low, high = 0.0, 1.0  # quality(low) ≥ target > quality(high)
        while high - low > tolerance:
            middle = (low + high) / 2
            if self.point(middle).mean_quality >= target_quality:
                low = middle
            else:
                high = middle
        return self.point(low)


def calibrate(
    router: CarrotRouter,
    prompts: Sequence[str],
    mus: Sequence[float] = tuple(i / 10 for i in range(11)),
    target_spend: float | None = None,
    target_quality: float | None = None,
    prices: Mapping | None = None,
    allowed: Sequence[str] | None = None,
    max_cost: float | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[list[CalibrationPoint], CalibrationPoint | None]:
    """
    Encode `prompts` once and return the curve over `mus` and, if a target is given (spend in
    dollars per 1,000 prompts, or mean predicted quality), the point of the μ that meets it.
    """
    if target_spend is not None and target_quality is not None:
        raise ValueError("Give a target spend or a target quality, not both.")
    predictions = router.predict(prompts, batch_size=batch_size, progress=progress)
    calibrator = Calibrator.from_predictions(router, predictions, prices, allowed, max_cost)
    solved = None
    if target_spend is not None:
        solved = calibrator.solve_for_spend(target_spend)
    elif target_quality is not None:
        solved = calibrator.solve_for_quality(target_quality)
    return calibrator.curve(mus), solved
