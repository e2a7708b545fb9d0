"""The gateway under hostile clients and broken upstreams (issue 23, the request path): one request
never hurts another, keys never reach a client, broken streams are recorded as broken, deadlines
hold, and bad JSON gets an OpenAI-format error, never a plain-text 500."""

import asyncio
import json
import logging
import socket
import time

import httpx
import pytest

from carrot_hub.serving.app import GatewaySettings
from carrot_hub.serving.local_server import LocalServer
from carrot_hub.serving.outcome_log_writer import OutcomeLog
from tests.conftest import TINY_MODELS
from tests.hostile_upstream import HostileUpstream
from tests.serve_fixtures import fake_upstreams, running_gateway, served_records, upstream_entries

USER = [{"role": "user", "content": "Write a python function that returns the nth Fibonacci number."}]
SECRET = "sk-hostile-0123456789abcdef"


def wait_records(gateway):
    gateway._log_writer.submit(lambda: None).result(timeout=5)


@pytest.fixture(scope="module")
def upstreams():
    with fake_upstreams(TINY_MODELS) as running:
        yield running


def post(server, body, **options):
    return httpx.post(server.base_url + "/chat/completions", json=body, timeout=30, **options)


def post_raw(server, raw: bytes):
    return httpx.post(server.base_url + "/chat/completions", content=raw,
                      headers={"content-type": "application/json"}, timeout=30)


def assert_openai_error(response, status):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    return error


def stream_events(server, body):
    with httpx.stream("POST", server.base_url + "/chat/completions", json={**body, "stream": True},
                      timeout=30) as response:
        raw = response.read().decode()
    return response, raw, [line.removeprefix("data: ") for line in raw.splitlines() if line.startswith("data: ")]


# ----------------------------------------------- 1: one bad prompt never fails its batch


BAD_PROMPTS = ["\u200b\u200b\u200b", "\x00\x01\x02", "\u2060\ufeff \t\n\u200d"]


