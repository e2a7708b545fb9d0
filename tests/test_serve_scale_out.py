"""`carrot serve` past one process: --workers, --reload-every, --push-logs (captured, no network)."""

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import pytest

from carrot_hub.data.outcome_log_reader import iter_shard_records, shard_paths
from carrot_hub.label_reading import DatasetLogSource, LabelReader
from carrot_hub.modeling_carrot import CarrotRouter
from carrot_hub.router_store import FolderStore
from carrot_hub.serving.outcome_log_writer import OutcomeLog
from carrot_hub.serving.reloading import RevisionSource, RouterReloader
from tests.conftest import TINY_MODELS, TINY_PROMPTS
from tests.serve_fixtures import fake_upstreams, running_gateway, upstream_entries
from tests.serve_cli_helpers import ENV, assert_one_line, run, write

USER = [{"role": "user", "content": TINY_PROMPTS[0]}]


def start_serving(command, expected_lines: int = 1, timeout_s: float = 180):
    """
    Start `carrot serve`; wait for `expected_lines` banners → (process, url). Its stderr is read on a
    thread, so a server that hangs silently fails the test after `timeout_s` instead of blocking it.
    """
    process = subprocess.Popen(command, env=ENV, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()

    def drain() -> None:  # also keeps the pipe from filling once the banners are read
        for line in process.stderr:
            lines.put(line)

    threading.Thread(target=drain, daemon=True).start()
    url, seen, banners = None, [], 0
    deadline = time.monotonic() + timeout_s
    while banners < expected_lines and time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        found = re.search(r"on (http://127\.0\.0\.1:\d+/v1)", line)
        if found:
            url, banners = found.group(1), banners + 1
    if banners < expected_lines:
        process.kill()
        raise AssertionError(f"{banners} of {expected_lines} banners in {timeout_s} s:\n" + "".join(seen))
    return process, url


def stop(process) -> int:
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def test_two_workers_share_the_port_each_with_its_own_shard(saved_knn_router, tmp_path):
    with fake_upstreams(TINY_MODELS[:2], latency_s=0.05) as upstreams:
        upstreams_file = write(tmp_path, upstream_entries(upstreams))
        process, url = start_serving([sys.executable, "-m", "carrot_hub.cli", "serve", str(saved_knn_router),
                                      "--upstreams", str(upstreams_file), "--port", "0", "--workers", "2",
                                      "--log-dir", str(tmp_path / "log")], expected_lines=2)
        try:
            with httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:
                def ask(i):
                    response = client.post(url + "/chat/completions", json={"model": "carrot", "messages": USER})
                    assert response.status_code == 200
                    request_id = response.headers["x-carrot-request-id"]
                    label = client.post(url + "/feedback", json={"request_id": request_id, "score": 1.0})
                    assert label.status_code == 200, label.text  # whichever worker served it
                    return request_id

                with ThreadPoolExecutor(16) as pool:
                    ids = list(pool.map(ask, range(64)))
                # Each scrape reaches one worker, and each reports the whole gateway.
                scrapes = [client.get(url.removesuffix("/v1") + "/metrics").text for _ in range(6)]
        finally:
            code = stop(process)
    assert code == 0
    shards = shard_paths(tmp_path / "log")
    writers = {path.name.split("-")[2] for path in shards}
    assert len(writers) == 2  # both workers served, each into its own shard
    records = [record for _, record in iter_shard_records(tmp_path / "log")]
    served = [r["request_id"] for r in records if r["type"] == "served"]
    labels = [r["request_id"] for r in records if r["type"] == "feedback"]
    assert sorted(served) == sorted(ids) == sorted(labels)  # none lost, none doubled, every line whole
    for text in scrapes:
        assert metric_total(text, "carrot_requests_total") == 64
        assert metric_total(text, "carrot_request_latency_seconds_count") == 64
        assert metric_total(text, "carrot_routed_in_distribution_total") == 64
        assert 0.0 <= metric_total(text, "carrot_out_of_distribution_share") <= 1.0


def metric_total(text: str, name: str) -> float:
    """The sum of a metric's samples (over labels) in an exposition text."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " ")]
    assert values, f"{name} is not in the scrape"
    return sum(values)


def test_bad_scale_out_options_are_one_line_errors(saved_knn_router, tmp_path, capsys, monkeypatch):
    upstreams_file = write(tmp_path, {"big-model": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}})
    base = ["serve", str(saved_knn_router), "--upstreams", upstreams_file, "--port", "0", "--log-dir", tmp_path / "log"]
    code, err = run([*base, "--workers", "2", "--learn"], capsys)
    assert code == 2
    assert_one_line(err, "carrot learn")
    code, err = run([*base, "--reload-every", "60s"], capsys)
    assert code == 2
    assert_one_line(err, "neither a folder with a LATEST file")
    code, err = run([*base, "--reload-every", "soon"], capsys)
    assert code == 2
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    code, err = run([*base, "--push-logs", "someone/logs"], capsys)
    assert code == 2
    assert_one_line(err, "HF_TOKEN")


def publish(store, router, labels):
    return store.publish(router, {"labels_applied": labels})


def test_a_replica_swaps_in_new_revisions_and_skips_a_broken_one(saved_knn_router, tmp_path):
    store = FolderStore(tmp_path / "store")
    first = publish(store, CarrotRouter.from_pretrained(saved_knn_router), 0)
    served = CarrotRouter.from_pretrained(store.path(first))
    log = OutcomeLog(tmp_path / "log")
    with fake_upstreams(TINY_MODELS) as upstreams, \
            running_gateway(served, upstream_entries(upstreams), log=log, revision=first) as (gateway, server):
        failures = []
        reloader = RouterReloader(RevisionSource(str(tmp_path / "store")), first, served.config.candidate_models,
                                  gateway.swap_router, every_s=3600, on_failure=lambda *a: failures.append(a))
        base = server.base_url.removesuffix("/v1")
        assert httpx.get(base + "/health").json()["revision"] == first
        assert reloader.check() is None  # nothing new

        grown = CarrotRouter.from_pretrained(saved_knn_router)
        grown.remember(["a new prompt about the weather"], "small-model", [1.0])
        second = publish(store, grown, 1)
        assert reloader.check() == second
        time.sleep(0.2)  # the swap runs on the gateway's event loop
        assert httpx.get(base + "/health").json()["revision"] == second
        assert gateway.router.config.knn_memory_size == 7
        response = httpx.post(server.base_url + "/chat/completions", json={"model": "carrot", "messages": USER})
        assert response.status_code == 200
        metrics = httpx.get(base + "/metrics").text
        assert f'carrot_router_revision{{revision="{second}"}} 1.0' in metrics and first not in metrics

        broken = publish(store, grown, 2)
        (store.path(broken) / "model.safetensors").write_bytes(b"not weights")
        assert reloader.check() is None and failures and failures[0][0] == broken
        assert reloader.check() is None and len(failures) == 1  # reported once, then skipped
        assert httpx.get(base + "/health").json()["revision"] == second
        assert httpx.post(server.base_url + "/chat/completions",
                          json={"model": "carrot", "messages": USER}).status_code == 200
    records = [record for _, record in iter_shard_records(tmp_path / "log") if record["type"] == "served"]
    assert [r["revision"] for r in records] == [second, second]


def test_pushed_logs_go_up_as_commits_and_read_back_with_datasets(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from carrot_hub.serving.log_pushing import start_log_pusher, stop_log_pusher

    commits = []

    def create_commit(api, repo_id, operations, **kwargs):
        contents = {}
        for op in operations:
            source = op.path_or_fileobj
            contents[op.path_in_repo] = source.read() if hasattr(source, "read") else bytes(source)
        commits.append((repo_id, kwargs.get("repo_type"), contents))
        return SimpleNamespace(oid="c0ffee" * 6, commit_url="https://huggingface.co/datasets/x/commit/1")

    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kwargs: SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    log = OutcomeLog(tmp_path / "log", prices={m: {"input": 1.0, "output": 2.0} for m in TINY_MODELS})
    pusher = start_log_pusher(tmp_path / "log", "someone/served-logs", every_s=3600, token="hf_test",
                              path_in_repo="replica-a")
    for i, prompt in enumerate(TINY_PROMPTS[:3]):
        log.record({"request_id": f"r{i}", "prompt": prompt, "model": "small-model", "status": "ok",
                    "usage": {"prompt_tokens": 9, "completion_tokens": 20}})
        log.feedback(f"r{i}", 1.0)
    stop_log_pusher(pusher)
    assert commits and commits[-1][:2] == ("someone/served-logs", "dataset")
    sent = {}
    for _, _, contents in commits:  # each commit sends the files changed since the one before
        sent.update(contents)
    assert "replica-a/prices.json" in sent and any(name.startswith("replica-a/outcomes-") for name in sent)
    copy = tmp_path / "copy"  # what a download of the data set holds
    for name, content in sent.items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(content)
    labels = LabelReader(DatasetLogSource(folder=copy), TINY_MODELS).read_new()
    assert [label.request_id for label in labels] == ["r0", "r1", "r2"]


def test_learn_refuses_a_store_that_carrot_learn_writes(saved_knn_router, tmp_path, capsys):
    upstreams_file = write(tmp_path, {"big-model": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}})
    with FolderStore(tmp_path / "store").lock("carrot learn /srv/logs"):
        code, err = run(["serve", str(saved_knn_router), "--upstreams", upstreams_file, "--port", "0",
                         "--log-dir", tmp_path / "log", "--learn", "--learn-dir", tmp_path / "store"], capsys)
    assert code == 2
    assert_one_line(err, "already being written by carrot learn /srv/logs")


def test_two_workers_explore_within_one_budget_for_the_day(saved_knn_router, tmp_path):
    """--explore-budget is the gateway's, not each worker's: both workers write the day's sums to the
    log folder's ledger, and their exploration spend together stays within one budget."""
    budget = 0.1  # each exploration spends about 0.004 US$ (predicted 0.02): 64 of them, one per request, would pass it
    with fake_upstreams(TINY_MODELS[:2], latency_s=0.05) as upstreams:
        upstreams_file = write(tmp_path, upstream_entries(upstreams))
        process, url = start_serving([sys.executable, "-m", "carrot_hub.cli", "serve", str(saved_knn_router),
                                      "--upstreams", str(upstreams_file), "--port", "0", "--workers", "2",
                                      "--log-dir", str(tmp_path / "log"), "--explore", "1",
                                      "--judge", TINY_MODELS[0], "--explore-budget", str(budget)], expected_lines=2)
        try:
            with httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:
                def ask(i):
                    response = client.post(url + "/chat/completions", json={"model": "carrot", "messages": USER})
                    assert response.status_code == 200

                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(ask, range(64)))
        finally:
            code = stop(process)
    assert code == 0
    ledgers = [json.loads(path.read_text()) for path in (tmp_path / "log" / "explore-spend").glob("*/*.json")]
    explored = sorted(ledger["explored"] for ledger in ledgers)
    assert len(ledgers) == 2 and all(ledger["reserved"] == 0 for ledger in ledgers)
    assert budget / 2 < sum(explored) <= budget  # each worker alone would have stopped at the budget
