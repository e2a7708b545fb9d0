"""μ calibration: the curve from predictions made once, and the bisection for a spend or quality target."""

import pytest
import torch

from carrot_hub.budget import Calibrator, calibrate
from carrot_hub.modeling_carrot import choose_candidates

from .conftest import TINY_PROMPTS


def synthetic(n=400, n_models=5, seed=0) -> Calibrator:
    generator = torch.Generator().manual_seed(seed)
    quality = torch.rand(n, n_models, generator=generator)
    cost = torch.rand(n, n_models, generator=generator) * torch.tensor([1e-2, 3e-3, 1e-3, 3e-4, 1e-4])
    return Calibrator(quality, cost, cost_scale=1e-3, candidate_models=[f"m{i}" for i in range(n_models)])


def test_curve_is_monotone_and_matches_per_mu_decisions():
    calibrator = synthetic()
    mus = torch.linspace(0, 1, 101)
    curve = calibrator.curve(mus)
    spends = [p.cost_per_1000 for p in curve]
    qualities = [p.mean_quality for p in curve]
    assert all(a >= b - 1e-9 for a, b in zip(spends, spends[1:]))
    assert all(a >= b - 1e-7 for a, b in zip(qualities, qualities[1:]))
    assert spends[0] > 5 * spends[-1]
    for point in curve[::17]:  # the batched sweep equals one decision per μ
        indices, _, _ = choose_candidates(calibrator.quality, calibrator.cost, point.mu, 1e-3)
        assert point.cost_per_1000 == pytest.approx(float(calibrator.cost.gather(1, indices[:, None]).mean()) * 1000)
        assert sum(point.model_share.values()) == pytest.approx(1.0)


def test_solve_for_spend_is_the_smallest_mu_within_budget():
    calibrator = synthetic()
    low, high = calibrator.point(1.0).cost_per_1000, calibrator.point(0.0).cost_per_1000
    for fraction in (0.1, 0.5, 0.9):
        target = low + fraction * (high - low)
        solved = calibrator.solve_for_spend(target)
        assert solved.cost_per_1000 <= target
        assert calibrator.point(max(0.0, solved.mu - 1e-4)).cost_per_1000 > target
    assert calibrator.solve_for_spend(high * 2).mu == 0.0
    with pytest.raises(ValueError, match="even μ = 1"):
        calibrator.solve_for_spend(low / 2)


def test_solve_for_quality_is_the_largest_mu_reaching_it():
    calibrator = synthetic()
    low, high = calibrator.point(1.0).mean_quality, calibrator.point(0.0).mean_quality
    target = (low + high) / 2
    solved = calibrator.solve_for_quality(target)
    assert solved.mean_quality >= target
    assert calibrator.point(min(1.0, solved.mu + 1e-4)).mean_quality < target
    assert calibrator.solve_for_quality(low / 2).mu == 1.0
    with pytest.raises(ValueError, match="No μ reaches"):
        calibrator.solve_for_quality(high + 0.01)


def test_calibrate_on_a_real_router(knn_router):
    curve, solved = calibrate(knn_router, TINY_PROMPTS, mus=[0, 0.5, 1], target_spend=1.0)
    for point in curve:  # the curve equals what route() does at that μ
        decision = knn_router.route(TINY_PROMPTS, mu=point.mu)
        assert point.cost_per_1000 == pytest.approx(float(decision.chosen_cost.mean()) * 1000, rel=1e-5)
        assert point.mean_quality == pytest.approx(float(decision.chosen_quality.mean()), abs=1e-6)
    assert solved.cost_per_1000 <= 1.0
    with pytest.raises(ValueError, match="not both"):
        calibrate(knn_router, TINY_PROMPTS, target_spend=1.0, target_quality=0.5)
    with pytest.raises(ValueError, match="not a candidate"):
        calibrate(knn_router, TINY_PROMPTS, allowed=["nope"])
