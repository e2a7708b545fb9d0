"""The gateway keeps its records under hostile upstreams and a hostile disk: untrusted usage, the open
shard deleted, a full disk, huge upstream bodies (issue 23, items 6, 7, 8, 10)."""

import errno
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from carrot_hub.data.outcome_log_reader import read_outcome_log, shard_paths
from carrot_hub.serving import outcome_log_writer as outcome_log_module
from carrot_hub.serving.local_server import LocalServer
from carrot_hub.serving.outcome_log_writer import OutcomeLog
from tests.serve_fixtures import running_gateway, served_records, wait_records

USER = [{"role": "user", "content": "Write a python function that returns the nth Fibonacci number."}]


class HostileUpstream:
    """An OpenAI-compatible upstream whose usage block (and answer size) the test sets."""

    def __init__(self):
        self.usage = {"prompt_tokens": 5, "completion_tokens": 7}
        self.padding = 0  # extra bytes of content in a plain answer
        self.padded_chunks = 0  # a stream (without content-length) of this many more 2 KiB chunks after the first
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request):
        body = await request.json()
        if not body.get("stream"):
            return JSONResponse({"id": "x", "object": "chat.completion", "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": "hi" + "x" * self.padding}}],
                                 "usage": self.usage})
        chunks = [{"id": "x", "object": "chat.completion.chunk", "model": body["model"],
                   "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]},
                  {"id": "x", "object": "chat.completion.chunk", "model": body["model"], "choices": [],
                   "usage": self.usage}]
        if self.padded_chunks:
            padded = {**chunks[0], "choices": [{"index": 0, "delta": {"content": "x" * 2048}, "finish_reason": None}]}
            frames = [chunks[0], *[padded] * self.padded_chunks, chunks[1]]

            async def trickle():
                for chunk in frames:
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
                yield b"data: [DONE]\n\n"

            return StreamingResponse(trickle(), media_type="text/event-stream")
        text = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
        return Response(text, media_type="text/event-stream")


@pytest.fixture
def hostile():
    upstream = HostileUpstream()
    with LocalServer(upstream.app) as server:
        yield upstream, server


def entries_for(server, **extra):
    # One connection per upstream: a connection never released makes the next request wait for the pool.
    return {name: {"base_url": server.base_url, "model": "m", "timeout": 2.0, "max_concurrency": 1, **extra}
            for name in ("big-model", "mid-model", "small-model")}


BAD_USAGES = [
    {"prompt_tokens": -5, "completion_tokens": 7},
    {"prompt_tokens": 5, "completion_tokens": 10**400},
    {"prompt_tokens": 5, "completion_tokens": 2**63},
    {"prompt_tokens": 5.5, "completion_tokens": 7},
    {"prompt_tokens": "5", "completion_tokens": 7},
    {"prompt_tokens": True, "completion_tokens": 7},
]


@pytest.mark.parametrize("stream", [False, True])
def test_untrusted_usage_is_recorded_as_invalid_and_never_breaks_a_request(knn_router, hostile, tmp_path, stream):
    upstream, server = hostile
    log = OutcomeLog(tmp_path / "log")
    with running_gateway(knn_router, entries_for(server), log=log, route_window_s=0.0) as (gateway, gw):
        with httpx.Client(base_url=gw.base_url, timeout=10) as client:
            ids = []
            for usage in BAD_USAGES:
                upstream.usage = usage
                response = client.post("chat/completions", json={"model": "big-model", "messages": USER, "stream": stream})
                assert response.status_code == 200, response.text
                assert "hi" in response.text and (not stream or response.text.rstrip().endswith("[DONE]"))
                ids.append(response.headers["x-carrot-request-id"])
            # Every connection was released: more requests than the pool holds still get through.
            upstream.usage = {"prompt_tokens": 5, "completion_tokens": 7}
            for _ in range(3):
                response = client.post("chat/completions", json={"model": "big-model", "messages": USER, "stream": stream})
                assert response.status_code == 200, response.text
            wait_records(gateway)
            metrics = client.get(gw.url + "/metrics").text
    records = served_records(log)
    for request_id in ids:
        record = records[request_id]
        assert record["status"] == "ok" and record["usage"] is None and record["realised_cost"] is None
        assert "usage_invalid" in record and len(record["usage_invalid"]) <= 200
    assert 'carrot_invalid_usage_total{model="big-model"} 6.0' in metrics


# ------------------------------------------------------------------ 7. the open shard deleted


def test_a_shard_deleted_while_open_is_noticed_and_later_records_and_their_feedback_survive(knn_router, hostile, tmp_path):
    _, server = hostile
    log = OutcomeLog(tmp_path / "log")
    with running_gateway(knn_router, entries_for(server), log=log, route_window_s=0.0) as (gateway, gw):
        with httpx.Client(base_url=gw.base_url, timeout=10) as client:
            assert client.post("chat/completions", json={"model": "big-model", "messages": USER}).status_code == 200
            wait_records(gateway)
            deleted = log.shard
            deleted.unlink()  # an operator cleaning up, or logrotate
            later = [client.post("chat/completions", json={"model": "big-model", "messages": USER}) for _ in range(3)]
            wait_records(gateway)
            for response in later:
                feedback = client.post("feedback", json={"request_id": response.headers["x-carrot-request-id"],
                                                         "score": 1.0})
                assert feedback.status_code == 200, feedback.text
            health = client.get(gw.url + "/health").json()
    assert log.shard != deleted and log.shard.exists()
    contents = read_outcome_log(log.folder)
    assert {r.headers["x-carrot-request-id"] for r in later} <= set(contents.served)
    assert {r.headers["x-carrot-request-id"] for r in later} <= set(contents.labels)
    assert health["outcome_log"]["reopened_shards"] == 1 and health["status"] == "ok"


def test_a_shard_replaced_while_open_is_noticed(tmp_path):
    with OutcomeLog(tmp_path) as log:
        log.record({"request_id": "r1", "model": "big-model"})
        first = log.shard
        first.rename(tmp_path / "moved-away.jsonl")
        first.write_text("")  # another file now has the shard's name
        log.record({"request_id": "r2", "model": "big-model"})
        assert log.shard != first and log.reopened == 1
    assert set(read_outcome_log(tmp_path).served) == {"r2"}


# ------------------------------------------------------------------ 8. a full disk


class FullDisk:
    """`os.write` for the outcome log that writes part of a line, then fails like a full disk."""

    def __init__(self, code=errno.ENOSPC):
        self.code, self.full, self.calls = code, True, 0

    def __call__(self, fd, data):
        import os

        self.calls += 1
        if not self.full:
            return os.write(fd, data)
        os.write(fd, bytes(data[: max(1, len(data) // 2)]))  # half the line reaches the file
        raise OSError(self.code, os.strerror(self.code))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG])
def test_a_failed_write_leaves_no_half_record(tmp_path, monkeypatch, code):
    disk = FullDisk(code)
    with OutcomeLog(tmp_path) as log:
        log.record({"request_id": "r1", "model": "big-model"})
        monkeypatch.setattr(outcome_log_module, "_write", disk)
        with pytest.raises(OSError):
            log.record({"request_id": "r2", "model": "big-model"})
        assert log.health()["status"] == "failing" and log.write_errors == 1
        assert errno.errorcode[code] in log.health()["last_error"]
        disk.full = False  # space comes back
        log.record({"request_id": "r3", "model": "big-model"})
        assert log.health()["status"] == "ok"
    text = b"".join(path.read_bytes() for path in shard_paths(tmp_path))
    assert all(json.loads(line) for line in text.splitlines())  # every line whole: nothing fused
    contents = read_outcome_log(tmp_path)
    assert set(contents.served) == {"r1", "r3"} and not contents.bad_lines and contents.torn_lines == 0


def test_a_full_disk_is_reported_and_serving_goes_on(knn_router, hostile, tmp_path, monkeypatch):
    _, server = hostile
    disk = FullDisk()
    log = OutcomeLog(tmp_path / "log")
    with running_gateway(knn_router, entries_for(server), log=log, route_window_s=0.0) as (gateway, gw):
        with httpx.Client(base_url=gw.base_url, timeout=10) as client:
            kept = client.post("chat/completions", json={"model": "big-model", "messages": USER})
            wait_records(gateway)
            monkeypatch.setattr(outcome_log_module, "_write", disk)
            lost = client.post("chat/completions", json={"model": "big-model", "messages": USER})
            assert lost.status_code == 200  # the answer still reaches the client
            wait_records(gateway)
            health = client.get(gw.url + "/health").json()
            metrics = client.get(gw.url + "/metrics").text
            feedback = client.post("feedback", json={"request_id": kept.headers["x-carrot-request-id"], "score": 1})
            assert feedback.status_code == 503 and feedback.json()["error"]["code"] == "outcome_log_unavailable"
            disk.full = False
            again = client.post("chat/completions", json={"model": "big-model", "messages": USER})
            wait_records(gateway)
            healed = client.get(gw.url + "/health").json()
            assert client.post("feedback", json={"request_id": again.headers["x-carrot-request-id"],
                                                 "score": 1}).status_code == 200
    assert health["status"] == "degraded" and health["outcome_log"]["status"] == "failing"
    assert "ENOSPC" in health["outcome_log"]["last_error"]
    assert "carrot_outcome_log_failing 1.0" in metrics and "carrot_outcome_records_lost_total 1.0" in metrics
    assert healed["status"] == "ok"
    contents = read_outcome_log(log.folder)
    ids = {r.headers["x-carrot-request-id"] for r in (kept, again)}
    assert set(contents.served) == ids and not contents.bad_lines and contents.torn_lines == 0


# ------------------------------------------------------------------ 10. the feedback index, bounded


def test_the_feedback_index_is_bounded_to_the_most_recent_requests(tmp_path):
    with OutcomeLog(tmp_path, feedback_window=3) as log:
        ids = [f"carrot-{i:032x}" for i in range(5)] + ["custom-id"]
        for request_id in ids:
            log.record({"request_id": request_id, "model": "big-model", "status": "ok"})
        assert len(log._index.where) == 3
        assert log.feedback("custom-id", 1.0)["request_id"] == "custom-id"
        assert log.feedback(ids[4], 1.0)["request_id"] == ids[4]
        with pytest.raises(KeyError):
            log.feedback(ids[0], 1.0)  # forgotten: the oldest served request
        assert len(log._index.where) == 3  # the refresh a miss makes does not re-add what was forgotten
    with pytest.raises(ValueError, match="feedback_window must be a positive"):
        OutcomeLog(tmp_path, feedback_window=0)


def test_own_records_are_found_without_reading_a_shard(tmp_path, monkeypatch):
    with OutcomeLog(tmp_path) as log:
        log.record({"request_id": "r1", "model": "big-model", "status": "ok"})

        def no_reading(*args, **kwargs):
            raise AssertionError("a shard was read to find a request this process served")

        monkeypatch.setattr(outcome_log_module, "read_shard_lines", no_reading)
        assert log.feedback("r1", 1.0)["request_id"] == "r1"


def test_a_refresh_never_holds_up_the_records_being_written(tmp_path, monkeypatch):
    import threading

    from carrot_hub.data.outcome_log_reader import read_shard_lines

    with OutcomeLog(tmp_path / "other") as other:  # another worker's shard, to be read on a miss
        other.record({"request_id": "theirs", "model": "big-model", "status": "ok"})
    for path in shard_paths(tmp_path / "other"):
        path.rename(tmp_path / path.name)
    reading, release = threading.Event(), threading.Event()

    def slow_read(*args, **kwargs):
        reading.set()
        release.wait(10)
        return read_shard_lines(*args, **kwargs)

    with OutcomeLog(tmp_path) as log:
        monkeypatch.setattr(outcome_log_module, "read_shard_lines", slow_read)
        found = {}
        looking = threading.Thread(target=lambda: found.update(log.feedback("theirs", 1.0)))
        looking.start()
        assert reading.wait(10)
        writing = threading.Thread(target=log.record, args=({"request_id": "mine", "model": "big-model"},))
        writing.start()
        writing.join(2)
        assert not writing.is_alive(), "a record waited for the feedback index's refresh"
        release.set()
        looking.join(10)
    assert found["request_id"] == "theirs"


def test_a_feedback_lookup_never_runs_on_the_gateways_writer_thread(knn_router, hostile, tmp_path, monkeypatch):
    import threading

    from carrot_hub.data.outcome_log_reader import read_shard_lines

    _, server = hostile
    with OutcomeLog(tmp_path / "other") as other:  # another worker's shard, read on the first miss
        other.record({"request_id": "theirs", "model": "big-model", "status": "ok"})
    (tmp_path / "log").mkdir()
    for path in shard_paths(tmp_path / "other"):
        path.rename(tmp_path / "log" / path.name)
    reading, release = threading.Event(), threading.Event()

    def slow_read(*args, **kwargs):
        reading.set()
        release.wait(10)
        return read_shard_lines(*args, **kwargs)

    log = OutcomeLog(tmp_path / "log")
    with running_gateway(knn_router, entries_for(server), log=log, route_window_s=0.0) as (gateway, gw):
        monkeypatch.setattr(outcome_log_module, "read_shard_lines", slow_read)
        labelled = {}
        looking = threading.Thread(target=lambda: labelled.update(
            response=httpx.post(gw.base_url + "/feedback", json={"request_id": "theirs", "score": 1}, timeout=20)))
        looking.start()
        assert reading.wait(10)
        answer = httpx.post(gw.base_url + "/chat/completions", json={"model": "big-model", "messages": USER}, timeout=10)
        written = gateway._log_writer.submit(lambda: None)
        try:
            written.result(timeout=2)  # the writer is free while the lookup reads the other shard
        finally:
            release.set()
            looking.join(20)
    assert answer.status_code == 200 and labelled["response"].status_code == 200
    assert answer.headers["x-carrot-request-id"] in served_records(log)


# ------------------------------------------------------------------ 10. upstream bodies, bounded


def test_an_answer_larger_than_max_response_bytes_fails_like_a_broken_upstream(knn_router, hostile, tmp_path):
    upstream, server = hostile
    entries = entries_for(server)
    entries["big-model"]["max_response_bytes"] = 4096
    upstream.padding = 64 * 1024
    log = OutcomeLog(tmp_path / "log")
    with running_gateway(knn_router, entries, log=log, route_window_s=0.0) as (gateway, gw):
        with httpx.Client(base_url=gw.base_url, timeout=10) as client:
            pinned = client.post("chat/completions", json={"model": "big-model", "messages": USER})
            routed = client.post("chat/completions", json={"model": "carrot:0", "messages": USER})
            upstream.padding = 0
            upstream.padded_chunks = 8  # the limit is passed after the first event: the stream ends with an error
            with client.stream("POST", "chat/completions",
                               json={"model": "big-model", "messages": USER, "stream": True}) as streamed:
                events = [line.removeprefix("data: ") for line in streamed.iter_lines() if line.startswith("data: ")]
            upstream.padded_chunks = 0
            after = client.post("chat/completions", json={"model": "big-model", "messages": USER, "stream": True})
            wait_records(gateway)
    assert pinned.status_code == 502 and "answer too large" in pinned.json()["error"]["message"]
    assert "max_response_bytes = 4096" in pinned.json()["error"]["message"]
    assert routed.status_code == 200 and routed.headers["x-carrot-fallbacks"] == "big-model"
    assert json.loads(events[-1])["error"]["code"] == "stream_interrupted" and "[DONE]" not in events
    assert after.status_code == 200 and "[DONE]" in after.text  # the connection was released
    records = served_records(log)
    assert records[pinned.headers["x-carrot-request-id"]]["status"] == "upstream_error"
    assert records[streamed.headers["x-carrot-request-id"]]["status"] == "stream_error"


@pytest.mark.parametrize("value", [0, 100, "16MB", True])
def test_max_response_bytes_is_checked_in_the_upstreams_file(value):
    from carrot_hub.serving.upstreams import UpstreamConfigError, parse_upstreams

    with pytest.raises(UpstreamConfigError, match="max_response_bytes must be an integer of at least 1024"):
        parse_upstreams({"big-model": {"base_url": "http://127.0.0.1:1/v1", "model": "m", "max_response_bytes": value}})
