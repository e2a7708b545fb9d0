"""The re-split evaluation: pooling a table's splits, fresh per-task splits, and the spread it reports."""

import json

import numpy as np
import pytest

from carrot_hub.data import load_routing_table
from carrot_hub.data.packaged import resolve_table_source
from carrot_hub.data.routing_table import RoutingTable
from tests.conftest import make_tiny_table
from training.evaluation.resplit import main as resplit_main
from training.evaluation.resplit import pooled_table, rank_of_own_split, resplit_rows, summarize_resplits


def test_concatenate_joins_rows_in_order_and_aligns_columns():
    first = make_tiny_table(seed=0)
    second = make_tiny_table(seed=1)
    second.prompt_ids = [f"other-{i}" for i in second.prompt_ids]
    second = second.select_models(list(reversed(second.models)))
    joined = RoutingTable.concatenate([first, second])
    assert len(joined) == len(first) + len(second) and joined.models == first.models and joined.split is None
    assert joined.prompts[len(first):] == second.prompts
    np.testing.assert_array_equal(joined.scores[len(first):], second.select_models(first.models).scores)
    np.testing.assert_array_equal(joined.output_tokens[: len(first)], first.output_tokens)


def test_concatenate_refuses_shared_prompts_and_different_models():
    table = make_tiny_table()
    with pytest.raises(ValueError, match="share prompt ids"):
        RoutingTable.concatenate([table, table])
    other = table.select_models(table.models[:-1])
    other.prompt_ids = [f"other-{i}" for i in other.prompt_ids]
    with pytest.raises(ValueError, match="different models"):
        RoutingTable.concatenate([table, other])


def test_resplit_rows_hold_out_each_task_by_the_fraction_and_follow_the_seed():
    tasks = ["a"] * 100 + ["b"] * 40
    train, test = resplit_rows(tasks, 0.3, seed=3)
    assert set(train).isdisjoint(test) and len(train) + len(test) == 140
    assert sum(tasks[i] == "a" for i in test) == 30 and sum(tasks[i] == "b" for i in test) == 12
    again = resplit_rows(tasks, 0.3, seed=3)
    np.testing.assert_array_equal(test, again[1])
    assert not np.array_equal(test, resplit_rows(tasks, 0.3, seed=4)[1])


def test_summary_reports_the_mean_spread_and_win_share():
    rows = [
        {"aiq": 0.9 + d, "zero_router_aiq": 0.9, "aiq_minus_zero_router": d, "quality_mu0": 0.8, "task_oracle_aiq": 0.91,
         "best_single": {"quality": 0.81}, "cost_to_match_best": c}
        for d, c in ((0.01, 0.5), (-0.002, None), (0.004, 0.7), (0.006, 0.9))
    ]
    summary = summarize_resplits(rows)
    gap = summary["aiq_minus_zero_router"]
    assert gap["mean"] == pytest.approx(0.0045) and gap["share_above_zero"] == 0.75
    assert gap["standard_error"] == pytest.approx(np.std([0.01, -0.002, 0.004, 0.006], ddof=1) / 2)
    assert gap["ci95_of_mean"][0] < gap["mean"] < gap["ci95_of_mean"][1]
    assert summary["best_single_reached_share"] == 0.75 and summary["cost_to_match_best_median"] == pytest.approx(0.7)
    assert summary["quality_mu0_minus_best_single_mean"] == pytest.approx(-0.01)
    assert summary["task_oracle_aiq_mean"] == pytest.approx(0.91)
    assert rank_of_own_split({"aiq_minus_zero_router": 0.005}, rows) == 0.5


def test_pooled_table_joins_the_splits_and_pools_a_repeated_prompt_once():
    train, test, pooled, kept = pooled_table(resolve_table_source("zeroeval-2024"))
    assert (len(train), len(test), len(pooled), len(kept)) == (1483, 636, 2119, 636)
    assert pooled.prompt_ids == train.prompt_ids + test.prompt_ids
    train, test, pooled, kept = pooled_table(resolve_table_source("routerbench-0shot"))
    repeated = set(train.prompt_ids) & set(test.prompt_ids)  # the slice has a few prompts in both splits
    assert len(repeated) > 0 and len(pooled) == len(train) + len(test) - len(repeated)
    assert len(set(pooled.prompt_ids)) == len(pooled) and (len(train), len(test)) == (2225, 953)
    assert [test.prompt_ids[i] for i in kept] == pooled.prompt_ids[len(train):]


