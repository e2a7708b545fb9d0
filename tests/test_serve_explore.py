"""Judged exploration (`carrot serve --explore RATE --judge CANDIDATE`): after the answer, one other
candidate is asked the same request, the judge grades both with the collect rubric, and both labels
go to the outcome log (`source: judge`) and, with --learn, into the router. Fake upstreams on loopback;
the judge is a small fake that grades with "Score: N"."""

import asyncio
import json
import random
import threading
import time
from contextlib import contextmanager

import httpx
import pytest

from carrot_hub.cli import main
from carrot_hub.data.outcome_log_reader import iter_shard_records, outcome_log_records, read_outcome_log
from carrot_hub.modeling_carrot import CarrotRouter
from carrot_hub.serving.exploration import (
    PICK_RULES,
    Explorer,
    ExploreJob,
    ExploreSettings,
    pick_explored,
    pick_most_expensive,
    pick_most_uncertain,
    pick_random,
    plain_chat,
)
from carrot_hub.serving.local_server import LocalServer
from carrot_hub.serving.prometheus_metrics import GatewayMetrics
from carrot_hub.serving.outcome_log_writer import OutcomeLog
from tests.conftest import TINY_MODELS, make_tiny_table, tiny_knn_router
from tests.fake_judge import FakeJudge
from tests.serve_fixtures import fake_upstreams, running_gateway, upstream_entries, wait_records

USER = [{"role": "user", "content": "Write a python function that returns the nth Fibonacci number."}]
JUDGE = "big-model"


@contextmanager
def gateway_with_judge(router, tmp_path, judge_reply=None, log=None, learner=None, judge_entry=None, **explore):
    """Fakes for mid/small-model, the fake judge as big-model (`judge_entry`: more of its upstreams-file
    entry); yields `(gateway, server, judge, fakes)`."""
    judge = FakeJudge(judge_reply)
    with fake_upstreams([m for m in TINY_MODELS if m != JUDGE]) as fakes, LocalServer(judge.app) as judge_server:
        entries = upstream_entries(fakes)
        entries[JUDGE] = {"base_url": judge_server.base_url, "model": "judge-id", **(judge_entry or {})}
        settings = ExploreSettings(**{"rate": 1.0, "judge": JUDGE, "seed": 0, **explore})
        log = log or OutcomeLog(tmp_path / "log")
        with running_gateway(router, entries, log=log, learner=learner, explore=settings,
                             route_window_s=0.0) as (gateway, server):
            yield gateway, server, judge, fakes


