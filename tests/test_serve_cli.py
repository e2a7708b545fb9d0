"""`carrot serve`: start-up errors are one line with exit code 2; a real start serves and stops cleanly."""

import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import TINY_MODELS
from tests.serve_cli_helpers import ENV, assert_one_line, run, write
from tests.serve_fixtures import fake_upstreams, upstream_entries

ONE = {"big-model": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}}


def test_no_upstream_is_a_start_up_error(tmp_path, capsys):
    code, err = run(["serve", "--upstreams", write(tmp_path, "{}"), "--port", "0"], capsys)
    assert code == 2
    assert_one_line(err, "names no upstream")


def test_missing_upstreams_file(tmp_path, capsys):
    code, err = run(["serve", "--upstreams", tmp_path / "nope.yaml"], capsys)
    assert code == 2
    assert_one_line(err, "Cannot read the upstreams file")


def test_missing_key_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CARROT_TEST_NO_SUCH_KEY", raising=False)
    entries = {"big-model": {**ONE["big-model"], "api_key_env": "CARROT_TEST_NO_SUCH_KEY"}}
    code, err = run(["serve", "--upstreams", write(tmp_path, entries), "--port", "0", "--log-dir", tmp_path / "log"],
                    capsys)
    assert code == 2
    assert_one_line(err, "$CARROT_TEST_NO_SUCH_KEY, which is not set")


def test_unknown_model_in_the_upstreams_file(saved_knn_router, tmp_path, capsys):
    entries = {"gpt-17": ONE["big-model"]}
    code, err = run(["serve", saved_knn_router, "--upstreams", write(tmp_path, entries), "--port", "0",
                     "--log-dir", tmp_path / "log"], capsys)
    assert code == 2
    assert_one_line(err, "'gpt-17', which is not a candidate", "Known candidates: big-model, mid-model, small-model")


def test_port_in_use(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = run(["serve", "--upstreams", write(tmp_path, ONE), "--port", port], capsys)
    assert code == 2
    assert_one_line(err, f"Port {port} on 127.0.0.1 is already in use")


def test_non_loopback_needs_a_gateway_key(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CARROT_API_KEY", raising=False)
    code, err = run(["serve", "--upstreams", write(tmp_path, ONE), "--host", "192.0.2.10", "--port", "0"], capsys)
    assert code == 2
    assert_one_line(err, "Refusing to serve on 192.0.2.10 without a gateway key", "CARROT_API_KEY")


def test_bad_options(tmp_path, capsys):
    code, err = run(["serve", "--upstreams", write(tmp_path, ONE), "--max-fallbacks", "-1"], capsys)
    assert code == 2
    assert_one_line(err, "--max-fallbacks")


def test_serve_starts_answers_and_stops(saved_knn_router, tmp_path):
    """The console command in its own process, with a fake upstream; SIGINT stops it with exit code 0."""
    with fake_upstreams(TINY_MODELS[:2]) as upstreams:
        upstreams_file = write(tmp_path, upstream_entries(upstreams))
        command = [sys.executable, "-m", "carrot_hub.cli", "serve", str(saved_knn_router), "--upstreams",
                   str(upstreams_file), "--port", "0", "--log-dir", str(tmp_path / "log")]
        process = subprocess.Popen(command, env=ENV, stderr=subprocess.PIPE, text=True)
        try:
            url, seen = None, []
            deadline = time.monotonic() + 120
            while url is None and time.monotonic() < deadline:
                line = process.stderr.readline()
                if not line and process.poll() is not None:
                    break
                seen.append(line)
                found = re.search(r"on (http://127\.0\.0\.1:\d+/v1)", line)
                url = found.group(1) if found else None
            assert url, "".join(seen)
            response = httpx.post(url + "/chat/completions", timeout=30,
                                  json={"model": "carrot", "messages": [{"role": "user", "content": "Hi there"}]})
            assert response.status_code == 200
            assert response.headers["x-carrot-model"] in ("big-model", "mid-model")
        finally:
            process.send_signal(signal.SIGINT)
            try:
                code = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
    assert code == 0


def test_routing_threads_default_to_one_for_a_static_router_only(static_knn_router, knn_router):
    import torch

    from carrot_hub.serving.command import _set_routing_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        _set_routing_threads(knn_router, None)
        assert torch.get_num_threads() == 2  # a transformer router keeps torch's choice
        _set_routing_threads(static_knn_router, None)
        assert torch.get_num_threads() == 1
        _set_routing_threads(static_knn_router, 2)
        assert torch.get_num_threads() == 2  # --threads wins
    finally:
        torch.set_num_threads(before)


def test_route_window_defaults_to_zero_for_a_static_router_only(static_knn_router, knn_router):
    from carrot_hub.serving.command import _route_window_ms

    assert _route_window_ms(static_knn_router, None) == 0.0
    assert _route_window_ms(knn_router, None) == 2.0
    assert _route_window_ms(static_knn_router, 5.0) == 5.0  # --route-window-ms wins
