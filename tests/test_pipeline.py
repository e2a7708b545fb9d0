"""The transformers pipeline "llm-routing"."""

import pytest
from transformers import pipeline

import carrot_hub  # noqa: F401  (registers the task)
from carrot_hub.pipeline import LLMRoutingPipeline

from .conftest import TINY_PROMPTS


@pytest.fixture(scope="module")
def pipe(saved_knn_router):
    return pipeline("llm-routing", model=str(saved_knn_router), device="cpu")


def test_pipeline_from_folder_matches_route(pipe, knn_router):
    assert isinstance(pipe, LLMRoutingPipeline)
    for mu in (0.0, 0.5, 1.0):
        expected = knn_router.route(TINY_PROMPTS, mu=mu)
        for batch_size in (1, 4):  # batched through the pipeline's padding collate
            results = pipe(TINY_PROMPTS, mu=mu, batch_size=batch_size)
            assert [r["model"] for r in results] == expected.models
            for row, result in enumerate(results):
                assert result["mu"] == mu
                assert result["cost"] == pytest.approx(float(expected.chosen_cost[row]), rel=1e-5)
                assert result["input_tokens"] == int(expected.input_tokens[row])
                for col, name in enumerate(expected.candidate_models):
                    assert result["predictions"][name]["quality"] == pytest.approx(float(expected.quality[row, col]), abs=1e-5)


def test_pipeline_call_arguments_and_router_instance(knn_router):
    pipe = pipeline("llm-routing", model=knn_router)
    free_big = {"big-model": {"input": 0.0, "output": 0.0}}
    result = pipe(TINY_PROMPTS[0], mu=0.9, prices=free_big)
    assert isinstance(result, dict)
    assert result["model"] == knn_router.route([TINY_PROMPTS[0]], mu=0.9, prices=free_big).models[0] == "big-model"
    assert pipe(TINY_PROMPTS[0], mu=0.0, allowed=["small-model"])["model"] == "small-model"
    capped = pipe(TINY_PROMPTS[0], mu=0.0, max_cost=1e-4)
    assert capped["cost"] <= 1e-4


def test_pipeline_bad_arguments(knn_router):
    pipe = pipeline("llm-routing", model=knn_router)
    with pytest.raises(ValueError, match="mu must be in"):
        pipe("hello", mu=2)
    with pytest.raises(ValueError, match="not a candidate"):
        pipe("hello", prices={"nope": {"input": 1, "output": 1}})
    with pytest.raises(TypeError, match="unexpected arguments"):
        pipe("hello", temperature=0.3)


def test_pipeline_with_a_static_router_flags_the_fallback(static_knn_router):
    prompts = [TINY_PROMPTS[0], "☃ 🥕"]
    pipe = pipeline("llm-routing", model=static_knn_router)
    outputs = pipe(prompts, mu=0.5)
    expected = static_knn_router.route(prompts, mu=0.5)
    assert [o["model"] for o in outputs] == expected.models
    assert [o["fallback_embedding"] for o in outputs] == [False, True]
    assert outputs[0]["quality"] == pytest.approx(float(expected.chosen_quality[0]), abs=1e-6)