def test_resplit_command_scores_the_own_split_as_training_would(tmp_path, capsys):
    """End to end on the packaged ZeroEval table with the static encoder (seconds); the own split's row
    is the router trained on the train split and scored on the test split, as `training.evaluation.evaluate` does."""
    out = tmp_path / "resplits.json"
    code = resplit_main(["--data", "zeroeval-2024", "--encoder", "static", "--splits", "2", "--k-grid", "64,384",
                         "--mu-steps", "101", "--quiet", "--out", str(out)])
    assert code == 0
    results = json.loads(out.read_text())
    assert [row["seed"] for row in results["splits"]] == [0, 1]
    assert all(row["n_test"] == 636 and row["n_train"] == 1483 for row in results["splits"])
    assert results["data"]["test_fraction"] == pytest.approx(636 / 2119)
    own = results["own_split"]
    assert own["seed"] == "own" and 0.85 < own["aiq"] < 0.95 and 0.85 < own["zero_router_aiq"] < 0.95
    assert own["aiq_minus_zero_router"] == pytest.approx(own["aiq"] - own["zero_router_aiq"])
    assert own["task_oracle_aiq"] >= own["zero_router_aiq"]  # two tasks: routing by task can only add
    assert results["splits"][0]["zero_router_aiq"] != pytest.approx(own["zero_router_aiq"])  # another test part
    assert results["router"]["max_prompt_tokens"] == 256  # the packaged table's default router's cut
    assert "AIQ − zero router: mean" in capsys.readouterr().out

    # the own split again, through the ordinary train-then-evaluate path
    import carrot_hub
    from training.evaluation.evaluate import evaluate_router
    from training.knn import train_knn_router

    source = resolve_table_source("zeroeval-2024")
    train, test = load_routing_table(source, split="train"), load_routing_table(source, split="test")
    router, _ = train_knn_router(train, k_grid=(64, 384), progress=False, encoder_kind="static",
                                 max_prompt_tokens=256, truncation_side="left")
    assert isinstance(router, carrot_hub.CarrotRouter)
    direct = evaluate_router(router, test, mu_grid=np.linspace(0, 1, 101))
    assert direct["routers"]["carrot"]["aiq"] == pytest.approx(own["aiq"], abs=1e-9)
    assert direct["zero_router"]["aiq"] == pytest.approx(own["zero_router_aiq"], abs=1e-9)


def test_resplit_command_refuses_bad_options_before_any_work(tmp_path, capsys):
    assert resplit_main(["--splits", "1"]) == 2
    assert "--splits must be at least 2" in capsys.readouterr().err
    assert resplit_main(["--test-fraction", "1.5"]) == 2
    assert "--test-fraction" in capsys.readouterr().err
    taken = tmp_path / "r.json"
    taken.write_text("{}")
    assert resplit_main(["--out", str(taken)]) == 2
    assert "--overwrite" in capsys.readouterr().err and taken.read_text() == "{}"
    assert resplit_main(["--data", "no-such-table"]) == 2
    assert "routerbench-0shot" in capsys.readouterr().err  # the packaged names are listed


def test_resplit_refuses_a_table_whose_prices_miss_a_model(tmp_path, capsys):
    import shutil

    from carrot_hub.data.packaged import packaged_table_dir

    folder = tmp_path / "zeroeval-unpriced"
    shutil.copytree(packaged_table_dir("zeroeval-2024"), folder, ignore=shutil.ignore_patterns("*.safetensors"))
    prices = json.loads((folder / "prices.json").read_text())
    del prices["prices"]["Qwen2-72B-Instruct"]
    (folder / "prices.json").write_text(json.dumps(prices))
    assert resplit_main(["--data", str(folder), "--splits", "2", "--quiet"]) == 2
    assert "do not cover Qwen2-72B-Instruct" in capsys.readouterr().err
