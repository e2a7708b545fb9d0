"""`carrot serve` end to end against a real LLM (slow): SmolLM2-135M-Instruct behind the local
OpenAI-compatible server, registered under the default router's priciest and cheapest candidate names,
plus a candidate whose upstream is a dead port and one served by `transformers serve` (the same model,
another implementation of the API); every server runs as a subprocess on 127.0.0.1 and the gateway is
driven with the `openai` SDK.

The local server fails its first chat request with a 503 (`--fail-first 1`): the module's first
request (sent by the fixture, before any test) shows a real fallback.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from carrot_hub.configuration_carrot import CarrotConfig
from carrot_hub.data import load_routing_table
from carrot_hub.data.outcome_log_reader import read_outcome_log
from carrot_hub.default import build_default_router, default_cache_dir
from carrot_hub.serving.local_llm import ensure_local_llm

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 240
MAX_TOKENS = 12
CODE_PROMPT = "Write a python function that returns the nth Fibonacci number."
QUESTION = "Which planet is known as the red planet?"


class ServerProcess:
    """A subprocess whose output is collected by a thread; `wait_for(pattern)` is bounded in time."""

    def __init__(self, args: list[str], env: dict):
        self.process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, bufsize=1)
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout_s: float = START_TIMEOUT_S) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(f"{self.process.args[:4]} exited ({self.process.wait()}):\n" + self.output())
            if match := re.search(pattern, line):
                return match
        raise TimeoutError(f"No {pattern!r} within {timeout_s} s from {self.process.args[:4]}:\n" + self.output())

    def output(self) -> str:
        return "\n".join(self.lines[-40:])

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


def _dead_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _candidates_by_price() -> list[str]:
    """The default router's candidates, cheapest first (names come from its config, not from code)."""
    folder = default_cache_dir()
    if not (folder / "model.safetensors").is_file():
        build_default_router(folder, progress=False)
    config = CarrotConfig.from_pretrained(folder)
    prices = zip(config.input_price_per_million, config.output_price_per_million)
    return [name for _, name in sorted(zip((i + o for i, o in prices), config.candidate_models))]


def _wait_healthy(url: str, process: ServerProcess, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            raise RuntimeError(f"{process.process.args[:3]} exited:\n" + process.output())
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy within {timeout_s} s:\n" + process.output())


class Gateway:
    def __init__(self, url, client, priciest, cheapest, dead, third_party, log_dir):
        self.url, self.client = url, client
        self.priciest, self.cheapest, self.dead, self.log_dir = priciest, cheapest, dead, log_dir
        self.third_party = third_party  # served by `transformers serve`
        self.request_ids: list[str] = []  # x-carrot-request-id of every chat request sent, failed ones included
        self.first = None

    def chat(self, model: str, prompt: str = QUESTION, **options):
        """One chat request: `(headers, completion)` (or `(headers, chunks)` when streamed)."""
        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS, temperature=0,
                **options)
        except openai.APIStatusError as error:
            self.request_ids.append(error.response.headers.get("x-carrot-request-id"))
            raise
        self.request_ids.append(raw.headers["x-carrot-request-id"])
        parsed = raw.parse()
        return raw.headers, (list(parsed) if options.get("stream") else parsed)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    folder = ensure_local_llm()  # converts once (a minute or two) into the cache the servers read
    work = tmp_path_factory.mktemp("serve-real-llm")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    cheapest, dead, third_party, *_, priciest = _candidates_by_price()
    processes = []
    try:
        llm = ServerProcess([sys.executable, "-m", "carrot_hub.serving.local_llm_server", "--port", "0",
                             "--fail-first", "1", "--threads", "1"], env)
        processes.append(llm)
        transformers_port = _dead_port()  # free now; `transformers serve` binds it
        transformers_serve = ServerProcess([str(Path(sys.executable).with_name("transformers")), "serve", str(folder),
                                            "--host", "127.0.0.1", "--port", str(transformers_port)], env)
        processes.append(transformers_serve)
        model_id, llm_url = llm.wait_for(r"Serving (\S+) on (http://127\.0\.0\.1:\d+/v1)").groups()
        _wait_healthy(f"http://127.0.0.1:{transformers_port}/health", transformers_serve)
        upstreams = {name: {"base_url": llm_url, "model": model_id, "timeout": 120} for name in (priciest, cheapest)}
        upstreams[dead] = {"base_url": f"http://127.0.0.1:{_dead_port()}/v1", "model": model_id, "timeout": 5}
        upstreams[third_party] = {"base_url": f"http://127.0.0.1:{transformers_port}/v1", "model": str(folder),
                                  "timeout": 120}
        (work / "upstreams.yaml").write_text(yaml.safe_dump(upstreams))
        server = ServerProcess([sys.executable, "-m", "carrot_hub.cli", "serve", "--upstreams",
                                str(work / "upstreams.yaml"), "--port", "0", "--threads", "1",
                                "--log-dir", str(work / "logs")], env)
        processes.append(server)
        url = server.wait_for(r"on (http://127\.0\.0\.1:\d+)/v1").group(1)
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=180)
        served = Gateway(url, client, priciest, cheapest, dead, third_party, work / "logs")
        # The first chat request: the local server's injected 503 meets whichever candidate is chosen.
        served.first = served.chat("carrot", extra_body={"carrot": {"allowed": [priciest, cheapest]}})
        yield served
    finally:
        for process in reversed(processes):
            process.stop()


