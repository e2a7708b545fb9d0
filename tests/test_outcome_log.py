"""The outcome log: shards, rotation, concurrent writer processes, feedback and its join, bad input,
and the log read back as routing data (`load_routing_table`, `read_routing_logs`, `carrot train`)."""

import json
import multiprocessing
import threading

import numpy as np
import pytest

from carrot_hub.data import load_routing_table, read_routing_logs
from carrot_hub.data.outcome_log_reader import iter_shard_records, outcome_log_records, shard_paths
from carrot_hub.serving.outcome_log_writer import OutcomeLog, UnknownRequestError

from .conftest import TINY_PRICES, TINY_PROMPTS


def served(request_id, prompt="What is 2 + 2?", model="big-model", completion_tokens=12, status="ok", **extra):
    return {
        "request_id": request_id,
        "prompt": prompt,
        "model": model,
        "mu": 0.3,
        "predicted_quality": 0.8,
        "predicted_output_tokens": 20.0,
        "predicted_cost": 1e-4,
        "usage": {"prompt_tokens": 9, "completion_tokens": completion_tokens},
        "realised_cost": 2e-4,
        "latency_s": 0.05,
        "ttfb_s": 0.01,
        "fallbacks": [],
        "status": status,
        "route_on": "last_user_message",
        **extra,
    }


def test_records_are_whole_json_lines_with_type_and_time(tmp_path):
    with OutcomeLog(tmp_path / "log") as log:
        log.record(served("r1", predicted_quality=float("nan")))
        log.record(served("r2", model="small-model"))
    [shard] = shard_paths(tmp_path / "log")
    lines = shard.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["type"] == "served" and first["request_id"] == "r1" and first["prompt"] == "What is 2 + 2?"
    assert first["predicted_quality"] is None  # NaN is not JSON: written as null
    assert isinstance(first["time"], float)


def test_no_prompt_log_keeps_only_a_hash(tmp_path):
    with OutcomeLog(tmp_path, log_prompts=False) as log:
        log.record(served("r1", prompt="my secret question"))
    text = shard_paths(tmp_path)[0].read_text()
    assert "secret" not in text
    record = json.loads(text)
    assert "prompt" not in record and len(record["prompt_sha256"]) == 64


def test_shards_rotate_by_size_and_no_record_is_lost(tmp_path):
    with OutcomeLog(tmp_path, max_shard_bytes=2_000) as log:
        for i in range(50):
            log.record(served(f"r{i}"))
    shards = shard_paths(tmp_path)
    assert len(shards) > 5
    assert all(path.stat().st_size <= 2_000 for path in shards)
    ids = [record["request_id"] for _, record in iter_shard_records(tmp_path)]
    assert ids == [f"r{i}" for i in range(50)]


def test_shards_rotate_by_age(tmp_path, monkeypatch):
    clock = [1_000_000.0]
    monkeypatch.setattr("carrot_hub.serving.outcome_log_writer.time.time", lambda: clock[0])
    with OutcomeLog(tmp_path, max_shard_seconds=60) as log:
        log.record(served("r1"))
        clock[0] += 30
        log.record(served("r2"))
        clock[0] += 31
        log.record(served("r3"))
    assert len(shard_paths(tmp_path)) == 2


