"""route(): the decision rule, per-call overrides and bad input."""

import math

import pytest
import torch

from carrot_hub.modeling_carrot import carrot_utility, choose_candidates

from .conftest import TINY_MODELS, TINY_PROMPTS


def test_decision_shapes_and_cost_formula(knn_router):
    decision = knn_router.route(TINY_PROMPTS[:4], mu=0.3)
    assert len(decision) == 4 and decision.candidate_models == TINY_MODELS
    for tensor in (decision.quality, decision.output_tokens, decision.cost, decision.utility):
        assert tensor.shape == (4, 3)
    assert ((decision.quality >= 0) & (decision.quality <= 1)).all()
    assert (decision.output_tokens >= 0).all()
    prices = knn_router.config.prices
    p_in = torch.tensor([prices[m]["input"] for m in TINY_MODELS])
    p_out = torch.tensor([prices[m]["output"] for m in TINY_MODELS])
    expected = (decision.input_tokens[:, None] * p_in + decision.output_tokens * p_out) / 1e6
    assert decision.cost.dtype == torch.float64  # dollars stay exact enough to sum over millions of prompts
    torch.testing.assert_close(decision.cost, expected.double())
    expected_utility = 0.7 * decision.quality - 0.3 * decision.cost / knn_router.config.cost_scale
    torch.testing.assert_close(decision.utility, expected_utility.float())
    assert decision.models == [TINY_MODELS[i] for i in decision.utility.argmax(1)]


def test_mu_zero_picks_best_quality_and_mu_one_the_cheapest(knn_router):
    best = knn_router.route(TINY_PROMPTS, mu=0.0)
    assert best.model_indices.tolist() == best.quality.argmax(1).tolist()
    cheapest = knn_router.route(TINY_PROMPTS, mu=1.0)
    assert cheapest.model_indices.tolist() == cheapest.cost.argmin(1).tolist()
    assert set(cheapest.models) == {"small-model"}


def test_default_mu_comes_from_config(knn_router):
    assert knn_router.route(TINY_PROMPTS).mu == knn_router.config.default_mu


def test_price_override_is_for_one_call_only(knn_router):
    before = knn_router.config.prices
    decision = knn_router.route(TINY_PROMPTS, mu=1.0, prices={"small-model": {"output": 1000.0}})
    assert "small-model" not in decision.models
    assert decision.prices["small-model"] == {"input": 0.1, "output": 1000.0}
    assert knn_router.config.prices == before
    assert set(knn_router.route(TINY_PROMPTS, mu=1.0).models) == {"small-model"}


def test_allowed_restricts_the_candidates(knn_router):
    decision = knn_router.route(TINY_PROMPTS, mu=0.0, allowed=["mid-model", "small-model"])
    assert "big-model" not in decision.models
    assert torch.isinf(decision.utility[:, 0]).all()


def test_max_cost_excludes_and_falls_back_to_the_cheapest(knn_router):
    free = knn_router.route(TINY_PROMPTS, mu=0.0)
    ceiling = float(free.cost[:, 1].max()) + 1e-9  # everything but the big model fits
    capped = knn_router.route(TINY_PROMPTS, mu=0.0, max_cost=ceiling)
    assert "big-model" not in capped.models and not any(capped.over_budget)
    impossible = knn_router.route(TINY_PROMPTS, mu=0.0, max_cost=0.0)
    assert all(impossible.over_budget)
    assert set(impossible.models) == {"small-model"}


def test_mu_sweep_from_predictions_needs_no_reencoding(knn_router):
    predictions = knn_router.predict(TINY_PROMPTS)
    for mu in (0.0, 0.4, 1.0):
        assert knn_router.decide(predictions, mu=mu).models == knn_router.route(TINY_PROMPTS, mu=mu).models


def test_choose_candidates_vectorised_over_mu():
    quality = torch.tensor([[0.9, 0.5], [0.2, 0.6]])
    cost = torch.tensor([[1.0, 0.1], [1.0, 0.1]])
    mus = torch.tensor([0.0, 0.5, 1.0])
    indices, utility, _ = choose_candidates(quality, cost, mus, cost_scale=1.0)
    assert indices.tolist() == [[0, 1], [1, 1], [1, 1]]
    assert utility.shape == (3, 2, 2)
    assert torch.equal(utility[1], carrot_utility(quality, cost, 0.5, 1.0))  # sweep == one μ, bit for bit


