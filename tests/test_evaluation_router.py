"""evaluate_router: realised quality and cost from the table's truth, bad input, the CLI."""

import json
from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import make_tiny_table
from training.evaluation import metrics
from training.evaluation.evaluate import count_input_tokens, evaluate_router, ground_truth, main

MU = [0.0, 0.3, 0.7, 1.0]


@pytest.fixture(scope="module")
def results(knn_router_session, tiny_table):
    return evaluate_router(knn_router_session, tiny_table, mu_grid=MU)


def test_points_are_the_true_scores_and_costs_of_route(results, knn_router, tiny_table):
    points = results["routers"]["carrot"]["points"]
    true_cost = tiny_table.cost()
    for i, mu in enumerate(MU):
        decision = knn_router.route(tiny_table.prompts, mu=mu)
        columns = [tiny_table.models.index(m) for m in decision.models]
        rows = np.arange(len(tiny_table))
        assert points["quality"][i] == pytest.approx(tiny_table.scores[rows, columns].mean())
        assert points["cost"][i] == pytest.approx(true_cost[rows, columns].mean())
    entry = results["routers"]["carrot"]
    assert entry["quality_mu0"] == pytest.approx(points["quality"][0])
    assert entry["aiq"] == pytest.approx(metrics.aiq(points["cost"], points["quality"], results["aiq_max_cost"]))


def test_summary_entries(results, tiny_table):
    cost = tiny_table.cost().mean(0)
    quality = tiny_table.scores.mean(0)
    assert results["best_single"]["model"] == "big-model"
    assert results["best_single"]["quality"] == pytest.approx(1.0)
    assert results["zero_router"]["aiq"] == pytest.approx(metrics.aiq(cost, quality, results["aiq_max_cost"]))
    # big-model is right everywhere; the oracle takes the small one where it is right too.
    small_right = tiny_table.scores[:, 2] == 1
    mid_right_only = (tiny_table.scores[:, 1] == 1) & ~small_right
    expected_cost = np.where(small_right, tiny_table.cost()[:, 2], np.where(mid_right_only, tiny_table.cost()[:, 1], tiny_table.cost()[:, 0]))
    assert results["oracle"]["quality"] == pytest.approx(1.0)
    assert results["oracle"]["cost"] == pytest.approx(expected_cost.mean())
    assert results["baselines"]["random"]["apgr"] == pytest.approx(0.5)
    for key in ("aiq", "quality_mu0", "cost_to_match_best"):
        assert key in results["routers"]["carrot"]
    json.dumps(results, allow_nan=False)  # JSON-ready


def test_precomputed_embeddings_give_the_same_result(results, knn_router, tiny_table):
    embeddings = knn_router.encode(tiny_table.prompts).embeddings
    again = evaluate_router(knn_router, tiny_table, mu_grid=MU, embeddings=embeddings)
    for key in ("cost", "quality"):
        assert again["routers"]["carrot"]["points"][key] == pytest.approx(results["routers"]["carrot"]["points"][key])
    with pytest.raises(ValueError, match="one row per test prompt"):
        evaluate_router(knn_router, tiny_table, mu_grid=MU, embeddings=embeddings[:3])


def test_models_that_differ_raise_or_intersect(knn_router, tiny_table):
    two = tiny_table.select_models(["big-model", "small-model"])
    with pytest.raises(ValueError, match="intersect"):
        evaluate_router(knn_router, two, mu_grid=MU)
    out = evaluate_router(knn_router, two, mu_grid=MU, on_model_mismatch="intersect")
    assert out["data"]["models"] == ["big-model", "small-model"]
    allowed = knn_router.route(tiny_table.prompts, mu=0.0, allowed=["big-model", "small-model"])
    columns = [two.models.index(m) for m in allowed.models]
    assert out["routers"]["carrot"]["quality_mu0"] == pytest.approx(two.scores[np.arange(6), columns].mean())


def test_one_model_is_refused(knn_router, tiny_table):
    one = tiny_table.select_models(["big-model"])
    with pytest.raises(ValueError, match="at least two"):
        evaluate_router(knn_router, one, mu_grid=MU, on_model_mismatch="intersect")
    with pytest.raises(ValueError, match="at least two"):
        ground_truth(one)


