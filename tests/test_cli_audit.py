"""Command lines and files from the gateway audit (issue 23, item 15): each defect is one line on stderr
and exit code 2, or an OpenAI-format 4xx from the gateway; never a traceback or a silent repair."""

import json

import httpx
import pytest

from carrot_hub.cli import main
from carrot_hub.data import read_routing_logs
from carrot_hub.data.validation import RoutingDataError
from carrot_hub.serving.outcome_log_writer import OutcomeLog
from carrot_hub.serving.upstreams import UpstreamConfigError, parse_upstreams, read_upstreams_file

from .conftest import TINY_MODELS, TINY_PRICES, TINY_PROMPTS


def one_line_error(capsys, needle: str) -> str:
    """The one error line on stderr (progress notes before it are allowed), holding `needle`."""
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert "Traceback" not in err and len(errors) == 1 and err.endswith(errors[0]), err
    assert needle in errors[0], err
    return errors[0]


# ------------------------------------------------------------------------- training.evaluation.resplit


@pytest.mark.parametrize("argv, needle", [
    (["--data", "/missing/table"], "No such file or folder: /missing/table"),
    (["--max-prompt-tokens", "0"], "--max-prompt-tokens must be at least 2, got 0"),
    (["--train-split", "test", "--test-split", "test"], "are both 'test'"),
    (["--kind", "mlp", "--hidden", "0"], "--hidden and --ensemble must be at least 1"),
])
def test_resplit_refuses_bad_options_in_one_line(argv, needle, capsys):
    from training.evaluation.resplit import main as resplit

    assert resplit([*argv, "--splits", "2", "--quiet"]) == 2
    one_line_error(capsys, needle)


def test_resplit_names_an_unknown_split(capsys):
    from training.evaluation.resplit import main as resplit

    assert resplit(["--train-split", "nope", "--splits", "2", "--quiet"]) == 2
    one_line_error(capsys, "Cannot read split 'nope'")


def test_max_prompt_tokens_zero_is_refused_not_replaced_by_the_default():
    from carrot_hub.building import new_router

    with pytest.raises(ValueError, match="max_prompt_tokens must be at least 2, got 0"):
        new_router(TINY_MODELS, TINY_PRICES, predictor_kind="knn", max_prompt_tokens=0)


def test_train_refuses_a_zero_width_mlp(tmp_path, capsys):
    assert main(["train", "--data", "routerbench-0shot", "--kind", "mlp", "--hidden", "0",
                 "--out", str(tmp_path / "r")]) == 2
    one_line_error(capsys, "--hidden: must be a positive integer, got 0")
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------ carrot evaluate


def test_evaluate_a_missing_router_folder(capsys):
    assert main(["evaluate", "/missing/dir"]) == 2
    one_line_error(capsys, "No router folder /missing/dir: it does not exist")


def test_evaluate_never_creates_folders_for_out(saved_knn_router, tmp_path, capsys):
    assert main(["evaluate", str(saved_knn_router), "--out", str(tmp_path / "missing" / "dir" / "x.json")]) == 2
    one_line_error(capsys, "does not exist; create it first")
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("pair, needle", [
    ("a,b", "--pair names 'a', which is not a model of the evaluated data"),
    ("x,x", "--pair names 'x' twice"),
    ("a", "--pair takes two model names"),
])
def test_evaluate_pair_errors_speak_of_the_pair(saved_knn_router, capsys, pair, needle):
    assert main(["evaluate", str(saved_knn_router), "--pair", pair, "--quiet"]) == 2
    err = one_line_error(capsys, needle)
    assert "allowed" not in err


# ------------------------------------------------------------------------- outcome-log folders


def _log_with(folder, extra_line: bytes | None = None, prices: str | None = None):
    with OutcomeLog(folder) as log:
        for i, prompt in enumerate(TINY_PROMPTS):
            log.record({"request_id": f"r{i}", "prompt": prompt, "model": "big-model", "status": "ok",
                        "usage": {"prompt_tokens": 3, "completion_tokens": 5}})
        shard = log.shard
    if extra_line is not None:
        with shard.open("ab") as handle:
            handle.write(extra_line + b"\n")
    if prices is not None:
        (folder / "prices.json").write_text(prices)
    return shard