def test_empty_prompt_list_gives_an_empty_decision(knn_router):
    decision = knn_router.route([], mu=0.5)
    assert len(decision) == 0 and decision.models == []
    assert decision.quality.shape == (0, 3)


def test_long_prompt_is_truncated_and_flagged(knn_router):
    long_prompt = " ".join(["the quick brown fox jumps over the lazy dog"] * 200)
    decision = knn_router.route([long_prompt, "short prompt"], mu=0.5)
    assert decision.truncated == [True, False]
    assert decision.input_tokens[0] > knn_router.config.max_prompt_tokens


def test_a_single_string_is_one_prompt(knn_router):
    assert len(knn_router.route("What is 2 + 2?")) == 1


@pytest.mark.parametrize("mu", [-0.1, 1.5, float("nan"), "0.5", [0.5], True])
def test_bad_mu_is_refused(knn_router, mu):
    with pytest.raises(ValueError, match="mu must be"):
        knn_router.route(["hi"], mu=mu)


@pytest.mark.parametrize("price", [-1.0, float("nan"), float("inf"), "cheap"])
def test_bad_price_override_is_refused(knn_router, price):
    with pytest.raises(ValueError, match="small-model"):
        knn_router.route(["hi"], prices={"small-model": {"input": price}})


def test_unknown_model_in_prices_or_allowed_lists_the_known_names(knn_router):
    with pytest.raises(ValueError, match="Known candidates: big-model, mid-model, small-model"):
        knn_router.route(["hi"], prices={"gpt-5": {"input": 1.0}})
    with pytest.raises(ValueError, match="Known candidates: big-model, mid-model, small-model"):
        knn_router.route(["hi"], allowed=["gpt-5"])


def test_empty_string_prompt_is_refused_with_its_position(knn_router):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        knn_router.route(["fine", "   "])


def test_non_string_prompt_is_refused_with_its_position(knn_router):
    with pytest.raises(TypeError, match="prompt 1 is a int"):
        knn_router.route(["fine", 3])


@pytest.mark.parametrize("max_cost", [-1.0, math.inf, "1"])
def test_bad_max_cost_is_refused(knn_router, max_cost):
    with pytest.raises(ValueError, match="max_cost"):
        knn_router.route(["hi"], max_cost=max_cost)


def test_left_truncation_keeps_the_end_of_a_long_prompt(knn_router):
    before, knn_router.config.truncation_side = knn_router.config.truncation_side, "left"
    try:
        shared_prefix = " ".join(["an example question with its answer"] * 100)
        ids, _, truncated = knn_router._tokenize([f"{shared_prefix} final question about cats"])
    finally:
        knn_router.config.truncation_side = before
    tokenizer = knn_router.tokenizer
    assert truncated == [True] and len(ids[0]) == knn_router.config.max_prompt_tokens
    assert ids[0][0] == tokenizer.cls_token_id and ids[0][-1] == tokenizer.sep_token_id
    assert tokenizer.decode(ids[0][-5:-1]) == "final question about cats"


def test_knn_with_unobserved_rows_leaves_fully_observed_candidates_bit_identical():
    from carrot_hub.modeling_carrot import CarrotKNNMemory

    torch.manual_seed(0)
    memory = torch.nn.functional.normalize(torch.randn(40, 8), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    values = torch.rand(40, 3)
    similarity = queries @ memory.T
    everything = CarrotKNNMemory.observed_neighbour_mean(similarity, values, torch.ones(40, 3), k=7)
    observed = torch.ones(40, 3)
    observed[::2, 2] = 0  # a third candidate known on half of the rows only
    partly = CarrotKNNMemory.observed_neighbour_mean(similarity, values, observed, k=7)
    assert torch.equal(everything[:, :2], partly[:, :2])
    expected = torch.stack(
        [values[observed[:, 2] == 1, 2][(similarity[b, observed[:, 2] == 1]).topk(7).indices].mean() for b in range(5)]
    )
    torch.testing.assert_close(partly[:, 2], expected)
