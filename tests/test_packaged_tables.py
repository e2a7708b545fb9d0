"""The routing tables shipped in the package: their copies, the default router of each, and mixing errors."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import carrot_hub
from carrot_hub.cli import main as carrot_main
from carrot_hub.data import load_routing_table
from carrot_hub.data.packaged import (
    DEFAULT_TABLE,
    EMBEDDINGS_FILENAME,
    packaged_table_dir,
    packaged_table_models,
    packaged_tables,
    read_caveats,
    resolve_table_source,
)
from carrot_hub.default import build_default_router, default_cache_dir, default_router, new_default_router
from carrot_hub.embedding_cache import embeddings_key, load_embeddings
from model_card.build import build_model_card
from training.evaluation.evaluate import router_curve

from .shared_data import require_shared_data

ZEROEVAL = "zeroeval-2024"


@pytest.fixture(scope="module")
def zeroeval_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache") / "zeroeval-router"
    build_default_router(folder, progress=False, data=ZEROEVAL)
    return folder


def test_both_tables_are_packaged_with_card_prices_and_licences():
    assert packaged_tables()[0] == DEFAULT_TABLE and ZEROEVAL in packaged_tables()
    folder = packaged_table_dir(ZEROEVAL)
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "## Licences" in card and "Apache-2.0" in card and "## Caveats" in card
    prices = json.loads((folder / "prices.json").read_text())
    assert "litellm" in prices["source"] and prices["recorded_on"]
    assert len(packaged_table_models(ZEROEVAL)) == 21
    assert any("gemma-2-27b-it" in caveat for caveat in read_caveats(folder))


def test_zeroeval_copy_holds_the_same_rows_as_its_source():
    shared_zeroeval = require_shared_data(ZEROEVAL)
    for split in ("train", "test"):
        name = f"data/{split}-00000-of-00001.parquet"
        copy, source = pq.read_table(packaged_table_dir(ZEROEVAL) / name), pq.read_table(shared_zeroeval / name)
        assert copy.to_pylist() == source.to_pylist()
    assert (packaged_table_dir(ZEROEVAL) / "prices.json").read_bytes() == (shared_zeroeval / "prices.json").read_bytes()


@pytest.mark.parametrize("name", packaged_tables())
def test_shipped_embeddings_match_each_tables_default_router(name):
    router, table = new_default_router(data=name)
    shipped = load_embeddings(packaged_table_dir(name) / EMBEDDINGS_FILENAME, embeddings_key(router, table.prompts))
    assert shipped is not None, f"{name}'s {EMBEDDINGS_FILENAME} is stale: run scripts/build_default_embeddings.py --data {name}"
    assert shipped.shape == (len(table), 384)
    sample = [0, len(table) // 2, len(table) - 1]
    fresh = router.encode([table.prompts[i] for i in sample]).embeddings
    torch.testing.assert_close(fresh, shipped[sample], atol=1e-5, rtol=1e-4)


def test_zeroeval_default_router_routes_with_its_own_models_and_card(zeroeval_folder):
    router = default_router(cache_dir=zeroeval_folder, data=ZEROEVAL, dtype="float32")
    assert router.config.candidate_models == packaged_table_models(ZEROEVAL)
    assert router.config.knn_memory_size == len(load_routing_table(str(packaged_table_dir(ZEROEVAL)), split="train"))
    prompts = ["Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
               "How many clips did Natalia sell altogether in April and May?"]
    best, cheapest = router.route(prompts, mu=0.0), router.route(prompts, mu=1.0)
    assert best.chosen_cost.item() > cheapest.chosen_cost.item()
    card = build_model_card(router)
    assert "ZeroEval" in card and "litellm" in card and router.config.prices_recorded_on in card
    assert "gemma-2-27b-it's only listed price" in card and "o1-mini" in card


def test_zeroeval_default_router_shrinks_quality_toward_the_prior_by_its_out_of_fold_choice(zeroeval_folder):
    from carrot_hub.prior_shrinkage import PRIOR_SHRINK_GRID

    router = default_router(cache_dir=zeroeval_folder, data=ZEROEVAL, dtype="float32")
    # chosen at build on the train split: out-of-fold AIQ 0.9317 at 0.05 against 0.9304 without
    assert router.config.prior_shrink in PRIOR_SHRINK_GRID and router.config.prior_shrink > 0


def test_unknown_table_name_lists_the_packaged_ones(tmp_path, capsys):
    with pytest.raises(ValueError, match="routerbench-0shot, zeroeval-2024"):
        carrot_hub.default_router(cache_dir=tmp_path / "r", data="zeroeval")
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="zeroeval-2024"):
        resolve_table_source("zero-eval")
    assert carrot_main(["route", "--data", "zeroeval", "--no-progress", "hi"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "routerbench-0shot, zeroeval-2024" in error
    assert carrot_main(["route", "--data", ZEROEVAL, "--model", str(tmp_path), "hi"]) == 2


def test_carrot_route_with_data_uses_that_tables_router(zeroeval_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CARROT_HUB_CACHE", str(tmp_path / "hub-cache"))
    shutil.copytree(zeroeval_folder, default_cache_dir(data=ZEROEVAL))  # built once by the fixture
    code = carrot_main(["route", "--data", ZEROEVAL, "--format", "jsonl", "--no-progress", "--dtype", "float32", "--mu", "0.2",
                        "What is 17 * 23? Show your reasoning."])
    assert code == 0
    chosen = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert chosen["model"] in packaged_table_models(ZEROEVAL)


def test_a_cached_router_of_the_other_table_is_refused(zeroeval_folder):
    with pytest.raises(ValueError, match=r"trained on ZeroEval.*not on the packaged table 'routerbench-0shot'"):
        default_router(cache_dir=zeroeval_folder, data=DEFAULT_TABLE, dtype="float32")


def test_evaluating_a_router_on_the_other_tables_data_names_the_mismatch(zeroeval_folder):
    router = default_router(cache_dir=zeroeval_folder, data=ZEROEVAL, dtype="float32")
    routerbench_test = load_routing_table(str(packaged_table_dir(DEFAULT_TABLE)), split="test").subset(np.arange(5))
    with pytest.raises(ValueError, match=r"trained on ZeroEval.*routerbench-0shot.*only in the router: \['claude-3-5-haiku"):
        router_curve(router, routerbench_test, np.linspace(0, 1, 3))


def test_a_table_whose_prices_miss_a_model_is_refused_naming_it(tmp_path, capsys):
    folder = tmp_path / "zeroeval-unpriced"
    shutil.copytree(packaged_table_dir(ZEROEVAL), folder, ignore=shutil.ignore_patterns("*.safetensors"))
    prices = json.loads((folder / "prices.json").read_text())
    del prices["prices"]["Qwen2-72B-Instruct"]
    (folder / "prices.json").write_text(json.dumps(prices))
    from training.evaluation.benchmark import main as benchmark_main

    code = benchmark_main(["--data", str(folder), "--out", str(tmp_path / "out.json"), "--kinds", "knn", "--resplits", "0", "--quiet"])
    assert code == 2
    error = capsys.readouterr().err
    assert "do not cover Qwen2-72B-Instruct" in error and "zeroeval-unpriced" in error
    assert not (tmp_path / "out.json").exists()


def test_benchmark_refuses_an_unknown_table_name(tmp_path, capsys):
    from training.evaluation.benchmark import main as benchmark_main

    assert benchmark_main(["--data", "zeroeval", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "routerbench-0shot, zeroeval-2024" in capsys.readouterr().err
    assert benchmark_main(["--out", str(tmp_path / "one.json"), "--quiet"]) == 2  # two tables, one file
    assert "give a folder" in capsys.readouterr().err


def test_read_caveats_takes_the_bullets_of_its_section(tmp_path):
    (tmp_path / "README.md").write_text(
        "# T\n\n## Prices\n- not a caveat\n\n## Caveats\n\nIntro line.\n\n- first\n  continued\n* second\n\n## Next\n- no\n"
    )
    assert read_caveats(tmp_path) == ["first continued", "second"]
    assert read_caveats(tmp_path / "absent") == []