def wait_explored(gateway, count: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while gateway.explorer.stats["finished"] < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gateway.explorer.stats["finished"] >= count, gateway.explorer.stats
    wait_records(gateway)
    gateway._feedback_lookup.submit(lambda: None).result(timeout=5)
    gateway._learning.submit(lambda: None).result(timeout=5)


def records_of(log, kind):
    return [record for _, record in iter_shard_records(log.folder) if record.get("type") == kind]


def test_a_routed_answer_is_explored_judged_and_both_labels_logged(knn_router, tmp_path):
    with gateway_with_judge(knn_router, tmp_path) as (gateway, server, judge, fakes):
        response = httpx.post(server.base_url + "/chat/completions", json={"model": "carrot:0", "messages": USER})
        assert response.status_code == 200
        chosen, request_id = response.headers["x-carrot-model"], response.headers["x-carrot-request-id"]
        wait_explored(gateway, 1)
        metrics = httpx.get(server.base_url.removesuffix("/v1") + "/metrics").text
        log = gateway.outcome_log
    # The client's answer is the chosen model's, untouched.
    assert response.json()["choices"][0]["message"]["content"].startswith(f"{chosen}-upstream-id says") \
        or chosen == JUDGE
    [audit] = records_of(log, "explored")
    assert audit["request_id"] == request_id and audit["chosen"] == chosen and audit["explored"] != chosen
    explored = audit["explored"]
    # The explored candidate got the same messages, never the `carrot` options.
    if explored != JUDGE:
        sent = fakes[explored][0].received[-1]
        assert sent["messages"] == USER and "carrot" not in sent
    feedback = records_of(log, "feedback")
    assert {f["source"] for f in feedback} == {"judge"} and len(feedback) == 2
    by_model = {f.get("model", chosen): f for f in feedback}
    assert set(by_model) == {chosen, explored}
    assert by_model[explored]["usage"]["completion_tokens"] > 0
    expected = {m: 0.3 if m == "small-model" else 0.8 for m in (chosen, explored)}
    assert {m: f["score"] for m, f in by_model.items()} == pytest.approx(expected)
    # Both labels are read back: the chosen one joined to its request, the explored one as its own cell.
    contents = read_outcome_log(log.folder)
    assert contents.labels[request_id][0] == pytest.approx(expected[chosen])
    assert contents.explored_labels[(request_id, explored)][0] == pytest.approx(expected[explored])
    cells, summary = outcome_log_records(log.folder)
    [cell] = [c for c in cells if c["model"] == explored]
    assert cell["score"] == pytest.approx(expected[explored]) and cell["output_tokens"] > 0
    assert summary["explored_labelled"] == 1
    # Spend is counted apart from the request's.
    assert 'carrot_explored_total{outcome="judged"} 1.0' in metrics
    assert 'carrot_explore_spend_dollars_total{kind="judge"}' in metrics
    assert len(judge.asked) == 2 + (1 if chosen == JUDGE or explored == JUDGE else 0)


def test_a_streamed_answer_is_explored_with_its_assembled_text(knn_router, tmp_path):
    with gateway_with_judge(knn_router, tmp_path) as (gateway, server, judge, _):
        with httpx.stream("POST", server.base_url + "/chat/completions",
                          json={"model": "carrot:1", "messages": USER, "stream": True}) as response:
            body = "".join(response.iter_text())
            chosen = response.headers["x-carrot-model"]
        assert "[DONE]" in body
        wait_explored(gateway, 1)
    assert chosen != JUDGE  # μ = 1: the cheapest candidate, a streaming fake
    # The chosen model's streamed answer (words without the plain answer's "<model> says:"), assembled,
    # is what the judge graded.
    assert any("w0 w1 w2 w3 w4 w5 w6 w7" in asked and "upstream-id says" not in asked for asked in judge.asked)


@pytest.mark.parametrize("extra", [
    {"model": "small-model"},  # pinned
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
    {"response_format": {"type": "json_object"}},
    {"carrot": {"explore": False}},
])
def test_what_is_never_explored(knn_router, tmp_path, extra):
    with gateway_with_judge(knn_router, tmp_path) as (gateway, server, judge, _):
        body = {"model": "carrot:1", "messages": USER, **extra}
        assert httpx.post(server.base_url + "/chat/completions", json=body).status_code == 200
        time.sleep(0.2)
        assert gateway.explorer.stats["queued"] == 0 and not judge.asked


def test_explore_must_be_a_boolean(knn_router, tmp_path):
    with gateway_with_judge(knn_router, tmp_path) as (_, server, _, _):
        response = httpx.post(server.base_url + "/chat/completions",
                              json={"model": "carrot", "messages": USER, "carrot": {"explore": "no"}})
    assert response.status_code == 400 and response.json()["error"]["param"] == "carrot.explore"


def test_a_judge_without_a_grade_leaves_both_unscored_and_nothing_learned(saved_knn_router, tmp_path):
    from carrot_hub.serving.learning import OnlineLearner

    router = CarrotRouter.from_pretrained(saved_knn_router)
    learner = OnlineLearner(router, tmp_path / "learned", every=0)
    with gateway_with_judge(router, tmp_path, judge_reply="I cannot say.", learner=learner) as (gateway, server, _, _):
        response = httpx.post(server.base_url + "/chat/completions", json={"model": "carrot:0.5", "messages": USER})
        assert response.status_code == 200
        wait_explored(gateway, 1)
        log = gateway.outcome_log
        again = httpx.post(server.base_url + "/chat/completions", json={"model": "carrot:0.5", "messages": USER,
                                                                         "carrot": {"explore": False}})
        assert again.status_code == 200  # serving goes on
    [audit] = records_of(log, "explored")
    assert all(label["score"] is None and "no 'Score: N' line" in label["reason"] for label in audit["labels"].values())
    assert records_of(log, "feedback") == [] and learner.stats["learned"] == 0


def test_with_learn_both_judge_labels_go_through_the_learner(saved_knn_router, tmp_path):
    from carrot_hub.serving.learning import OnlineLearner

    router = CarrotRouter.from_pretrained(saved_knn_router)
    learner = OnlineLearner(router, tmp_path / "learned", every=0)
    with gateway_with_judge(router, tmp_path, learner=learner) as (gateway, server, _, _):
        response = httpx.post(server.base_url + "/chat/completions", json={"model": "carrot:0", "messages": USER})
        wait_explored(gateway, 1)
        # A user label of the same request is still taken (and kept apart by its source).
        label = httpx.post(server.base_url + "/feedback",
                           json={"request_id": response.headers["x-carrot-request-id"], "score": 1.0})
        assert label.status_code == 200
        log = gateway.outcome_log
    assert learner.stats["learned"] == 2 and learner.stats["repeated"] == 1
    assert sorted(f["source"] for f in records_of(log, "feedback")) == ["judge", "judge", "user"]


def test_a_failing_explored_candidate_is_recorded_and_serving_goes_on(knn_router, tmp_path):
    with gateway_with_judge(knn_router, tmp_path) as (gateway, server, _, fakes):
        post = lambda: httpx.post(server.base_url + "/chat/completions", json={"model": "carrot:0", "messages": USER})
        assert post().status_code == 200
        wait_explored(gateway, 1)
        explored = records_of(gateway.outcome_log, "explored")[0]["explored"]
        assert explored in fakes  # μ = 0 chooses big-model (the judge's upstream); a fake is explored
        fakes[explored][0].fail_next("400", 1)
        assert post().status_code == 200
        wait_explored(gateway, 2)
        audits = records_of(gateway.outcome_log, "explored")
        feedback = records_of(gateway.outcome_log, "feedback")
    assert audits[-1]["status"] == "explored_failed" and "failed" in audits[-1]["error"]
    assert len(feedback) == 2  # the first exploration's labels only


def test_exploration_never_takes_the_connections_clients_need(knn_router, tmp_path):
    """The judge's upstream serves clients too: with its one connection (max_concurrency 1) held by a
    grading call that does not answer (for up to 20 s), a client's request to it is still answered."""
    with gateway_with_judge(knn_router, tmp_path, judge_entry={"max_concurrency": 1, "timeout": 30}) \
            as (gateway, server, judge, _):
        judge.hold = threading.Event()
        try:
            post = lambda body, timeout: httpx.post(server.base_url + "/chat/completions", json=body, timeout=timeout)
            assert post({"model": "carrot:1", "messages": USER}, 30).status_code == 200
            deadline = time.monotonic() + 10
            while not any("Score:" in asked for asked in judge.asked) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert any("Score:" in asked for asked in judge.asked)  # a grading call holds its connection
            # Waiting for the exploration's connection would take the judge's 20 s: the client gives up at 10.
            pinned = post({"model": JUDGE, "messages": USER, "carrot": {"explore": False}}, 10)
            assert pinned.status_code == 200 and pinned.headers["x-carrot-model"] == JUDGE
            assert gateway.explorer.stats["finished"] == 0  # the exploration is still waiting for its grades
        finally:
            judge.hold.set()
        wait_explored(gateway, 1)
    [audit] = records_of(gateway.outcome_log, "explored")
    assert all(label["score"] is not None for label in audit["labels"].values())


def test_no_prompt_log_requests_are_explored_only_when_private(knn_router, tmp_path):
    for private, expected in ((False, 0), (True, 1)):
        log = OutcomeLog(tmp_path / f"log-{private}", log_prompts=False)
        with gateway_with_judge(knn_router, tmp_path, log=log, private=private) as (gateway, server, _, _):
            httpx.post(server.base_url + "/chat/completions", json={"model": "carrot:0", "messages": USER})
            if expected:
                wait_explored(gateway, 1)
            else:
                time.sleep(0.2)
            assert gateway.explorer.stats["queued"] == expected
            if expected:  # the labels are logged without the prompt
                assert all("prompt" not in r for _, r in iter_shard_records(log.folder))


def test_metrics_report_the_out_of_distribution_share():
    metrics = GatewayMetrics()
    for flag, trained in ((True, None), (False, None), (False, None), (None, None), (True, False), (True, False)):
        metrics.observe_distribution(flag, trained)
    text = metrics.render().decode()
    assert "carrot_out_of_distribution_share 0.3333333333333333" in text
    assert 'carrot_routed_in_distribution_total{in_distribution="false"} 2.0' in text
    # the trained rows' flag where measured (remembered prompts left out), the routing flag where not
    assert "carrot_out_of_trained_distribution_share 0.6666666666666666" in text


# ----------------------------------------------------------------------------------- the rule and the queue

def test_pick_explored_prefers_the_cheaper_candidate_closest_in_quality():
    from types import SimpleNamespace as C

    ranked = [C(name="big", quality=0.9, cost=1.0), C(name="mid", quality=0.85, cost=0.1),
              C(name="small", quality=0.4, cost=0.01), C(name="huge", quality=0.91, cost=5.0)]
    assert pick_explored(ranked, "big") == "mid"
    assert pick_explored(ranked, "small") == "mid"  # nothing cheaper: the closest in quality
    assert pick_explored(ranked[:1], "big") is None
    assert plain_chat({"messages": USER}) and not plain_chat({"messages": USER, "tools": [{}]})


def test_the_measured_alternative_rules_and_the_setting_that_picks_one():
    from types import SimpleNamespace as C

    ranked = [C(name="big", quality=0.9, cost=1.0), C(name="mid", quality=0.55, cost=0.1),
              C(name="small", quality=0.2, cost=0.01), C(name="huge", quality=0.95, cost=5.0)]
    assert pick_most_uncertain(ranked, "big") == "mid" and pick_most_expensive(ranked, "big") == "huge"
    assert pick_most_expensive(ranked, "huge") == "big"
    picked = {pick_random(ranked, "big", random.Random(seed)) for seed in range(40)}
    assert picked == {"mid", "small", "huge"}
    for rule in PICK_RULES.values():
        args = (ranked[:1], "big", random.Random(0)) if rule is pick_random else (ranked[:1], "big")
        assert rule(*args) is None
    assert ExploreSettings(rate=0.1, judge="j").pick_rule == "closest-cheaper"
    explorer = Explorer(ExploreSettings(rate=0.1, judge="j", pick_rule="most-expensive"), None, None, None, None)
    assert explorer.pick(ranked, "big") == "huge"
    seeded = [Explorer(ExploreSettings(rate=0.1, judge="j", seed=3, pick_rule="random"), None, None, None, None)
              for _ in range(2)]
    assert [seeded[0].pick(ranked, "big") for _ in range(10)] == [seeded[1].pick(ranked, "big") for _ in range(10)]
    with pytest.raises(ValueError, match="pick_rule must be one of"):
        ExploreSettings(rate=0.1, judge="j", pick_rule="widest")


class _Counting:
    """A judge/ask pair for Explorer unit tests."""

    def __init__(self, cost=0.5):
        self.cost = cost

    async def ask(self, candidate, messages, sampling):
        from carrot_hub.collect.contracts import Completion

        return Completion(candidate, "answer", 10, 10, cost=self.cost)


def _job(i=0):
    return ExploreJob(f"r{i}", USER, {}, USER[0]["content"], "big", "a", "mid")


def test_a_full_queue_drops_and_counts():
    async def run():
        metrics = GatewayMetrics()
        explorer = Explorer(ExploreSettings(rate=1, judge="j", queue_size=1, workers=1), _Counting().ask, None,
                            None, metrics)
        offered = [explorer.offer(_job(i)) for i in range(3)]  # the worker has not run yet
        for task in explorer._workers:
            task.cancel()
        return offered, metrics.render().decode()

    offered, text = asyncio.run(run())
    assert offered == [True, False, False]
    assert 'carrot_explore_dropped_total{reason="queue_full"} 2.0' in text


def test_the_budget_stops_exploration_for_the_utc_day():
    from carrot_hub.collect.contracts import Score

    class Judge:
        name = "judge:j"

        async def score(self, item):
            return Score(0.5, "ok", judge_cost=0.25)

    recorded = []

    async def record(job, explored, scores, error):
        recorded.append(job.request_id)

    day = ["2026-12-06"]

    async def run():
        metrics = GatewayMetrics()
        explorer = Explorer(ExploreSettings(rate=1, judge="j", budget_per_day=1.0), _Counting(0.5).ask, Judge(),
                            record, metrics, clock=lambda: day[0])
        await explorer.explore(_job(0))  # 0.5 + 2 × 0.25 = 1.0: the budget is spent
        assert explorer.spent_today() == pytest.approx(1.0)
        assert not explorer.offer(_job(1), predicted_cost=0.01)
        day[0] = "2026-12-07"  # a new UTC day: exploring again
        assert explorer.offer(_job(2), predicted_cost=0.01)
        await explorer.join()
        await explorer.aclose()
        return metrics.render().decode()

    text = asyncio.run(run())
    assert recorded == ["r0", "r2"]
    assert 'carrot_explore_dropped_total{reason="budget"} 1.0' in text
    assert 'carrot_explore_spend_dollars_total{kind="explored"} 1.0' in text


def _metric_sum(text: str, name: str, **labels) -> float:
    """The sum of `name`'s samples in a /metrics text whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


def test_the_share_cap_drops_explorations_until_serving_spend_grows(knn_router, tmp_path):
    """--explore-max-share 0.5: μ = 0 serves big-model (the fake judge's upstream, 100 + 10 tokens a call),
    so one exploration (a cheap explored answer and two judge calls as dear as the served answer) costs
    about twice a served request: nothing is explored until the day's serving spend covers it, the first
    exploration does not pass the share, and the next waits until serving spend has grown again. The
    dropped count is the rule applied to the gateway's own spend figures and the exploration's predicted cost."""
    share = 0.5
    with gateway_with_judge(knn_router, tmp_path, max_share=share) as (gateway, server, judge, _):
        metrics_url = server.base_url.removesuffix("/v1") + "/metrics"

        def post(i: int) -> None:
            response = httpx.post(server.base_url + "/chat/completions", json={"model": "carrot:0", "messages": USER})
            assert response.status_code == 200 and response.headers["x-carrot-model"] == JUDGE
            deadline = time.monotonic() + 10  # the exploration is offered after the answer has gone out
            while gateway.explorer.stats["queued"] + gateway.explorer.stats["dropped"] < i \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
            assert gateway.explorer.stats["queued"] + gateway.explorer.stats["dropped"] == i

        sent = 0
        while gateway.explorer.stats["queued"] == 0 and sent < 30:
            sent += 1
            post(sent)
        first_drops = gateway.explorer.stats["dropped"]
        assert gateway.explorer.stats["queued"] == 1 and first_drops >= 1  # held back until serving covered it
        wait_explored(gateway, 1)
        text = httpx.get(metrics_url).text
        served = _metric_sum(text, "carrot_spend_dollars_total")
        served_one = served / sent
        explored_spend = _metric_sum(text, "carrot_explore_spend_dollars_total")
        [audit] = records_of(gateway.outcome_log, "explored")
        predicted = audit["predicted_cost"]
        assert 0 < explored_spend <= predicted  # the fake judge writes less than a typical reply: predicted above
        assert explored_spend <= share * served  # the cap held, the first exploration included
        assert _metric_sum(text, "carrot_explore_spend_share") == pytest.approx(explored_spend / served)

        # The rule on these figures: the next request is explored once spend + predicted ≤ share × served.
        expected_drops = 0
        while True:
            served += served_one
            if explored_spend + predicted <= share * served:
                break
            expected_drops += 1
        assert 1 <= expected_drops <= 30
        for i in range(sent + 1, sent + expected_drops + 2):
            post(i)
            if i <= sent + expected_drops:
                assert gateway.explorer.stats["queued"] == 1, i  # held back by the share
        assert gateway.explorer.stats["queued"] == 2  # serving spend grew enough: exploring again
        wait_explored(gateway, 2)
        text = httpx.get(metrics_url).text
        asked = len(judge.asked)
    assert _metric_sum(text, "carrot_explore_dropped_total", reason="share") == first_drops + expected_drops
    assert _metric_sum(text, "carrot_explore_dropped_total", reason="budget") == 0
    assert len(records_of(gateway.outcome_log, "explored")) == 2
    assert asked == (sent + expected_drops + 1) + 2 * 2  # every served answer, and two grades per exploration
    served_total = _metric_sum(text, "carrot_spend_dollars_total")
    explore_total = _metric_sum(text, "carrot_explore_spend_dollars_total")
    assert served_total == pytest.approx(served_one * (sent + expected_drops + 1))
    assert explore_total <= share * served_total  # never past the share
    assert _metric_sum(text, "carrot_explore_spend_share") == pytest.approx(explore_total / served_total)


def _share_explorer(day, recorded, **settings):
    from carrot_hub.collect.contracts import Score

    class Judge:
        name = "judge:j"

        async def score(self, item):
            return Score(0.5, "ok", judge_cost=0.25)

    async def record(job, explored, scores, error):
        recorded.append(job.request_id)

    metrics = GatewayMetrics()
    explorer = Explorer(ExploreSettings(rate=1, judge="j", **settings), _Counting(0.5).ask, Judge(), record, metrics,
                        clock=lambda: day[0])
    return explorer, metrics


def test_a_restarted_gateway_keeps_the_days_exploration_spend(knn_router, tmp_path):
    """The budget is per UTC day, not per run: a gateway restarted on the same outcome log reads the
    day's spend from the log folder's ledger (as its other --workers do) and does not spend it again."""
    def explore_once(budget):
        with gateway_with_judge(knn_router, tmp_path, log=OutcomeLog(tmp_path / "log"), budget_per_day=budget) \
                as (gateway, server, _, _):
            response = httpx.post(server.base_url + "/chat/completions", json={"model": "carrot:0", "messages": USER})
            assert response.status_code == 200
            deadline = time.monotonic() + 10
            while gateway.explorer.stats["queued"] + gateway.explorer.stats["dropped"] < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            if gateway.explorer.stats["queued"]:
                wait_explored(gateway, 1)
            return dict(gateway.explorer.stats), gateway.explorer.spent_today()

    first, spent = explore_once(budget=100.0)
    assert first["queued"] == 1 and spent > 0
    [ledger_file] = (tmp_path / "log" / "explore-spend").glob("*/*.json")
    assert json.loads(ledger_file.read_text())["explored"] == pytest.approx(spent)
    # Restarted with a budget the first run's spend nearly used up: the day's spend is still there.
    again, spent_again = explore_once(budget=spent * 1.01)
    assert again["queued"] == 0 and again["dropped"] == 1
    assert spent_again == pytest.approx(spent)


def test_the_share_cap_holds_a_queued_job_and_counts_per_utc_day():
    day, recorded = ["2026-12-06"], []

    async def run():
        explorer, metrics = _share_explorer(day, recorded, max_share=0.25)
        assert not explorer.offer(_job(0), predicted_cost=0.5)  # nothing served yet today: no room
        explorer.served(4.0)
        assert explorer.offer(_job(1), predicted_cost=0.5)  # 0 + 0.5 ≤ 0.25 × 4
        await explorer.join()  # spends 0.5 + 2 × 0.25 = 1.0: the share is used up
        assert explorer.share_today() == pytest.approx(0.25)
        job = _job(2)
        job.predicted = {"mid": (0.5, 0.5)}
        explorer.served(4.0)  # room for 1.0 more: 1.0 + 0.5 ≤ 0.25 × 8
        assert explorer.offer(job, predicted_cost=0.5)
        explorer._spend(0.9, "judge")  # another exploration spent while this one waited in the queue
        await explorer.join()  # 1.9 + 0.5 > 2.0: not started
        day[0] = "2026-12-07"  # a new UTC day: both sums start again
        assert explorer.share_today() == 0.0 and not explorer.offer(_job(3), predicted_cost=0.01)
        explorer.served(1.0)
        assert explorer.offer(_job(4), predicted_cost=0.01)
        await explorer.join()
        await explorer.aclose()
        return metrics.render().decode()

    text = asyncio.run(run())
    assert recorded == ["r1", "r4"]
    assert 'carrot_explore_dropped_total{reason="share"} 3.0' in text
    assert "carrot_explore_spend_share 1.0" in text  # day two: 0.5 + 2 × 0.25 explored over 1.0 served


def test_either_cap_stops_exploration_when_both_are_given():
    day, recorded = ["2026-12-06"], []

    async def run():
        explorer, metrics = _share_explorer(day, recorded, budget_per_day=1.0, max_share=1.0)
        explorer.served(10.0)
        await explorer.explore(_job(0))  # 1.0: the budget is spent, the share (1.0 of 10.0) is not
        assert not explorer.offer(_job(1), predicted_cost=0.01)
        day[0] = "2026-12-07"
        explorer.served(0.5)
        assert not explorer.offer(_job(2), predicted_cost=0.6)  # under the budget, over the share
        return metrics.render().decode()

    text = asyncio.run(run())
    assert recorded == ["r0"]
    assert 'carrot_explore_dropped_total{reason="budget"} 1.0' in text
    assert 'carrot_explore_dropped_total{reason="share"} 1.0' in text


def test_out_of_distribution_prompts_are_sampled_at_their_own_rate():
    explorer = Explorer(ExploreSettings(rate=0.0, judge="j", ood_rate=1.0), None, None, None, GatewayMetrics())
    assert explorer.sampled(False) and not explorer.sampled(True) and not explorer.sampled(None)
    assert ExploreSettings(rate=0.1, judge="j").ood_rate == pytest.approx(0.4)


# ----------------------------------------------------------------------------------- start-up errors

def _serve(tmp_path, capsys, *flags):
    upstreams = tmp_path / "upstreams.json"
    upstreams.write_text(json.dumps({"big-model": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}}))
    code = main(["serve", "--upstreams", str(upstreams), "--port", "0", *map(str, flags)])
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    return code, lines


@pytest.mark.parametrize("flags, fragment", [
    (["--explore", "0.1", "--judge", "mid-model"], "is not an upstream"),
    (["--explore", "1.5", "--judge", "big-model"], "share in [0, 1]"),
    (["--explore", "-0.1", "--judge", "big-model"], "share in [0, 1]"),
    (["--explore", "0.1", "--judge", "big-model", "--explore-budget", "-1"], "≥ 0"),
    (["--explore", "0.1", "--judge", "big-model", "--explore-max-share", "0"], "--explore-max-share must be"),
    (["--explore", "0.1", "--judge", "big-model", "--explore-max-share", "-0.25"], "--explore-max-share must be"),
    (["--explore", "0.1", "--judge", "big-model", "--explore-max-share", "nan"], "--explore-max-share must be"),
    (["--explore", "0.1", "--judge", "big-model", "--explore-max-share", "inf"], "--explore-max-share must be"),
    (["--explore-max-share", "0.25"], "only applies with --explore"),
    (["--explore", "0.1"], "needs --judge"),
    (["--judge", "big-model"], "only applies with --explore"),
    (["--explore", "0.1", "--judge", "big-model", "--explore-ood-rate", "2"], "share in [0, 1]"),
])
def test_bad_explore_options_are_one_line_and_exit_2(tmp_path, capsys, flags, fragment):
    code, lines = _serve(tmp_path, capsys, *flags)
    assert code == 2 and len(lines) == 1 and fragment in lines[0], lines


def test_an_explorations_predicted_cost_counts_both_gradings():
    from carrot_hub.collect.judge import JUDGE_REPLY_TOKENS, rubric_tokens
    from carrot_hub.serving.exploration import predicted_exploration_cost

    judge = {"input": 2.0, "output": 10.0}  # US$ per million tokens
    reads = [rubric_tokens() + 50 + 200, rubric_tokens() + 50 + 30]  # rubric, prompt and one answer each
    expected = 0.001 + sum(r * 2.0 + JUDGE_REPLY_TOKENS * 10.0 for r in reads) / 1e6
    assert predicted_exploration_cost(0.001, judge, 50, [200, 30]) == pytest.approx(expected)
    assert predicted_exploration_cost(0.001, None, 50, [200, 30]) == 0.001  # an unpriced judge counts 0, as its calls do
    assert predicted_exploration_cost(-1.0, judge, None, [None, 30]) > 0  # unknown counts read as 0, never negative


def test_a_new_kind_of_prompt_stays_explored_at_the_ood_rate_after_learn_remembers_its_kind(tmp_path):
    """The routing flag counts remembered prompts as support; exploration samples by the trained rows
    (carrot_hub.serving.trained_distribution), so a new task keeps its higher rate until the router is retrained."""
    router = tiny_knn_router(make_tiny_table(n_repeats=8), encoder_kind="static")  # 48 trained rows: support means something
    assert router.route(["Write a haiku about the ocean at dawn, with seagulls and salt."]).in_distribution == [False]
    new_task = [f"Write a haiku about the ocean at dawn, number {i}, with seagulls and salt." for i in range(40)]
    router.remember(new_task, router.config.candidate_models[0], [1.0] * len(new_task))
    query = "Write a haiku about the ocean at dawn, number 99, with seagulls and salt."
    assert router.route([query]).in_distribution == [True]  # routing: its remembered kind supports it
    with gateway_with_judge(router, tmp_path, rate=0.0, ood_rate=1.0) as (gateway, server, _, _):
        for text in (query, USER[0]["content"]):  # the new kind, then a prompt of the trained tiny table
            response = httpx.post(server.base_url + "/chat/completions",
                                  json={"model": "carrot:0", "messages": [{"role": "user", "content": text}]})
            assert response.status_code == 200
        wait_explored(gateway, 1)
        time.sleep(0.2)  # the second request's exploration would be offered by now
        assert gateway.explorer.stats["queued"] == 1
        metrics = httpx.get(server.base_url.removesuffix("/v1") + "/metrics").text
        assert "carrot_out_of_distribution_share 0.0" in metrics  # routing: both supported
        assert "carrot_out_of_trained_distribution_share 0.5" in metrics  # the operator still sees the new kind
        [audit] = records_of(gateway.outcome_log, "explored")
    served = {record["request_id"]: record for record in records_of(gateway.outcome_log, "served")}
    assert served[audit["request_id"]]["prompt"] == query
