"""Evaluation on the real packaged RouterBench data: a small slice by default, the whole benchmark when slow."""

import json

import numpy as np
import pytest

from carrot_hub.building import default_cost_scale, fit_knn, new_router
from carrot_hub.data import load_routing_table
from carrot_hub.default import DEFAULT_DATA_DIR
from training.evaluation.baselines import trained_baselines
from training.evaluation.benchmark import main as benchmark_main
from training.evaluation.evaluate import evaluate_router, format_table, ground_truth, router_curve, summarize


@pytest.fixture(scope="module")
def real_slice():
    """40 real training prompts in a kNN router, 20 real test prompts (spread over all tasks)."""
    train = load_routing_table(str(DEFAULT_DATA_DIR), split="train")
    test = load_routing_table(str(DEFAULT_DATA_DIR), split="test")
    train = train.subset(np.arange(0, len(train), len(train) // 40)[:40])
    test = test.subset(np.arange(0, len(test), len(test) // 20)[:20])
    router = new_router(train.models, train.prices, knn_k=8, cost_scale=default_cost_scale(train))
    train_embeddings = router.encode(train.prompts).embeddings
    fit_knn(router, train_embeddings, train)
    test_embeddings = router.encode(test.prompts).embeddings
    return router, train, test, train_embeddings, test_embeddings


def test_real_slice_router_and_baselines(real_slice):
    router, train, test, train_embeddings, test_embeddings = real_slice
    results = evaluate_router(router, test, mu_grid=np.linspace(0, 1, 11), embeddings=test_embeddings)
    entry = results["routers"]["carrot"]
    costs = entry["points"]["cost"]
    assert costs[-1] < costs[0]  # μ = 1 is cheaper than μ = 0
    assert results["oracle"]["quality"] >= results["best_single"]["quality"]
    assert results["oracle"]["aiq"] >= entry["aiq"] and results["oracle"]["aiq"] >= results["zero_router"]["aiq"]
    assert 0 < results["zero_router"]["aiq"] <= 1
    # routing by task alone (with hindsight) lies between the single models and the per-prompt oracle
    task_oracle = results["task_oracle"]
    assert results["zero_router"]["aiq"] <= task_oracle["aiq"] <= results["oracle"]["aiq"]
    assert task_oracle["quality_mu0"] >= results["best_single"]["quality"]
    assert "task oracle (best per task)" in format_table(results)
    json.dumps(results, allow_nan=False)

    truth = ground_truth(test)
    pair = ("gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat")
    curve, _ = router_curve(router, test, np.linspace(0, 1, 11), embeddings=test_embeddings, pair=pair, name="knn")
    baselines = trained_baselines(train_embeddings, ground_truth(train), test_embeddings, truth, pair, np.linspace(0, 1, 11), 0.005, mf_epochs=3)
    results = summarize([curve, *baselines], truth, pair)
    assert results["pair"]["strong"] == pair[0]
    for entry in [results["routers"]["knn"], *results["baselines"].values()]:
        assert 0 <= entry["apgr"] <= 1 and 0 <= entry["cpt50"] <= entry["cpt80"] <= 1


@pytest.mark.slow
def test_benchmark_end_to_end(tmp_path):
    out, plot = tmp_path / "results.json", tmp_path / "curves.png"
    code = benchmark_main(
        ["--data", "routerbench-0shot", "--out", str(out), "--plot", str(plot), "--kinds", "knn,mlp", "--cache-dir", str(tmp_path / "cache"),
         "--routers-dir", str(tmp_path / "routers"), "--resplits", "3", "--quiet"]
    )
    assert code == 0
    results = json.loads(out.read_text())
    for name in ("carrot-knn", "carrot-mlp", "carrot-static-knn", "carrot-static-mlp"):
        assert {"aiq", "quality_mu0", "cost_to_match_best"} <= set(results["routers"][name])
    assert results["benchmark"]["training_reports"]["carrot-static-knn"]["encoder_kind"] == "static"
    assert {"carrot-knn-reference", "routerbench", "routellm-mf", "random"} <= set(results["baselines"])
    # The figures quoted for this data (all-MiniLM-L6-v2, missing = wrong).
    assert results["zero_router"]["aiq"] == pytest.approx(0.805, abs=0.005)
    assert results["best_single"]["model"] == "gpt-4-1106-preview"
    assert (tmp_path / "routers" / "knn" / "model.safetensors").is_file()
    assert (tmp_path / "routers" / "static-mlp" / "model.safetensors").is_file()
    assert plot.read_bytes()[:4] == b"\x89PNG"
    # A second run into the same folder is refused without --overwrite.
    assert benchmark_main(["--data", "routerbench-0shot", "--out", str(out), "--kinds", "knn", "--routers-dir",
                           str(tmp_path / "routers"), "--quiet"]) == 2


def test_benchmark_refuses_a_single_resplit(tmp_path, capsys):
    assert benchmark_main(["--data", "zeroeval-2024", "--out", str(tmp_path / "r.json"), "--resplits", "1", "--quiet"]) == 2
    assert "--resplits must be 0 (skip) or at least 2" in capsys.readouterr().err


def test_benchmark_encoders_option_names_the_routers():
    from training.evaluation.benchmark import _parse_encoders, router_name

    assert _parse_encoders("transformer,static") == ["transformer", "static"]
    assert [router_name("knn", e) for e in ("transformer", "static")] == ["carrot-knn", "carrot-static-knn"]
    with pytest.raises(ValueError, match="--encoders names \\['word2vec'\\]"):
        _parse_encoders("static,word2vec")


def _small_copy(name: str, folder, n_train: int, n_test: int):
    """A packaged table cut to a few rows spread over its tasks (same card and prices)."""
    import shutil

    import pyarrow.parquet as pq

    from carrot_hub.data.packaged import packaged_table_dir

    source = packaged_table_dir(name)
    (folder / "data").mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        table = pq.read_table(source / "data" / f"{split}-00000-of-00001.parquet")
        rows = np.linspace(0, table.num_rows - 1, n).astype(int)
        pq.write_table(table.take(rows), folder / "data" / f"{split}-00000-of-00001.parquet")
    for file in ("README.md", "prices.json"):
        shutil.copyfile(source / file, folder / file)
    return folder


def test_benchmark_runs_on_every_table_given_with_one_file_each_and_a_summary(tmp_path):
    tables = [_small_copy(name, tmp_path / f"{name}-small", 30, 12) for name in ("routerbench-0shot", "zeroeval-2024")]
    out = tmp_path / "results"
    code = benchmark_main(
        [*(arg for folder in tables for arg in ("--data", str(folder))), "--out", str(out), "--kinds", "knn,mlp", "--encoders", "transformer",
         "--prompt-tokens-grid", "64,128", "--k-grid", "2,8", "--folds", "2", "--mlp-hidden", "8",
         "--mlp-weight-decay", "0.01,0.1", "--mlp-ensemble", "1", "--mu-steps", "5", "--cache-dir", str(tmp_path / "cache"),
         "--resplits", "2", "--quiet"]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tables"]) == {"routerbench-0shot-small", "zeroeval-2024-small"}
    for folder in tables:
        results = json.loads((out / f"{folder.name}.json").read_text())
        assert (out / f"{folder.name}.png").read_bytes()[:4] == b"\x89PNG"
        assert results["data"]["n_prompts"] == 12 and results["data"]["table"] == folder.name
        chosen = results["benchmark"]["training_reports"]["prompt_tokens"]
        assert set(chosen["grid"]) == {"64", "128"} and results["benchmark"]["max_prompt_tokens"] == chosen["chosen"]
        assert len(results["benchmark"]["training_reports"]["carrot-mlp"]["selection"]["grid"]) == 2
        for name in ("carrot-knn", "carrot-mlp"):
            entry = results["routers"][name]
            assert set(entry["cost_prediction"]["per_model"]) == set(results["data"]["models"])
            assert entry["aiq_lost_to_cost_prediction"] == pytest.approx(entry["oracle_cost"]["aiq"] - entry["aiq"])
            row = summary["tables"][folder.name]["rows"][name]
            assert row["aiq"] == pytest.approx(entry["aiq"])
        assert {"carrot-knn-reference", "routerbench", "random"} <= set(results["baselines"])
        resplits = results["resplits"]  # the kNN on fresh re-splits of the pooled 42 prompts, and on the table's own
        assert [row["seed"] for row in resplits["splits"]] == [0, 1] and resplits["data"]["n_prompts"] == 42
        assert resplits["own_split"]["aiq"] == pytest.approx(results["routers"]["carrot-knn"]["aiq"], abs=0.02)
        assert summary["tables"][folder.name]["resplits"]["splits"] == 2


def test_benchmark_chooses_the_static_encoders_prompt_tokens_by_its_own_out_of_fold_aiq(tmp_path):
    folder = _small_copy("routerbench-0shot", tmp_path / "rb-small", 30, 12)
    out, routers = tmp_path / "results.json", tmp_path / "routers"
    code = benchmark_main(
        ["--data", str(folder), "--out", str(out), "--kinds", "knn", "--encoders", "static", "--prompt-tokens-grid", "16,64",
         "--k-grid", "2,8", "--folds", "2", "--mu-steps", "5", "--no-baselines", "--routers-dir", str(routers), "--resplits", "0",
         "--quiet"]
    )
    assert code == 0
    results = json.loads(out.read_text())
    report = results["benchmark"]["training_reports"]["static_prompt_tokens"]
    assert set(report["grid"]) == {"16", "64"}
    best = max(report["grid"].values(), key=lambda row: row["aiq"])["aiq"]
    assert report["grid"][str(report["chosen"])]["aiq"] == best
    assert results["benchmark"]["static_max_prompt_tokens"] == report["chosen"]
    config = json.loads((routers / "static-knn" / "config.json").read_text())
    assert config["encoder_kind"] == "static" and config["max_prompt_tokens"] == report["chosen"]
