"""`carrot logs judge LOGDIR --judge CANDIDATE --upstreams FILE`: judge labels for the answers a gateway
logged (`carrot serve --log-answers`), written as the gateway's exploration writes them, read unchanged
by `carrot train --data LOGDIR` and `carrot learn`; idempotent, resumable, bounded in spend. A real
gateway (the tiny kNN router, real encoder) serves fake upstreams on loopback; the judge is a fake
that grades with "Score: N"."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from carrot_hub.cli import main
from carrot_hub.data.outcome_log_reader import iter_shard_records, outcome_log_records, shard_paths
from carrot_hub.modeling_carrot import CarrotRouter
from carrot_hub.router_store import StoreLock
from carrot_hub.serving.fake_upstream import FakeUpstream, FakeUpstreamConfig
from carrot_hub.serving.local_server import LocalServer
from carrot_hub.serving.log_judging import LOCK_FILENAME
from carrot_hub.serving.outcome_log_writer import OutcomeLog
from tests.conftest import TINY_MODELS, TINY_PRICES, TINY_PROMPTS
from tests.fake_judge import FakeJudge
from tests.serve_fixtures import fake_upstreams, running_gateway, upstream_entries, wait_records

JUDGE = "grader"
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
TRAIN = ["--kind", "knn", "--k-grid", "1,2", "--folds", "2", "--no-progress"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def upstreams():
    with fake_upstreams(TINY_MODELS) as running:
        yield running


def serve(router_folder, upstreams, folder, log_answers=True, streamed=True):
    """Serve each tiny prompt routed (μ 0, 0.5, 1 in turn; every other one streamed), one pinned and one with
    tools, as `carrot serve --log-answers` does. Returns the routed plain requests' ids."""
    router = CarrotRouter.from_pretrained(router_folder)
    log = OutcomeLog(folder, log_answers=log_answers, prices=TINY_PRICES)
    routed = []
    with running_gateway(router, upstream_entries(upstreams), log=log, route_window_s=0.0) as (gateway, server):
        for i, prompt in enumerate(TINY_PROMPTS):
            body = {"model": f"carrot:{(i % 3) / 2:g}", "messages": [{"role": "user", "content": prompt}]}
            if streamed and i % 2:
                with httpx.stream("POST", server.base_url + "/chat/completions", json={**body, "stream": True}) as r:
                    r.read()
            else:
                r = httpx.post(server.base_url + "/chat/completions", json=body)
            assert r.status_code == 200
            routed.append(r.headers["x-carrot-request-id"])
        user = [{"role": "user", "content": TINY_PROMPTS[0]}]
        assert httpx.post(server.base_url + "/chat/completions", json={"model": "mid-model", "messages": user}).status_code == 200
        assert httpx.post(server.base_url + "/chat/completions",
                          json={"model": "carrot", "messages": user, "tools": TOOLS}).status_code == 200
        wait_records(gateway)
    return routed


@contextmanager
def judge_upstreams(tmp_path, upstreams, judge_app):
    """An upstreams file with the fakes and the judge (`judge_app`, an ASGI app) as `grader`."""
    with LocalServer(judge_app) as judge_server:
        entries = upstream_entries(upstreams)
        entries[JUDGE] = {"base_url": judge_server.base_url, "model": "judge-id"}
        path = tmp_path / "upstreams.json"
        path.write_text(json.dumps(entries))
        yield path


class SlowJudge(FakeJudge):
    """The fake judge, 0.4 s per grade: a run can be killed between two labels."""

    async def chat(self, request):
        await asyncio.sleep(0.4)
        return await super().chat(request)


def judge_cli(capsys, log_dir, upstreams_file, *flags):
    """`carrot logs judge ... --json`: (exit code, summary dict or None, stderr lines)."""
    capsys.readouterr()  # what came before (loading the served router) is not this command's
    code = main(["logs", "judge", str(log_dir), "--judge", JUDGE, "--upstreams", str(upstreams_file), "--json",
                 *map(str, flags)])
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return code, (json.loads(lines[-1]) if lines else None), [line for line in err.splitlines() if line.strip()]


def records(folder, kind):
    return [record for _, record in iter_shard_records(folder) if record.get("type") == kind]


