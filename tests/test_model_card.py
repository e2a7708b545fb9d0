"""The model card: built from template.md, with metadata huggingface_hub parses and the Hub reads."""

import json

import pytest
from huggingface_hub import ModelCard, ModelCardData

from carrot_hub import CarrotConfig
from model_card.build import build_model_card
from model_card.build import TEMPLATE_PATH

EVAL = {
    "split": "test",
    "dataset": "withmartian/routerbench",
    "data": {"n_prompts": 953},
    "routers": {"carrot-knn": {"aiq": 0.8, "quality_mu0": 0.86, "cost_to_match_best": None}},
    "best_single": {"model": "gpt-4", "quality": 0.88, "cost": 0.005},
    "zero_router": {"aiq": 0.78, "quality_mu0": 0.88},
}


@pytest.fixture
def config():
    return CarrotConfig(
        candidate_models=["gpt-4", "cheap-model"],
        input_price_per_million=[10.0, 0.2],
        output_price_per_million=[30.0, 0.2],
        prices_recorded_on="2024-03-01",
        encoder_name="sentence-transformers/all-MiniLM-L6-v2",
        training_data="RouterBench zero-shot (ARC-Challenge, MBPP, Winogrande), train split",
        knn_memory_size=2225,
    )


def test_metadata_round_trips_through_huggingface_hub(config):
    text = build_model_card(config, eval_results=EVAL, repo_id="org/router", plot_filename="cost_quality.png")
    card = ModelCard(text)
    data = card.data
    assert isinstance(data, ModelCardData)
    assert data.library_name == "transformers" and data.license == "mit"
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert "llm-routing" in data.tags and "predictor-knn" in data.tags
    # cost_to_match_best None (never reached) is left out of model-index rather than written as null
    assert {r.metric_type for r in data.eval_results} == {"aiq", "quality_mu0"}
    assert {r.dataset_split for r in data.eval_results} == {"test"}
    assert "953 prompts" in card.text
    # the YAML is exactly what huggingface_hub would write back
    assert ModelCard(str(card)).data.to_dict() == data.to_dict()


def test_body_tells_the_user_what_they_need(config):
    text = build_model_card(config, repo_id="org/router")
    for needed in (
        "| gpt-4 | 10 | 30 |", "recorded on **2024-03-01**", "trust_remote_code=True", "import carrot_hub",
        "What μ means", "prices={", "set_prices", "$0.001 per prompt", "Limitations", "2225",
        "RouterBench zero-shot", "Prices change",
    ):
        assert needed in text, needed
    assert "model-index" not in text and "## Evaluation" not in text  # no results, no claims


def test_card_text_lives_in_the_template():
    template = TEMPLATE_PATH.read_text()
    assert "{{ card_data }}" in template and "## Limitations" in template
    source = (TEMPLATE_PATH.parent / "build.py").read_text()
    assert "## Limitations" not in source and "trust_remote_code=True" not in source


def test_several_routers_need_a_name(config, tmp_path):
    results = dict(EVAL, routers={"knn": {"aiq": 0.8}, "mlp": {"aiq": 0.7}})
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(results))
    with pytest.raises(ValueError, match="several routers"):
        build_model_card(config, eval_results=path)
    card = ModelCard(build_model_card(config, eval_results=path, router_key="mlp"))
    assert card.data.eval_results[0].metric_value == 0.7
    with pytest.raises(FileNotFoundError, match="carrot evaluate"):
        build_model_card(config, eval_results=tmp_path / "missing.json")


def test_model_index_names_the_given_data_set_when_the_results_hold_a_local_path():
    """`carrot evaluate` writes data.source as a local folder; the card's model-index names the Hub data set instead."""
    from carrot_hub.configuration_carrot import CarrotConfig
    from model_card.build import card_metadata

    config = CarrotConfig(candidate_models=["a", "b"], input_price_per_million=[1.0, 2.0], output_price_per_million=[1.0, 2.0])
    results = {"data": {"source": "/tmp/routerbench", "split": "test"}, "routers": {"r": {"aiq": 0.8}}}
    (result,) = card_metadata(config, results, datasets=["withmartian/routerbench"]).eval_results
    assert result.dataset_type == "withmartian/routerbench" and result.dataset_split == "test"


def test_speed_advice_follows_the_encoder_kind(config):
    transformer = build_model_card(config, repo_id="org/router")
    assert "dtype=torch.bfloat16" in transformer and "Faster on CPU" in transformer
    static = CarrotConfig(**{**config.to_dict(), "encoder_kind": "static", "static_vocab_size": 100, "static_embedding_size": 8})
    text = build_model_card(static, repo_id="org/router")
    assert "static token table" in text and "tokenizing the prompt is\nmost of the work" in text
    assert "bfloat16" in text and "dtype=torch.bfloat16" not in text and "Faster on CPU" not in text


def test_card_says_when_quality_out_of_distribution_is_cautious(config):
    config.support_reference_size = 100  # a router that measures support
    config.ood_pessimism, config.ood_pessimism_support = 0.75, 0.05
    text = build_model_card(config, repo_id="org/router")
    assert "Below support 0.05 the quality is also put toward the band's lower end" in text and "(0.75 of the way" in text
    config.ood_pessimism = 0.0
    assert "band's lower end" not in build_model_card(config, repo_id="org/router")