def test_a_model_without_any_score(knn_router, tiny_table):
    scores = tiny_table.scores.copy()
    scores[:, 1] = np.nan
    unscored = replace(tiny_table, scores=scores)
    with pytest.raises(ValueError, match="cannot be judged"):
        evaluate_router(knn_router, unscored, mu_grid=MU)
    out = evaluate_router(knn_router, unscored, mu_grid=MU, on_unscored_model="drop")
    assert out["data"]["dropped_models"] == ["mid-model"]
    assert out["data"]["models"] == ["big-model", "small-model"]


def test_missing_scores_count_as_wrong(tiny_table):
    scores = tiny_table.scores.copy()
    scores[0, 0] = np.nan
    truth = ground_truth(replace(tiny_table, scores=scores))
    assert truth.scores[0, 0] == 0.0
    assert truth.missing_scores == 1


def test_prices_must_match(knn_router, tiny_table):
    prices = {m: dict(p) for m, p in tiny_table.prices.items()}
    prices["big-model"]["output"] = 60.0
    repriced = replace(tiny_table, prices=prices)
    with pytest.raises(ValueError, match="prices differ"):
        evaluate_router(knn_router, repriced, mu_grid=MU)
    out = evaluate_router(knn_router, repriced, mu_grid=MU, on_price_mismatch="table")
    assert out["single_models"]["big-model"]["cost"] == pytest.approx(repriced.cost()[:, 0].mean())


def held_out_splits(tiny_table, test_name: str = "test") -> dict:
    """A train split whose prompts are all new (the tiny table's variants 1 and 2) and the tiny table as the held-out split."""
    train = make_tiny_table(n_repeats=3, seed=1)
    train = train.subset(np.arange(len(tiny_table), len(train)))
    train.split = "train"
    return {"train": train, test_name: replace(tiny_table, split=test_name)}


