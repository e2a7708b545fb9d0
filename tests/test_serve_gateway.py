"""The gateway end to end on loopback: the tiny real-encoder router, fake OpenAI-compatible upstreams,
real HTTP (httpx and the openai SDK)."""

import json
import logging

import httpx
import openai
import pytest

from tests.conftest import TINY_MODELS
from carrot_hub.data.outcome_log_reader import read_outcome_log
from carrot_hub.modeling_carrot import CarrotRouter
from carrot_hub.serving.outcome_log_writer import OutcomeLog
from tests.serve_fixtures import fake_upstreams, running_gateway, served_records, upstream_entries, wait_records

USER = [{"role": "user", "content": "Write a python function that returns the nth Fibonacci number."}]


@pytest.fixture(scope="module")
def upstreams():
    with fake_upstreams(TINY_MODELS) as running:
        yield running


@pytest.fixture(scope="module")
def served(knn_router_session, upstreams, tmp_path_factory):
    log = OutcomeLog(tmp_path_factory.mktemp("outcomes"))
    with running_gateway(knn_router_session, upstream_entries(upstreams, timeout=2.0), log=log,
                         route_window_s=0.001) as (gateway, server):
        yield gateway, server, log


@pytest.fixture
def client(served):
    _, server, _ = served
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        yield http


@pytest.fixture(autouse=True)
def no_leftover_failures(upstreams):
    yield
    for fake, _ in upstreams.values():
        fake._scripted.clear()


def record_of(log, response):
    request_id = response.headers["x-carrot-request-id"]
    records = served_records(log)
    assert request_id in records, f"no record for {request_id}"
    return records[request_id]


# ------------------------------------------------------------------------------------ answers


def test_routed_answer_says_what_happened_and_passes_options_through(served, client, upstreams):
    gateway, _, log = served
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}]
    body = {"model": "carrot:0", "messages": USER, "temperature": 0.25, "top_p": 0.5, "max_tokens": 33, "seed": 7,
            "tools": tools, "tool_choice": "auto", "response_format": {"type": "json_object"}, "user": "u1"}
    response = client.post("chat/completions", json=body)
    assert response.status_code == 200
    answer = response.json()
    headers = response.headers
    assert headers["x-carrot-model"] == answer["model"] == "big-model"  # μ = 0: best predicted quality
    assert headers["x-carrot-mu"] == "0"
    assert float(headers["x-carrot-predicted-quality"]) == pytest.approx(1.0)
    assert float(headers["x-carrot-predicted-cost"]) > 0
    assert headers["x-carrot-fallbacks"] == ""
    assert headers["x-carrot-request-id"].startswith("carrot-")
    forwarded = upstreams["big-model"][0].received[-1]
    assert forwarded == {**body, "model": "big-model-upstream-id"}  # only model replaced
    wait_records(gateway)
    record = record_of(log, response)
    assert record["model"] == "big-model" and record["status"] == "ok" and record["fallbacks"] == []
    assert record["prompt"] == USER[0]["content"] and record["route_on"] == "last-user"
    assert "in_distribution" in record  # the router's support flag (None: unknown), for carrot collect --from-log
    assert record["usage"] == {"prompt_tokens": answer["usage"]["prompt_tokens"],
                               "completion_tokens": answer["usage"]["completion_tokens"]}
    prices = gateway.router.config.prices["big-model"]
    expected = (record["usage"]["prompt_tokens"] * prices["input"]
                + record["usage"]["completion_tokens"] * prices["output"]) / 1e6
    assert record["realised_cost"] == pytest.approx(expected)
    assert record["predicted_cost"] == pytest.approx(float(headers["x-carrot-predicted-cost"]), rel=1e-5)
    assert record["latency_s"] >= record["ttfb_s"] > 0


def test_carrot_options_in_the_body(served, client):
    response = client.post("chat/completions", json={
        "model": "carrot", "messages": USER,
        "carrot": {"mu": 1.0, "prices": {"small-model": {"input": 100.0, "output": 100.0}}}})
    assert response.status_code == 200
    # At μ = 1 the cheapest wins; the override made small-model the dearest.
    assert response.headers["x-carrot-model"] == "mid-model"
    response = client.post("chat/completions", json={"model": "carrot", "messages": USER,
                                                      "carrot": {"mu": 0.0, "allowed": ["small-model", "mid-model"]}})
    assert response.headers["x-carrot-model"] in ("small-model", "mid-model")
    response = client.post("chat/completions", json={"model": "carrot", "messages": USER})
    assert response.headers["x-carrot-mu"] == f"{gateway_default_mu(served):g}"


