"""The gateway's conversations (session policies), measured upstream speeds and cached-input pricing, on loopback."""

import httpx
import pytest

from carrot_hub.serving.app import GatewaySettings, _realised_cost, _usage
from carrot_hub.serving.fake_upstream import FakeUpstream, FakeUpstreamConfig
from carrot_hub.serving.local_server import LocalServer
from carrot_hub.serving.outcome_log_writer import OutcomeLog
from tests.conftest import TINY_MODELS
from tests.serve_fixtures import fake_upstreams, running_gateway, served_records, upstream_entries, wait_records

FIRST = [{"role": "user", "content": "Write a python function that returns the nth Fibonacci number."}]
FOLLOW_UP = FIRST + [{"role": "assistant", "content": "def fib(n): ..."},
                     {"role": "user", "content": "thanks! now explain it to a child"}]


@pytest.fixture(scope="module")
def upstreams():
    with fake_upstreams(TINY_MODELS) as running:
        yield running


def turn(http, messages, session=None, **carrot):
    headers = {"x-carrot-session": session} if session else {}
    response = http.post("chat/completions", json={"model": "carrot", "messages": messages, "carrot": carrot},
                         headers=headers)
    assert response.status_code == 200, response.text
    return response.headers["x-carrot-model"]


@pytest.mark.parametrize("policy", ["off", "sticky", "upgrade-only"])
def test_a_later_turn_follows_the_session_policy(knn_router_session, upstreams, policy, tmp_path):
    log = OutcomeLog(tmp_path)
    with running_gateway(knn_router_session, upstream_entries(upstreams), log=log, session_policy=policy) as (gateway, server):
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            first = turn(http, FIRST, "conv-1", mu=0.0)  # the best model
            fresh = turn(http, FOLLOW_UP, None, mu=1.0)  # no session: the cheapest
            later = turn(http, FOLLOW_UP, "conv-1", mu=1.0)
            metrics = httpx.get(server.base_url.removesuffix("/v1") + "/metrics").text
        wait_records(gateway)
    assert first != fresh
    if policy == "off":
        assert later == fresh
    else:  # sticky keeps the model; upgrade-only never moves to a lower predicted quality
        assert later == first
    switched = [r.get("session_switched") for r in served_records(log).values() if "session_switched" in r]
    assert switched == ([] if policy == "off" else [False, False])
    assert "carrot_sessions " in metrics


def test_a_sticky_session_moves_when_its_model_is_no_longer_allowed_and_counts_the_switch(knn_router_session, upstreams, tmp_path):
    log = OutcomeLog(tmp_path)
    with running_gateway(knn_router_session, upstream_entries(upstreams), log=log, session_policy="sticky") as (gateway, server):
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            first = turn(http, FIRST, "conv-2", mu=0.0)
            others = [m for m in TINY_MODELS if m != first]
            moved = turn(http, FOLLOW_UP, "conv-2", mu=0.0, allowed=others)
            stays = turn(http, FOLLOW_UP, "conv-2", mu=1.0)
            metrics = httpx.get(server.base_url.removesuffix("/v1") + "/metrics").text
        wait_records(gateway)
    assert moved in others and stays == moved  # the session moved and then stays on its new model
    assert 'carrot_session_switches_total{policy="sticky"} 1.0' in metrics
    records = sorted((r for r in served_records(log).values()), key=lambda r: r["time"])
    assert [r["session_switched"] for r in records] == [False, True, False]
    assert [r["session_turn"] for r in records] == [1, 2, 3]


def test_the_body_names_the_session_before_the_header_and_user(knn_router_session, upstreams):
    with running_gateway(knn_router_session, upstream_entries(upstreams), session_policy="sticky") as (gateway, server):
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            first = http.post("chat/completions", json={"model": "carrot", "messages": FIRST, "user": "alice",
                                                            "carrot": {"mu": 0.0, "session": "conv-3"}})
            by_user = turn_with_user(http, "alice")
            by_body = http.post("chat/completions", json={"model": "carrot", "messages": FOLLOW_UP, "user": "bob",
                                                              "carrot": {"mu": 1.0, "session": "conv-3"}},
                                headers={"x-carrot-session": "other"})
    assert by_body.headers["x-carrot-model"] == first.headers["x-carrot-model"]
    assert by_user != first.headers["x-carrot-model"]  # "alice" is a new conversation: routed on its own


def turn_with_user(http, user):
    response = http.post("chat/completions", json={"model": "carrot", "messages": FOLLOW_UP, "user": user,
                                                       "carrot": {"mu": 1.0}})
    return response.headers["x-carrot-model"]


