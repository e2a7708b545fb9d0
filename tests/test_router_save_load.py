"""Save → load round trips (registered classes and remote code) and damaged router folders."""

import ast
import json
import shutil

import pytest
import torch
from transformers import AutoModel

from carrot_hub import CarrotRouter
from carrot_hub.building import new_router
from carrot_hub.hub_code import PACKAGE_DIR, code_files, package_code_files

from .conftest import TINY_MODELS, TINY_PRICES, TINY_PROMPTS
from .hidden_package import run_without_carrot_hub

HUB_FILES = {
    "config.json",
    *package_code_files(),
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}


def test_the_code_files_are_the_entry_files_and_every_sibling_they_import():
    code = set(package_code_files())
    assert {"configuration_carrot.py", "modeling_carrot.py", "decision_carrot.py", "knn_memory_carrot.py"} <= code
    # Every flat sibling in the package is reached by the imports: none is shipped by accident or left behind.
    assert code == {path.name for path in PACKAGE_DIR.glob("*_carrot.py")}


def test_save_writes_code_weights_tokenizer_and_auto_map(saved_knn_router):
    assert HUB_FILES <= {p.name for p in saved_knn_router.iterdir()}
    assert code_files(saved_knn_router) == (sorted(package_code_files()), [])
    config = json.loads((saved_knn_router / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_carrot.CarrotConfig",
        "AutoModel": "modeling_carrot.CarrotRouter",
    }
    assert config["model_type"] == "carrot"
    assert config["candidate_models"] == TINY_MODELS
    assert not list(saved_knn_router.glob("*.bin")) and not list(saved_knn_router.glob("*.pt"))


def test_hub_files_import_nothing_from_the_package(saved_knn_router):
    code = package_code_files()
    siblings = {name.removesuffix(".py") for name in code}
    for name in code:
        tree = ast.parse((saved_knn_router / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(alias.name.startswith("carrot_hub") for alias in node.names)
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("carrot_hub"), name
                if node.level:  # relative imports: only flat siblings (`from .x import`, one level)
                    assert node.level == 1 and node.module in siblings, name


def test_automodel_round_trip_gives_identical_predictions_and_decisions(knn_router, saved_knn_router):
    loaded = AutoModel.from_pretrained(saved_knn_router)
    assert isinstance(loaded, CarrotRouter)
    for mu in (0.0, 0.5, 1.0):
        before, after = knn_router.route(TINY_PROMPTS, mu=mu), loaded.route(TINY_PROMPTS, mu=mu)
        assert torch.equal(before.quality, after.quality)
        assert torch.equal(before.output_tokens, after.output_tokens)
        assert before.models == after.models


def test_mlp_router_round_trip(tmp_path, tiny_table):
    router = new_router(TINY_MODELS, TINY_PRICES, predictor_kind="mlp", head_hidden_size=16, cost_scale=1e-3)
    router.save_pretrained(tmp_path / "mlp")
    loaded = AutoModel.from_pretrained(tmp_path / "mlp")
    assert torch.equal(router.predict(TINY_PROMPTS).quality, loaded.predict(TINY_PROMPTS).quality)


def test_remote_code_in_a_process_without_carrot_hub(knn_router, saved_knn_router, tmp_path):
    result = run_without_carrot_hub(
        f"""
        import json
        from transformers import AutoModel
        router = AutoModel.from_pretrained({str(saved_knn_router)!r}, trust_remote_code=True)
        decisions = {{str(mu): router.route({TINY_PROMPTS!r}, mu=mu) for mu in (0.0, 0.5, 1.0)}}
        print(json.dumps({{
            "module": type(router).__module__,
            "models": {{mu: d.models for mu, d in decisions.items()}},
            "quality": decisions["0.5"].quality.tolist(),
        }}))
        """,
        cwd=tmp_path,
    )
    assert not result["module"].startswith("carrot_hub")
    for mu in (0.0, 0.5, 1.0):
        assert result["models"][str(mu)] == knn_router.route(TINY_PROMPTS, mu=mu).models
    assert torch.equal(torch.tensor(result["quality"]), knn_router.route(TINY_PROMPTS, mu=0.5).quality)


def test_set_prices_then_save_changes_routing_permanently(saved_knn_router, tmp_path):
    router = AutoModel.from_pretrained(saved_knn_router)
    router.set_prices({"small-model": {"input": 50.0, "output": 50.0}}, recorded_on="2026-11-27")
    router.save_pretrained(tmp_path / "repriced")
    reloaded = AutoModel.from_pretrained(tmp_path / "repriced")
    assert reloaded.config.prices["small-model"] == {"input": 50.0, "output": 50.0}
    assert reloaded.config.prices_recorded_on == "2026-11-27"
    assert "small-model" not in reloaded.route(TINY_PROMPTS, mu=1.0).models


@pytest.fixture
def router_copy(saved_knn_router, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(saved_knn_router, folder)
    return folder


def test_truncated_weights_file_gives_a_clear_error(router_copy):
    weights = router_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(OSError, match="model.safetensors.*corrupted or truncated"):
        AutoModel.from_pretrained(router_copy)


def test_garbage_weights_file_gives_a_clear_error(router_copy):
    (router_copy / "model.safetensors").write_bytes(b"\x00not a safetensors file at all")
    with pytest.raises(OSError, match="model.safetensors.*corrupted or truncated"):
        AutoModel.from_pretrained(router_copy)


def test_price_table_that_does_not_match_the_heads_is_refused(router_copy):
    config = json.loads((router_copy / "config.json").read_text())
    config["candidate_models"].append("extra-model")
    config["input_price_per_million"].append(1.0)
    config["output_price_per_million"].append(1.0)
    (router_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match its config.json|predicts 3 candidates"):
        AutoModel.from_pretrained(router_copy)


def test_price_list_of_the_wrong_length_is_refused(router_copy):
    config = json.loads((router_copy / "config.json").read_text())
    config["input_price_per_million"] = [1.0]
    (router_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="input_price_per_million has 1 entries but there are 3"):
        AutoModel.from_pretrained(router_copy)


def test_negative_price_in_config_is_refused(router_copy):
    config = json.loads((router_copy / "config.json").read_text())
    config["output_price_per_million"][1] = -2.0
    (router_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="output_price_per_million of 'mid-model'"):
        AutoModel.from_pretrained(router_copy)
