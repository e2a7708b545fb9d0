"""route(): latency as a constraint, and cached input priced as cached."""

import json
import math
import warnings

import pytest
import torch

from carrot_hub.modeling_carrot import RoutingOptionError

from .conftest import TINY_MODELS, TINY_PROMPTS

FAST = {"ttft_s": 0.1, "tokens_per_s": 100.0}
SLOW = {"ttft_s": 0.1, "tokens_per_s": 1.0}


def test_predicted_latency_is_ttft_plus_tokens_over_speed(knn_router):
    decision = knn_router.route(TINY_PROMPTS[:3], mu=0.0, latency={"big-model": SLOW, "mid-model": FAST})
    expected_big = 0.1 + decision.output_tokens[:, 0].double() / 1.0
    torch.testing.assert_close(decision.latency[:, 0].double(), expected_big, rtol=1e-5, atol=1e-5)
    assert torch.isnan(decision.latency[:, 2]).all()  # no profile: unknown, not zero
    record = decision.to_records()[0]["predictions"]
    assert record["small-model"]["latency_s"] is None and record["big-model"]["latency_s"] > 0


def test_max_latency_leaves_out_the_slow_candidate(knn_router):
    unconstrained = knn_router.route(TINY_PROMPTS, mu=0.0)
    assert "big-model" in unconstrained.models  # at μ = 0 the best model is the big one
    profile = {"big-model": SLOW, "mid-model": FAST, "small-model": FAST}
    bounded = knn_router.route(TINY_PROMPTS, mu=0.0, latency=profile, max_latency_s=5.0)
    assert "big-model" not in bounded.models and not any(bounded.over_latency)
    assert (bounded.latency.gather(1, bounded.model_indices[:, None]) <= 5.0).all()


def test_when_nothing_fits_the_fastest_allowed_is_chosen_and_flagged(knn_router):
    profile = {name: SLOW for name in TINY_MODELS}
    profile["mid-model"] = {"ttft_s": 0.1, "tokens_per_s": 5.0}
    decision = knn_router.route(TINY_PROMPTS, mu=0.0, latency=profile, max_latency_s=0.01)
    assert all(decision.over_latency) and set(decision.models) == {"mid-model"}


def test_latency_saved_in_the_config_applies_and_a_call_overrides_it(knn_router_session, tmp_path):
    from carrot_hub.modeling_carrot import CarrotRouter

    knn_router_session.save_pretrained(tmp_path)
    router = CarrotRouter.from_pretrained(tmp_path)
    router.set_latency({"big-model": SLOW})
    router.save_pretrained(tmp_path)
    reloaded = CarrotRouter.from_pretrained(tmp_path)
    assert reloaded.config.latency == {"big-model": {"ttft_s": 0.1, "tokens_per_s": 1.0}}
    assert "big-model" not in reloaded.route(TINY_PROMPTS, mu=0.0, max_latency_s=5.0).models
    faster = reloaded.route(TINY_PROMPTS, mu=0.0, max_latency_s=5.0, latency={"big-model": FAST})
    assert "big-model" in faster.models


@pytest.mark.parametrize(
    ("kwargs", "option", "message"),
    [
        ({"max_latency_s": -1.0}, "max_latency_s", "finite number of seconds"),
        ({"max_latency_s": math.inf}, "max_latency_s", "finite number of seconds"),
        ({"latency": {"gpt-99": FAST}}, "latency", "not a candidate"),
        ({"latency": {"big-model": {"ttft_s": 0.1, "tokens_per_s": 0.0}}}, "latency", "speed > 0"),
        ({"latency": {"big-model": {"ttft_s": -1, "tokens_per_s": 5.0}}}, "latency", "seconds ≥ 0"),
        ({"latency": {"big-model": {"ttft": 0.1}}}, "latency", "ttft_s"),
    ],
)
def test_bad_latency_options_are_refused_naming_the_option(knn_router, kwargs, option, message):
    with pytest.raises(RoutingOptionError, match=message) as error:
        knn_router.route(TINY_PROMPTS[:1], **kwargs)
    assert error.value.option == option