@pytest.mark.parametrize(
    ("body", "headers", "param"),
    [
        ({"carrot": {"session": "x" * 257}}, {}, "carrot.session"),
        ({}, {"x-carrot-session": "y" * 300}, "carrot.session"),
        ({"carrot": {"session": 12}}, {}, "carrot.session"),
        ({"carrot": {"max_latency_s": -1}}, {}, "carrot.max_latency_s"),
        ({"carrot": {"max_latency_s": "1e400"}}, {}, "carrot.max_latency_s"),
    ],
)
def test_bad_session_ids_and_latency_bounds_are_400s(knn_router_session, upstreams, body, headers, param):
    with running_gateway(knn_router_session, upstream_entries(upstreams), session_policy="sticky") as (gateway, server):
        response = httpx.post(f"{server.base_url}/chat/completions", timeout=10, headers=headers,
                              json={"model": "carrot", "messages": FIRST, **body})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_an_unknown_session_policy_is_refused():
    with pytest.raises(ValueError, match="sticky"):
        GatewaySettings(session_policy="always")


def test_requests_with_max_latency_avoid_the_slow_upstream(knn_router_session):
    slow = {"big-model": 20.0}  # tokens per second; the others are ten times faster
    fakes = {name: FakeUpstream(FakeUpstreamConfig(model=f"{name}-id", reply_words=12, chunk_words=2,
                                                   tokens_per_s=slow.get(name, 200.0))) for name in TINY_MODELS}
    servers = {name: LocalServer(fake.app).start() for name, fake in fakes.items()}
    try:
        entries = {name: {"base_url": servers[name].base_url, "model": f"{name}-id"} for name in TINY_MODELS}
        with running_gateway(knn_router_session, entries) as (gateway, server):
            with httpx.Client(base_url=server.base_url, timeout=10) as http:
                for name in TINY_MODELS:  # served traffic teaches the gateway each upstream's speed
                    for _ in range(4):
                        with http.stream("POST", "chat/completions",
                                         json={"model": name, "messages": FIRST, "stream": True}) as response:
                            response.read()
                unbounded = http.post("chat/completions", json={"model": "carrot", "messages": FIRST,
                                                                    "carrot": {"mu": 0.0}})
                measured = gateway.latency.profile()
                bounded = http.post("chat/completions", json={"model": "carrot", "messages": FIRST,
                                                                  "carrot": {"mu": 0.0, "max_latency_s": 1.0}})
                metrics = httpx.get(server.base_url.removesuffix("/v1") + "/metrics").text
    finally:
        for item in servers.values():
            item.stop()
    assert measured["big-model"]["tokens_per_s"] < measured["small-model"]["tokens_per_s"] / 3
    assert unbounded.headers["x-carrot-model"] == "big-model"
    assert float(unbounded.headers["x-carrot-predicted-latency"]) > 1.0  # its predicted tokens at ~20/s
    assert bounded.headers["x-carrot-model"] != "big-model"
    assert float(bounded.headers["x-carrot-predicted-latency"]) <= 1.0
    assert 'carrot_upstream_tokens_per_second{model="big-model"}' in metrics


def test_realised_cost_charges_cached_input_at_the_cached_price():
    usage, problem = _usage({"prompt_tokens": 1000, "completion_tokens": 10,
                             "prompt_tokens_details": {"cached_tokens": 800}})
    assert problem is None and usage["cached_tokens"] == 800
    price = {"input": 10.0, "output": 30.0, "cached_input": 1.0}
    assert _realised_cost(usage, price) == pytest.approx((200 * 10.0 + 800 * 1.0 + 10 * 30.0) / 1e6)
    assert _realised_cost(usage, {"input": 10.0, "output": 30.0}) == pytest.approx((1000 * 10.0 + 10 * 30.0) / 1e6)
    bad, why = _usage({"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 11}})
    assert bad is None and "cached_tokens" in why


def test_a_sticky_session_whose_model_fails_falls_back_and_moves(knn_router_session, upstreams, tmp_path):
    log = OutcomeLog(tmp_path)
    with running_gateway(knn_router_session, upstream_entries(upstreams), log=log, session_policy="sticky") as (gateway, server):
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            first = turn(http, FIRST, "conv-4", mu=0.0)
            upstreams[first][0].fail_next("503")
            moved = turn(http, FOLLOW_UP, "conv-4", mu=0.0)
            stays = turn(http, FOLLOW_UP, "conv-4", mu=1.0)
        wait_records(gateway)
    assert moved != first and stays == moved
    records = sorted(served_records(log).values(), key=lambda r: r["time"])
    assert records[1]["fallbacks"] == [first] and records[1]["session_switched"] is True