def test_judge_labels_routed_answers_once_and_train_reads_them(saved_knn_router, upstreams, tmp_path, capsys,
                                                               one_torch_thread):
    log = tmp_path / "log"
    routed = serve(saved_knn_router, upstreams, log)
    before = {path: path.read_bytes() for path in shard_paths(log)}
    judge = FakeJudge()
    with judge_upstreams(tmp_path, upstreams, judge.app) as upstreams_file:
        code, summary, _ = judge_cli(capsys, log, upstreams_file)
        assert code == 0 and summary["judged"] == len(routed) == summary["labels"] == summary["candidates"]
        assert summary["skipped"] == {"pinned to a model (not routed)": 1, "not plain chat (tools or a response format)": 1}
        assert summary["judge_spent"] == 0 and summary["explored"] == 0  # the judge is not in the log's price table
        again, rerun, _ = judge_cli(capsys, log, upstreams_file)
    assert again == 0 and rerun["judged"] == 0 and rerun["skipped"]["already judged"] == len(routed)
    assert len(judge.asked) == len(routed)  # nothing was asked twice
    # Existing shards are untouched; the labels are in one new shard, as the gateway's exploration writes them.
    assert all(path.read_bytes() == data for path, data in before.items())
    [new_shard] = [path for path in shard_paths(log) if path not in before]
    assert summary["shard"] == str(new_shard)
    feedback = records(log, "feedback")
    assert sorted(f["request_id"] for f in feedback) == sorted(routed)
    assert all(f["source"] == "judge" and "model" not in f and set(f) == {"type", "request_id", "score", "time", "source"}
               for f in feedback)
    served = {r["request_id"]: r for r in records(log, "served")}
    expected = {rid: 0.3 if served[rid]["model"] == "small-model" and not served[rid]["stream"] else 0.8 for rid in routed}
    assert {f["request_id"]: f["score"] for f in feedback} == pytest.approx(expected)
    audits = records(log, "explored")
    assert len(audits) == len(routed) and all(a["by"] == "carrot logs judge" and a["explored"] is None for a in audits)
    # carrot train --data LOGDIR reads the judge labels as the cells' scores.
    cells, read = outcome_log_records(log)
    assert read["labelled"] == len(routed)
    assert sum(cell["score"] is not None for cell in cells) == len({(served[r]["prompt"], served[r]["model"]) for r in routed})
    assert main(["train", "--data", str(log), *TRAIN, "--drop-unscored-models", "--out", str(tmp_path / "router")]) == 0
    assert (tmp_path / "router" / "config.json").is_file()


def test_explore_labels_another_candidate_and_carrot_learn_applies_both(saved_knn_router, upstreams, tmp_path, capsys):
    log = tmp_path / "log"
    routed = serve(saved_knn_router, upstreams, log, streamed=False)
    with judge_upstreams(tmp_path, upstreams, FakeJudge().app) as upstreams_file:
        code, summary, _ = judge_cli(capsys, log, upstreams_file, "--explore", saved_knn_router)
    assert code == 0 and summary["judged"] == len(routed) and summary["explored"] == len(routed)
    assert summary["labels"] == 2 * len(routed)
    served = {r["request_id"]: r for r in records(log, "served")}
    by_request = {}
    for label in records(log, "feedback"):
        by_request.setdefault(label["request_id"], []).append(label)
    for request_id in routed:
        chosen, explored = by_request[request_id]  # the chosen answer's label first, as the gateway writes them
        assert "model" not in chosen and explored["model"] != served[request_id]["model"]
        assert explored["source"] == "judge" and explored["usage"]["completion_tokens"] > 0
    audits = {a["request_id"]: a for a in records(log, "explored")}
    assert all(audits[r]["explored"] == by_request[r][1]["model"] and audits[r]["predicted"] for r in routed)
    # The explored candidate was asked the routed text.
    asked = [body for fake, _ in upstreams.values() for body in fake.received]
    assert any(body["messages"] == [{"role": "user", "content": TINY_PROMPTS[0]}] for body in asked)
    _, read = outcome_log_records(log)
    assert read["labelled"] == len(routed) and read["explored_labelled"] == len(routed)
    code = main(["learn", str(log), "--router", str(saved_knn_router), "--out", str(tmp_path / "store"), "--once"])
    assert code == 0
    store = tmp_path / "store"
    state = json.loads((store / (store / "LATEST").read_text().strip() / "learning.json").read_text())
    assert state["labels_applied"] == 2 * len(routed)