def test_command_line(tmp_path, saved_knn_router, tiny_table, capsys):
    from carrot_hub.data.writing import write_sprout_dataset

    data = write_sprout_dataset(held_out_splits(tiny_table), tmp_path / "data")
    out, plot = tmp_path / "r.json", tmp_path / "c.png"
    code = main([str(saved_knn_router), "--data", str(data), "--mu-steps", "5", "--out", str(out), "--plot", str(plot), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "zero router" in printed and "oracle" in printed
    results = json.loads(out.read_text())
    assert set(results["routers"]) == {saved_knn_router.name}
    assert {"zero_router", "oracle", "best_single"} <= set(results)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code = main([str(saved_knn_router), "--data", str(data), "--mu-steps", "5", "--baselines", "--out", str(out), "--quiet"])
    assert code == 0
    assert {"carrot-knn-reference", "routerbench", "routellm-mf", "random"} == set(json.loads(out.read_text())["baselines"])
    assert main([str(saved_knn_router), "--data", str(data), "--plot", str(tmp_path / "c.jpg"), "--quiet"]) == 2
    assert "PNG" in capsys.readouterr().err


# -------------------------------------------------- evaluation a new user cannot get wrong (issue 12)


def carrot(argv, capsys) -> tuple[int, str, str]:
    from carrot_hub.cli import main as carrot_main

    code = carrot_main(["evaluate", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_uses_the_validation_split_when_there_is_no_test_split_and_says_so(tmp_path, saved_knn_router, tiny_table, capsys):
    from carrot_hub.data.writing import write_sprout_dataset

    data = write_sprout_dataset(held_out_splits(tiny_table, "validation"), tmp_path / "converted")
    out = tmp_path / "r.json"
    code, printed, err = carrot([saved_knn_router, "--data", data, "--mu-steps", "3", "--out", out, "--quiet"], capsys)
    assert code == 0, err
    assert "split 'validation' (the data has no 'test' split)" in err
    assert json.loads(out.read_text())["data"]["split"] == "validation"
    assert "Generating" not in err and "Loading weights" not in err and "%|" not in err  # --quiet is quiet
    code, _, err = carrot([saved_knn_router, "--data", data, "--split", "test", "--quiet"], capsys)
    assert code == 2 and "Unknown split" in err and "--split" in err and len(err.strip().splitlines()) == 1


def test_baselines_refuse_a_training_split_that_overlaps_the_evaluated_one(tmp_path, saved_knn_router, tiny_table, capsys):
    from carrot_hub.data.writing import write_sprout_dataset

    leaky = {"train": make_tiny_table(n_repeats=2, seed=1), "test": replace(tiny_table, split="test")}  # shares 6 prompts
    data = write_sprout_dataset(leaky, tmp_path / "leaky")
    base = [saved_knn_router, "--data", data, "--mu-steps", "3", "--baselines", "--quiet"]
    code, _, err = carrot(base, capsys)
    assert code == 2 and "6 of the 6 prompts of split 'test' are also in --train-split 'train'" in err
    code, _, err = carrot([*base, "--train-split", "test"], capsys)
    assert code == 2 and "is the evaluated split" in err
    code, _, err = carrot([*base, "--allow-overlap"], capsys)
    assert code == 0, err


def test_reports_the_prompts_a_router_was_trained_on(tmp_path, saved_knn_router, tiny_table, capsys):
    """The tiny kNN router's memory holds the tiny table's prompts: all of its test prompts are known to it."""
    from carrot_hub.data.writing import write_sprout_dataset

    data = write_sprout_dataset(held_out_splits(tiny_table), tmp_path / "data")
    out = tmp_path / "r.json"
    code, _, err = carrot([saved_knn_router, "--data", data, "--mu-steps", "3", "--out", out, "--quiet"], capsys)
    assert code == 0, err
    overlap = json.loads(out.read_text())["data"]["router_training_overlap"][saved_knn_router.name]
    assert overlap["shared_prompts"] == 6 and overlap["of"] == 6 and "kNN memory" in overlap["method"]
    assert "was trained on 6 of the 6 evaluated prompts" in err


def test_out_is_checked_before_the_run(tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    code, _, err = carrot([tmp_path / "no-router-here", "--out", folder], capsys)  # the router is never looked at
    assert code == 2 and "--out" in err and "is a folder" in err
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = carrot([tmp_path / "no-router-here", "--out", blocker / "r.json"], capsys)
    assert code == 2 and "is a file, not a folder" in err


def test_plot_legend_labels_what_each_figure_is(knn_router, tiny_table):
    """The oracle's legend entry showed its quality where every other entry showed AIQ, unlabelled."""
    from training.evaluation.plots import legend_label

    results = evaluate_router(knn_router, tiny_table, mu_grid=MU)
    entries = [results["oracle"], results["zero_router"], results["routers"]["carrot"], results["baselines"]["random"]]
    for entry in entries:
        label = legend_label("name", entry)
        assert f"AIQ {entry['aiq']:.3f}" in label and f"quality {entry['quality_mu0']:.3f}" in label


def test_cost_prediction_errors_are_reported_per_candidate(results, knn_router, tiny_table):
    entry = results["routers"]["carrot"]
    per_model = entry["cost_prediction"]["per_model"]
    assert list(per_model) == list(tiny_table.models)
    # Each model writes a constant number of tokens in the tiny table: the kNN predicts them exactly,
    # so knowing the true tokens changes nothing. The dollars differ only by the input tokens (the
    # table says 30 per prompt; the router counts the real prompts).
    input_gap = np.abs(count_input_tokens(knn_router, tiny_table.prompts).numpy() - 30.0).mean()
    for model, errors in per_model.items():
        assert errors["output_tokens"]["mae"] == pytest.approx(0, abs=1e-3)
        assert errors["cost"]["mae"] == pytest.approx(input_gap * tiny_table.prices[model]["input"] / 1e6, rel=1e-4)
    assert entry["oracle_cost"]["aiq"] == pytest.approx(entry["aiq"])
    assert entry["aiq_lost_to_cost_prediction"] == pytest.approx(0, abs=1e-12)


def test_a_cost_surprise_shows_as_token_error_and_lost_aiq(knn_router, tiny_table):
    tokens = tiny_table.output_tokens.copy()
    tokens[:, 2] *= 100  # the small model really writes 4,000 tokens, not the 40 the router remembers
    test = replace(tiny_table, output_tokens=tokens)
    entry = evaluate_router(knn_router, test, mu_grid=np.linspace(0, 1, 21))["routers"]["carrot"]
    small = entry["cost_prediction"]["per_model"]["small-model"]
    assert small["output_tokens"]["relative_error"] == pytest.approx(0.99, abs=1e-3)
    assert small["output_tokens"]["bias"] == pytest.approx(-0.99, abs=1e-3)
    assert entry["cost_prediction"]["per_model"]["big-model"]["output_tokens"]["mae"] == pytest.approx(0, abs=1e-3)
    # Knowing the small model's true length, the router stops sending it prompts it gets wrong for more money.
    assert entry["aiq_lost_to_cost_prediction"] > 0
