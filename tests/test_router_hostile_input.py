"""Hostile numbers, shapes and folders against the router: refused with a clear error, never a
silently wrong decision (the adversarial audit of issue 15, items 4-7, 11 and 12)."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import pipeline

import carrot_hub.encoder_carrot as encoder_carrot
import carrot_hub.modeling_carrot as modeling
from carrot_hub import CarrotRouter
from carrot_hub.configuration_carrot import CarrotConfig
from carrot_hub.modeling_carrot import CarrotKNNMemory, choose_candidates

from .conftest import TINY_MODELS, TINY_PROMPTS


def _copy(folder, tmp_path):
    copy = tmp_path / "router"
    shutil.copytree(folder, copy)
    return copy


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


# ------------------------------------------------------------------ 4: numbers that overflow


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"input_price_per_million": [1e40, 1.0]}, "input_price_per_million of 'a'"),
        ({"output_price_per_million": [1.0, math.inf]}, "output_price_per_million of 'b'"),
        ({"cost_scale": 1e-45}, "cost_scale"),
        ({"output_tokens_floor": math.nan}, "output_tokens_floor"),
        ({"output_tokens_floor": math.inf}, "output_tokens_floor"),
    ],
)
def test_config_refuses_numbers_that_would_overflow_the_utility(fields, named):
    base = {"candidate_models": ["a", "b"], "input_price_per_million": [1.0, 1.0], "output_price_per_million": [1.0, 1.0]}
    with pytest.raises(ValueError, match=named):
        CarrotConfig(**{**base, **fields})


def test_loading_a_config_with_absurd_numbers_fails(saved_knn_router, tmp_path):
    folder = _copy(saved_knn_router, tmp_path)
    _edit_config(folder, input_price_per_million=[1e40, 1.0, 0.1])
    with pytest.raises(ValueError, match="input_price_per_million of 'big-model'"):
        CarrotRouter.from_pretrained(folder)


def test_huge_costs_never_make_the_utility_nan():
    quality = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    cost = torch.tensor([[1e-3, 1e40], [1e-3, 1e-3]], dtype=torch.float64)  # column 1 astronomically dear on row 0
    for mu in (0.0, 0.5):
        indices, utility, _ = choose_candidates(quality, cost, mu, cost_scale=1e-30)
        assert not torch.isnan(utility).any()
        assert indices.tolist() == [0, 1 if mu == 0 else 0]
    sweep, utility, _ = choose_candidates(quality, cost, torch.tensor([0.0, 0.5, 1.0]), cost_scale=1e-30)
    assert not torch.isnan(utility).any() and sweep[0].tolist() == [0, 1]


def test_nan_predictions_are_an_error_not_a_choice():
    quality = torch.tensor([[0.5, math.nan]])
    with pytest.raises(ValueError, match="prompt 0 are not numbers"):
        choose_candidates(quality, torch.zeros(1, 2, dtype=torch.float64), 0.0, cost_scale=1.0)


# ------------------------------------------------------------- 5: folders missing a part


def test_missing_tokenizer_json_is_a_load_error(saved_knn_router, tmp_path):
    folder = _copy(saved_knn_router, tmp_path)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(OSError, match="tokenizer.json"):
        CarrotRouter.from_pretrained(folder)


def test_config_without_its_price_table_is_a_load_error(saved_knn_router, tmp_path):
    folder = _copy(saved_knn_router, tmp_path)
    _edit_config(folder, input_price_per_million=None)
    with pytest.raises(ValueError, match="config.json.*input_price_per_million"):
        CarrotRouter.from_pretrained(folder)


def test_predictor_kind_that_disagrees_with_the_weights_is_a_load_error(saved_knn_router, tmp_path):
    folder = _copy(saved_knn_router, tmp_path)
    _edit_config(folder, predictor_kind="mlp")
    with pytest.raises(ValueError, match="predictor_kind='mlp'.*model.safetensors.*'knn' predictor"):
        CarrotRouter.from_pretrained(folder)


# ------------------------------------------------- 6: input tokens that cannot be gamed


def test_a_prompt_without_spaces_counts_its_bytes(knn_router):
    prompt = "x" * 1_000_000
    decision = knn_router.route([prompt], mu=0.0, max_cost=0.001)
    assert int(decision.input_tokens[0]) >= 1_000_000 // modeling.MAX_BYTES_PER_TOKEN
    assert decision.models != ["big-model"]  # 125,000 tokens at $10/M is over the $0.001 budget


def test_ordinary_prompts_keep_the_tokenizers_exact_count(knn_router):
    decision = knn_router.route(TINY_PROMPTS, mu=0.5)
    exact = [len(knn_router.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in TINY_PROMPTS]
    assert decision.input_tokens.tolist() == exact


@pytest.mark.parametrize("prompt", ["\u200b\u200b\u200b", "\x00\x00", "\u2060\ufeff \t\n", "\u00a0\u3000"])
def test_prompts_without_content_are_empty(knn_router, prompt):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        knn_router.route(["hello", prompt])


# ------------------------------------------------------ 7: empty pipeline input, NaN memory


def test_pipeline_refuses_the_empty_prompt_route_refuses(knn_router):
    pipe = pipeline("llm-routing", model=knn_router)
    for prompt in ("", "   ", "\u200b"):
        with pytest.raises(ValueError, match="empty"):
            pipe(prompt)


def test_nan_in_a_saved_knn_memory_is_refused_on_load(saved_knn_router, tmp_path):
    folder = _copy(saved_knn_router, tmp_path)
    weights = load_file(folder / "model.safetensors")
    weights["predictor.quality"][0, 1] = math.nan
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="NaN or infinite values in predictor.quality"):
        CarrotRouter.from_pretrained(folder)


def test_knn_fill_refuses_non_finite_embeddings():
    config = CarrotConfig(candidate_models=["a"], input_price_per_million=[1.0], output_price_per_million=[1.0])
    memory = CarrotKNNMemory(config, embedding_size=4)
    embeddings = torch.ones(2, 4)
    embeddings[1, 0] = math.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        memory.fill(embeddings, torch.ones(2, 1), torch.ones(2, 1))


# -------------------------------------------------------------- 11: longer than the encoder


def test_max_prompt_tokens_beyond_the_encoders_positions_is_refused(knn_router):
    encoder_config = knn_router.config.encoder_config
    assert encoder_config["max_position_embeddings"] == 512
    with pytest.raises(ValueError, match="max_prompt_tokens = 600 .* 512 positions"):
        CarrotConfig(candidate_models=[], encoder_config=encoder_config, max_prompt_tokens=600)
    CarrotConfig(candidate_models=[], encoder_config=encoder_config, max_prompt_tokens=512)


# ------------------------------------------------- 12: numpy numbers, foreign predictions


def test_numpy_scalars_are_accepted_everywhere_numbers_are(knn_router):
    # Values a float32 holds exactly, so that both calls see the same numbers.
    expected = knn_router.route(TINY_PROMPTS[:3], mu=0.25, prices={"small-model": {"input": 0.25, "output": 3.0}},
                                max_cost=0.0625, batch_size=2)
    decision = knn_router.route(TINY_PROMPTS[:3], mu=np.float32(0.25),
                                prices={"small-model": {"input": np.float32(0.25), "output": np.int64(3)}},
                                max_cost=np.float32(0.0625), batch_size=np.int64(2))
    assert decision.models == expected.models and decision.prices == expected.prices
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        knn_router.route(TINY_PROMPTS[:1], batch_size=np.float64(2.0))
    with pytest.raises(ValueError, match="max_cost must be"):
        knn_router.route(TINY_PROMPTS[:1], max_cost=np.bool_(True))


def test_decide_refuses_another_routers_predictions(knn_router):
    predictions = knn_router.predict(TINY_PROMPTS[:2])
    renamed = modeling.PromptPredictions(predictions.quality, predictions.output_tokens, predictions.input_tokens,
                                         predictions.truncated, candidate_models=["x", "y", "z"])
    with pytest.raises(ValueError, match=r"made by a router with candidates \['x', 'y', 'z'\]"):
        knn_router.decide(renamed)
    narrower = modeling.PromptPredictions(predictions.quality[:, :2], predictions.output_tokens[:, :2],
                                          predictions.input_tokens, predictions.truncated)
    with pytest.raises(ValueError, match=r"needs \(batch, 3\)"):
        knn_router.decide(narrower)
    assert knn_router.decide(predictions).candidate_models == TINY_MODELS


# --------------------------------------------------------- memory: tokenized chunk by chunk


def test_encode_tokenizes_chunk_by_chunk_with_the_same_results(knn_router, monkeypatch):
    prompts = [f"{p} ({i})" for i, p in enumerate(TINY_PROMPTS * 2)]
    whole = knn_router.encode(prompts, batch_size=4)
    sizes = []
    tokenize = knn_router.prompt_encoder.tokenize

    def spy(router, chunk):
        sizes.append(len(chunk))
        return tokenize(router, chunk)

    monkeypatch.setattr(encoder_carrot, "TOKENIZE_CHUNK_PROMPTS", 5)
    monkeypatch.setattr(knn_router.prompt_encoder, "tokenize", spy)
    chunked = knn_router.encode(prompts, batch_size=4)
    assert sizes == [5, 5, 2]
    torch.testing.assert_close(chunked.embeddings, whole.embeddings)
    assert torch.equal(chunked.input_tokens, whole.input_tokens) and chunked.truncated == whole.truncated
