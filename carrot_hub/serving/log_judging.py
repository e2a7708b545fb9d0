"""`carrot logs judge LOGDIR --judge CANDIDATE --upstreams FILE`: judged exploration of a stored outcome log.

The gateway's `--explore` judges answers it holds in memory; this judges the answers a gateway logged
(`carrot serve --log-answers`). For each served record that was routed (not pinned), answered, plain
chat, with its prompt and its answer logged and no label yet, the judge grades the answer with the
rubric and code of the gateway's exploration (`exploration.judge_answers`, `collect.judge.JudgeScorer`);
with `--explore ROUTER`, one other candidate (`exploration.pick_explored` over the router's ranking of
the prompt, at the record's μ, among the candidates with an upstream) is asked the routed text and
graded too. Labels are written as the gateway writes them (`OutcomeLog.feedback(source="judge")`,
with `model` and `usage` for the explored candidate), followed by the exploration's audit record
(`exploration.exploration_audit`, marked `"by": "carrot logs judge"`), into a new shard of the log
folder: existing shards are only read.

Resuming: a record that has a judge label, or an audit record of this command with the same judge,
is not judged again. The labels of a record are written before its audit record, each as one whole
line, so a run killed at any point leaves each record labelled or not (an explored label can be lost
if the kill falls between the two labels; the chosen one is then kept). A record whose judge or
explored candidate could not be reached (every retry failed) is marked `retry` and judged again by
the next run. Two runs on one folder: the second refuses to start (a `flock` on `LOGDIR/.judge.lock`,
released when the holder exits, also when killed).

Records the judge cannot use are counted by reason (`SKIP_REASONS`), never an error.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..collect.asking import failed_calls
from ..collect.judge import JUDGE_SAMPLING, judge_request
from ..collect.contracts import ScoringInput
from ..collect.spending import SpendTracker
from ..data.outcome_log_reader import (
    EXPLORED,
    FEEDBACK,
    SERVED,
    answered,
    is_outcome_log,
    parse_line,
    prompt_has_content,
    read_shard_lines,
    shard_paths,
)
from .exploration import ExploreJob, exploration_audit, judge_answers, pick_explored
from .outcome_log_writer import DEFAULT_FEEDBACK_WINDOW, OutcomeLog

BY = "carrot logs judge"
LOCK_FILENAME = ".judge.lock"
DEFAULT_CONCURRENCY = 4
ROUTING_BATCH = 64
SKIP_REASONS = {
    "not_answered": "not answered",
    "pinned": "pinned to a model (not routed)",
    "no_prompt": "prompt not logged (--no-prompt-log)",
    "no_answer": "answer not logged (served without --log-answers)",
    "not_plain_chat": "not plain chat (tools or a response format)",
    "answer_truncated": "answer cut in the log (longer than it keeps)",
    "empty_prompt": "empty prompt",
    "labelled_by_user": "labelled by a user (a later judge label would replace it)",
    "judged": "already judged",
    "tried": "judged before by this judge, unscored",
}


class LogNotFound(ValueError):
    """LOGDIR is missing or holds no outcome-log shard."""


@dataclass
class JudgeRunResult:
    """What one run did. `unscored` and `skipped` count answers and records by reason."""

    log_dir: str
    judge: str
    served: int = 0
    candidates: int = 0
    judged: int = 0  # records whose chosen answer got a judge label
    explored: int = 0  # explored candidates asked
    labels: int = 0  # feedback records written (chosen and explored)
    unscored: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    not_judged_max_spend: int = 0
    to_retry: int = 0  # a call failed every retry: judged again next run
    judge_spent: float = 0.0
    explored_spent: float = 0.0
    shard: str | None = None

    def to_json(self) -> dict:
        return {
            "log_dir": self.log_dir, "judge": self.judge, "served": self.served, "candidates": self.candidates,
            "judged": self.judged, "explored": self.explored, "labels": self.labels,
            "unscored": dict(self.unscored), "skipped": {SKIP_REASONS[k]: n for k, n in self.skipped.items()},
            "not_judged_max_spend": self.not_judged_max_spend, "to_retry": self.to_retry,
            "judge_spent": self.judge_spent, "explored_spent": self.explored_spent, "shard": self.shard,
        }


@dataclass
class _Target:
    request_id: str
    path: Path
    offset: int


def skip_reason(record: Mapping) -> str | None:
    """Why a served record cannot be judged (a key of `SKIP_REASONS`), or None when it can."""
    if not answered(record) or not isinstance(record.get("model"), str):
        return "not_answered"
    if record.get("pinned"):
        return "pinned"
    prompt = record.get("prompt")
    if not isinstance(prompt, str):
        return "no_prompt"
    if not isinstance(record.get("answer"), str):
        return "no_answer"
    if record.get("plain_chat") is False:
        return "not_plain_chat"
    if record.get("answer_truncated"):
        return "answer_truncated"
    if not prompt_has_content(prompt):
        return "empty_prompt"
    return None


def scan_log(folder: Path, judge: str) -> tuple[list[_Target], Counter, int, dict]:
    """
    One pass over the shards: `(targets, skipped, served, output_tokens)`. Targets are places of the
    served records to judge (records are read again one at a time, so a large log is never held);
    `output_tokens` is {model: [answers, completion tokens]} of the log's answers, for spend estimates.
    """
    served: dict[str, tuple[Path, int, str | None]] = {}
    judged, user_labelled, tried = set(), set(), set()
    output_tokens: dict[str, list] = {}
    for path in shard_paths(folder):
        lines, _ = read_shard_lines(path)
        for offset, _, text in lines:
            if not text or not text.strip():
                continue
            try:
                record = parse_line(text)
            except ValueError:
                continue  # a bad line: the readers of the log report it
            if not isinstance(record, dict) or not isinstance(record.get("request_id"), str):
                continue
            kind, request_id = record.get("type"), record["request_id"]
            if kind == SERVED:
                served[request_id] = (path, offset, skip_reason(record))
                usage = record.get("usage")
                if isinstance(record.get("model"), str) and isinstance(usage, dict) \
                        and isinstance(usage.get("completion_tokens"), int):
                    seen = output_tokens.setdefault(record["model"], [0, 0])
                    seen[0], seen[1] = seen[0] + 1, seen[1] + usage["completion_tokens"]
            elif kind == FEEDBACK:
                (judged if record.get("source") == "judge" else user_labelled).add(request_id)
            elif kind == EXPLORED and record.get("by") == BY and record.get("judge") == judge and not record.get("retry"):
                tried.add(request_id)
    targets, skipped = [], Counter()
    for request_id, (path, offset, reason) in served.items():
        if reason is None:
            if request_id in judged:
                reason = "judged"
            elif request_id in user_labelled:
                reason = "labelled_by_user"
            elif request_id in tried:
                reason = "tried"
        if reason is None:
            targets.append(_Target(request_id, path, offset))
        else:
            skipped[reason] += 1
    return targets, skipped, len(served), output_tokens


def _read_record(target: _Target) -> dict:
    with target.path.open("rb") as handle:
        handle.seek(target.offset)
        return parse_line(handle.readline().decode("utf-8"))


def reason_kind(reason: str) -> str:
    """An unscored answer's reason without its details (the judge's words, an error text): for the summary."""
    return re.sub(r"(line|failed)\b: .*$", r"\1", reason or "unknown", flags=re.DOTALL)


def plan_explorations(router, targets: list[_Target], callable_models: list[str]) -> dict:
    """
    `{request id: (explored candidate, {model: (quality, cost)})}`: for each target, the candidate
    `pick_explored` takes from the router's ranking of its prompt at the record's μ, among the
    router's candidates in `callable_models` (routed in batches; a record whose model the ranking
    lacks, or that has no other candidate, gets no plan).
    """
    from .batching import route_batch

    allowed = tuple(m for m in router.config.candidate_models if m in callable_models)
    plans = {}
    for start in range(0, len(targets), ROUTING_BATCH):
        batch = targets[start:start + ROUTING_BATCH]
        records = [_read_record(target) for target in batch]
        options = [router.routing_options(mu=r["mu"] if isinstance(r.get("mu"), (int, float)) else None,
                                          allowed=allowed) for r in records]
        for target, record, choice in zip(batch, records, route_batch(router, [r["prompt"] for r in records], options)):
            explored = None if isinstance(choice, Exception) else pick_explored(choice.ranked, record["model"])
            if explored is not None:
                plans[target.request_id] = (explored, {c.name: (c.quality, c.cost) for c in choice.ranked
                                                       if c.name in (record["model"], explored)})
    return plans


class LogJudge:
    """
    Judges the targets of one log (see the module docstring).

    `ask`: an `Asker` on the upstreams; `judge`: the `JudgeScorer`; `log`: an `OutcomeLog` on the same
    folder (its own new shard); `spend`: a `SpendTracker`; `redact`: scrubs keys from recorded text;
    `plans`: {request id: (explored candidate, {model: (predicted quality, cost)})} from `plan_explorations`
    (a record without a plan: only its chosen answer is judged).
    """

    def __init__(self, ask, judge, log: OutcomeLog, spend: SpendTracker, redact, plans: Mapping | None = None,
                 concurrency: int = DEFAULT_CONCURRENCY, progress=None):
        self.ask, self.judge, self.log, self.spend, self.redact = ask, judge, log, spend, redact
        self.plans = dict(plans or {})
        self.concurrency, self.progress = concurrency, progress

    async def run(self, targets: list[_Target], result: JudgeRunResult) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        for target in targets:
            queue.put_nowait(target)

        async def work():
            while not queue.empty():
                target = queue.get_nowait()
                await self.judge_one(target, result)
                if self.progress is not None:
                    self.progress.update(1)

        await asyncio.gather(*(work() for _ in range(self.concurrency)))

    def _reserve(self, calls: list[tuple[str, int]]) -> list[tuple[str, float]] | None:
        """Hold the estimates of `calls` ((model, input tokens)); None (all released) when one passes the cap."""
        held = []
        for model, n_in in calls:
            estimate = self.spend.reserve(model, n_in)
            if estimate is None:
                for _, amount in held:
                    self.spend.settle(amount, None)
                return None
            held.append((model, estimate))
        return held

    async def judge_one(self, target: _Target, result: JudgeRunResult) -> None:
        record = await asyncio.to_thread(_read_record, target)
        prompt, chosen, answer = record["prompt"], record["model"], record["answer"]
        messages = [{"role": "user", "content": prompt}]
        explored, predicted = self.plans.get(target.request_id, (None, {}))
        judge_in = (await asyncio.to_thread(self.ask.counter, [judge_request(ScoringInput(prompt, answer))[0]["content"]]))[0]
        calls = [(self.judge.judge, judge_in)]
        if explored is not None:
            prompt_in = (await asyncio.to_thread(self.ask.counter, [prompt]))[0]
            calls += [(explored, prompt_in), (self.judge.judge, judge_in)]
        held = self._reserve(calls)
        if held is None:
            result.not_judged_max_spend += 1
            return
        unreached: list = []  # calls that failed every retry (`Asker` adds them): the record is judged again next run
        token = failed_calls.set(unreached)
        completion, error, answers = None, None, {chosen: answer}
        try:
            if explored is not None:
                result.explored += 1
                try:
                    completion = await self.ask(explored, messages, {})
                    answers[explored] = completion.text
                except Exception as failure:  # noqa: BLE001  (UpstreamFailure/Rejected: recorded; the chosen answer is still judged)
                    error = f"the explored candidate {explored!r} failed: {str(failure)[:200]}"
            scores = await judge_answers(self.judge, prompt, messages, answers)
        finally:
            failed_calls.reset(token)
            for position, (_, estimate) in enumerate(held):  # position 1 is the explored answer's
                self.spend.settle(estimate, completion.cost if position == 1 and completion is not None else None)
        judge_cost = sum(score.judge_cost for score in scores.values())
        self.spend.add_judge(judge_cost)
        result.judge_spent += judge_cost
        result.explored_spent += (completion.cost or 0.0) if completion is not None else 0.0
        job = ExploreJob(target.request_id, messages, {}, prompt, chosen, answer, explored, predicted)
        await asyncio.to_thread(self._write, job, completion, scores, error, bool(unreached), result)

    def _write(self, job: ExploreJob, completion, scores: dict, error: str | None, retry: bool,
               result: JudgeRunResult) -> None:
        """The labels first (as the gateway writes them), then the audit record that marks the record tried."""
        for model, score in scores.items():
            if not score.scored:
                result.unscored[reason_kind(self.redact(score.reason or ""))] += 1
                continue
            is_explored = model == job.explored and model != job.chosen
            usage = ({"prompt_tokens": completion.input_tokens, "completion_tokens": completion.output_tokens}
                     if is_explored else None)
            self.log.feedback(job.request_id, score.value, source="judge",
                              model=model if is_explored else None, usage=usage)
            result.labels += 1
            if model == job.chosen:
                result.judged += 1
        audit = exploration_audit(job, self.judge.judge, completion, scores, error, self.redact)
        audit["by"] = BY
        if retry:
            audit["retry"] = True
            result.to_retry += 1
        self.log.explored(audit)
        result.shard = str(self.log.shard) if self.log.shard is not None else result.shard


def check_log_dir(log_dir) -> Path:
    """LOGDIR as a Path; `LogNotFound` (one line) when it is missing or not an outcome log."""
    folder = Path(log_dir).expanduser()
    if not folder.exists():
        raise LogNotFound(f"No outcome log at {folder}: the folder does not exist (give the --log-dir of carrot serve).")
    if not is_outcome_log(folder):
        raise LogNotFound(f"{folder} is not an outcome log (a folder of outcomes-*.jsonl shards written by carrot serve).")
    return folder


def judge_log(log_dir, pool, judge: str, *, router=None, max_spend: float | None = None,
              prices: Mapping | None = None, concurrency: int = DEFAULT_CONCURRENCY, retries=None,
              progress: bool = False) -> JudgeRunResult:
    """
    Judge the stored answers of the outcome log `log_dir` (see the module docstring) with the upstream
    `judge` of `pool` (an `UpstreamPool`); `router` explores one other candidate per record. `prices`:
    $/M per model (default: the log's prices.json); `retries`: a `RetryPolicy` for every call. Raises
    `LogNotFound`, `ValueError` (a judge that is not an upstream, a negative `max_spend`),
    `SpendLimitError`, `StoreLocked` (another run holds the folder).
    """
    from ..collect.asking import Asker
    from ..collect.scorers import build_scorer
    from ..data.prices import PRICES_FILENAME, read_prices_file
    from ..router_store import StoreLock

    folder = check_log_dir(log_dir)
    if max_spend is not None and not (max_spend >= 0 and max_spend != float("inf")):
        raise ValueError(f"--max-spend must be a finite number of US dollars ≥ 0, got {max_spend!r}.")
    if prices is None and (folder / PRICES_FILENAME).is_file():
        prices = read_prices_file(folder / PRICES_FILENAME)["prices"]
    ask = Asker(pool, prices=prices, retries=retries)
    scorer = build_scorer(f"judge:{judge}", ask=ask, candidates=list(pool.names), allow_code_execution=False)
    callable_models = [m for m in (router.config.candidate_models if router is not None else []) if m in pool]
    spend = SpendTracker(max_spend, prices, [judge, *callable_models])
    spend.history[judge] = [1, JUDGE_SAMPLING["max_tokens"]]  # the judge's estimate: its max_tokens, an upper bound
    lock = StoreLock(folder, f"carrot logs judge {folder}", filename=LOCK_FILENAME,
                     advice="one carrot logs judge per log folder. Wait for it to finish, or stop it.")
    try:
        targets, skipped, n_served, output_tokens = scan_log(folder, judge)
        for model, (count, total) in output_tokens.items():
            if model != judge:
                spend.history[model] = [count, total]
        result = JudgeRunResult(str(folder), judge, served=n_served, candidates=len(targets), skipped=skipped)
        if not targets:
            return result
        log = OutcomeLog(folder, feedback_window=max(DEFAULT_FEEDBACK_WINDOW, 2 * n_served))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(targets), desc="judging", unit="record")
        plans = plan_explorations(router, targets, callable_models) if router is not None else {}
        judging = LogJudge(ask, scorer, log, spend, pool.redact, plans=plans, concurrency=concurrency, progress=bar)

        async def run():
            try:
                await judging.run(targets, result)
            finally:
                await pool.aclose()

        try:
            asyncio.run(run())
        finally:
            log.close()
            if bar is not None:
                bar.close()
        return result
    finally:
        lock.release()
