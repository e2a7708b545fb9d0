"""training.evaluation.metrics against values computed by hand."""

import math

import numpy as np
import pytest

from training.evaluation import metrics

# Points (cost, quality): the hull is (1, .5) → (3, .9); (4, .8) is past the top, the rest below.
COSTS = [1.0, 2.0, 3.0, 4.0, 2.0, 1.5]
QUALITIES = [0.5, 0.6, 0.9, 0.8, 0.4, 0.5]


def test_upper_hull_is_non_decreasing_and_concave():
    hull_costs, hull_qualities = metrics.upper_hull(COSTS, QUALITIES)
    np.testing.assert_allclose(hull_costs, [1.0, 3.0])
    np.testing.assert_allclose(hull_qualities, [0.5, 0.9])


def test_upper_hull_keeps_a_real_bend():
    # (2, .8) lies above the chord (1, .5)–(3, .9): it is a hull vertex.
    hull_costs, hull_qualities = metrics.upper_hull([3, 1, 2], [0.9, 0.5, 0.8])
    np.testing.assert_allclose(hull_costs, [1, 2, 3])
    np.testing.assert_allclose(hull_qualities, [0.5, 0.8, 0.9])


def test_aiq_by_hand():
    # ∫ from 1 to 3 of the segment = (0.5 + 0.9) / 2 · 2 = 1.4; flat 3 → 4 adds 0.9; / 4.
    assert metrics.aiq(COSTS, QUALITIES, max_cost=4.0) == pytest.approx(2.3 / 4)
    # Extending the flat part to a larger shared max cost.
    assert metrics.aiq(COSTS, QUALITIES, max_cost=8.0) == pytest.approx((1.4 + 0.9 * 5) / 8)
    # A single point: flat from its cost to max_cost.
    assert metrics.aiq([2.0], [0.7], max_cost=10.0) == pytest.approx(0.7 * 8 / 10)


def test_aiq_refuses_a_max_cost_below_the_curve():
    with pytest.raises(ValueError, match="below the curve"):
        metrics.aiq(COSTS, QUALITIES, max_cost=3.0)


def test_bad_points_are_refused():
    with pytest.raises(ValueError, match="No points"):
        metrics.aiq([], [])
    with pytest.raises(ValueError, match="finite"):
        metrics.aiq([1.0, np.nan], [0.5, 0.6])
    with pytest.raises(ValueError, match="2 points"):
        metrics.upper_hull([1.0, 2.0], [0.5])


def test_hull_quality_at():
    values = metrics.hull_quality_at(COSTS, QUALITIES, [0.5, 2.0, 5.0])
    assert math.isnan(values[0])
    np.testing.assert_allclose(values[1:], [0.7, 0.9])


def test_cost_to_reach_interpolated_and_not():
    assert metrics.cost_to_reach(COSTS, QUALITIES, 0.7) == pytest.approx(2.0)
    assert metrics.cost_to_reach(COSTS, QUALITIES, 0.7, interpolate=False) == pytest.approx(3.0)
    assert metrics.cost_to_reach(COSTS, QUALITIES, 0.5) == pytest.approx(1.0)
    assert metrics.cost_to_reach(COSTS, QUALITIES, 0.95) is None
    assert metrics.cost_to_reach(COSTS, QUALITIES, 0.95, interpolate=False) is None


def test_best_single_model_breaks_ties_by_cost():
    assert metrics.best_single_model([0.8, 0.9, 0.9], [1.0, 5.0, 2.0]) == 2


def test_oracle_choice_is_the_cheapest_best_model():
    scores = np.array([[1, 1, 0], [0, 0, 0], [0, 1, 1]], dtype=float)
    cost = np.tile([3.0, 2.0, 1.0], (3, 1))
    np.testing.assert_array_equal(metrics.oracle_choice(scores, cost), [1, 2, 2])