def test_cached_input_tokens_are_charged_the_cached_price(knn_router):
    prices = {"big-model": {"cached_input": 1.0}}  # input 10 $/M, cached 1 $/M
    plain = knn_router.route(TINY_PROMPTS[:2], mu=0.5, prices=prices)
    cached_tokens = torch.zeros(2, 3)
    cached_tokens[:, 0] = plain.input_tokens  # everything cached for the big model
    cached = knn_router.route(TINY_PROMPTS[:2], mu=0.5, prices=prices, cached_input_tokens=cached_tokens)
    saving = plain.input_tokens.double() * (10.0 - 1.0) / 1e6
    torch.testing.assert_close(plain.cost[:, 0] - cached.cost[:, 0], saving)
    torch.testing.assert_close(plain.cost[:, 1:], cached.cost[:, 1:])
    assert cached.prices["big-model"] == {"input": 10.0, "output": 30.0, "cached_input": 1.0}


def test_cached_tokens_without_a_cached_price_cost_the_input_price(knn_router):
    plain = knn_router.route(TINY_PROMPTS[:2], mu=0.5)
    cached = knn_router.route(TINY_PROMPTS[:2], mu=0.5, cached_input_tokens=torch.full((2, 3), 5.0))
    torch.testing.assert_close(plain.cost, cached.cost)


def test_cached_tokens_of_the_wrong_shape_are_refused(knn_router):
    with pytest.raises(ValueError, match=r"needs \(2, 3\)"):
        knn_router.route(TINY_PROMPTS[:2], cached_input_tokens=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="finite token counts"):
        knn_router.route(TINY_PROMPTS[:2], cached_input_tokens=torch.full((2, 3), -1.0))


def test_a_cached_price_above_the_input_price_warns_and_is_kept(knn_router):
    with pytest.warns(UserWarning, match="above its input price"):
        decision = knn_router.route(TINY_PROMPTS[:1], prices={"mid-model": {"cached_input": 1.25}})
    assert decision.prices["mid-model"]["cached_input"] == 1.25


def test_old_price_tables_stay_valid(knn_router):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decision = knn_router.route(TINY_PROMPTS[:1], prices={"mid-model": {"input": 2.0, "output": 3.0}})
    assert decision.prices["mid-model"] == {"input": 2.0, "output": 3.0}
    assert "cached_input" not in knn_router.config.prices["mid-model"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-latency", "-1"], "finite number of seconds"),
        (["--max-latency", "inf"], "finite number of seconds"),
        (["--latency", '{"gpt-99": {"ttft_s": 0.1, "tokens_per_s": 5}}'], "not a candidate"),
        (["--latency", '{"big-model": {"ttft_s": 0.1, "tokens_per_s": -5}}'], "speed > 0"),
        (["--latency", "{not json"], "--latency is not valid JSON"),
    ],
)
def test_carrot_route_refuses_bad_latency_options_with_exit_code_2(knn_router_session, tmp_path, capsys, extra, message):
    from carrot_hub.cli import main

    knn_router_session.save_pretrained(tmp_path / "router")
    code = main(["route", "--model", str(tmp_path / "router"), "--no-progress", *extra, TINY_PROMPTS[0]])
    assert code == 2
    assert message in capsys.readouterr().err


def test_carrot_route_with_a_latency_bound_avoids_the_slow_model(knn_router_session, tmp_path, capsys):
    from carrot_hub.cli import main

    knn_router_session.save_pretrained(tmp_path / "router")
    profile = '{"big-model": {"ttft_s": 0.1, "tokens_per_s": 1}}'
    code = main(["route", "--model", str(tmp_path / "router"), "--no-progress", "--mu", "0", "--format", "jsonl",
                 "--latency", profile, "--max-latency", "5", *TINY_PROMPTS])
    assert code == 0
    assert "big-model" not in {json.loads(line)["model"] for line in capsys.readouterr().out.splitlines() if line}
