"""The exploration benchmark's machinery (scripts/bench_exploration.py) on the 120-answer sample: the real
gateway serves a stream with exploration or user feedback, checkpoints count labels and spend."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from carrot_hub.data.packaged import packaged_table_dir
from carrot_hub.serving.replay_record import ReplayRecord
from training.evaluation.exploration_benchmark import (
    Arm,
    default_arms,
    interpolate_at,
    judge_targets,
    parse_new_task,
    serve_stream,
    start_rows,
)

from .collect_fixtures import SAMPLE_MODELS, SAMPLE_RESPONSES, sample_knn_router, sample_rows


@pytest.fixture(scope="module")
def sample():
    return sample_rows()


@pytest.mark.parametrize("arm", [Arm("explore", rate=1.0), Arm("feedback", feedback=True), Arm("off"),
                                 Arm("capped", rate=1.0, max_share=0.25)])
def test_a_stream_is_served_learned_and_checkpointed(sample, tmp_path, arm):
    record = ReplayRecord.from_files(packaged_table_dir("zeroeval-2024"), SAMPLE_RESPONSES)
    prompts = sorted({row["prompt"] for row in sample})
    memory, stream = prompts[::2], prompts[1::2][:5]
    router = sample_knn_router(sample, memory)
    score_of = {(row["prompt"], row["model"]): row["score"] for row in sample}
    truth = np.array([[score_of[(p, m)] for m in SAMPLE_MODELS] for p in stream], dtype=float)
    seen = []
    result = asyncio.run(serve_stream(router, record, arm, SAMPLE_MODELS[2], stream, truth, SAMPLE_MODELS, every=2,
                                      evaluate=lambda n: seen.append(n) or {"rows": router.config.knn_memory_size},
                                      work=tmp_path))
    points = result["checkpoints"]
    assert seen == [0, 2, 4, 5] and [p["requests"] for p in points] == seen
    final = points[-1]
    assert final["serving_spend"] > 0 and not result["stopped_early"]
    if arm.feedback:
        assert final["labels"] == 5 and final["explored"] == 0 and final["explore_share"] == 0
    elif arm.max_share is not None:  # what the share cap lets through, never more than its share of serving
        assert final["explore_share"] <= arm.max_share and final["explored"] < len(stream)
        assert final["rows"] == points[0]["rows"] + final["explored"]
        return
    elif arm.rate:
        # every request explored: two judged labels each (an empty or refused answer is left unscored)
        assert final["explored"] == 5 and 5 < final["labels"] <= 10
        assert final["judge_spend"] > 0 and final["explore_share"] == pytest.approx(
            (final["explored_spend"] + final["judge_spend"]) / final["serving_spend"])
    else:
        assert final["labels"] == 0 and final["rows"] == points[0]["rows"]
    assert final["rows"] == points[0]["rows"] + (0 if final["labels"] == 0 else len(stream))


def test_the_helpers():
    start, stream = start_rows(20, 0.1, seed=0)
    assert len(start) == 2 and sorted([*start, *stream]) == list(range(20))
    assert start_rows(20, 0.1, seed=0)[0].tolist() == start.tolist()
    assert interpolate_at([(0, 0.5), (10, 0.7)], 5) == pytest.approx(0.6) and interpolate_at([(0, 0.5)], 3) is None
    assert [a.name for a in default_arms(["random"])] == ["rate=0", "rate=0.05", "rate=0.2", "user feedback",
                                                          "rate=0.2 share<=0.25", "rate=1 share<=0.25",
                                                          "rate=0.2 random"]
    point = lambda n, labels, aiq, share=0.0: {"requests": n, "labels": labels, "aiq": aiq, "explore_share": share}
    scenario = {"aiq_all_train_labels": 0.8, "arms": {
        "rate=0.2": {"checkpoints": [point(0, 0, 0.7), point(200, 80, 0.75, 0.1), point(400, 160, 0.81, 0.2)]},
        "user feedback": {"checkpoints": [point(0, 0, 0.7), point(200, 200, 0.76)]}}}
    targets = judge_targets(scenario)
    assert targets["reached_at_requests"] == 400 and targets["reached_within_25pct"]
    assert targets["equal_labels"]["user_feedback_aiq"] == pytest.approx(0.7 + 0.06 * 160 / 200)


def test_the_new_task_option_names_known_tasks_and_one_new_one():
    tasks = ["arc-challenge", "mbpp", "winogrande", "mbpp"]
    assert parse_new_task("arc-challenge,winogrande:mbpp", tasks) == (["arc-challenge", "winogrande"], "mbpp")
    for bad in ("mbpp", "arc-challenge:", "gsm8k:mbpp", "mbpp:mbpp"):
        with pytest.raises(SystemExit, match="--new-task"):
            parse_new_task(bad, tasks)
