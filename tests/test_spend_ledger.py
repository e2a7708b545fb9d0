"""The exploration spend ledger: the caps of `--explore-budget`/`--explore-max-share` count the day's
spend of every worker writing one outcome log and of every earlier run of the same day."""

import asyncio
import json
import logging
import subprocess
import sys

import pytest

from carrot_hub.collect.contracts import Completion, Score
from carrot_hub.serving.exploration import Explorer, ExploreJob, ExploreSettings
from carrot_hub.serving.prometheus_metrics import GatewayMetrics
from carrot_hub.serving.spend_ledger import LEDGER_FOLDER, SERVED_FLUSH_S, DaySums, SpendLedger


class FakeClock:
    def __init__(self, day="2026-12-06"):
        self.day, self.now = day, 0.0

    def __call__(self):
        return self.day

    def monotonic(self):
        return self.now


def ledger(folder, clock):
    return SpendLedger(folder, clock=clock, monotonic=clock.monotonic)


def test_two_workers_on_one_log_folder_see_each_others_spend(tmp_path):
    clock = FakeClock()
    first, second = ledger(tmp_path, clock), ledger(tmp_path, clock)
    first.spend(0.4)
    second.spend(0.1)
    second.reserve(0.3)
    assert first.today() == second.today() == DaySums(explored=0.5, reserved=0.3, served=0.0)
    second.release(0.3)
    assert first.today().reserved == 0.0
    assert first.own() == DaySums(explored=0.4)


def test_served_spend_is_written_at_most_once_a_flush_period(tmp_path):
    clock = FakeClock()
    writer, reader = ledger(tmp_path, clock), ledger(tmp_path, clock)
    writer.served(1.0)  # the first is written at once
    writer.served(2.0)  # within the period: kept in memory
    assert reader.today().served == 1.0 and writer.today().served == 3.0
    clock.now += SERVED_FLUSH_S
    writer.served(0.5)
    assert reader.today().served == 3.5
    writer.served(0.25)
    writer.flush()  # at shutdown
    assert reader.today().served == 3.75


def test_a_restart_keeps_the_days_spend_and_a_new_day_starts_from_zero(tmp_path):
    clock = FakeClock()
    before = ledger(tmp_path, clock)
    before.spend(0.75)
    before.served(3.0)
    before.flush()  # the gateway's shutdown
    after = ledger(tmp_path, clock)  # the gateway restarted: same log folder, same day
    assert after.today() == DaySums(explored=0.75, served=3.0)
    clock.day = "2026-12-07"
    assert after.today() == DaySums()
    after.spend(0.1)
    assert sorted(p.name for p in (tmp_path / LEDGER_FOLDER).iterdir()) == ["2026-12-06", "2026-12-07"]


def test_a_killed_processs_reservation_no_longer_counts(tmp_path):
    clock = FakeClock()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    day = tmp_path / LEDGER_FOLDER / clock.day
    day.mkdir(parents=True)
    (day / "dead.json").write_text(json.dumps({"pid": int(gone.stdout), "explored": 0.5, "reserved": 0.25, "served": 2.0}))
    assert ledger(tmp_path, clock).today() == DaySums(explored=0.5, reserved=0.0, served=2.0)


def test_an_unreadable_ledger_file_is_ignored_and_logged(tmp_path, caplog):
    clock = FakeClock()
    day = tmp_path / LEDGER_FOLDER / clock.day
    day.mkdir(parents=True)
    (day / "broken.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="carrot_hub.serving.spend_ledger"):
        assert ledger(tmp_path, clock).today() == DaySums()
    assert "broken.json" in caplog.text


def test_without_a_folder_the_ledger_is_this_process_only(tmp_path):
    clock = FakeClock()
    memory = ledger(None, clock)
    memory.spend(1.0)
    memory.served(2.0)
    assert memory.today() == DaySums(explored=1.0, served=2.0)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------ the caps, through Explorer


class Asker:
    """An explored candidate that answers after `delay_s` for 0.5 US$."""

    def __init__(self, delay_s=0.0):
        self.delay_s, self.calls = delay_s, 0

    async def ask(self, candidate, messages, sampling):
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        return Completion(model=candidate, text="an answer", input_tokens=10, output_tokens=5, cost=0.5)


class Judge:
    name = "judge:j"

    async def score(self, item):
        return Score(0.5, "ok", judge_cost=0.25)


def job(index: int) -> ExploreJob:
    return ExploreJob(request_id=f"r{index}", messages=[{"role": "user", "content": "hi"}], sampling={}, prompt="hi",
                      chosen="big", chosen_answer="hello", explored="small", predicted={}, predicted_cost=1.0)


def explorer(tmp_path, clock, asker, workers=1, **caps):
    recorded = []

    async def record(job, explored, scores, error):
        recorded.append(job.request_id)

    settings = ExploreSettings(rate=1, judge="j", workers=workers, **caps)
    return Explorer(settings, asker.ask, Judge(), record, GatewayMetrics(), ledger=ledger(tmp_path, clock)), recorded


def test_the_budget_is_one_for_all_workers_and_restarts_of_the_day(tmp_path):
    clock = FakeClock()

    async def run():
        first, done_first = explorer(tmp_path, clock, Asker(), budget_per_day=1.5)
        await first.explore(job(0))  # 0.5 + 2 × 0.25 = 1.0 spent
        second, done_second = explorer(tmp_path, clock, Asker(), budget_per_day=1.5)  # another worker
        assert not second.offer(job(1))  # 1.0 + 1.0 predicted > 1.5
        restarted, _ = explorer(tmp_path, clock, Asker(), budget_per_day=1.5)  # a restart later that day
        assert restarted.spent_today() == pytest.approx(1.0) and not restarted.offer(job(2))
        return done_first, done_second

    assert asyncio.run(run()) == (["r0"], [])


def test_explorations_in_flight_count_against_the_budget(tmp_path):
    """Two explorations started together, each fitting the budget alone, do not both run."""
    clock = FakeClock()

    async def run():
        asker = Asker(delay_s=0.2)
        running, recorded = explorer(tmp_path, clock, asker, workers=2, budget_per_day=1.5)
        assert running.offer(job(0)) and running.offer(job(1))  # nothing spent yet when both were queued
        await running.join()
        await running.aclose()
        return asker.calls, recorded, running.spent_today(), running.ledger.today().reserved

    calls, recorded, spent, reserved = asyncio.run(run())
    assert calls == 1 and recorded == ["r0"]
    assert spent == pytest.approx(1.0) and reserved == 0.0
