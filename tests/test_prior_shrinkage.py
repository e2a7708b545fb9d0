"""Shrinkage of predicted quality toward each candidate's prior (`prior_shrink`): its choice, how the router applies it, saving."""

import json

import numpy as np
import pytest
import torch

from carrot_hub import CarrotRouter
from carrot_hub.building import new_router
from carrot_hub.modeling_carrot import PromptEncoding, interpolate_monotone
from carrot_hub.prior_shrinkage import PRIOR_SHRINK_GRID, choose_prior_shrink, leave_one_out_prior, routing_aiq
from training.evaluation import metrics
from training.evaluation.curves import decide_all

from .conftest import TINY_MODELS, TINY_PRICES
from .reliability_fixtures import clustered_knn_router


def test_leave_one_out_prior_leaves_each_row_out_and_skips_missing_cells():
    scores = np.array([[1.0, 0.0], [0.0, np.nan], [1.0, 1.0], [1.0, np.nan]])
    prior = leave_one_out_prior(scores)
    assert prior[:, 0] == pytest.approx([2 / 3, 1.0, 2 / 3, 2 / 3])
    assert prior[:, 1] == pytest.approx([1.0, 0.5, 0.0, 0.5])  # rows 1 and 3: the mean of the two observed cells


def test_routing_aiq_is_the_aiq_of_the_rule_over_mu():
    rng = np.random.default_rng(0)
    scores = (rng.uniform(size=(300, 3)) < [0.4, 0.6, 0.9]).astype(float)
    cost = np.tile([1e-4, 5e-4, 2e-3], (300, 1)) * rng.uniform(0.5, 1.5, (300, 1))
    perfect = routing_aiq(scores, cost, scores, cost_scale=1e-3, mu_steps=101)
    noisy = routing_aiq(rng.uniform(size=scores.shape), cost, scores, cost_scale=1e-3, mu_steps=101)
    zero_router = metrics.aiq(cost.mean(0), scores.mean(0))
    assert perfect > zero_router > noisy
    # the same figure as the benchmark's own path: decisions for every μ, realised, then AIQ
    predicted = np.clip(scores + 0.3 * rng.standard_normal(scores.shape), 0, 1)
    choices = decide_all(predicted, cost, np.linspace(0, 1, 101), 1e-3)
    rows = np.arange(300)[None, :]
    costs, qualities = cost[rows, choices].mean(1), scores[rows, choices].mean(1)
    expected = metrics.aiq(costs, qualities, max_cost=max(cost.mean(0).max(), costs.max()))
    assert routing_aiq(predicted, cost, scores, cost_scale=1e-3, mu_steps=101) == pytest.approx(expected, abs=1e-12)


def noisy_predictions(noise: float, seed: int = 0):
    """True per-prompt probabilities (two kinds of prompt, four candidates) and predictions with `noise` added."""
    rng = np.random.default_rng(seed)
    n = 2000
    kind = rng.integers(0, 2, n)
    probability = np.where(kind[:, None] == 0, [0.9, 0.8, 0.85, 0.3], [0.5, 0.7, 0.6, 0.2])
    scores = (rng.uniform(size=probability.shape) < probability).astype(float)
    predicted = np.clip(probability + noise * rng.standard_normal(probability.shape), 0, 1)
    cost = np.tile([3e-3, 2e-3, 1e-3, 1e-5], (n, 1))
    return predicted, leave_one_out_prior(scores), scores, cost


def test_exact_predictions_keep_lambda_zero_and_pure_noise_shrinks_hard():
    predicted, prior, scores, cost = noisy_predictions(noise=0.0)
    chosen, by_shrink = choose_prior_shrink(predicted, prior, scores, cost, cost_scale=1e-3)
    assert chosen == 0.0 and set(by_shrink) == set(PRIOR_SHRINK_GRID)
    assert by_shrink[0.0] > by_shrink[1.0]
    # predictions that carry nothing but noise: the prior routes better, so λ goes to the top of the grid
    rng = np.random.default_rng(3)
    chosen, by_shrink = choose_prior_shrink(rng.uniform(size=scores.shape), prior, scores, cost, cost_scale=1e-3)
    assert chosen >= 0.75 and by_shrink[chosen] > by_shrink[0.0]