def test_a_bad_prices_file_in_a_log_folder_exits_2(tmp_path, capsys):
    _log_with(tmp_path / "log", prices='{"prices": {"big-model": {"input": -1, "output": 2}}}')
    assert main(["train", "--data", str(tmp_path / "log"), "--out", str(tmp_path / "r")]) == 2
    one_line_error(capsys, "a price must be a finite number >= 0")
    _log_with(tmp_path / "log2", prices="{not json")
    assert main(["train", "--data", str(tmp_path / "log2"), "--out", str(tmp_path / "r")]) == 2
    one_line_error(capsys, "prices.json is not valid JSON")


def test_a_deeply_nested_shard_line_is_a_bad_line_not_a_recursion_error(tmp_path, capsys):
    shard = _log_with(tmp_path / "log", extra_line=b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(RoutingDataError, match=f"{shard.name}:7: JSON nested too deeply"):
        read_routing_logs(tmp_path / "log")
    with pytest.warns(UserWarning, match="nested too deeply"):
        table = read_routing_logs(tmp_path / "log", on_error="skip")
    assert len(table) == len(TINY_PROMPTS)
    assert main(["train", "--data", str(tmp_path / "log"), "--out", str(tmp_path / "r")]) == 2
    one_line_error(capsys, "JSON nested too deeply")


def test_a_jsonl_log_line_nested_too_deeply(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    with pytest.raises(RoutingDataError, match="line 1: JSON nested too deeply"):
        read_routing_logs(path)


def test_invalid_utf8_in_a_shard_is_a_bad_line_not_replaced(tmp_path):
    line = json.dumps({"type": "served", "request_id": "bad", "prompt": "caf", "model": "big-model",
                       "status": "ok", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
    shard = _log_with(tmp_path / "log", extra_line=line.replace(b'"caf"', b'"caf\xe9"'))
    with pytest.raises(RoutingDataError, match=f"{shard.name}:7: not UTF-8 text"):
        read_routing_logs(tmp_path / "log")
    with pytest.warns(UserWarning):
        table = read_routing_logs(tmp_path / "log", on_error="skip")
    assert not any("\ufffd" in prompt for prompt in table.prompts)


# ------------------------------------------------------------------------------------ gateway


def test_feedback_404_neither_echoes_a_huge_id_nor_shows_the_log_path(knn_router, tmp_path):
    from tests.serve_fixtures import fake_upstreams, running_gateway, upstream_entries

    log = OutcomeLog(tmp_path / "log")
    with fake_upstreams(TINY_MODELS) as upstreams, \
            running_gateway(knn_router, upstream_entries(upstreams), log=log) as (_, server):
        huge = httpx.post(server.base_url + "/feedback", json={"request_id": "x" * 3_000_000, "score": 1})
        unknown = httpx.post(server.base_url + "/feedback", json={"request_id": "carrot-nope", "score": 1})
    assert huge.status_code == 404 and len(huge.content) < 500
    assert huge.json()["error"]["code"] == "unknown_request_id"
    assert unknown.status_code == 404 and "carrot-nope" in unknown.json()["error"]["message"]
    for response in (huge, unknown):
        assert str(tmp_path) not in response.text


# --------------------------------------------------------------------------------- upstreams


@pytest.mark.parametrize("suffix, text", [
    (".yaml", "big-model:\n  base_url: http://127.0.0.1:1/v1\n  model: a\n"
              "big-model:\n  base_url: http://127.0.0.1:2/v1\n  model: b\n"),
    (".yaml", "big-model:\n  base_url: http://127.0.0.1:1/v1\n  model: a\n  model: b\n"),
    (".json", '{"big-model": {"base_url": "http://127.0.0.1:1/v1", "model": "a"}, '
              '"big-model": {"base_url": "http://127.0.0.1:2/v1", "model": "b"}}'),
])
def test_duplicate_keys_in_the_upstreams_file_are_refused(tmp_path, capsys, suffix, text):
    path = tmp_path / f"upstreams{suffix}"
    path.write_text(text)
    with pytest.raises(UpstreamConfigError, match="twice"):
        read_upstreams_file(path)
    assert main(["serve", "--upstreams", str(path), "--port", "0"]) == 2
    one_line_error(capsys, "twice")


@pytest.mark.parametrize("url", ["http://", "https://", "http:///v1", "http://:80/v1"])
def test_a_base_url_without_a_host_is_refused(url):
    with pytest.raises(UpstreamConfigError, match="base_url must be an http.s. URL with a host"):
        parse_upstreams({"big-model": {"base_url": url, "model": "m"}})