def test_records_without_answers_are_counted_not_an_error(saved_knn_router, upstreams, tmp_path, capsys):
    log = tmp_path / "log"
    routed = serve(saved_knn_router, upstreams, log, log_answers=False)
    shards = shard_paths(log)
    capsys.readouterr()
    with judge_upstreams(tmp_path, upstreams, FakeJudge().app) as upstreams_file:
        code = main(["logs", "judge", str(log), "--judge", JUDGE, "--upstreams", str(upstreams_file)])
    out = capsys.readouterr().out
    assert code == 0 and shard_paths(log) == shards  # nothing to write: no shard
    assert f"answer not logged (served without --log-answers): {len(routed) + 1}" in out
    assert "0 chosen answers labelled" in out and "spent $0.0000 on the judge" in out


def test_a_judge_without_a_grade_leaves_records_unscored_and_they_are_not_asked_again(saved_knn_router, upstreams,
                                                                                       tmp_path, capsys):
    log = tmp_path / "log"
    routed = serve(saved_knn_router, upstreams, log)
    judge = FakeJudge("I would rather not grade this.")
    with judge_upstreams(tmp_path, upstreams, judge.app) as upstreams_file:
        code, summary, _ = judge_cli(capsys, log, upstreams_file)
        assert code == 0 and summary["judged"] == 0 and summary["labels"] == 0
        assert summary["unscored"] == {"the judge's reply has no 'Score: N' line": len(routed)}
        _, rerun, _ = judge_cli(capsys, log, upstreams_file)
    assert rerun["skipped"]["judged before by this judge, unscored"] == len(routed) and len(judge.asked) == len(routed)
    assert records(log, "feedback") == []
    assert all("no 'Score: N' line" in a["labels"][a["chosen"]]["reason"] for a in records(log, "explored"))


def test_a_failing_judge_is_recorded_the_run_goes_on_and_a_rerun_judges_them(saved_knn_router, upstreams, tmp_path,
                                                                               capsys):
    log = tmp_path / "log"
    routed = serve(saved_knn_router, upstreams, log)
    failing = FakeUpstream(FakeUpstreamConfig(model="judge-id", failure_rate=1.0, failure="500"))
    with judge_upstreams(tmp_path, upstreams, failing.app) as upstreams_file:
        code, summary, err = judge_cli(capsys, log, upstreams_file, "--retries", "0")
    assert code == 1 and summary["to_retry"] == len(routed) and summary["labels"] == 0
    assert summary["unscored"] == {f"the judge '{JUDGE}' failed": len(routed)}
    assert len(err) == 1 and "rerun the same command" in err[0]
    assert records(log, "feedback") == []
    with judge_upstreams(tmp_path, upstreams, FakeJudge().app) as upstreams_file:
        code, summary, _ = judge_cli(capsys, log, upstreams_file)
    assert code == 0 and summary["judged"] == len(routed)


def test_max_spend_stops_the_run_and_a_rerun_goes_on(saved_knn_router, upstreams, tmp_path, capsys):
    log = tmp_path / "log"
    routed = serve(saved_knn_router, upstreams, log)
    prices = json.dumps({JUDGE: {"input": 100.0, "output": 100.0}})  # $0.011 a grade (100 + 10 tokens)
    with judge_upstreams(tmp_path, upstreams, FakeJudge().app) as upstreams_file:
        unpriced = judge_cli(capsys, log, upstreams_file, "--max-spend", "1")
        # Each grade is estimated at (its rubric's tokens + the judge's max_tokens, 400) × $100/M, $0.05 to $0.09.
        code, summary, _ = judge_cli(capsys, log, upstreams_file, "--max-spend", "0.1", "--prices", prices,
                                     "--concurrency", "1")
        assert code == 0 and 0 < summary["judged"] < len(routed)
        assert summary["not_judged_max_spend"] == len(routed) - summary["judged"]
        assert summary["judge_spent"] == pytest.approx(0.011 * summary["judged"]) and summary["judge_spent"] <= 0.1
        _, rest, _ = judge_cli(capsys, log, upstreams_file, "--prices", prices)
    assert unpriced[0] == 2 and len(unpriced[2]) == 1 and "grader has none" in unpriced[2][0]
    assert rest["judged"] == len(routed) - summary["judged"]