def test_noisy_predictions_get_some_shrinkage_that_routes_better_than_none():
    predicted, prior, scores, cost = noisy_predictions(noise=0.25)
    chosen, by_shrink = choose_prior_shrink(predicted, prior, scores, cost, cost_scale=1e-3)
    assert 0.0 < chosen < 1.0
    assert by_shrink[chosen] > by_shrink[0.0] and by_shrink[chosen] > by_shrink[1.0]


@pytest.fixture(scope="module")
def knn_router():
    router, report, _, _, centres = clustered_knn_router()
    return router, report, centres


def test_fit_reliability_stores_the_out_of_fold_choice(knn_router):
    router, report, _ = knn_router
    evidence = report["prior_shrink_choice"]["out_of_fold_aiq"]
    assert set(evidence) == {str(lam) for lam in PRIOR_SHRINK_GRID}
    best = max(evidence.values())
    assert router.config.prior_shrink == report["prior_shrink"]
    assert evidence[str(router.config.prior_shrink)] == pytest.approx(best, abs=1e-9)


def test_the_router_moves_quality_toward_the_prior_by_lambda(knn_router, tmp_path):
    router, _, centres = knn_router
    encoding = PromptEncoding(centres, torch.full((centres.shape[0],), 30.0), [False] * centres.shape[0])
    saved = router.config.prior_shrink
    try:
        router.config.prior_shrink = 0.0
        plain = router.predict_encoded(encoding)
        assert bool((plain.support >= router.config.support_threshold).all()), "the cluster centres are in distribution"
        raw, _ = router.predict_raw(centres)
        calibrated = interpolate_monotone(raw, router.reliability.calibration_x, router.reliability.calibration_y)
        assert torch.equal(plain.quality, calibrated)  # λ = 0: exactly as before
        router.config.prior_shrink = 0.3
        shrunk = router.predict_encoded(encoding)
        prior = router.reliability.prior[None, :]
        assert torch.allclose(shrunk.quality, prior + 0.7 * (calibrated - prior), atol=1e-6)
        router.save_pretrained(tmp_path / "r")
        loaded = CarrotRouter.from_pretrained(tmp_path / "r")
        assert loaded.config.prior_shrink == 0.3
        assert torch.equal(loaded.predict_encoded(encoding).quality, shrunk.quality)
    finally:
        router.config.prior_shrink = saved


def test_a_router_saved_before_prior_shrink_loads_without_it(knn_router, tmp_path):
    router, _, centres = knn_router
    saved = router.config.prior_shrink
    try:
        router.config.prior_shrink = 0.0
        router.save_pretrained(tmp_path / "old")
        expected = router.route(["anything"], mu=0.0)
    finally:
        router.config.prior_shrink = saved
    config_file = tmp_path / "old" / "config.json"
    config = json.loads(config_file.read_text())
    config.pop("prior_shrink")
    config_file.write_text(json.dumps(config))
    loaded = CarrotRouter.from_pretrained(tmp_path / "old")
    assert loaded.config.prior_shrink == 0.0
    decision = loaded.route(["anything"], mu=0.0)
    assert decision.models == expected.models and torch.equal(decision.quality, expected.quality)


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_a_prior_shrink_outside_zero_one_is_refused(value):
    with pytest.raises(ValueError, match="prior_shrink must be in \\[0, 1\\]"):
        new_router(TINY_MODELS, TINY_PRICES, prior_shrink=value)


def test_the_model_card_says_how_far_quality_moves_toward_the_prior(knn_router):
    from model_card.build import build_model_card

    router, _, _ = knn_router
    saved = router.config.prior_shrink
    try:
        router.config.prior_shrink = 0.15
        assert "In distribution too it moves 0.15 of the way toward the prior" in build_model_card(router)
        router.config.prior_shrink = 0.0
        assert "In distribution too" not in build_model_card(router)
    finally:
        router.config.prior_shrink = saved
