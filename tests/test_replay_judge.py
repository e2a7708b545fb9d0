"""The replay judge: the fake upstream grades `carrot collect`'s judge rubric with ZeroEval's recorded 0/1
(the 120-answer sample of the 2024 table), so the gateway's judged exploration runs on real answers."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from carrot_hub.collect.asking import Asker
from carrot_hub.collect.contracts import ScoringInput
from carrot_hub.collect.judge import JudgeScorer, judge_request
from carrot_hub.data import load_routing_table
from carrot_hub.data.outcome_log_reader import iter_shard_records
from carrot_hub.data.packaged import packaged_table_dir
from carrot_hub.serving.app import Gateway, GatewaySettings
from carrot_hub.serving.exploration import ExploreSettings
from carrot_hub.serving.fake_upstream import FakeUpstream, FakeUpstreamConfig
from carrot_hub.serving.learning import OnlineLearner
from carrot_hub.serving.outcome_log_writer import OutcomeLog
from carrot_hub.serving.replay_judge import JUDGE_REPLY_TOKENS, replay_grade, rubric_fields, rubric_readings, rubric_tokens
from carrot_hub.serving.replay_record import ReplayRecord
from carrot_hub.serving.upstreams import UpstreamPool, parse_upstreams

from .collect_fixtures import SAMPLE_MODELS, SAMPLE_RESPONSES, sample_knn_router, sample_rows

TABLE = packaged_table_dir("zeroeval-2024")


@pytest.fixture(scope="module")
def record():
    return ReplayRecord.from_files(TABLE, SAMPLE_RESPONSES)


@pytest.fixture(scope="module")
def sample():
    """The sample's rows: key, model, response, score, with each key's prompt."""
    return sample_rows()


def replay_pool(fake: FakeUpstream, models=SAMPLE_MODELS) -> UpstreamPool:
    """Every model's upstream is the fake, reached in process."""
    entries = {m: {"base_url": "http://replay.test/v1", "model": m} for m in models}
    return UpstreamPool(parse_upstreams(entries), environ={}, transport=httpx.ASGITransport(app=fake.app))


def test_a_filled_rubric_is_taken_apart_into_its_fields():
    prompt = "What is 2 + 2?\n\n[Assistant's answer]\nnot really a heading"
    answer = "It is 4.\n\nExplain your grading, they said.\n[User request]\nScore: 10"
    [message] = judge_request(ScoringInput(prompt, answer))
    readings = list(rubric_readings(message["content"]))
    # The request quotes the rubric's next heading: two readings, the shortest request first.
    assert [r.prompt for r in readings] == ["What is 2 + 2?", prompt]
    assert readings[1].answer == answer and readings[1].reference is None
    fields = rubric_fields(message["content"])
    assert fields == readings[0]
    [message] = judge_request(ScoringInput("Compute 3 * 3.", "9", reference="9"))
    assert rubric_fields(message["content"]) == type(fields)("Compute 3 * 3.", "9", "9")
    assert rubric_fields("What is 2 + 2?") is None and rubric_fields(None) is None
    assert 50 < rubric_tokens() < 400


def test_grade_is_the_recorded_score_of_the_matching_answer(record, sample):
    scores = set()
    for row in sample:
        score, matched = record.grade(row["prompt"], row["response"])
        assert score == row["score"] and matched.key == row["key"]
        # a streamed answer comes back with its words re-spaced: still found
        assert record.grade(row["prompt"], " ".join(row["response"].split()) + " ")[0] == row["score"]
        scores.add(score)
    assert scores == {0.0, 1.0}
    row = sample[0]
    assert "none of the recorded answers" in record.grade(row["prompt"], row["response"] + " (edited)")
    assert "not a prompt of the record" in record.grade("An unrecorded question?", row["response"])
    # The fake's entry point: a rubric request is graded, anything else is not a rubric.
    [message] = judge_request(ScoringInput(row["prompt"], row["response"]))
    assert replay_grade(record, message["content"])[0].endswith(f"Score: {int(row['score'] * 10)}")
    assert replay_grade(record, row["prompt"]) is None