def test_apgr_and_cpt_by_hand():
    # One point: half the prompts to the strong model recovers the whole gap.
    # PGR curve (0, 0) → (0.5, 1) → (1, 1): area 0.25 + 0.5.
    assert metrics.apgr([0.5], [0.9], q_strong=0.9, q_weak=0.6) == pytest.approx(0.75)
    assert metrics.cpt([0.5], [0.9], 0.9, 0.6, 0.5) == pytest.approx(0.25)
    assert metrics.cpt([0.5], [0.9], 0.9, 0.6, 0.8) == pytest.approx(0.4)


def test_random_mixing_has_apgr_one_half():
    x = np.linspace(0, 1, 11)
    q = 0.6 + 0.3 * x
    assert metrics.apgr(x, q, 0.9, 0.6) == pytest.approx(0.5)
    assert metrics.cpt(x, q, 0.9, 0.6, 0.8) == pytest.approx(0.8)


def test_pgr_needs_a_better_strong_model():
    with pytest.raises(ValueError, match="must exceed"):
        metrics.apgr([0.5], [0.7], q_strong=0.6, q_weak=0.6)


def test_auroc_by_hand():
    # Positive-negative pairs ranked right: (.35>.1), (.8>.1), (.8>.4); wrong: (.35<.4) → 3/4.
    assert metrics.auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert metrics.auroc([1, 1], [0.2, 0.3]) is None
    with pytest.raises(ValueError, match="0/1"):
        metrics.auroc([0, 0.5], [0.1, 0.2])


def test_prediction_quality_skips_missing_cells():
    true_scores = np.array([[1, 0], [0, np.nan], [1, 1]], dtype=float)
    predicted = np.array([[0.8, 0.2], [0.3, 0.9], [0.6, 0.7]])
    tokens_true = np.array([[10, np.nan], [20, 5], [30, 5]], dtype=float)
    tokens_predicted = np.array([[12, 100], [20, 6], [27, 7]], dtype=float)
    report = metrics.prediction_quality(["a", "b"], predicted, true_scores, tokens_predicted, tokens_true)
    a, b = report["per_model"]["a"], report["per_model"]["b"]
    assert a["brier"] == pytest.approx((0.04 + 0.09 + 0.16) / 3)
    assert a["auroc"] == pytest.approx(1.0)
    assert a["output_tokens_mae"] == pytest.approx((2 + 0 + 3) / 3)
    assert b["n_observed"] == 2
    assert b["brier"] == pytest.approx((0.04 + 0.09) / 2)  # the NaN row (predicted 0.9) is left out
    assert b["output_tokens_mae"] == pytest.approx((1 + 2) / 2)
    assert report["mean_brier"] == pytest.approx((a["brier"] + b["brier"]) / 2)


def test_fractional_scores_get_an_auroc_at_one_half_and_a_rank_correlation():
    """Fractional scores (e.g. graded 0–1 answers) used to leave AUROC blank (issue 12)."""
    true_scores = np.array([[0.9], [0.2], [0.6], [0.4], [np.nan]])
    predicted = np.array([[0.8], [0.1], [0.7], [0.3], [0.99]])
    report = metrics.prediction_quality(["graded"], predicted, true_scores)
    entry = report["per_model"]["graded"]
    assert entry["auroc_labels"] == metrics.THRESHOLD_LABELS and report["auroc_labels"] == metrics.THRESHOLD_LABELS
    assert entry["auroc"] == pytest.approx(1.0)  # score >= 0.5: {0.9, 0.6} above the others' predictions
    assert entry["spearman"] == pytest.approx(1.0) and report["mean_spearman"] == pytest.approx(1.0)
    shuffled = metrics.prediction_quality(["graded"], np.array([[0.1], [0.8], [0.3], [0.7], [0.5]]), true_scores)
    assert shuffled["per_model"]["graded"]["spearman"] == pytest.approx(-1.0)
    binary = metrics.prediction_quality(["b"], np.array([[0.8], [0.2]]), np.array([[1.0], [0.0]]))
    assert binary["auroc_labels"] == metrics.BINARY_LABELS and binary["mean_auroc"] == pytest.approx(1.0)