@pytest.mark.parametrize("case, fragment", [
    ("judge_not_upstream", "is not an upstream"),
    ("missing_log", "does not exist"),
    ("not_a_log", "is not an outcome log"),
    ("negative_spend", "--max-spend"),
    ("locked", "one carrot logs judge per log folder"),
])
def test_bad_input_is_one_line_and_exit_2(saved_knn_router, tmp_path, capsys, case, fragment):
    log = tmp_path / "log"
    with OutcomeLog(log, log_answers=True) as writer:
        writer.record({"request_id": "r1", "prompt": TINY_PROMPTS[0], "model": "big-model", "status": "ok",
                       "answer": "42", "usage": {"prompt_tokens": 9, "completion_tokens": 2}})
    upstreams_file = tmp_path / "upstreams.json"
    upstreams_file.write_text(json.dumps({JUDGE: {"base_url": "http://127.0.0.1:9/v1", "model": "m"}}))
    argv = ["logs", "judge", str(log), "--judge", JUDGE, "--upstreams", str(upstreams_file)]
    lock = None
    if case == "judge_not_upstream":
        argv[4] = "big-model"
    elif case == "missing_log":
        argv[2] = str(tmp_path / "nowhere")
    elif case == "not_a_log":
        (tmp_path / "empty").mkdir()
        argv[2] = str(tmp_path / "empty")
    elif case == "negative_spend":
        argv += ["--max-spend", "-1"]
    else:
        lock = StoreLock(log, "carrot logs judge (another run)", filename=LOCK_FILENAME)
    capsys.readouterr()
    try:
        code = main(argv)
    finally:
        if lock is not None:
            lock.release()
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and fragment in err[0], err


def test_what_a_killed_run_leaves_is_resumed_without_labelling_twice(saved_knn_router, upstreams, tmp_path, capsys):
    """The states a SIGKILL can leave: a label written but not its audit record, and a torn last line."""
    log = tmp_path / "log"
    routed = serve(saved_knn_router, upstreams, log)
    with OutcomeLog(log) as killed:
        killed.feedback(routed[0], 0.5, source="judge")  # killed after the label, before the audit record
        torn = killed.shard
    with torn.open("ab") as handle:  # and a line cut short
        handle.write(b'{"type":"feedback","request_id":"' + routed[1].encode() + b'","score":0.9,"sou')
    judge = FakeJudge()
    with judge_upstreams(tmp_path, upstreams, judge.app) as upstreams_file:
        code, summary, _ = judge_cli(capsys, log, upstreams_file)
    assert code == 0 and summary["judged"] == len(routed) - 1 and summary["skipped"]["already judged"] == 1
    labelled = [f["request_id"] for f in records(log, "feedback")]
    assert sorted(labelled) == sorted(routed) and len(judge.asked) == len(routed) - 1


@pytest.mark.slow  # two command starts (40 s on the shared 2-core machine); the states it leaves are tested above
def test_a_run_killed_mid_way_resumes_and_labels_each_record_once(saved_knn_router, upstreams, tmp_path):
    log = tmp_path / "log"
    routed = serve(saved_knn_router, upstreams, log)
    slow = SlowJudge()
    with judge_upstreams(tmp_path, upstreams, slow.app) as upstreams_file:
        argv = [sys.executable, "-m", "carrot_hub.cli", "logs", "judge", str(log), "--judge", JUDGE, "--upstreams",
                str(upstreams_file), "--concurrency", "1", "--no-progress"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not records(log, "feedback") and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        first = len(records(log, "feedback"))
        assert 1 <= first < len(routed)
        finished = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    labelled = [f["request_id"] for f in records(log, "feedback")]
    assert sorted(labelled) == sorted(routed)  # every record once: none twice, none missing