def gateway_default_mu(served):
    return served[0].router.config.default_mu


def test_pinned_model_is_not_routed(served, client, upstreams):
    response = client.post("chat/completions", json={"model": "small-model", "messages": USER})
    assert response.status_code == 200
    assert response.json()["model"] == response.headers["x-carrot-model"] == "small-model"
    assert response.headers["x-carrot-mu"] == "none"
    assert upstreams["small-model"][0].received[-1]["model"] == "small-model-upstream-id"


def test_streaming_with_the_openai_sdk(served, upstreams):
    gateway, server, log = served
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="carrot:1", messages=USER, stream=True)
    chunks = list(raw.parse())
    assert raw.headers["x-carrot-model"] == "small-model"
    assert {chunk.model for chunk in chunks} == {"small-model"}
    assert all(chunk.choices for chunk in chunks)  # the usage chunk the gateway asked for is not shown
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text.split() == [f"w{i}" for i in range(8)]
    assert upstreams["small-model"][0].received[-1]["stream_options"] == {"include_usage": True}
    wait_records(gateway)
    record = record_of(log, raw)
    assert record["status"] == "ok" and record["usage"]["completion_tokens"] == 8
    assert record["realised_cost"] is not None

    # A client that asks for usage gets it.
    chunks = list(client.chat.completions.create(model="carrot:1", messages=USER, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 8 and chunks[-1].choices == []


def test_non_streaming_with_the_openai_sdk_extra_body(served):
    _, server, _ = served
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="carrot", messages=USER, extra_body={"carrot": {"mu": 0.0, "max_cost": 1.0}})
    completion = raw.parse()
    assert completion.model == raw.headers["x-carrot-model"] == "big-model"
    assert completion.choices[0].message.content.startswith("big-model-upstream-id says:")


def test_route_on_conversation_routes_the_whole_conversation(knn_router, upstreams, tmp_path):
    log = OutcomeLog(tmp_path)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Which planet is red?"},
                {"role": "assistant", "content": "Mars."}, {"role": "user", "content": [{"type": "text", "text": "Why?"}]}]
    with running_gateway(knn_router, upstream_entries(upstreams), log=log, route_on="conversation") as (gateway, server):
        response = httpx.post(server.base_url + "/chat/completions", json={"model": "carrot", "messages": messages})
        wait_records(gateway)
    assert response.status_code == 200
    record = record_of(log, response)
    assert record["prompt"] == "system: Be brief.\nuser: Which planet is red?\nassistant: Mars.\nuser: Why?"
    assert record["route_on"] == "conversation"


# ----------------------------------------------------------------------------------- fallback


@pytest.mark.parametrize("failure", ["503", "500", "429", "timeout", "drop"])
def test_fallback_before_the_first_byte(served, client, upstreams, failure):
    gateway, _, log = served
    fake = upstreams["big-model"][0]
    fake.fail_next(failure)
    if failure == "timeout":
        fake.config.hang_s = 3.0  # past the gateway's 2 s timeout
    response = client.post("chat/completions", json={"model": "carrot:0", "messages": USER})
    assert response.status_code == 200
    assert response.headers["x-carrot-fallbacks"] == "big-model"
    assert response.json()["model"] == response.headers["x-carrot-model"] != "big-model"
    wait_records(gateway)
    assert record_of(log, response)["fallbacks"] == ["big-model"]


@pytest.mark.parametrize("failure", ["503", "drop"])
def test_streams_fall_back_before_the_first_event(served, upstreams, failure):
    _, server, _ = served
    upstreams["big-model"][0].fail_next(failure)
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="carrot:0", messages=USER, stream=True)
    chunks = list(raw.parse())
    assert raw.headers["x-carrot-fallbacks"] == "big-model"
    assert {chunk.model for chunk in chunks} == {raw.headers["x-carrot-model"]} != {"big-model"}