def test_cost_prediction_errors_mae_relative_error_and_bias():
    predicted = np.array([[10.0, 1.0], [30.0, 1.0]])
    true = np.array([[20.0, 2.0], [20.0, np.nan]])
    errors = metrics.cost_prediction_errors(["a", "b"], predicted * 1e-6, true * 1e-6, predicted, true)
    a = errors["per_model"]["a"]
    assert a["output_tokens"] == pytest.approx({"mae": 10.0, "relative_error": 0.5, "bias": 0.0})
    assert a["cost"]["mae"] == pytest.approx(10e-6)
    b = errors["per_model"]["b"]["output_tokens"]  # the unknown cell is left out
    assert b == pytest.approx({"mae": 1.0, "relative_error": 0.5, "bias": -0.5})
    assert errors["mean_output_tokens_relative_error"] == pytest.approx(0.5)


def test_aiq_vs_zero_router_tells_a_real_gain_from_noise():
    from training.evaluation.metrics import aiq_vs_zero_router

    rng = np.random.default_rng(1)
    n = 400
    # Two models: a cheap one right on 60% of prompts, an expensive one right on 80%, independently.
    scores = np.stack([rng.random(n) < 0.6, rng.random(n) < 0.8], axis=1).astype(float)
    cost = np.tile([1.0, 10.0], (n, 1))
    # From all-cheap to all-expensive, through "the cheap model when it is right": above the hull.
    oracle_like = np.stack([np.zeros(n, dtype=int), np.where(scores[:, 0] == 1, 0, 1), np.ones(n, dtype=int)])
    always_expensive = np.ones((2, n), dtype=int)  # the expensive model alone: a point on the zero router's hull
    gain = aiq_vs_zero_router(scores, cost, oracle_like, resamples=500)
    none = aiq_vs_zero_router(scores, cost, always_expensive, resamples=500)
    assert gain["difference"] > 0 and gain["ci95"][0] > 0 and gain["share_above"] == 1.0
    assert none["difference"] <= 1e-12 and none["ci95"][1] <= 1e-12 and none["share_above"] == 0.0
    assert aiq_vs_zero_router(scores, cost, oracle_like, resamples=500) == gain  # seeded: reproducible


def test_aiq_vs_zero_router_refuses_mismatched_shapes():
    from training.evaluation.metrics import aiq_vs_zero_router

    with pytest.raises(ValueError, match="n_prompts"):
        aiq_vs_zero_router(np.zeros((5, 2)), np.ones((5, 2)), np.zeros((3, 4), dtype=int))


def test_task_hull_is_the_frontier_of_every_per_task_choice():
    """Against brute force: the hull of all m**2 ways to give each of two tasks one model."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = (rng.random((30, 4)) < rng.random(4)).astype(float)
        cost = rng.random((30, 4)) * rng.random(4)
        tasks = np.array(["a"] * 12 + ["b"] * 18)
        costs, qualities = metrics.task_hull(scores, cost, tasks)
        a, b = tasks == "a", tasks == "b"
        points = [(0.4 * cost[a, i].mean() + 0.6 * cost[b, j].mean(), 0.4 * scores[a, i].mean() + 0.6 * scores[b, j].mean())
                  for i in range(4) for j in range(4)]
        brute_costs, brute_qualities = metrics.upper_hull(*zip(*points))
        np.testing.assert_allclose(costs, brute_costs, atol=1e-12)
        np.testing.assert_allclose(qualities, brute_qualities, atol=1e-12)


def test_task_hull_of_one_task_is_the_zero_routers_hull_and_specialists_beat_it():
    scores = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=float)
    cost = np.array([[1, 1], [1, 1], [1, 1], [1, 1]], dtype=float)
    one = metrics.task_hull(scores, cost, ["t"] * 4)
    np.testing.assert_allclose(one[1], metrics.upper_hull(cost.mean(0), scores.mean(0))[1])
    costs, qualities = metrics.task_hull(scores, cost, ["x", "x", "y", "y"])  # model 0 solves x, model 1 solves y
    assert qualities[-1] == 1.0 and costs[-1] == 1.0 and one[1][-1] == 0.5
    with pytest.raises(ValueError, match="3 labels for 4 prompts"):
        metrics.task_hull(scores, cost, ["x", "x", "y"])
