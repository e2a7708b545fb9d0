"""The benchmarks' load clients: bounded in count and time, loopback only, each request timed."""

import asyncio
import socket

import httpx
import pytest

from carrot_hub.serving.fake_upstream import FakeUpstream, FakeUpstreamConfig
from carrot_hub.serving.load_clients import Deadline, load, percentiles, run_clients, timed_request
from carrot_hub.serving.local_server import LocalServer


@pytest.fixture(scope="module")
def fake():
    upstream = FakeUpstream(FakeUpstreamConfig(model="fake", latency_s=0.05, reply_words=40, chunk_words=4,
                                               tokens_per_s=400))
    with LocalServer(upstream.app) as server:
        yield upstream, server.base_url + "/chat/completions"


def body(stream: bool) -> dict:
    return {"model": "fake", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}


def test_clients_share_a_bounded_count_and_time_first_and_last_byte(fake):
    upstream, url = fake
    before = upstream.requests
    replies = asyncio.run(load(url, [body(True)], clients=4, total=10, deadline=Deadline(30)))
    assert len(replies) == 10 and upstream.requests - before == 10
    assert all(r.ok and r.headers["content-type"].startswith("text/event-stream") for r in replies)
    # The fake answers after 50 ms, then streams 40 tokens at 400/s: the first byte comes well before the last.
    assert all(0.05 <= r.ttfb_s < r.total_s for r in replies)
    assert all(r.total_s - r.ttfb_s >= 0.05 for r in replies)


def test_a_plain_answer_comes_whole(fake):
    _, url = fake
    (reply,) = asyncio.run(load(url, [body(False)], clients=1, total=1, deadline=Deadline(30)))
    assert reply.ok and reply.ttfb_s >= 0.05 and reply.total_s >= reply.ttfb_s


def test_the_deadline_and_stop_end_the_clients(fake):
    _, url = fake
    assert asyncio.run(load(url, [body(False)], clients=8, total=1000, deadline=Deadline(0))) == []

    async def stopped_after_three():
        stop, seen = asyncio.Event(), []

        async def send(client, index):
            seen.append(await timed_request(client, "POST", url, json=body(False)))
            if len(seen) == 3:
                stop.set()
            return seen[-1]

        return await run_clients(send, 1, 1000, Deadline(30), stop=stop)

    assert len(asyncio.run(stopped_after_three())) == 3


def test_only_loopback_hosts_are_sent_to():
    with pytest.raises(ValueError, match="loopback only"):
        asyncio.run(load("http://example.com/v1/chat/completions", [body(False)], 1, 1, Deadline(5)))


def test_a_broken_connection_is_status_zero_not_an_exception():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (reply,) = asyncio.run(load(f"http://127.0.0.1:{port}/v1/chat/completions", [body(False)], 1, 1, Deadline(5)))
    assert reply.status == 0 and reply.ttfb_s is None and not reply.ok


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="at least one client"):
        asyncio.run(load("http://127.0.0.1:1/", [body(False)], 0, 1, Deadline(5)))


def test_percentiles_leave_out_missing_values():
    assert percentiles([0.1, None, 0.3], (50, 90)) == {"p50_ms": 200.0, "p90_ms": 280.0, "n": 2}
    assert percentiles([None]) == {"p50_ms": None, "p99_ms": None, "n": 0}


def test_the_fake_can_answer_a_fixed_reply():
    upstream = FakeUpstream(FakeUpstreamConfig(model="judge", reply="The answer holds.\nScore: 7"))
    with LocalServer(upstream.app) as server:
        answer = httpx.post(server.base_url + "/chat/completions", json=body(False)).json()
    assert answer["choices"][0]["message"]["content"] == "The answer holds.\nScore: 7"
    assert answer["usage"]["completion_tokens"] == 5
