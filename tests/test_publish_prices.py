"""New prices without retraining: `set_prices` validates a price file, writes a new folder (or a Hub
revision) whose config and card carry the new table, with byte-identical weights."""

import json

import pytest
from huggingface_hub import ModelCard

from carrot_hub.modeling_carrot import CarrotRouter
from carrot_hub.router_publishing import PublishError, set_prices

from .hub_recorder import HubRecorder

PROMPTS = [
    "Write a python function that returns the nth Fibonacci number.",
    "Which planet is known as the red planet? A) Venus B) Mars C) Jupiter",
    "The trophy does not fit in the suitcase because _ is too big. A) trophy B) suitcase",
]


@pytest.fixture(scope="module")
def repriced(saved_knn_router, tmp_path_factory):
    """The tiny router with big-model almost free, written by set_prices from a YAML file."""
    folder = tmp_path_factory.mktemp("prices")
    price_file = folder / "prices.yaml"
    price_file.write_text("big-model:\n  input: 0.01\n  output: 0.01\nsmall-model: {output: 0.2}\n")
    out = set_prices(saved_knn_router, price_file, output_folder=folder / "cheap-big", recorded_on="2025-06-01",
                     card_date="2025-06-01")
    return out


def test_new_folder_carries_the_table_and_identical_weights(saved_knn_router, repriced):
    assert (repriced / "model.safetensors").read_bytes() == (saved_knn_router / "model.safetensors").read_bytes()
    config = json.loads((repriced / "config.json").read_text())
    original = json.loads((saved_knn_router / "config.json").read_text())
    assert config["input_price_per_million"] == [0.01, 1.0, 0.1]
    assert config["output_price_per_million"] == [0.01, 2.0, 0.2]  # mid-model untouched, small only output
    assert config["prices_recorded_on"] == "2025-06-01"
    assert config["auto_map"] == original["auto_map"]
    card = ModelCard((repriced / "README.md").read_text())
    assert "| big-model | 0.01 | 0.01 |" in card.text and "| mid-model | 1 | 2 |" in card.text
    assert "recorded on **2025-06-01**" in card.text
    assert "big-model input $10 → $0.01/M" in card.text
    # the input folder is untouched
    assert json.loads((saved_knn_router / "config.json").read_text()) == original


def test_decisions_follow_the_new_prices(saved_knn_router, repriced):
    before = CarrotRouter.from_pretrained(saved_knn_router).route(PROMPTS, mu=0.5)
    after = CarrotRouter.from_pretrained(repriced).route(PROMPTS, mu=0.5)
    assert "big-model" not in before.models
    assert after.models == ["big-model"] * len(PROMPTS)  # right on everything and now the cheapest
    assert after.prices["big-model"] == {"input": 0.01, "output": 0.01}


def test_json_file_in_the_data_sets_form(saved_knn_router, tmp_path):
    price_file = tmp_path / "prices.json"
    price_file.write_text(json.dumps({"recorded_on": "2025-07-07", "prices": {"mid-model": {"input": 0.5, "output": 1.0}}}))
    out = set_prices(saved_knn_router, price_file, output_folder=tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["prices_recorded_on"] == "2025-07-07"
    assert config["input_price_per_million"][1] == 0.5


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ({"gpt-9": {"input": 1, "output": 2}}, ".json", r"\['gpt-9'\].*Known: big-model, mid-model, small-model"),
        ({"mid-model": {"input": -1, "output": 2}}, ".json", r"input price of 'mid-model' is -1"),
        ('{"mid-model": {"input": NaN, "output": 2}}', ".json", r"input price of 'mid-model' is nan"),
        ("mid-model: {input: 1, output: .inf}", ".yaml", r"output price of 'mid-model' is inf"),
        ("mid-model: {input: 1, output: cheap}", ".yaml", r"output price of 'mid-model' is 'cheap'"),
        ({"mid-model": {"inptu": 1}}, ".json", r"'input' and/or 'output'"),
        ("{not json", ".json", r"not valid JSON"),
    ],
)
def test_invalid_price_files(saved_knn_router, tmp_path, content, suffix, message):
    price_file = tmp_path / f"prices{suffix}"
    price_file.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(PublishError, match=message):
        set_prices(saved_knn_router, price_file, output_folder=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_never_overwrites_without_being_asked(saved_knn_router, repriced, tmp_path):
    with pytest.raises(PublishError, match="already holds a router.*overwrite"):
        set_prices(saved_knn_router, {"mid-model": {"input": 0.5}}, output_folder=repriced)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("keep me")
    with pytest.raises(PublishError, match="holds no router"):  # not even with overwrite
        set_prices(saved_knn_router, {"mid-model": {"input": 0.5}}, output_folder=notes, overwrite=True)
    assert (notes / "mine.txt").read_text() == "keep me"
    with pytest.raises(PublishError, match="input router"):
        set_prices(saved_knn_router, {"mid-model": {"input": 0.5}}, output_folder=saved_knn_router)
    with pytest.raises(PublishError, match="output folder, or a Hub repo id"):
        set_prices(saved_knn_router, {"mid-model": {"input": 0.5}})


def test_publishes_a_revision_with_the_new_card(saved_knn_router, monkeypatch):
    hub = HubRecorder(monkeypatch)
    result = set_prices(saved_knn_router, {"big-model": {"input": 5.0, "output": 15.0}}, repo_id="someone/tiny-router",
                        revision="half-price-big", recorded_on="2025-06-01", check_weights=False)
    assert [call[0] for call in hub.calls] == ["create_repo", "create_branch", "create_commit"]
    assert hub.calls[2][2]["revision"] == "half-price-big"
    assert "2025-06-01" in hub.calls[2][2]["commit_message"]
    config = json.loads(hub.content("config.json"))
    assert config["input_price_per_million"][0] == 5.0 and config["output_price_per_million"][0] == 15.0
    assert hub.content("model.safetensors") == (saved_knn_router / "model.safetensors").read_bytes()
    card = ModelCard(hub.content("README.md").decode())
    assert "| big-model | 5 | 15 |" in card.text and card.data.eval_results is None
    assert result.repo_id == "someone/tiny-router"


def test_publishing_new_prices_needs_a_token_first(saved_knn_router, monkeypatch, tmp_path):
    hub = HubRecorder(monkeypatch, token=None)
    with pytest.raises(PublishError, match="hf auth login"):
        set_prices(saved_knn_router, {"big-model": {"input": 5.0}}, repo_id="someone/tiny-router")
    assert hub.calls == []