def test_the_first_request_falls_back_past_the_injected_503(gateway):
    headers, completion = gateway.first
    failed = headers["x-carrot-fallbacks"]
    assert failed in (gateway.priciest, gateway.cheapest)
    answered = ({gateway.priciest, gateway.cheapest} - {failed}).pop()
    assert completion.model == headers["x-carrot-model"] == answered
    assert completion.choices[0].message.content.strip()
    assert 1 <= completion.usage.completion_tokens <= MAX_TOKENS


def test_the_knob_routes_to_both_candidates(gateway):
    allowed = {"carrot": {"allowed": [gateway.priciest, gateway.cheapest]}}
    quality_first, _ = gateway.chat("carrot:0", CODE_PROMPT, extra_body=allowed)
    cost_first, completion = gateway.chat("carrot:1", CODE_PROMPT, extra_body=allowed)
    assert cost_first["x-carrot-model"] == completion.model == gateway.cheapest
    assert quality_first["x-carrot-model"] == gateway.priciest
    assert float(quality_first["x-carrot-predicted-cost"]) > float(cost_first["x-carrot-predicted-cost"])
    assert float(quality_first["x-carrot-mu"]) == 0.0 and float(cost_first["x-carrot-mu"]) == 1.0
    assert not quality_first["x-carrot-fallbacks"] and not cost_first["x-carrot-fallbacks"]


def test_a_candidate_name_pins_the_model(gateway):
    headers, completion = gateway.chat(gateway.cheapest)
    assert completion.model == headers["x-carrot-model"] == gateway.cheapest
    assert headers["x-carrot-mu"] == "none"
    assert completion.usage.completion_tokens <= MAX_TOKENS


def test_streaming_through_the_gateway(gateway):
    headers, chunks = gateway.chat("carrot:0.5", stream=True, stream_options={"include_usage": True},
                                   extra_body={"carrot": {"allowed": [gateway.priciest, gateway.cheapest]}})
    text = "".join(choice.delta.content or "" for chunk in chunks for choice in chunk.choices)
    assert text.strip()
    assert {chunk.model for chunk in chunks} == {headers["x-carrot-model"]}
    assert chunks[-1].usage is not None and 1 <= chunks[-1].usage.completion_tokens <= MAX_TOKENS
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


def test_a_dead_upstream_falls_back_to_a_live_one(gateway):
    # μ = 1 with the dead candidate made free: the router must choose it, the connection is refused.
    headers, completion = gateway.chat("carrot:1", extra_body={"carrot": {
        "allowed": [gateway.dead, gateway.priciest], "prices": {gateway.dead: {"input": 0, "output": 0}}}})
    assert headers["x-carrot-fallbacks"] == gateway.dead
    assert completion.model == headers["x-carrot-model"] == gateway.priciest
    assert completion.choices[0].message.content.strip()


def test_a_pinned_dead_upstream_is_an_openai_error(gateway):
    with pytest.raises(openai.APIStatusError) as caught:
        gateway.chat(gateway.dead)
    assert caught.value.status_code >= 500
    assert gateway.dead in str(caught.value)


def test_a_third_party_server_behind_the_gateway(gateway):
    """`transformers serve` streams its own way (usage on the finishing chunk, no `[DONE]`): still one answer."""
    headers, completion = gateway.chat(gateway.third_party)
    assert completion.model == headers["x-carrot-model"] == gateway.third_party
    assert completion.choices[0].message.content.strip() and completion.usage.completion_tokens <= MAX_TOKENS
    headers, chunks = gateway.chat(gateway.third_party, stream=True, stream_options={"include_usage": True})
    assert "".join(choice.delta.content or "" for chunk in chunks for choice in chunk.choices).strip()
    usage = [chunk.usage for chunk in chunks if chunk.usage is not None]
    assert len(usage) == 1 and 1 <= usage[0].completion_tokens <= MAX_TOKENS


def test_every_request_is_logged_and_feedback_closes_the_loop(gateway):
    """Runs last: every chat request above has one record; a label makes the log routing data."""
    deadline = time.monotonic() + 30
    while len(read_outcome_log(gateway.log_dir).served) < len(gateway.request_ids) and time.monotonic() < deadline:
        time.sleep(0.2)
    contents = read_outcome_log(gateway.log_dir)
    assert sorted(contents.served) == sorted(gateway.request_ids)
    assert not contents.bad_lines and not contents.torn_lines

    headers, completion = gateway.first
    first = contents.served[headers["x-carrot-request-id"]]
    assert first["status"] == "ok" and first["model"] == completion.model
    assert first["fallbacks"] == [headers["x-carrot-fallbacks"]] and first["prompt"] == QUESTION
    config = CarrotConfig.from_pretrained(default_cache_dir())
    prices = {m: (i, o) for m, i, o in zip(config.candidate_models, config.input_price_per_million,
                                           config.output_price_per_million)}
    for record in contents.served.values():
        if record["status"] != "ok":
            continue
        usage = record["usage"]
        assert 1 <= usage["completion_tokens"] <= MAX_TOKENS and usage["prompt_tokens"] > 0
        input_price, output_price = prices[record["model"]]
        expected = (usage["prompt_tokens"] * input_price + usage["completion_tokens"] * output_price) / 1e6
        assert record["realised_cost"] == pytest.approx(expected)

    response = httpx.post(f"{gateway.url}/v1/feedback", json={"request_id": first["request_id"], "score": 1.0},
                          timeout=30)
    assert response.status_code == 200, response.text
    table = load_routing_table(str(gateway.log_dir))
    row, column = table.prompts.index(QUESTION), table.models.index(first["model"])
    assert table.scores[row, column] == 1.0