def process_context():
    """fork where the platform has it: a spawned child would re-import torch (seconds per process)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _write_records(folder, worker, count, max_shard_bytes):
    log = OutcomeLog(folder, max_shard_bytes=max_shard_bytes)
    threads = [
        threading.Thread(target=lambda t=t: [log.record(served(f"w{worker}-t{t}-{i}", prompt=f"prompt {i} " * 20)) for i in range(count)])
        for t in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()


def test_several_processes_and_threads_writing_one_folder_lose_and_corrupt_nothing(tmp_path):
    context = process_context()
    workers = [context.Process(target=_write_records, args=(tmp_path, w, 150, 20_000)) for w in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    lines = [line for path in shard_paths(tmp_path) for line in path.read_text().splitlines()]
    records = [json.loads(line) for line in lines]  # every line parses: no interleaving
    ids = [r["request_id"] for r in records]
    assert len(ids) == 3 * 2 * 150 == len(set(ids))
    assert len({path.name.split("-")[2] for path in shard_paths(tmp_path)}) == 3  # one writer pid per shard


def test_feedback_is_appended_and_joined_latest_label_wins(tmp_path):
    log = OutcomeLog(tmp_path)
    log.record(served("r1", prompt=TINY_PROMPTS[0]))
    log.record(served("r2", prompt=TINY_PROMPTS[1], model="small-model"))
    returned = log.feedback("r1", 0.0)
    assert returned["request_id"] == "r1" and returned["prompt"] == TINY_PROMPTS[0]
    log.feedback("r1", 1)
    log.close()
    kinds = [record["type"] for _, record in iter_shard_records(tmp_path)]
    assert kinds == ["served", "served", "feedback", "feedback"]  # nothing rewritten
    records, summary = outcome_log_records(tmp_path)
    by_model = {r["model"]: r for r in records}
    assert by_model["big-model"]["score"] == 1.0  # the later label
    assert by_model["small-model"]["score"] is None  # unlabelled: tokens only
    assert by_model["big-model"]["output_tokens"] == 12 and by_model["big-model"]["input_tokens"] == 9
    assert summary["served"] == 2 and summary["labelled"] == 1


def test_feedback_reaches_requests_served_by_another_process(tmp_path):
    context = process_context()
    worker = context.Process(target=_write_records, args=(tmp_path, 7, 3, 10**6))
    worker.start()
    worker.join(timeout=120)
    assert worker.exitcode == 0
    with OutcomeLog(tmp_path) as log:
        assert log.feedback("w7-t1-2", 0.5)["request_id"] == "w7-t1-2"


def test_bad_feedback_is_refused_and_the_log_is_unchanged(tmp_path):
    log = OutcomeLog(tmp_path)
    log.record(served("r1"))
    log.record(served("failed", model=None, status="upstream_error", usage=None))
    before = [path.read_bytes() for path in shard_paths(tmp_path)]
    with pytest.raises(UnknownRequestError, match="No served request with id 'nope'.*x-carrot-request-id") as error:
        log.feedback("nope", 1.0)
    assert isinstance(error.value, KeyError)
    for score in (1.5, -0.1, float("nan"), "good", True, None):
        with pytest.raises(ValueError, match=r"score must be .*\[0, 1\]"):
            log.feedback("r1", score)
    with pytest.raises(ValueError, match="not answered"):
        log.feedback("failed", 1.0)
    with pytest.raises(ValueError, match="request_id"):
        log.record({"model": "big-model"})
    assert [path.read_bytes() for path in shard_paths(tmp_path)] == before
    log.feedback("r1", 1.0)  # the log still works after refusals
    log.close()
    with pytest.raises(RuntimeError, match="closed"):
        log.record(served("r9"))


def test_a_torn_last_line_is_left_out_not_fatal(tmp_path):
    with OutcomeLog(tmp_path) as log:
        log.record(served("r1"))
    with shard_paths(tmp_path)[0].open("a") as handle:
        handle.write('{"type": "served", "request_id": "half')  # a writer killed mid-line
    records, summary = outcome_log_records(tmp_path)
    assert len(records) == 1 and summary["torn_lines"] == 1


def _serve_tiny_traffic(folder):
    """Every tiny prompt served by two of the three models, labelled (the big model right, small right on easy ones)."""
    log = OutcomeLog(folder, prices=TINY_PRICES, prices_recorded_on="2026-11-28")
    easy = [1, 1, 0, 0, 1, 0]
    for i, prompt in enumerate(TINY_PROMPTS):
        for model, tokens, score in (("big-model", 300, 1.0), ("small-model", 40, float(easy[i])), ("mid-model", 120, 0.5)):
            request_id = f"{model}-{i}"
            log.record(served(request_id, prompt=prompt, model=model, completion_tokens=tokens))
            log.feedback(request_id, score)
    log.record(served("repeat", prompt=TINY_PROMPTS[0], model="big-model", completion_tokens=100))
    log.feedback("repeat", 0.0)
    log.record(served("unanswered", prompt="lost", model=None, status="error", usage=None))
    log.close()


def test_served_traffic_loads_as_a_routing_table(tmp_path):
    _serve_tiny_traffic(tmp_path / "log")
    table = load_routing_table(tmp_path / "log")
    assert sorted(table.models) == sorted(TINY_PRICES)
    assert len(table) == len(TINY_PROMPTS) and table.split == "train"
    row = table.prompts.index(TINY_PROMPTS[0])
    big = table.models.index("big-model")
    assert table.scores[row, big] == 0.5  # two servings of one prompt: mean of labels
    assert table.output_tokens[row, big] == 200  # and of tokens
    assert table.prices["big-model"] == TINY_PRICES["big-model"]  # from the log's prices.json
    assert np.isfinite(table.cost()).all()
    assert table.metadata["outcome_log"]["not_answered"] == 1
    assert table.metadata["outcome_log"]["repeats_merged"] == 1
    same = read_routing_logs(tmp_path / "log")  # the log converter reads the folder directly too
    assert same.prompts == table.prompts and np.array_equal(same.scores, table.scores, equal_nan=True)
    with pytest.raises(Exception, match="one split, 'train'"):
        load_routing_table(tmp_path / "log", split="test")


def test_carrot_train_runs_on_served_traffic(tmp_path, one_torch_thread):
    from carrot_hub.cli import main
    from carrot_hub.modeling_carrot import CarrotRouter

    _serve_tiny_traffic(tmp_path / "log")
    code = main(["train", "--data", str(tmp_path / "log"), "--kind", "knn", "--k-grid", "1,2", "--folds", "2",
                 "--out", str(tmp_path / "router")])
    assert code == 0
    router = CarrotRouter.from_pretrained(tmp_path / "router")
    assert sorted(router.config.candidate_models) == sorted(TINY_PRICES)
    assert router.config.knn_memory_size == len(TINY_PROMPTS)
    assert router.route(TINY_PROMPTS[2:4], mu=0.0).models == ["big-model", "big-model"]  # where only it is right


def test_a_log_with_nothing_trainable_says_why(tmp_path):
    with OutcomeLog(tmp_path, log_prompts=False) as log:
        log.record(served("r1"))
    with pytest.raises(Exception, match="without their prompt"):
        load_routing_table(tmp_path)
