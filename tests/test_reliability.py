"""Calibration maps, the support-aware quality and its band, the rules' fitting, and their evaluation."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from carrot_hub import CarrotRouter
from carrot_hub.building import fit_knn, new_router
from carrot_hub.modeling_carrot import PromptEncoding, interpolate_monotone
from carrot_hub.configuration_carrot import CarrotConfig
from carrot_hub.reliability import (
    FLOOR_GRID,
    PESSIMISM_GRID,
    RELIABILITY_LAYERS,
    MIN_GROUP_SIZE,
    THRESHOLD_GRID,
    choose_calibration,
    choose_pessimism,
    fit_knn_reliability,
    fit_validation_reliability,
    fit_reliability,
    knn_held_out_predictor,
    isotonic_knots,
    disjoint_groups,
    platt_knots,
    quality_groups,
    spherical_kmeans,
)
from training.evaluation import metrics

from .conftest import TINY_MODELS, TINY_PRICES, make_tiny_table
from .reliability_fixtures import clustered_embeddings, clustered_knn_router, encoding, synthetic_table


def test_isotonic_map_is_monotone_and_fits_steps():
    x = np.linspace(0, 1, 200)
    y = (x > 0.5).astype(float)
    knots_x, knots_y = isotonic_knots(x, y)
    assert np.all(np.diff(knots_x) > 0) and np.all(np.diff(knots_y) >= 0)
    assert np.interp(0.2, knots_x, knots_y) == pytest.approx(0.0) and np.interp(0.8, knots_x, knots_y) == pytest.approx(1.0)


def test_platt_recovers_an_over_confident_predictor():
    rng = np.random.default_rng(0)
    true_probability = rng.uniform(0.05, 0.95, 4000)
    logit = np.log(true_probability / (1 - true_probability))
    predicted = 1 / (1 + np.exp(-2.0 * logit))  # twice too confident
    outcomes = (rng.uniform(size=true_probability.size) < true_probability).astype(float)
    knots_x, knots_y = platt_knots(predicted, outcomes)
    calibrated = np.interp(predicted, knots_x, knots_y)
    assert np.abs(calibrated - true_probability).mean() < 0.03
    assert np.abs(predicted - true_probability).mean() > 0.08


def test_calibration_choice_follows_out_of_fold_evidence():
    rng = np.random.default_rng(1)
    probability = rng.uniform(0, 1, (3000, 2))
    scores = (rng.uniform(size=probability.shape) < probability).astype(float)
    method, briers = choose_calibration(probability, scores)
    assert method == "identity" or briers[method] > briers["identity"] - 1e-3, "a calibrated predictor needs no map"
    skewed = probability**3  # under-confident toward 0
    method, briers = choose_calibration(skewed, scores)
    assert method in ("isotonic", "platt") and briers[method] < briers["identity"] - 0.01


def test_piecewise_linear_map_matches_numpy():
    knots_x = torch.tensor([[0.0, 0.3, 1.0], [0.0, 0.5, 0.5]])  # second row: a repeated (padding) knot
    knots_y = torch.tensor([[0.1, 0.2, 0.9], [0.0, 0.6, 0.6]])
    values = torch.tensor([[0.0, 0.2], [0.15, 0.5], [0.65, 0.9]])
    mapped = interpolate_monotone(values, knots_x, knots_y)
    assert np.allclose(mapped[:, 0].numpy(), np.interp(values[:, 0].numpy(), [0.0, 0.3, 1.0], [0.1, 0.2, 0.9]), atol=1e-6)
    assert np.allclose(mapped[:, 1].numpy(), np.interp(values[:, 1].numpy(), [0.0, 0.5], [0.0, 0.6]), atol=1e-6)


def test_spherical_kmeans_finds_two_clusters():
    embeddings, _ = clustered_embeddings(n_per_cluster=30)
    labels = spherical_kmeans(embeddings, 2, seed=0)
    assert len(set(labels[:30])) == 1 and len(set(labels[30:])) == 1 and labels[0] != labels[-1]


@pytest.fixture(scope="module")
def fitted_knn():
    router, report, embeddings, _, centres = clustered_knn_router()
    return router, report, embeddings, centres


def test_knn_reliability_is_fitted_on_each_rows_own_out_of_fold_prediction(monkeypatch):
    """Row i's out-of-fold quality is the kNN mean from a memory without i's fold (5 seeded folds)."""
    import carrot_hub.reliability as reliability

    captured = {}
    monkeypatch.setattr(reliability, "fit_reliability", lambda router, table, embeddings, oof, predict, seed=0, **_: captured.update(oof=oof))
    router, _, embeddings, table, _ = clustered_knn_router()
    predict = knn_held_out_predictor(embeddings, table, 8)
    n = embeddings.shape[0]
    expected = np.zeros((n, 3))
    for fold in np.array_split(np.random.default_rng(0).permutation(n), 5):
        for row in fold:
            expected[row] = predict(np.setdiff1d(np.arange(n), fold), np.array([row]))[0]
    np.testing.assert_allclose(captured["oof"], expected, rtol=0, atol=1e-6)


def test_fit_reliability_picks_from_its_grids_and_reports_the_evidence(fitted_knn):
    router, report, _, _ = fitted_knn
    config = router.config
    assert report["grouping"].startswith("tasks") and report["n_groups"] == 2
    assert config.support_threshold in THRESHOLD_GRID and config.shrink_floor in FLOOR_GRID
    assert config.calibration_method in ("identity", "isotonic", "platt")
    evidence = report["held_out_groups"]
    assert set(evidence["chosen_overestimate_by_floor"]) == {str(f) for f in FLOOR_GRID}
    assert 0.0 <= evidence["least_squares_floor"] <= 1.0
    prior = router.reliability.prior.numpy()
    assert prior[0] == pytest.approx(1.0)  # the first model is always right in the synthetic table
    assert np.all(router.reliability.spread_out.numpy() >= router.reliability.spread_in.numpy())
    assert config.ood_pessimism in PESSIMISM_GRID and config.ood_pessimism_support in THRESHOLD_GRID
    pessimism = report["ood_pessimism"]
    assert pessimism["chosen"] == config.ood_pessimism and pessimism["support"] == config.ood_pessimism_support
    assert pessimism["evidence"][f"{config.ood_pessimism}@{config.ood_pessimism_support}"]["allowed"]


def test_quality_adjustments_hold_out_the_tasks_and_k_means_clusters_of_all_prompts(fitted_knn):
    _, report, embeddings, _ = fitted_knn
    n = embeddings.shape[0]
    tasks = [np.arange(n // 2), np.arange(n // 2, n)]
    groups, description = quality_groups(tasks, "tasks: a, b", embeddings)
    assert groups[:2] == tasks and len(groups) > 2, "the clusters come beside the tasks"
    assert "k-means clusters of all the prompts" in description
    for cluster in groups[2:]:
        assert MIN_GROUP_SIZE <= cluster.size <= n - MIN_GROUP_SIZE
        assert not any(np.array_equal(cluster, task) for task in tasks)
    # the fit chose the floor, band and pessimism on those groups: one held-out gap per group
    assert report["quality_grouping"] == description
    assert len(report["ood_pessimism"]["evidence"]["0.0@0.005"]["held_out_chosen_gap"]) == len(groups)
    assert len(report["held_out_groups"]["mean_score_minus_prior"]) == len(groups)
    # support is still chosen on the tasks alone
    assert report["n_groups"] == 2 and len(report["support"]["auroc"]) > 0


def test_quality_groups_skip_clusters_that_repeat_a_task_and_leave_cluster_groupings_alone(monkeypatch):
    import carrot_hub.reliability as reliability

    embeddings, _ = clustered_embeddings(n_per_cluster=40)
    tasks = [np.arange(40), np.arange(40, 80)]
    almost_a_task = np.r_[np.arange(39), 45]  # 39 of the 40 prompts of task a and one of b: Jaccard 39/41
    clusters = [tasks[1], almost_a_task, np.arange(20, 60), np.arange(70)]
    monkeypatch.setattr(reliability, "cluster_groups", lambda embeddings, seed=0: clusters)
    groups, description = quality_groups(tasks, "tasks: a, b", embeddings)
    # a task again (whole or nearly), and a cluster that leaves too few prompts to train on, are left out
    assert len(groups) == 3 and np.array_equal(groups[2], np.arange(20, 60))
    assert description.endswith("and 1 k-means clusters of all the prompts")
    clusters = [np.arange(40), np.arange(40, 80)]
    assert quality_groups(clusters, "2 k-means clusters of the prompt embeddings", embeddings) == (
        clusters, "2 k-means clusters of the prompt embeddings"
    )


def test_a_held_out_groups_band_comes_from_the_groups_that_share_none_of_its_prompts():
    tasks = [np.arange(0, 40), np.arange(40, 80), np.arange(80, 120)]
    cut_from_first = np.arange(0, 20)
    groups = tasks + [cut_from_first]
    assert disjoint_groups(groups, 0).tolist() == [1, 2]  # not the cluster cut from it
    assert disjoint_groups(groups, 3).tolist() == [1, 2]  # nor the task it is cut from
    assert disjoint_groups(groups, 1).tolist() == [0, 2, 3]
    across = [np.arange(0, 40), np.arange(40, 80), np.arange(20, 60)]
    assert disjoint_groups(across, 2).tolist() == [0, 1]  # overlaps every other group: all of them


def test_quality_moves_to_the_prior_and_the_band_widens_as_support_falls(fitted_knn, tmp_path):
    router, _, embeddings, centres = fitted_knn
    far = torch.nn.functional.normalize(torch.randn(3, 384, generator=torch.Generator().manual_seed(7)), dim=1)
    probe = torch.cat([centres, far])
    encoding = PromptEncoding(probe, torch.full((5,), 30.0), [False] * 5)
    config = router.config
    saved_floor, saved_shrink, reliability = config.shrink_floor, config.prior_shrink, router.reliability
    saved_pessimism = config.ood_pessimism
    saved_spreads = reliability.spread_in.clone(), reliability.spread_out.clone()
    try:
        config.prior_shrink = 0.0  # the floor alone (prior_shrink: tests/test_prior_shrinkage.py)
        config.ood_pessimism = 0.0  # the central estimate (pessimism: its own test)
        reliability.spread_in, reliability.spread_out = torch.full((3,), 0.02), torch.full((3,), 0.2)
        config.shrink_floor = 0.0
        predictions = router.predict_encoded(encoding)
        raw, _ = router.predict_raw(probe)
        assert torch.all(predictions.support[2:] == 0)
        assert torch.allclose(predictions.quality[2:], router.reliability.prior.expand(3, -1), atol=1e-6)
        width = predictions.quality_high - predictions.quality_low
        assert width[2:].mean(1).min() > width[:2].mean(1).max()
        assert torch.all(predictions.quality_low <= predictions.quality) and torch.all(predictions.quality <= predictions.quality_high)
        config.shrink_floor = 1.0
        unshrunk = router.predict_encoded(encoding)
        calibrated = interpolate_monotone(raw, router.reliability.calibration_x, router.reliability.calibration_y)
        assert torch.allclose(unshrunk.quality, calibrated, atol=1e-6)
        # in distribution (support at or above the threshold) the floor changes nothing
        inside = predictions.support >= config.support_threshold
        assert torch.equal(predictions.quality[inside], unshrunk.quality[inside])
    finally:
        config.shrink_floor, config.prior_shrink = saved_floor, saved_shrink
        config.ood_pessimism = saved_pessimism
        reliability.spread_in, reliability.spread_out = saved_spreads
    router.save_pretrained(tmp_path / "r")
    loaded = CarrotRouter.from_pretrained(tmp_path / "r")
    assert loaded.config.calibration_method == config.calibration_method
    assert torch.equal(loaded.predict_encoded(encoding).quality, router.predict_encoded(encoding).quality)


def test_expected_calibration_error_and_chosen_gap():
    labels = np.array([[1.0, 0.0], [1.0, np.nan], [0.0, 1.0], [1.0, 0.0]])
    predictions = np.array([[0.75, 0.25], [0.75, 0.9], [0.75, 0.25], [0.75, 0.25]])
    ece = metrics.expected_calibration_error(labels, predictions, bins=4)
    # bin of 0.75: 3 of 4 right (gap 0); bin of 0.25: 1 of 3 right (gap 1/12, 3 cells); the NaN cell is left out
    assert ece["n"] == 7 and ece["ece"] == pytest.approx(3 * (1 / 12) / 7)
    scores = np.nan_to_num(labels)
    gap = metrics.chosen_quality_gap(predictions, scores, np.array([[0, 0, 0, 0], [1, 1, 1, 1]]))
    assert gap["per_mu"][0] == pytest.approx(0.75 - 0.75) and gap["per_mu"][1] == pytest.approx((0.25 + 0.9 + 0.25 + 0.25) / 4 - 0.25)


def test_evaluate_reports_calibration_gap_shift_and_draws_the_diagram(tmp_path, saved_knn_router, tiny_table, capsys):
    from carrot_hub.data.writing import write_sprout_dataset
    from training.evaluation.evaluate import main

    splits = {"train": make_tiny_table(n_repeats=2, seed=1), "test": replace(tiny_table, split="test")}
    data = write_sprout_dataset(splits, tmp_path / "data")
    shifted_table = replace(
        tiny_table, prompts=["Translate into French: the bells rang at noon.", "Summarise the plot of Hamlet in one line.",
                             "What is the capital of Mongolia?", "Name three prime numbers above 100.",
                             "Write a limerick about a cat.", "Convert 3 miles to kilometres."], split="test")
    shifted = write_sprout_dataset({"test": shifted_table}, tmp_path / "shifted")
    out, diagram = tmp_path / "r.json", tmp_path / "reliability.png"
    code = main([str(saved_knn_router), "--data", str(data), "--mu-steps", "5", "--out", str(out), "--quiet",
                 "--shifted-data", str(shifted), "--reliability-plot", str(diagram)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "ECE" in printed and "support AUROC" in printed
    entry = json.loads(out.read_text())["routers"][saved_knn_router.name]
    prediction = entry["prediction_quality"]
    assert 0.0 <= prediction["calibration"]["ece"] <= 1.0 and len(prediction["calibration"]["bins"]) == 15
    assert len(prediction["chosen_quality_gap"]["per_mu"]) == 5
    assert 0.0 <= prediction["support"]["out_of_distribution"] <= 1.0
    assert 0.0 <= entry["shift"]["support_auroc"] <= 1.0 and entry["shift"]["n_prompts"] == 6
    assert diagram.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([str(saved_knn_router), "--data", str(data), "--reliability-plot", str(tmp_path / "d.svg"), "--quiet"]) == 2


def test_pessimism_lowers_quality_out_of_distribution_only(fitted_knn, tmp_path):
    router, _, _, centres = fitted_knn
    far = torch.nn.functional.normalize(torch.randn(3, 384, generator=torch.Generator().manual_seed(7)), dim=1)
    encoding = PromptEncoding(torch.cat([centres, far]), torch.full((5,), 30.0), [False] * 5)
    config, reliability = router.config, router.reliability
    saved = config.ood_pessimism, config.ood_pessimism_support, reliability.spread_out.clone()
    try:
        reliability.spread_out = torch.full((3,), 0.2)
        config.ood_pessimism = 0.0
        central = router.predict_encoded(encoding)
        config.ood_pessimism, config.ood_pessimism_support = 1.0, 0.05
        cautious = router.predict_encoded(encoding)
        assert torch.all(cautious.support[2:] == 0) and torch.all(cautious.support[:2] > 0.05)
        # at support 0 the quality is the band's lower end; the band itself does not move
        assert torch.allclose(cautious.quality[2:], (central.quality[2:] - 0.2).clamp(0, 1), atol=1e-6)
        assert torch.allclose(cautious.quality[2:], cautious.quality_low[2:], atol=1e-6)
        assert torch.equal(cautious.quality_low, central.quality_low) and torch.equal(cautious.quality_high, central.quality_high)
        assert torch.equal(cautious.quality[:2], central.quality[:2])  # above ood_pessimism_support nothing moves
        router.save_pretrained(tmp_path / "cautious")
        loaded = CarrotRouter.from_pretrained(tmp_path / "cautious")
        assert (loaded.config.ood_pessimism, loaded.config.ood_pessimism_support) == (1.0, 0.05)
        assert torch.equal(loaded.predict_encoded(encoding).quality, cautious.quality)
        # a router saved before these fields existed loads with no pessimism: it routes as it did
        config_file = tmp_path / "cautious" / "config.json"
        fields = json.loads(config_file.read_text())
        fields.pop("ood_pessimism"), fields.pop("ood_pessimism_support")
        config_file.write_text(json.dumps(fields))
        older = CarrotRouter.from_pretrained(tmp_path / "cautious")
        assert older.config.ood_pessimism == 0.0
        assert torch.equal(older.predict_encoded(encoding).quality, central.quality)
    finally:
        config.ood_pessimism, config.ood_pessimism_support, reliability.spread_out = saved


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_bad_pessimism_in_the_config_is_refused(value):
    with pytest.raises(ValueError, match="ood_pessimism must be in"):
        CarrotConfig(ood_pessimism=value)
    with pytest.raises(ValueError, match="ood_pessimism_support must be in"):
        CarrotConfig(ood_pessimism_support=0.0)


def pessimism_case(in_distribution_support: float):
    """
    Two candidates, 0 cheap and 1 dear. A held-out group: the cheap one is predicted 0.9 but scores 0.1
    (the group is harder than the prior says); the dear one is predicted and scores 0.6. In distribution
    both are predicted exactly (0.8 and 0.5).
    """
    n = 200
    held_out = {
        "calibrated": [np.tile([0.9, 0.6], (n, 1))], "prior": [np.tile([0.9, 0.6], (n, 1))],
        "support": [np.zeros(n)], "scores": [np.tile([0.1, 0.6], (n, 1))], "cost": [np.tile([0.0, 1.0], (n, 1))],
        "band": [np.array([0.5, 0.05])],
    }
    in_distribution = {
        "calibrated": np.tile([0.8, 0.5], (n, 1)), "prior": np.array([0.8, 0.5]),
        "support": np.full(n, in_distribution_support), "scores": np.tile([0.8, 0.5], (n, 1)),  # graded, exactly right
        "cost": np.tile([0.0, 1.0], (n, 1)), "band": np.array([0.5, 0.05]),
    }
    return held_out, in_distribution


def test_pessimism_is_chosen_by_held_out_over_estimate_within_the_in_distribution_tolerance():
    held_out, in_distribution = pessimism_case(in_distribution_support=0.5)  # in distribution: untouched
    (pessimism, support), evidence = choose_pessimism(held_out, 1, in_distribution, 0.1, 1.0, cost_scale=10.0)
    none = evidence["0.0@0.005"]["held_out_overestimate"]
    assert none > 0.3 and pessimism > 0 and evidence[f"{pessimism}@{support}"]["held_out_overestimate"] < none / 3
    assert evidence[f"{pessimism}@{support}"]["held_out_overestimate"] == min(e["held_out_overestimate"] for e in evidence.values())
    # the same pessimism would hit prompts like the training ones too: too costly, so none
    held_out, in_distribution = pessimism_case(in_distribution_support=0.0)
    (pessimism, _), evidence = choose_pessimism(held_out, 1, in_distribution, 0.1, 1.0, cost_scale=10.0)
    assert pessimism == 0.0
    assert not any(entry["allowed"] for key, entry in evidence.items() if not key.startswith("0.0@"))


def test_a_router_that_cannot_be_refitted_is_calibrated_on_its_validation_prompts():
    from carrot_hub.building import fit_support_and_prior

    embeddings, _ = clustered_embeddings(n_per_cluster=60)
    table = synthetic_table(embeddings.shape[0])  # two tasks; the first model is always right
    router = new_router(TINY_MODELS, TINY_PRICES, predictor_kind="mlp", cost_scale=1e-3)  # heads as initialised: ~0.5
    rows = np.random.default_rng(0).permutation(embeddings.shape[0])
    fit_rows, validation_rows = np.sort(rows[:60]), np.sort(rows[60:])
    fit_support_and_prior(router, table.subset(fit_rows), embeddings=embeddings[fit_rows])
    few = validation_rows[:10]
    assert fit_validation_reliability(router, embeddings[fit_rows], table.subset(few), embeddings[few]) is None
    assert router.config.calibration_method == "identity"  # too few validation prompts: left as it was
    report = fit_validation_reliability(router, embeddings[fit_rows], table.subset(validation_rows), embeddings[validation_rows])
    assert report["grouping"].startswith("tasks") and report["ood_pessimism"]["chosen"] in PESSIMISM_GRID
    assert router.config.calibration_method != "identity"
    quality = router.predict_encoded(encoding(embeddings[validation_rows])).quality
    assert quality[:, 0].min() > 0.9  # the map learnt from the validation predictions that the first model is right
    # support is measured against every training prompt, not the validation ones
    assert router.config.support_memory_size == 60
    assert torch.equal(router.reliability.support_embeddings, embeddings[fit_rows])


@pytest.mark.slow
def test_cautious_estimate_cuts_the_over_estimate_on_a_packaged_task_never_seen():
    """RouterBench's shipped train embeddings: a kNN router of ARC and Winogrande routes MBPP's prompts."""
    from carrot_hub.data.packaged import EMBEDDINGS_FILENAME, packaged_table_dir
    from carrot_hub.default import DEFAULT_TABLE, new_default_router
    from carrot_hub.embedding_cache import embeddings_key, load_embeddings

    router, table = new_default_router("transformer", DEFAULT_TABLE)
    embeddings = load_embeddings(packaged_table_dir(DEFAULT_TABLE) / EMBEDDINGS_FILENAME, embeddings_key(router, table.prompts))
    assert embeddings is not None, "the shipped embeddings no longer match the encoder"
    tasks = np.asarray(table.tasks, dtype=object)
    seen, unseen = np.flatnonzero(tasks != "mbpp"), np.flatnonzero(tasks == "mbpp")
    fit_knn(router, embeddings[seen], table.subset(seen))
    fit_knn_reliability(router, table.subset(seen), embeddings[seen], layers=RELIABILITY_LAYERS)  # caution is off by default
    assert router.config.ood_pessimism > 0
    encoding = PromptEncoding(embeddings[unseen], torch.full((unseen.size,), 100.0), [False] * unseen.size)
    scores = np.nan_to_num(np.asarray(table.scores)[unseen])

    def chosen_gap():
        predictions = router.predict_encoded(encoding)
        gaps = []
        for mu in np.linspace(0, 1, 11):
            chosen = router.decide(predictions, mu=float(mu)).model_indices.numpy()
            rows = np.arange(unseen.size)
            gaps.append(float((predictions.quality.numpy()[rows, chosen] - scores[rows, chosen]).mean()))
        return float(np.mean(gaps))

    cautious = chosen_gap()
    pessimism, router.config.ood_pessimism = router.config.ood_pessimism, 0.0
    central = chosen_gap()
    router.config.ood_pessimism = pessimism
    assert central > 0.2, "MBPP is harder than ARC and Winogrande: the central estimate over-states it"
    assert cautious < central - 0.03