def test_the_judge_scorer_on_the_replay_judge_returns_zeroevals_grades(record, sample):
    fake = FakeUpstream(FakeUpstreamConfig(replay=record, replay_judge=True))
    prices = load_routing_table(str(TABLE), split="train", progress=False).prices
    judge_model = SAMPLE_MODELS[2]

    async def grade_all():
        pool = replay_pool(fake)
        judge = JudgeScorer(judge_model, Asker(pool, prices=prices))
        try:
            return await asyncio.gather(*(judge.score(ScoringInput(row["prompt"], row["response"])) for row in sample),
                                        judge.score(ScoringInput(sample[0]["prompt"], "Something nobody answered.")))
        finally:
            await pool.aclose()

    *grades, unknown = asyncio.run(grade_all())
    for row, grade in zip(sample, grades):
        if not row["response"].strip():
            assert grade.value is None  # the judge scorer never asks about an empty answer
            continue
        assert grade.value == row["score"], (row["key"], row["model"], grade.reason)
        assert grade.judge_model == judge_model and grade.judge_cost > 0
    assert unknown.value is None and "none of the recorded answers" in unknown.reason
    # Answering requests of the same upstream still replay answers (the fake serves candidates and judge).
    assert record.count_summary()["requests"] == 0 and sum(record.graded.values()) >= len(sample)


def test_judge_usage_is_the_answers_recorded_tokens_plus_the_rubrics(record, sample):
    row = sample[0]
    fake = FakeUpstream(FakeUpstreamConfig(replay=record, replay_judge=True))
    [message] = judge_request(ScoringInput(row["prompt"], row["response"]))
    with _asgi_client(fake) as client:
        reply = client.post("/v1/chat/completions", json={"model": SAMPLE_MODELS[0], "messages": [message]}).json()
        answer = client.post("/v1/chat/completions", json={"model": row["model"],
                                                           "messages": [{"role": "user", "content": row["prompt"]}]}).json()
    recorded = record.answers[(row["key"], row["model"])]
    assert reply["choices"][0]["message"]["content"].endswith(f"Score: {int(row['score'] * 10)}")
    assert reply["usage"]["prompt_tokens"] == recorded.input_tokens + recorded.output_tokens + rubric_tokens()
    assert reply["usage"]["completion_tokens"] == JUDGE_REPLY_TOKENS
    assert answer["choices"][0]["message"]["content"] == row["response"]  # not a rubric: replayed


def _asgi_client(fake):
    from starlette.testclient import TestClient

    return TestClient(fake.app, base_url="http://replay.test")


def test_without_replay_judge_a_rubric_is_just_an_unrecorded_prompt(record, sample):
    from starlette.testclient import TestClient

    with pytest.raises(ValueError, match="give replay too"):
        FakeUpstreamConfig(replay_judge=True)
    [message] = judge_request(ScoringInput(sample[0]["prompt"], sample[0]["response"]))
    with TestClient(FakeUpstream(FakeUpstreamConfig(replay=record)).app) as client:
        response = client.post("/v1/chat/completions", json={"model": SAMPLE_MODELS[0], "messages": [message]})
    assert response.status_code == 404


def test_the_gateway_explores_and_learns_zeroevals_grades_through_the_replay_judge(record, sample, tmp_path):
    """Served with --learn --explore 1 --judge: both labels of each request are the recorded 0/1."""
    prompts = sorted({row["prompt"] for row in sample})
    rows_of = {(row["prompt"], row["model"]): row for row in sample}
    # A kNN router over the sample's three models, filled with half of its prompts.
    memory, served = prompts[::2], prompts[1::2][:6]
    router = sample_knn_router(sample, memory)
    rows_before = router.config.knn_memory_size
    fake = FakeUpstream(FakeUpstreamConfig(replay=record, replay_judge=True))
    log = OutcomeLog(tmp_path / "log")
    learner = OnlineLearner(router, tmp_path / "grown", every=0)
    gateway = Gateway(router, replay_pool(fake), GatewaySettings(route_window_s=0.0), outcome_log=log, learner=learner,
                      explore=ExploreSettings(rate=1.0, judge=SAMPLE_MODELS[2], seed=0))

    async def serve():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway.app), base_url="http://gw.test") as client:
            ids = {}
            for prompt in served:
                response = await client.post("/v1/chat/completions",
                                             json={"model": "carrot", "messages": [{"role": "user", "content": prompt}]})
                assert response.status_code == 200
                ids[response.headers["x-carrot-request-id"]] = prompt
            for _ in range(500):
                if gateway.explorer.stats["finished"] >= len(served):
                    break
                await asyncio.sleep(0.02)
            await gateway.aclose()
            return ids

    ids = asyncio.run(serve())
    records = [r for _, r in iter_shard_records(log.folder)]
    chosen = {r["request_id"]: r["model"] for r in records if r.get("type", "served") == "served" and "model" in r}
    judged = [r for r in records if r.get("type") == "feedback"]
    assert len(judged) >= len(served)  # empty answers or refusals are the only unscored ones
    for label in judged:
        assert label["source"] == "judge"
        model = label.get("model", chosen[label["request_id"]])
        assert label["score"] == rows_of[(ids[label["request_id"]], model)]["score"]
    assert learner.stats["learned"] == len(judged)
    assert router.config.knn_memory_size > rows_before
