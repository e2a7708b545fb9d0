"""`carrot collect` on fake upstreams: the table, the store, resuming, retries, spend, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from carrot_hub.collect.spending import SpendLimitError

from carrot_hub.cli import main
from carrot_hub.collect import collect
from carrot_hub.collect.cell_store import CELLS_FILENAME, CellStore, StoreError
from carrot_hub.data import load_routing_table
from carrot_hub.serving.upstreams import RetryPolicy, parse_retry_after

from .collect_fixtures import ContainsScorer, write_prompts, write_upstreams
from .serve_fixtures import fake_upstreams

FAST_RETRIES = RetryPolicy(max_retries=2, base_s=0.001, max_s=0.01)
PRICES = {"alpha": {"input": 1.0, "output": 2.0}, "beta": {"input": 0.5, "output": 4.0}}


@pytest.fixture
def two_fakes():
    with fake_upstreams(["alpha", "beta"], reply_words=6) as upstreams:
        yield upstreams


def _collect(tmp_path, upstreams_file, **options):
    options.setdefault("out", tmp_path / "table")
    options.setdefault("scorers", {"default": ContainsScorer()})
    options.setdefault("progress", False)
    options.setdefault("retries", FAST_RETRIES)
    prompts = options.pop("prompts", tmp_path / "prompts.jsonl")
    return collect(prompts, upstreams_file, **options)


def test_collect_writes_a_table_load_routing_table_reads(tmp_path, two_fakes):
    import carrot_hub

    assert carrot_hub.collect is collect
    write_prompts(tmp_path / "prompts.jsonl", n=5)
    upstreams = write_upstreams(tmp_path / "upstreams.json", two_fakes)
    result = _collect(tmp_path, upstreams, prices=PRICES, temperature=0.0, max_tokens=64)
    assert result.ok and result.counts.asked == 10 and result.counts.answered == 10
    table = load_routing_table(str(result.table))
    assert table.models == ["alpha", "beta"] and table.prompt_ids == [f"q{i}" for i in range(5)]
    assert np.all(table.scores == 1.0)  # "w3" is among the six words every fake answers
    assert np.all(table.output_tokens == 6) and table.prices == PRICES
    answers = pq.read_table(result.table / "answers" / "train.parquet").to_pylist()
    assert len(answers) == 10 and all(a["answer"].startswith(f"{a['model']}-upstream-id says:") for a in answers)
    assert all(a["status"] == "answered" and a["scorer"] == "contains" and not a["tokens_counted"] for a in answers)
    expected = (answers[0]["input_tokens"] * 1.0 + 6 * 2.0) / 1e6 if answers[0]["model"] == "alpha" else None
    assert expected is None or answers[0]["cost"] == pytest.approx(expected)
    assert result.spent == pytest.approx(sum(a["cost"] for a in answers))
    info = json.loads((result.table / "collect.json").read_text())
    assert info["sampling"] == {"temperature": 0.0, "max_tokens": 64}
    sent = two_fakes["alpha"][0].received[-1]
    assert sent["temperature"] == 0.0 and sent["max_tokens"] == 64 and sent["model"] == "alpha-upstream-id"
    by_model = {s["model"]: s for s in result.summary}
    assert by_model["beta"]["score"] == 1.0 and by_model["beta"]["mean_output_tokens"] == 6
    assert by_model["beta"]["cost_per_1000"] == pytest.approx(
        1000 * np.mean([a["cost"] for a in answers if a["model"] == "beta"]))


def test_a_rerun_asks_nothing_again_and_rescoring_needs_no_call(tmp_path, two_fakes):
    write_prompts(tmp_path / "prompts.jsonl", n=4)
    upstreams = write_upstreams(tmp_path / "upstreams.json", two_fakes)
    _collect(tmp_path, upstreams)
    requests = {name: fake.requests for name, (fake, _) in two_fakes.items()}
    first = (tmp_path / "table" / "data" / "train-00000-of-00001.parquet").read_bytes()
    again = _collect(tmp_path, upstreams)
    assert again.counts.asked == 0 and {n: f.requests for n, (f, _) in two_fakes.items()} == requests
    assert (tmp_path / "table" / "data" / "train-00000-of-00001.parquet").read_bytes() == first
    rescored = _collect(tmp_path, upstreams, scorers={"default": ContainsScorer("contains-v2")})
    assert rescored.counts.asked == 0 and rescored.counts.scored == 8
    # More prompts later: only the new cells are asked.
    write_prompts(tmp_path / "prompts.jsonl", n=6)
    more = _collect(tmp_path, upstreams)
    assert more.counts.asked == 4 and len(load_routing_table(str(more.table))) == 6


def test_the_store_drops_a_torn_last_line_and_refuses_other_sampling(tmp_path):
    from carrot_hub.collect.contracts import Completion

    with CellStore.open(tmp_path / "store", {"temperature": 0.0, "max_tokens": None}) as store:
        store.add_answer("k1", "sha", Completion("m", "hello", 3, 1))
    with open(tmp_path / "store" / CELLS_FILENAME, "ab") as handle:
        handle.write(b'{"type": "answer", "key": "k2", "mod')  # a write cut short by a kill
    with CellStore.open(tmp_path / "store", {"temperature": 0.0, "max_tokens": None}) as store:
        assert store.torn_lines == 1 and set(store.answers) == {("k1", "m")}
        store.add_answer("k3", "sha", Completion("m", "again", 3, 1))
    lines = (tmp_path / "store" / CELLS_FILENAME).read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["k1", "k3"]
    with pytest.raises(StoreError, match="temperature"):
        CellStore.open(tmp_path / "store", {"temperature": 0.7, "max_tokens": None})
    with CellStore.open(tmp_path / "store", {"temperature": 0.0, "max_tokens": None}):
        with pytest.raises(StoreError, match="Another carrot collect"):
            CellStore.open(tmp_path / "store", {"temperature": 0.0, "max_tokens": None})


def test_tokens_are_counted_and_flagged_when_the_upstream_gives_no_usage(tmp_path):
    write_prompts(tmp_path / "prompts.jsonl", n=2)
    with fake_upstreams(["alpha"], send_usage=False) as fakes:
        result = _collect(tmp_path, write_upstreams(tmp_path / "upstreams.json", fakes))
    answers = pq.read_table(result.table / "answers" / "train.parquet").to_pylist()
    assert all(a["tokens_counted"] and a["output_tokens"] > 0 and a["input_tokens"] > 0 for a in answers)


def test_transient_failures_are_retried_honouring_retry_after(tmp_path):
    write_prompts(tmp_path / "prompts.jsonl", n=2)
    with fake_upstreams(["alpha"], retry_after_s=0.2) as fakes:
        fakes["alpha"][0].fail_next("429", 1)
        fakes["alpha"][0].fail_next("503", 1)
        import time

        started = time.perf_counter()
        result = _collect(tmp_path, write_upstreams(tmp_path / "upstreams.json", fakes, max_concurrency=1),
                          retries=RetryPolicy(max_retries=3, base_s=0.001))
        elapsed = time.perf_counter() - started
    assert result.ok and result.counts.answered == 2 and fakes["alpha"][0].requests == 4
    assert elapsed >= 0.4  # two Retry-After waits of 0.2 s, not the 1 ms backoff


def test_retry_after_and_backoff():
    assert parse_retry_after("3") == 3.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    policy = RetryPolicy(base_s=1.0, max_s=5.0, jitter=0.0)
    assert [policy.delay(n) for n in range(4)] == [1.0, 2.0, 4.0, 5.0] and policy.delay(0, retry_after=7) == 7


def test_an_upstream_failing_every_retry_is_recorded_and_the_run_goes_on(tmp_path, capsys):
    write_prompts(tmp_path / "prompts.jsonl", n=3)
    with fake_upstreams(["alpha"]) as good, fake_upstreams(["beta"], failure_rate=1.0, failure="502") as bad:
        upstreams = write_upstreams(tmp_path / "upstreams.json", {**good, **bad})
        code = main(["collect", str(tmp_path / "prompts.jsonl"), "--upstreams", str(upstreams), "--out",
                     str(tmp_path / "table"), "--retries", "1", "--no-progress"])
        assert bad["beta"][0].requests == 3 * 2  # each cell: the call and one retry
    out, err = capsys.readouterr()
    assert code == 1 and "3 cells failed every retry" in err and "beta" in out and "alpha" in out
    table = load_routing_table(str(tmp_path / "table"))
    assert np.all(np.isnan(table.scores[:, 1])) and not np.any(np.isnan(table.output_tokens[:, 0]))
    answers = pq.read_table(tmp_path / "table" / "answers" / "train.parquet").to_pylist()
    failed = [a for a in answers if a["model"] == "beta"]
    assert all(a["status"] == "failed" and "HTTP 502" in a["failure"] and a["attempts"] == 2 for a in failed)


def test_unscorable_answers_are_unscored_with_a_reason_never_zero(tmp_path):
    from carrot_hub.collect.contracts import Score

    class Unparseable(ContainsScorer):
        async def score(self, item):
            return Score(None, "the judge's reply holds no score", self.name, judge_model="beta", judge_cost=0.001)

    write_prompts(tmp_path / "prompts.jsonl", n=2)
    with fake_upstreams(["alpha"]) as fakes:
        result = _collect(tmp_path, write_upstreams(tmp_path / "upstreams.json", fakes),
                          scorers={"default": Unparseable("judge:beta")}, prices=PRICES)
    table = load_routing_table(str(result.table))
    assert np.all(np.isnan(table.scores)) and np.all(table.output_tokens == 8)
    answers = pq.read_table(result.table / "answers" / "train.parquet").to_pylist()
    assert {a["unscored_reason"] for a in answers} == {"the judge's reply holds no score"}
    assert all(a["judge_cost"] == 0.001 and a["judge_model"] == "beta" for a in answers)
    assert result.summary[0]["unscored"] == 2 and result.summary[0]["score"] is None
    # The judge's cost is its own: the judged model's cost is its tokens at its price only.
    assert all(a["cost"] == pytest.approx((a["input_tokens"] * 1.0 + 8 * 2.0) / 1e6) for a in answers)
    assert result.judge_spent == pytest.approx(0.002)


def test_max_spend_stops_before_the_estimate_passes_it(tmp_path, two_fakes):
    write_prompts(tmp_path / "prompts.jsonl", n=20)
    upstreams = write_upstreams(tmp_path / "upstreams.json", two_fakes, max_concurrency=1)
    prices = {"alpha": {"input": 100.0, "output": 100.0}, "beta": {"input": 100.0, "output": 100.0}}
    # No history: each call is predicted at max_tokens = 10 output tokens; prompts are ~9 tokens.
    result = _collect(tmp_path, upstreams, prices=prices, max_spend=0.02, max_tokens=10)
    assert result.stopped_by_max_spend and 0 < result.counts.asked < 40 and result.counts.not_asked > 0
    assert result.spent <= 0.02
    table = load_routing_table(str(result.table))
    assert int(np.sum(~np.isnan(table.output_tokens))) == result.counts.answered


def test_max_spend_counts_the_judges_grading_before_asking(tmp_path, two_fakes):
    write_prompts(tmp_path / "prompts.jsonl", n=10)
    upstreams = write_upstreams(tmp_path / "upstreams.json", two_fakes, max_concurrency=1)
    # A cheap candidate and an expensive judge: grading, not answering, is what the limit must stop.
    prices = {"alpha": {"input": 1.0, "output": 1.0}, "beta": {"input": 1000.0, "output": 1000.0}}
    result = _collect(tmp_path, upstreams, models=["alpha"], scorers=["judge:beta"], prices=prices, max_spend=1.0,
                      max_tokens=10)  # no history yet: answers are predicted at max_tokens
    assert result.spent + result.judge_spent <= 1.0
    graded = two_fakes["beta"][0].requests
    assert 0 < graded < 10 and result.stopped_by_max_spend
    assert result.counts.not_asked + result.counts.not_judged == 10 - graded
    with pytest.raises(SpendLimitError, match="the judge beta has none"):
        _collect(tmp_path, upstreams, models=["alpha"], scorers=["judge:beta"], out=tmp_path / "other",
                 prices={"alpha": prices["alpha"]}, max_spend=1.0)


def test_into_adds_a_model_and_refuses_clashes(tmp_path, two_fakes, capsys):
    write_prompts(tmp_path / "prompts.jsonl", n=4)
    upstreams = write_upstreams(tmp_path / "upstreams.json", two_fakes)
    _collect(tmp_path, upstreams, models=["alpha"], prices=PRICES)
    added = _collect(tmp_path, upstreams, models=["beta"], out=None, into=tmp_path / "table", prices=PRICES)
    table = load_routing_table(str(added.table))
    assert table.models == ["alpha", "beta"] and len(table) == 4 and not np.any(np.isnan(table.scores))
    assert table.prices == PRICES
    # The same --into again writes the same values: no clash, nothing asked.
    again = _collect(tmp_path, upstreams, models=["beta"], out=None, into=tmp_path / "table")
    assert again.counts.asked == 0
    # Another store with other answers for cells the table has: a clash, and the table is left as it was.
    before = (tmp_path / "table" / "data" / "train-00000-of-00001.parquet").read_bytes()
    with fake_upstreams(["beta"], reply_words=3) as other:
        upstreams2 = write_upstreams(tmp_path / "upstreams2.json", other)
        code = main(["collect", str(tmp_path / "prompts.jsonl"), "--upstreams", str(upstreams2), "--into",
                     str(tmp_path / "table"), "--store", str(tmp_path / "other-store"), "--no-progress"])
    assert code == 2 and "already has 'beta' on prompt" in capsys.readouterr().err
    assert (tmp_path / "table" / "data" / "train-00000-of-00001.parquet").read_bytes() == before


def test_out_never_replaces_a_folder_it_did_not_write(tmp_path, two_fakes, capsys):
    write_prompts(tmp_path / "prompts.jsonl", n=2)
    (tmp_path / "table").mkdir()
    (tmp_path / "table" / "mine.txt").write_text("keep me")
    upstreams = write_upstreams(tmp_path / "upstreams.json", two_fakes)
    code = main(["collect", str(tmp_path / "prompts.jsonl"), "--upstreams", str(upstreams), "--out",
                 str(tmp_path / "table"), "--no-progress"])
    assert code == 2 and "was not written by this collection" in capsys.readouterr().err
    assert (tmp_path / "table" / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("case, needle", [
    ("unknown model", "'gamma' not in the upstreams file"),
    ("no prompt column", "has no prompt column"),
    ("negative max spend", "--max-spend"),
    ("unpriced max spend", "needs a price for every model"),
    ("reference missing", "needs a reference, and 3 of 3 rows have none"),
    ("unknown scorer", "Unknown scorer 'vibes'"),
    ("judge not an upstream", "The judge 'gamma' is not an upstream"),
    ("code not allowed", "pass --allow-code-execution"),
    ("task without scorer", "No scorer for task 'words'"),
    ("into not a table", "not a routing table folder"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, two_fakes, capsys, case, needle, monkeypatch):
    prompts = write_prompts(tmp_path / "prompts.jsonl", n=3, reference=None if case == "reference missing" else "w3")
    if case == "no prompt column":
        prompts.write_text('{"question": "hi"}\n')
    upstreams = write_upstreams(tmp_path / "upstreams.json", two_fakes)
    argv = ["collect", str(prompts), "--upstreams", str(upstreams), "--out", str(tmp_path / "table"), "--no-progress"]
    if case == "unknown model":
        argv += ["--models", "alpha,gamma"]
    elif case == "negative max spend":
        argv += ["--max-spend", "-1"]
    elif case == "unpriced max spend":
        argv += ["--max-spend", "1"]
    elif case == "reference missing":
        argv += ["--scorer", "number"]
    elif case == "unknown scorer":
        argv += ["--scorer", "vibes"]
    elif case == "judge not an upstream":
        argv += ["--scorer", "judge:gamma"]
    elif case == "code not allowed":
        argv += ["--scorer", "code"]
    elif case == "task without scorer":
        argv += ["--scorer", "gsm8k=number"]
    elif case == "into not a table":
        (tmp_path / "empty").mkdir()
        argv = argv[:4] + ["--into", str(tmp_path / "empty"), "--no-progress"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert sum(f.requests for f, _ in two_fakes.values()) == 0  # nothing asked


def test_from_log_asks_the_served_prompts_and_only_out_of_distribution_ones(tmp_path, two_fakes):
    from carrot_hub.serving.outcome_log_writer import OutcomeLog

    with OutcomeLog(tmp_path / "log") as log:
        for i, flag in enumerate([True, False, False, None]):
            log.record({"request_id": f"r{i}", "prompt": f"served prompt {i % 3}", "model": "alpha", "status": "ok",
                        "in_distribution": flag})
    upstreams = write_upstreams(tmp_path / "upstreams.json", two_fakes)
    everything = collect(None, upstreams, from_log=tmp_path / "log", out=tmp_path / "all", progress=False)
    assert everything.prompts == 3 and everything.counts.asked == 6  # "served prompt 0" was served twice
    flagged = collect(None, upstreams, from_log=tmp_path / "log", only_out_of_distribution=True,
                      out=tmp_path / "ood", progress=False)
    table = load_routing_table(str(flagged.table))
    assert sorted(table.prompts) == ["served prompt 1", "served prompt 2"] and set(table.tasks) == {"served"}


def test_from_log_without_the_flag_is_refused(tmp_path, two_fakes, capsys):
    from carrot_hub.serving.outcome_log_writer import OutcomeLog

    with OutcomeLog(tmp_path / "log") as log:
        log.record({"request_id": "r0", "prompt": "an old record", "model": "alpha", "status": "ok"})
    upstreams = write_upstreams(tmp_path / "upstreams.json", two_fakes)
    code = main(["collect", "--from-log", str(tmp_path / "log"), "--only-out-of-distribution", "--upstreams",
                 str(upstreams), "--out", str(tmp_path / "table"), "--no-progress"])
    assert code == 2 and "does not record the router's out-of-distribution flag" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["csv", "parquet", "messages", "packaged", "hub-streaming"])
def test_prompt_sets_of_every_kind(tmp_path, kind, monkeypatch):
    import pyarrow as pa

    from carrot_hub.collect.prompt_sets import read_prompt_set

    rows = [{"key": f"k{i}", "prompt": f"Question {i}?", "reference": str(i), "task": "t"} for i in range(3)]
    if kind == "csv":
        source = tmp_path / "prompts.csv"
        source.write_text("key,prompt,reference,task\n" + "".join(f"k{i},Question {i}?,{i},t\n" for i in range(3)))
    elif kind == "parquet":
        source = tmp_path / "prompts.parquet"
        pq.write_table(pa.Table.from_pylist(rows), source)
    elif kind == "messages":
        source = tmp_path / "chats.jsonl"
        source.write_text("".join(json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                                           {"role": "user", "content": r["prompt"]}],
                                              "golden_answer": r["reference"]}) + "\n" for r in rows))
    elif kind == "packaged":
        prompt_set = read_prompt_set("zeroeval-2024", split="test", limit=5)
        assert len(prompt_set) == 5 and prompt_set.items[0].reference is not None and prompt_set.prices
        assert {item.task for item in prompt_set.items} <= {"gsm8k", "cruxeval"}
        return
    else:  # a Hub id is read by datasets.load_dataset(id, streaming=True): here a local copy stands in for the Hub
        import datasets

        folder = tmp_path / "hub-copy"
        folder.mkdir()
        pq.write_table(pa.Table.from_pylist(rows), folder / "train.parquet")
        real = datasets.load_dataset
        calls = []

        def load_dataset(path, *args, **kwargs):
            calls.append((path, kwargs.get("streaming")))
            return real(str(folder), *args[1:], **{k: v for k, v in kwargs.items() if k != "name"})

        monkeypatch.setattr(datasets, "load_dataset", load_dataset)
        prompt_set = read_prompt_set("someone/prompts", streaming=True)
        assert calls[0] == ("someone/prompts", True) and [i.prompt for i in prompt_set.items] == [r["prompt"] for r in rows]
        return
    prompt_set = read_prompt_set(source)
    items = prompt_set.items
    assert [i.prompt for i in items] == [r["prompt"] for r in rows] and [i.reference for i in items] == ["0", "1", "2"]
    if kind == "messages":
        assert items[0].messages[0] == {"role": "system", "content": "Be brief."} and items[0].key.startswith("sha256-")
    else:
        assert [i.key for i in items] == ["k0", "k1", "k2"] and items[0].task == "t"


def test_a_judge_is_asked_through_its_upstream_and_its_cost_kept_apart(tmp_path, two_fakes):
    write_prompts(tmp_path / "prompts.jsonl", n=2)
    upstreams = write_upstreams(tmp_path / "upstreams.json", two_fakes)
    result = _collect(tmp_path, upstreams, models=["alpha"], scorers=["judge:beta"], prices=PRICES)
    answers = pq.read_table(result.table / "answers" / "train.parquet").to_pylist()
    judged = two_fakes["beta"][0].received[-1]["messages"]
    assert any("alpha-upstream-id says:" in str(m["content"]) for m in judged)  # the judge saw the answer
    # The fake judge answers words, not "Score: N": unscored with the reason, its cost recorded apart.
    assert all(a["score"] is None and "Score" in a["unscored_reason"] and a["judge_model"] == "beta" for a in answers)
    assert all(a["judge_cost"] > 0 and a["cost"] == pytest.approx((a["input_tokens"] * 1.0 + 6 * 2.0) / 1e6)
               for a in answers)
    assert result.judge_spent == pytest.approx(sum(a["judge_cost"] for a in answers))
    assert result.spent == pytest.approx(sum(a["cost"] for a in answers))


def test_into_adds_prompts_as_rows(tmp_path, two_fakes):
    write_prompts(tmp_path / "prompts.jsonl", n=3)
    upstreams = write_upstreams(tmp_path / "upstreams.json", two_fakes)
    _collect(tmp_path, upstreams)
    write_prompts(tmp_path / "prompts.jsonl", n=5)
    grown = _collect(tmp_path, upstreams, out=None, into=tmp_path / "table")
    assert grown.counts.asked == 4  # two new prompts × two models
    table = load_routing_table(str(grown.table))
    assert table.prompt_ids == [f"q{i}" for i in range(5)] and not np.any(np.isnan(table.scores))
    answers = pq.read_table(grown.table / "answers" / "train.parquet")
    assert answers.num_rows == 10


def test_a_judge_that_cannot_be_reached_leaves_cells_to_score_next_run(tmp_path):
    write_prompts(tmp_path / "prompts.jsonl", n=2)
    with fake_upstreams(["alpha"]) as good, fake_upstreams(["beta"], failure_rate=1.0, failure="503") as down:
        first = _collect(tmp_path, write_upstreams(tmp_path / "upstreams.json", {**good, **down}), models=["alpha"],
                         scorers=["judge:beta"])
    answers = pq.read_table(first.table / "answers" / "train.parquet").to_pylist()
    assert first.counts.scoring_failed == 2 and all("failed" in a["unscored_reason"] for a in answers)
    with fake_upstreams(["alpha"]) as good, fake_upstreams(["beta"]) as up:
        again = _collect(tmp_path, write_upstreams(tmp_path / "upstreams.json", {**good, **up}), models=["alpha"],
                         scorers=["judge:beta"])
        assert good["alpha"][0].requests == 0 and up["beta"][0].requests == 2  # answers kept, judge asked again
    answers = pq.read_table(again.table / "answers" / "train.parquet").to_pylist()
    assert again.counts.scored == 2 and all("Score" in a["unscored_reason"] for a in answers)