def test_connection_refused_falls_back(knn_router, upstreams):
    entries = upstream_entries(upstreams)
    entries["big-model"]["base_url"] = "http://127.0.0.1:9/v1"  # nothing listens on the discard port
    with running_gateway(knn_router, entries) as (_, server):
        response = httpx.post(server.base_url + "/chat/completions", json={"model": "carrot:0", "messages": USER})
    assert response.status_code == 200
    assert response.headers["x-carrot-fallbacks"] == "big-model"


def test_max_fallbacks_bounds_the_tries(knn_router, upstreams, tmp_path):
    log = OutcomeLog(tmp_path)
    for fake, _ in upstreams.values():
        fake.fail_next("503", 2)
    with running_gateway(knn_router, upstream_entries(upstreams), log=log, max_fallbacks=1) as (gateway, server):
        response = httpx.post(server.base_url + "/chat/completions", json={"model": "carrot:0", "messages": USER})
        wait_records(gateway)
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "upstream_failed" and "big-model" in error["message"]
    tried = [name for name, (fake, _) in upstreams.items() if fake._scripted == ["503"]]
    assert len(tried) == 2  # the choice and one fallback
    record = record_of(log, response)
    assert record["status"] == "upstream_error" and len(record["fallbacks"]) == 1


def test_a_4xx_caused_by_the_request_is_returned_as_is(served, client, upstreams):
    gateway, _, log = served
    upstreams["big-model"][0].fail_next("400")
    response = client.post("chat/completions", json={"model": "carrot:0", "messages": USER})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "injected failure 400"
    assert response.headers["x-carrot-fallbacks"] == "" and response.headers["x-carrot-model"] == "big-model"
    wait_records(gateway)
    assert record_of(log, response)["status"] == "client_error"


def test_a_failure_mid_stream_ends_it_with_an_error_event(served, upstreams):
    gateway, server, log = served
    upstreams["big-model"][0].fail_next("midstream")
    with httpx.stream("POST", server.base_url + "/chat/completions",
                      json={"model": "carrot:0", "messages": USER, "stream": True}) as response:
        assert response.status_code == 200
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert response.headers["x-carrot-model"] == "big-model"
    assert json.loads(events[0])["model"] == "big-model"
    assert json.loads(events[-1])["error"]["code"] == "stream_interrupted"
    assert "[DONE]" not in events
    wait_records(gateway)
    assert record_of(log, response)["status"] == "stream_error"

    # The SDK raises on the error event.
    upstreams["big-model"][0].fail_next("midstream")
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.APIError, match="failed in the middle"):
        list(client.chat.completions.create(model="carrot:0", messages=USER, stream=True))


