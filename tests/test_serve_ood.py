"""The gateway applies the router's out-of-distribution policy as `route()` does, takes `carrot.ood`,
and says what happened in headers and in the outcome log (the default router on RouterBench, real
prompts, fake upstreams on loopback)."""

import httpx
import pytest
from transformers import AutoModel

from carrot_hub.default import default_router
from carrot_hub.serving.outcome_log_writer import OutcomeLog
from tests.serve_fixtures import fake_upstreams, running_gateway, served_records, upstream_entries, wait_records

HAIKU = "Write a haiku about autumn rain on a tin roof."  # nothing like ARC, MBPP or Winogrande
IN_DISTRIBUTION = "Write a python function to check whether a number is prime."
POLICY = "model:gpt-4-1106-preview"


@pytest.fixture(scope="module")
def ood_router(tmp_path_factory):
    """The default router, saved with ood_policy="model:gpt-4-1106-preview" and loaded back."""
    router = default_router(cache_dir=tmp_path_factory.mktemp("cache") / "default", progress=False, dtype="float32")
    router.config.ood_policy = POLICY
    folder = tmp_path_factory.mktemp("routers") / "ood-to-gpt-4"
    router.save_pretrained(folder)
    return AutoModel.from_pretrained(folder, dtype="float32")


@pytest.fixture(scope="module")
def gateway(ood_router, tmp_path_factory):
    log = OutcomeLog(tmp_path_factory.mktemp("outcomes"))
    with fake_upstreams(ood_router.config.candidate_models) as upstreams:
        with running_gateway(ood_router, upstream_entries(upstreams), log=log, route_window_s=0.001) as (gw, server):
            with httpx.Client(base_url=server.base_url, timeout=30) as client:
                yield gw, client, log


def ask(client, prompt: str, model: str = "carrot:1", **carrot):
    body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if carrot:
        body["carrot"] = carrot
    return client.post("chat/completions", json=body)


def test_an_out_of_distribution_prompt_goes_where_route_sends_it(ood_router, gateway):
    gw, client, log = gateway
    decision = ood_router.route([HAIKU], mu=1.0)
    assert decision.in_distribution == [False] and decision.ood_applied == [True]
    assert decision.models == ["gpt-4-1106-preview"]
    response = ask(client, HAIKU)
    assert response.status_code == 200, response.text
    headers = response.headers
    assert headers["x-carrot-model"] == decision.models[0]
    assert headers["x-carrot-in-distribution"] == "false" and headers["x-carrot-ood-applied"] == "true"
    assert float(headers["x-carrot-support"]) == pytest.approx(float(decision.support[0]), abs=1e-6)
    wait_records(gw)
    record = served_records(log)[headers["x-carrot-request-id"]]
    assert record["model"] == decision.models[0]
    assert record["in_distribution"] is False and record["ood_applied"] is True and record["ood_policy"] == POLICY
    assert record["support"] == pytest.approx(float(decision.support[0]), abs=1e-6)


def test_carrot_ood_overrides_the_policy_for_one_request(ood_router, gateway):
    _, client, _ = gateway
    for ood in ("predict", "prior"):
        decision = ood_router.route([HAIKU], mu=1.0, ood=ood)
        response = ask(client, HAIKU, ood=ood)
        assert response.status_code == 200, response.text
        assert response.headers["x-carrot-model"] == decision.models[0]
        assert response.headers["x-carrot-ood-applied"] == ("true" if decision.ood_applied[0] else "false")
    assert ood_router.route([HAIKU], mu=1.0, ood="predict").models != ["gpt-4-1106-preview"]


def test_an_in_distribution_prompt_is_routed_on_its_predictions(ood_router, gateway):
    _, client, _ = gateway
    decision = ood_router.route([IN_DISTRIBUTION], mu=1.0)
    assert decision.in_distribution == [True] and decision.ood_applied == [False]
    response = ask(client, IN_DISTRIBUTION)
    assert response.headers["x-carrot-model"] == decision.models[0]
    assert response.headers["x-carrot-in-distribution"] == "true"
    assert response.headers["x-carrot-ood-applied"] == "false"


def test_a_pinned_request_reports_nothing_routed(gateway):
    _, client, _ = gateway
    response = ask(client, HAIKU, model="gpt-4-1106-preview", mu=0.5)
    assert response.status_code == 200
    assert response.headers["x-carrot-support"] == "none" and response.headers["x-carrot-ood-applied"] == "false"


@pytest.mark.parametrize("carrot, needle", [
    ({"ood": "model:gpt-17"}, "gpt-17"),
    ({"ood": 3}, "carrot.ood must be"),
    ({"ood": "model:gpt-4-1106-preview", "allowed": ["mistralai/mistral-7b-chat"]}, "`allowed` excludes"),
])
def test_a_bad_ood_option_is_a_400_naming_it(gateway, carrot, needle):
    _, client, _ = gateway
    response = ask(client, HAIKU, **carrot)
    assert response.status_code == 400
    error = response.json()["error"]
    assert needle in error["message"] and error["param"] == "carrot.ood"