def test_bad_prompts_among_concurrent_valid_ones_fail_alone(knn_router, upstreams):
    # A long collection window puts the bad prompts in the same routing batches as the valid ones.
    with running_gateway(knn_router, upstream_entries(upstreams), route_window_s=0.05) as (gateway, server):
        bodies = []
        for i in range(48):
            bodies.append(({"model": "carrot", "messages": [{"role": "user", "content": f"{USER[0]['content']} #{i}"}]},
                           200))
            if i % 3 == 0:
                bodies.append(({"model": "carrot", "messages": [{"role": "user", "content": BAD_PROMPTS[i % 9 // 3]}]},
                               400))

        async def run_all():
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
                return await asyncio.gather(*(client.post("/chat/completions", json=b) for b, _ in bodies))

        responses = asyncio.run(run_all())
    statuses = [(r.status_code, expected) for r, (_, expected) in zip(responses, bodies)]
    assert all(got == expected for got, expected in statuses), statuses
    for response, (_, expected) in zip(responses, bodies):
        if expected == 400:
            error = response.json()["error"]
            assert "is empty" in error["message"] and error["param"] == "messages"


def test_the_routing_batch_isolates_a_prompt_the_router_refuses(knn_router):
    from carrot_hub.serving.batching import route_batch

    prompts = [USER[0]["content"], "\u200b\u200b", "What is 2 + 2?", "a lone \ud800 surrogate"]
    options = knn_router.routing_options()
    results = route_batch(knn_router, prompts, [options] * len(prompts))
    assert isinstance(results[1], ValueError) and "is empty" in str(results[1])
    assert isinstance(results[3], ValueError) and "lone surrogate" in str(results[3])
    alone = route_batch(knn_router, [prompts[0], prompts[2]], [options] * 2)
    assert [results[0].chosen, results[2].chosen] == [alone[0].chosen, alone[1].chosen]


# ------------------------------------------------------- 3: pinned requests and options


def test_pinned_requests_respect_allowed_and_refuse_max_cost(knn_router, upstreams):
    with running_gateway(knn_router, upstream_entries(upstreams)) as (_, server):
        excluded = post(server, {"model": "big-model", "messages": USER, "carrot": {"allowed": ["mid-model"]}})
        error = assert_openai_error(excluded, 400)
        assert "'big-model' is not in carrot.allowed" in error["message"] and error["param"] == "carrot.allowed"
        included = post(server, {"model": "big-model", "messages": USER,
                                 "carrot": {"allowed": ["mid-model", "big-model"]}})
        assert included.status_code == 200 and included.headers["x-carrot-model"] == "big-model"
        capped = post(server, {"model": "small-model", "messages": USER, "carrot": {"max_cost": 1.0}})
        assert assert_openai_error(capped, 400)["param"] == "carrot.max_cost"


# ---------------------------------------------------------- 4: keys never reach a client


@pytest.mark.parametrize("behaviour", ["quote_key", "quote_key_escaped"])
def test_upstream_keys_are_scrubbed_from_answers_and_streams(knn_router, caplog, tmp_path, behaviour):
    hostile = HostileUpstream(behaviour)
    log = OutcomeLog(tmp_path)
    with LocalServer(hostile.app) as upstream:
        entries = {"big-model": {"base_url": upstream.base_url, "model": "m", "api_key_env": "HOSTILE_KEY"}}
        with caplog.at_level(logging.DEBUG):
            with running_gateway(knn_router, entries, environ={"HOSTILE_KEY": SECRET}, log=log) as (gateway, server):
                answer = post(server, {"model": "big-model", "messages": USER})
                routed = post(server, {"model": "carrot", "messages": USER})
                streamed, raw, events = stream_events(server, {"model": "big-model", "messages": USER})
                wait_records(gateway)
                metrics = httpx.get(server.url + "/metrics").text
    assert answer.status_code == 200 and routed.status_code == 200 and streamed.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "my key is ***"
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events if e.startswith('{"id"')]
    text = "".join(content or "" for content in contents)  # event boundaries may move: text that could begin a key waits
    assert contents[0] == "key first: ***" and text == "key first: ***some words and again: *** "  # first and mid-stream
    assert "not json ***" in events and events[-1] == "[DONE]"
    logs = "".join(p.read_text() for p in tmp_path.iterdir())
    for text in (answer.text, routed.text, str(answer.headers), raw, caplog.text, logs, metrics):
        assert SECRET not in text
        assert SECRET[: len(SECRET) // 2] not in text.replace("\\u", "")  # no half of it either


@pytest.mark.parametrize("behaviour", ["split_key", "split_key_unfinished"])
def test_a_key_spread_over_several_stream_events_is_scrubbed_and_no_text_is_lost(knn_router, tmp_path, behaviour):
    hostile = HostileUpstream(behaviour)
    with LocalServer(hostile.app) as upstream:
        entries = {"big-model": {"base_url": upstream.base_url, "model": "m", "api_key_env": "HOSTILE_KEY"}}
        with running_gateway(knn_router, entries, environ={"HOSTILE_KEY": SECRET}, log=OutcomeLog(tmp_path)) as (gateway, server):
            streamed, raw, events = stream_events(server, {"model": "big-model", "messages": USER})
            wait_records(gateway)
    assert streamed.status_code == 200 and events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    assert text == "my key is ***. And it has s"  # the trailing "s" (the key's first letter) is held, then sent
    assert all(chunk["model"] == "big-model" for chunk in chunks)
    for piece in (SECRET[:9], SECRET[4:], SECRET[9:]):  # as sent in pieces, and joined
        assert piece not in raw


# ----------------------------------------------- 9: a stream that ends without [DONE]


def stream_from_hostile(behaviour: str, router, tmp_path):
    """One streamed request to a hostile upstream behind the gateway → (response, events, its record, /metrics text)."""
    log = OutcomeLog(tmp_path)
    with LocalServer(HostileUpstream(behaviour).app) as upstream:
        entries = {"big-model": {"base_url": upstream.base_url, "model": "m"}}
        with running_gateway(router, entries, log=log) as (gateway, server):
            response, _, events = stream_events(server, {"model": "big-model", "messages": USER})
            wait_records(gateway)
            metrics = httpx.get(server.url + "/metrics").text
    return response, events, served_records(log)[response.headers["x-carrot-request-id"]], metrics


def test_a_stream_cut_short_is_a_broken_stream(knn_router, tmp_path):
    """Closed mid-answer (no finish_reason, no [DONE]): a stream_error, and the client's stream ends as a broken one."""
    response, events, record, metrics = stream_from_hostile("cut_short", knn_router, tmp_path)
    assert response.status_code == 200
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["code"] == "stream_interrupted" and "before [DONE]" in error["message"]
    assert record["status"] == "stream_error" and "before [DONE]" in record["error"]
    assert 'carrot_requests_total{model="big-model",status="stream_error"} 1.0' in metrics


def test_a_finished_stream_closed_without_the_done_sentinel_is_whole(knn_router, tmp_path):
    """Every choice gave its finish_reason, then the upstream closed without [DONE], as `transformers serve`
    does: the answer is whole, recorded ok, and the client's stream ends with [DONE] as a whole one does."""
    response, events, record, _ = stream_from_hostile("no_done", knn_router, tmp_path)
    assert response.status_code == 200 and events[-1] == "[DONE]"
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "stop"
    assert not any('"stream_interrupted"' in event for event in events)
    assert record["status"] == "ok" and "error" not in record


# ---------------------------------------------------------------------- 11: deadlines


@pytest.mark.parametrize("stream", [True, False])
def test_sse_comments_cannot_hold_an_attempt_past_its_timeout(knn_router, upstreams, tmp_path, stream):
    hostile = HostileUpstream("comments_only", comment_every_s=0.1)
    log = OutcomeLog(tmp_path)
    with LocalServer(hostile.app) as upstream:
        entries = upstream_entries(upstreams)
        entries["big-model"] = {"base_url": upstream.base_url, "model": "m", "timeout": 1.0}
        with running_gateway(knn_router, entries, log=log) as (gateway, server):
            started = time.monotonic()
            body = {"model": "carrot:0", "messages": USER}  # μ = 0 picks big-model first
            if stream:
                response, _, events = stream_events(server, body)
                assert events[-1] == "[DONE]"
            else:
                response = post(server, body)
            elapsed = time.monotonic() - started
            wait_records(gateway)
    assert response.status_code == 200
    assert response.headers["x-carrot-fallbacks"] == "big-model" and response.headers["x-carrot-model"] != "big-model"
    assert elapsed < 5  # the comments kept coming for a minute
    assert hostile.requests == 1


def test_a_client_trickling_its_body_gets_408(knn_router, upstreams):
    with running_gateway(knn_router, upstream_entries(upstreams), body_timeout_s=0.5) as (gateway, server):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"model\": ")
            started = time.monotonic()
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                part = sock.recv(65536)
                if not part:
                    break
                answer += part
            elapsed = time.monotonic() - started
        metrics = httpx.get(server.url + "/metrics").text
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert elapsed < 5
    assert 'carrot_rejected_requests_total{status="408"} 1.0' in metrics


# ------------------------------------------ 12: JSON the gateway cannot relay as it came


@pytest.mark.parametrize(
    "raw, needle",
    [
        (b'{"model": "carrot", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested more than"),
        (b'{"model": "carrot", "x": ' + b"[" * 150 + b"]" * 150 + b', "messages": ' + json.dumps(USER).encode() + b"}",
         "nested more than"),
        (b'{"model": "carrot", "temperature": NaN, "messages": ' + json.dumps(USER).encode() + b"}", "NaN"),
        (b'{"model": "carrot", "temperature": -Infinity, "messages": ' + json.dumps(USER).encode() + b"}", "Infinity"),
        (b'{"model": "carrot", "temperature": 1e400, "messages": ' + json.dumps(USER).encode() + b"}", "out of range"),
        (b'{"model": "big-model", "messages": [{"role": "system", "content": "be \\ud800 nice"}, '
         b'{"role": "user", "content": "hi"}]}', "lone surrogate"),
        (b'{"model": "carrot", "messages": [{"role": "user", "content": "hi \\udfff"}]}', "lone surrogate"),
    ],
)
def test_json_that_cannot_be_forwarded_gets_a_400(knn_router, upstreams, raw, needle):
    with running_gateway(knn_router, upstream_entries(upstreams)) as (_, server):
        response = post_raw(server, raw)
        metrics = httpx.get(server.url + "/metrics").text
    error = assert_openai_error(response, 400)
    assert needle in error["message"] and error["type"] == "invalid_request_error"
    assert 'carrot_rejected_requests_total{status="400"} 1.0' in metrics


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_answering_deeply_nested_json(knn_router, tmp_path, stream):
    hostile = HostileUpstream("nested")
    log = OutcomeLog(tmp_path)
    with LocalServer(hostile.app) as upstream:
        entries = {"big-model": {"base_url": upstream.base_url, "model": "m"}}
        with running_gateway(knn_router, entries, log=log) as (gateway, server):
            if stream:
                response, _, events = stream_events(server, {"model": "big-model", "messages": USER})
            else:
                response = post(server, {"model": "big-model", "messages": USER})
            wait_records(gateway)
            metrics = httpx.get(server.url + "/metrics").text
    record = served_records(log)[response.headers["x-carrot-request-id"]]
    if stream:  # the event is relayed as it came (the gateway only reads chunks it can)
        assert response.status_code == 200 and events[-1] == "[DONE]" and record["status"] == "ok"
    else:
        error = assert_openai_error(response, 502)
        assert "cannot relay" in error["message"] and "nested" in error["message"]
        assert record["status"] == "upstream_error"
        assert 'carrot_requests_total{model="big-model",status="upstream_error"} 1.0' in metrics


# ------------------------------------------------------------------ 5: the gateway key


@pytest.mark.parametrize("key", [" " * 20, "x", "short-key-123", "k" * 15, "é" * 20, "tab\tinside-a-long-key"])
def test_weak_or_unmatchable_gateway_keys_are_refused(key):
    with pytest.raises(ValueError, match="at least 16 printable ASCII characters"):
        GatewaySettings(api_key=key)


def test_a_good_gateway_key_is_accepted():
    assert GatewaySettings(api_key="Zt5-Yq9_x2LmP0aB").api_key == "Zt5-Yq9_x2LmP0aB"


@pytest.mark.parametrize("key", [" " * 20, "x", "é" * 20])
def test_carrot_serve_refuses_a_weak_gateway_key_in_one_line(tmp_path, capsys, monkeypatch, key):
    from carrot_hub.cli import main

    monkeypatch.setenv("CARROT_API_KEY", key)
    upstreams = tmp_path / "upstreams.json"
    upstreams.write_text(json.dumps({"big-model": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}}))
    code = main(["serve", "--upstreams", str(upstreams), "--host", "192.0.2.10", "--port", "0",
                 "--log-dir", str(tmp_path / "log")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("carrot serve: error: $CARROT_API_KEY must be at least 16 printable ASCII")
    assert "é" not in lines[0]  # the key itself is never echoed
