"""`carrot serve --log-answers`: the answering model's text goes into the outcome log (streamed answers
assembled), scrubbed of keys, cut at `MAX_ANSWER_CHARS`, and never for a log that keeps no prompts."""

import json

import httpx
import pytest

from carrot_hub.cli import main
from carrot_hub.serving.local_server import LocalServer
from carrot_hub.serving.outcome_log_writer import MAX_ANSWER_CHARS, OutcomeLog
from tests.conftest import TINY_MODELS
from tests.hostile_upstream import HostileUpstream
from tests.serve_fixtures import fake_upstreams, running_gateway, served_records, upstream_entries, wait_records

USER = [{"role": "user", "content": "Write a python function that returns the nth Fibonacci number."}]
SECRET = "sk-hostile-0123456789abcdef"


@pytest.fixture(scope="module")
def upstreams():
    with fake_upstreams(TINY_MODELS) as running:
        yield running


def _served(knn_router, upstreams, log, *bodies):
    """Send each body (a streamed one is read to its end); the served records by request id, and the responses."""
    responses = []
    with running_gateway(knn_router, upstream_entries(upstreams), log=log) as (gateway, server):
        for body in bodies:
            if body.get("stream"):
                with httpx.stream("POST", server.base_url + "/chat/completions", json=body, timeout=30) as response:
                    response.read()
                responses.append(response)
            else:
                responses.append(httpx.post(server.base_url + "/chat/completions", json=body, timeout=30))
        wait_records(gateway)
    records = served_records(log)
    return [records[r.headers["x-carrot-request-id"]] for r in responses], responses


def test_answers_are_logged_plain_and_streamed(knn_router, upstreams, tmp_path):
    log = OutcomeLog(tmp_path / "log", log_answers=True)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    (plain, streamed, pinned, with_tools), responses = _served(
        knn_router, upstreams, log,
        {"model": "carrot:0.5", "messages": USER},
        {"model": "carrot:1", "messages": USER, "stream": True},
        {"model": "mid-model", "messages": USER},
        {"model": "carrot:1", "messages": USER, "tools": tools})
    assert plain["answer"] == responses[0].json()["choices"][0]["message"]["content"] and plain["plain_chat"] is True
    # The streamed answer is the content of its chunks, assembled (the fake streams numbered words).
    chunks = [json.loads(line[len("data: "):]) for line in responses[1].text.splitlines()
              if line.startswith("data: {")]
    assert streamed["answer"] == "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c.get("choices"))
    assert streamed["answer"].startswith("w0 w1") and streamed["status"] == "ok"
    assert pinned["answer"].startswith("mid-model-upstream-id says")
    assert with_tools["plain_chat"] is False  # a judge cannot grade it as text: `carrot logs judge` skips it
    assert not any(r.get("answer_truncated") for r in (plain, streamed, pinned, with_tools))


def test_answers_are_not_logged_by_default_nor_without_prompts(knn_router, upstreams, tmp_path):
    default, _ = _served(knn_router, upstreams, OutcomeLog(tmp_path / "default"), {"model": "carrot", "messages": USER})
    private_log = OutcomeLog(tmp_path / "private", log_prompts=False, log_answers=True)
    private, _ = _served(knn_router, upstreams, private_log, {"model": "carrot", "messages": USER})
    assert "answer" not in default[0] and "plain_chat" not in default[0]
    assert not private_log.log_answers
    assert "answer" not in private[0] and "prompt" not in private[0] and private[0]["prompt_sha256"]
    # The writer drops an answer it is handed for a log that keeps no prompts, whoever hands it.
    with OutcomeLog(tmp_path / "direct", log_prompts=False, log_answers=True) as direct:
        direct.record({"request_id": "r1", "model": "big-model", "prompt": "p", "answer": "a", "status": "ok"})
    assert "answer" not in served_records(direct)["r1"]


def test_a_long_answer_is_cut_and_marked(knn_router, tmp_path):
    log = OutcomeLog(tmp_path / "log", log_answers=True)
    with fake_upstreams(TINY_MODELS, reply_words=12_000) as wordy:  # "w0 w1 … w11999": about 70,000 characters
        (record,), responses = _served(knn_router, wordy, log, {"model": "carrot", "messages": USER, "stream": True})
    assert len(record["answer"]) == MAX_ANSWER_CHARS and record["answer_truncated"] is True
    assert record["answer"].startswith("w0 w1 w2")
    assert responses[0].status_code == 200 and "[DONE]" in responses[0].text  # the client got all of it


def test_keys_are_scrubbed_from_logged_answers(knn_router, tmp_path):
    hostile = HostileUpstream("quote_key")
    log = OutcomeLog(tmp_path / "log", log_answers=True)
    with LocalServer(hostile.app) as upstream:
        entries = {"big-model": {"base_url": upstream.base_url, "model": "m", "api_key_env": "HOSTILE_KEY"}}
        with running_gateway(knn_router, entries, environ={"HOSTILE_KEY": SECRET}, log=log) as (gateway, server):
            plain = httpx.post(server.base_url + "/chat/completions", json={"model": "carrot", "messages": USER})
            with httpx.stream("POST", server.base_url + "/chat/completions",
                              json={"model": "carrot", "messages": USER, "stream": True}) as streamed:
                streamed.read()
            wait_records(gateway)
    records = served_records(log)
    assert records[plain.headers["x-carrot-request-id"]]["answer"] == "my key is ***"
    assert records[streamed.headers["x-carrot-request-id"]]["answer"] == "key first: ***some words and again: *** "
    shards = "".join(path.read_text() for path in log.folder.iterdir())
    assert SECRET not in shards and SECRET[: len(SECRET) // 2] not in shards


def test_log_answers_with_no_prompt_log_is_one_line_and_exit_2(tmp_path, capsys):
    upstreams = tmp_path / "upstreams.json"
    upstreams.write_text(json.dumps({"big-model": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}}))
    code = main(["serve", "--upstreams", str(upstreams), "--port", "0", "--log-answers", "--no-prompt-log"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "--log-answers" in lines[0] and "--no-prompt-log" in lines[0], lines