def test_candidates_without_an_upstream_are_never_chosen(knn_router, upstreams):
    entries = {name: entry for name, entry in upstream_entries(upstreams).items() if name != "small-model"}
    with running_gateway(knn_router, entries) as (_, server):
        chosen = set()
        for mu in ("0", "0.5", "1"):
            response = httpx.post(server.base_url + "/chat/completions",
                                  json={"model": f"carrot:{mu}", "messages": USER})
            assert response.status_code == 200
            chosen.add(response.headers["x-carrot-model"])
        assert "small-model" not in chosen and "mid-model" in chosen  # μ = 1 would pick small-model
        models = httpx.get(server.base_url + "/models").json()["data"]
        assert [m["id"] for m in models] == ["carrot", "big-model", "mid-model"]
        response = httpx.post(server.base_url + "/chat/completions",
                              json={"model": "carrot", "messages": USER, "carrot": {"allowed": ["small-model"]}})
        assert response.status_code == 400
        assert "big-model, mid-model" in response.json()["error"]["message"]
        response = httpx.post(server.base_url + "/chat/completions", json={"model": "small-model", "messages": USER})
        assert response.status_code == 404


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "body, status, needle",
    [
        (b'{"model": "carrot", "messages": [', 400, "not valid JSON"),
        (b'[1, 2]', 400, "JSON object"),
        (json.dumps({"model": "carrot"}).encode(), 400, "messages"),
        (json.dumps({"model": "carrot", "messages": []}).encode(), 400, "messages"),
        (json.dumps({"model": "gpt-17", "messages": USER}).encode(), 404, "big-model, mid-model, small-model"),
        (json.dumps({"model": "carrot:1.5", "messages": USER}).encode(), 400, "mu must be in [0, 1]"),
        (json.dumps({"model": "carrot:cheap", "messages": USER}).encode(), 400, "number in [0, 1]"),
        (json.dumps({"model": "carrot", "messages": USER, "carrot": {"mu": -0.1}}).encode(), 400, "mu must be in"),
        (json.dumps({"model": "carrot:0.2", "messages": USER, "carrot": {"mu": 0.3}}).encode(), 400, "given twice"),
        (json.dumps({"model": "carrot", "messages": USER, "carrot": {"max_cost": -1}}).encode(), 400, "max_cost"),
        (json.dumps({"model": "carrot", "messages": USER, "carrot": {"allowed": ["gpt-17"]}}).encode(), 400,
         "Known candidates: big-model, mid-model, small-model"),
        (json.dumps({"model": "carrot", "messages": USER,
                     "carrot": {"prices": {"gpt-17": {"input": 1, "output": 1}}}}).encode(), 400,
         "Known candidates: big-model, mid-model, small-model"),
        (json.dumps({"model": "carrot", "messages": USER,
                     "carrot": {"prices": {"big-model": {"input": -1}}}}).encode(), 400, "≥ 0"),
        (json.dumps({"model": "carrot", "messages": USER, "carrot": {"temperature": 1}}).encode(), 400, "unknown keys"),
        (json.dumps({"model": "carrot", "messages": [{"role": "system", "content": "hi"}]}).encode(), 400,
         "Nothing to route"),
        (json.dumps({"model": "small-model", "messages": USER, "carrot": {"max_cost": -2}}).encode(), 400,
         "max_cost"),
    ],
)
def test_bad_requests_get_openai_errors_and_leave_the_log_alone(served, client, body, status, needle):
    gateway, _, log = served
    wait_records(gateway)
    before = served_records(log)
    response = client.post("chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert needle in error["message"] and error["type"] == "invalid_request_error"
    wait_records(gateway)
    assert served_records(log) == before


def test_body_size_limit(knn_router, upstreams):
    with running_gateway(knn_router, upstream_entries(upstreams), max_body_bytes=2000) as (_, server):
        big = {"model": "carrot", "messages": [{"role": "user", "content": "x " * 2000}]}
        response = httpx.post(server.base_url + "/chat/completions", json=big)
        assert response.status_code == 413
        assert "2000 bytes" in response.json()["error"]["message"]

        def chunked():  # no content-length: the limit holds while reading
            yield json.dumps(big).encode()

        response = httpx.post(server.base_url + "/chat/completions", content=chunked())
        assert response.status_code == 413


def test_feedback(served, client, upstreams):
    gateway, _, log = served
    response = client.post("chat/completions", json={"model": "carrot", "messages": USER})
    request_id = response.headers["x-carrot-request-id"]
    # Sent at once: the record may still be on its way to the log; the gateway waits for it.
    ok = client.post("feedback", json={"request_id": request_id, "score": 1})
    assert ok.status_code == 200 and ok.json()["request_id"] == request_id
    unknown = client.post("feedback", json={"request_id": "carrot-nope", "score": 0.5})
    assert unknown.status_code == 404 and "carrot-nope" in unknown.json()["error"]["message"]
    for score in (1.5, -0.1, "good", None, True):
        bad = client.post("feedback", json={"request_id": request_id, "score": score})
        assert bad.status_code == 400 and "[0, 1]" in bad.json()["error"]["message"]
    assert client.post("feedback", content=b"{oops").status_code == 400
    # A request no upstream answered has nothing to score.
    for fake, _ in upstreams.values():
        fake.fail_next("503")
    failed = client.post("chat/completions", json={"model": "carrot:0", "messages": USER})
    assert failed.status_code == 503
    refused = client.post("feedback", json={"request_id": failed.headers["x-carrot-request-id"], "score": 1})
    assert refused.status_code == 400 and "not answered" in refused.json()["error"]["message"]
    labels = read_outcome_log(log.folder).labels
    assert labels == {request_id: (1.0, labels[request_id][1])}


def test_learn_applies_feedback_to_the_router(saved_knn_router, upstreams, tmp_path):
    from carrot_hub.serving.learning import OnlineLearner

    router = CarrotRouter.from_pretrained(saved_knn_router)  # its own copy: learning grows it
    rows = router.config.knn_memory_size
    learner = OnlineLearner(router, tmp_path / "learned", every=0)
    with running_gateway(router, upstream_entries(upstreams), log=OutcomeLog(tmp_path / "log"),
                         learner=learner) as (gateway, server):
        response = httpx.post(server.base_url + "/chat/completions", json={"model": "carrot:1", "messages": USER})
        label = httpx.post(server.base_url + "/feedback",
                           json={"request_id": response.headers["x-carrot-request-id"], "score": 0.0})
        assert label.status_code == 200
        assert learner.stats["learned"] == 1
    # Shutting the gateway down saved the grown router as a new folder. The prompt is a training
    # prompt: its row's cell for the model that answered was filled, no row was added.
    grown = CarrotRouter.from_pretrained(learner.saved[-1])
    column = grown.config.candidate_models.index(response.headers["x-carrot-model"])
    assert grown.config.knn_memory_size == rows and grown.predictor.quality[0, column].item() == 0.0
    assert grown.predictor.quality_observed[0, column].item() == 1.0


# ----------------------------------------------------------------------------------- security


def test_gateway_key_is_checked_as_a_bearer_token(knn_router, upstreams):
    with running_gateway(knn_router, upstream_entries(upstreams), api_key="gw-key-0123456789abcdef") as (_, server):
        body = {"model": "carrot", "messages": USER}
        denied = httpx.post(server.base_url + "/chat/completions", json=body)
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
        wrong = httpx.post(server.base_url + "/chat/completions", json=body,
                           headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert httpx.get(server.url + "/metrics").status_code == 401
        assert httpx.get(server.url + "/health").status_code == 200
        client = openai.OpenAI(base_url=server.base_url, api_key="gw-key-0123456789abcdef", max_retries=0)
        assert client.chat.completions.create(model="carrot", messages=USER).model in TINY_MODELS


def test_upstream_keys_never_leave_the_gateway(knn_router, caplog, tmp_path):
    secret = "sk-very-secret-0123456789"
    log = OutcomeLog(tmp_path)
    with fake_upstreams(TINY_MODELS, api_key="the-right-key") as upstreams:
        entries = upstream_entries(upstreams, api_key_env="TEST_UPSTREAM_KEY")
        with caplog.at_level(logging.DEBUG):
            with running_gateway(knn_router, entries, environ={"TEST_UPSTREAM_KEY": secret}, log=log) as (gw, server):
                # The fakes quote the wrong key they were given in their 401 answers.
                response = httpx.post(server.base_url + "/chat/completions", json={"model": "carrot", "messages": USER})
                pinned = httpx.post(server.base_url + "/chat/completions",
                                    json={"model": "big-model", "messages": USER})
                wait_records(gw)
                metrics = httpx.get(server.url + "/metrics").text
        sent = [fake.authorizations[-1] for fake, _ in upstreams.values()]
    assert sent == [f"Bearer {secret}"] * 3  # the key does reach the upstreams...
    assert response.status_code == 502 and pinned.status_code == 502
    for text in (response.text, str(response.headers), pinned.text, caplog.text, *(p.read_text() for p in tmp_path.iterdir()), metrics):
        assert secret not in text  # ...and nothing else
    assert "***" in response.text


# ------------------------------------------------------------------------------------- status


def test_health_models_and_metrics(served, client):
    _, server, _ = served
    client.post("chat/completions", json={"model": "carrot", "messages": USER})
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["candidates"] == TINY_MODELS
    models = client.get("models").json()
    assert [m["id"] for m in models["data"]] == ["carrot", *TINY_MODELS]
    metrics = httpx.get(server.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for name in ("carrot_requests_total", "carrot_routed_total", "carrot_spend_dollars_total",
                 "carrot_request_latency_seconds_bucket", "carrot_routing_batch_size_bucket"):
        assert name in text
