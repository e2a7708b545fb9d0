"""Judged exploration (`carrot serve --explore RATE --judge CANDIDATE`): the gateway labels its own traffic.

After a sampled routed request has been answered (the client already has its answer), the gateway
asks one other candidate the same request and has the judge grade both answers with the rubric of
`carrot collect` (`carrot_hub.collect.judge`). Both grades become feedback records with
`source: "judge"` in the outcome log, and with `--learn` they go through the learner as user
feedback does. All of it runs on its own bounded queue and workers: a full queue drops the
exploration (counted), an exploration never touches the answer already sent, and its spend (the
explored answer and the judge's two calls) is counted apart and capped per UTC day, in dollars
(`--explore-budget`) and as a share of the day's serving spend (`--explore-max-share`), over every
worker of the gateway and every run of the day (`spend_ledger.SpendLedger`, in the outcome log's folder).

Which candidate is explored (`pick_explored`): among the candidates the request allowed (the
routed choice's ranking: allowed, callable, within `max_cost`) other than the one that answered,
the cheaper ones by predicted cost, and of those the one whose predicted quality is closest to the
answering model's; when none is cheaper, the one closest in predicted quality. The label that
teaches the router most is one that can change a decision: the router picked its model over the
rivals near it, and the nearest cheaper rival is the one whose real quality, if as good, would have
been the better choice (the CARROT trade-off); it is also the cheapest label to buy. A candidate far
below in predicted quality is rarely chosen whatever its label says. Measured against the most
uncertain, a random and the most expensive other candidate (`PICK_RULES`) by
scripts/bench_exploration.py, no alternative learned more (docs/exploration.md has the figures).

Each answer is graded absolutely (0 to 10 per the rubric, one call each), not against the other:
`remember()` takes a quality in [0, 1] per (prompt, model) cell on the scale of the training labels,
which a preference between two answers does not give; and grading each answer alone has no
position bias and lets one grade stand when the other call fails.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ..collect.asking import cell_cost
from ..collect.contracts import Score, ScoringInput
from ..collect.judge import JUDGE_REPLY_TOKENS, rubric_tokens
from .spend_ledger import SpendLedger, utc_day

logger = logging.getLogger("carrot_hub.serving.exploration")
DEFAULT_QUEUE_SIZE = 256
DEFAULT_WORKERS = 4
# Request fields an explored candidate is asked with (the rest, tools or a response format, is never explored).
SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed",
                 "presence_penalty", "frequency_penalty")
# A request carrying any of these asks for something a judge cannot compare as plain text.
NOT_PLAIN_KEYS = ("tools", "functions", "tool_choice", "function_call", "response_format")
DEFAULT_PICK_RULE = "closest-cheaper"  # the explored-candidate rule (see PICK_RULES and pick_explored)


def default_ood_rate(rate: float) -> float:
    """Out-of-distribution prompts teach the router most: sampled at 4× RATE by default (at most 1)."""
    return min(1.0, 4 * rate)


@dataclass
class ExploreSettings:
    """
    `rate`: share of routed, in-distribution (or unknown) plain chat requests explored, in [0, 1].
    `judge`: the upstream that grades. `budget_per_day`: US$ per UTC day (None: no cap).
    `max_share`: exploration's spend per UTC day at most this share of the day's serving spend (None: no cap).
    `ood_rate`: share of out-of-distribution requests explored (default `default_ood_rate(rate)`).
    `private`: also explore requests whose prompt is not logged (`--no-prompt-log`).
    `pick_rule`: which other candidate is explored, a name of `PICK_RULES` (docs/exploration.md: the measurement).
    """

    rate: float
    judge: str
    budget_per_day: float | None = None
    max_share: float | None = None
    ood_rate: float | None = None
    private: bool = False
    queue_size: int = DEFAULT_QUEUE_SIZE
    workers: int = DEFAULT_WORKERS
    seed: int | None = None
    pick_rule: str = DEFAULT_PICK_RULE

    def __post_init__(self):
        if self.pick_rule not in PICK_RULES:
            raise ValueError(f"pick_rule must be one of {', '.join(PICK_RULES)}, got {self.pick_rule!r}.")
        for name in ("rate", "ood_rate"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1):
                raise ValueError(f"--explore{'' if name == 'rate' else '-ood-rate'} must be a share in [0, 1], got {value!r}.")
        if self.ood_rate is None:
            self.ood_rate = default_ood_rate(self.rate)
        if self.budget_per_day is not None and not (self.budget_per_day >= 0 and self.budget_per_day != float("inf")):
            raise ValueError(f"--explore-budget must be a number of US$ per day ≥ 0, got {self.budget_per_day!r}.")
        if self.max_share is not None and not (self.max_share > 0 and self.max_share != float("inf")):
            raise ValueError("--explore-max-share must be a share of the serving spend > 0 (e.g. 0.25 for at most "
                             f"25% extra), got {self.max_share!r}.")
        if not isinstance(self.judge, str) or not self.judge:
            raise ValueError("--explore needs --judge CANDIDATE: the upstream that grades the answers.")
        if self.queue_size < 1 or self.workers < 1:
            raise ValueError("queue_size and workers must be positive.")


@dataclass
class ExploreJob:
    """One exploration to run: the served request and its answer, and the candidate to ask."""

    request_id: str
    messages: list
    sampling: dict
    prompt: str
    chosen: str
    chosen_answer: str
    explored: str
    predicted: dict = field(default_factory=dict)  # {model: (quality, cost)} as the router predicted
    predicted_cost: float = 0.0  # US$ the whole exploration is predicted to cost (`predicted_exploration_cost`)


def predicted_exploration_cost(explored_cost: float, judge_price, prompt_tokens: float, answer_tokens) -> float:
    """
    What one exploration is predicted to cost, in US$, for the caps to be checked before it runs: the
    explored answer's predicted cost plus one grading per answer, each reading the rubric, the prompt
    and that answer (`answer_tokens`: the chosen answer's and the explored one's output tokens) at
    the judge's input price and writing a typical reply (`JUDGE_REPLY_TOKENS`: the rubric asks for at
    most three sentences and a grade) at its output price. `judge_price` is the judge's
    `{"input", "output"}` US$ per million tokens (None: unpriced; its calls then count 0 too).
    """
    reading = rubric_tokens() + max(prompt_tokens or 0.0, 0.0)
    gradings = (cell_cost(judge_price, reading + max(tokens or 0.0, 0.0), JUDGE_REPLY_TOKENS) for tokens in answer_tokens)
    return max(explored_cost or 0.0, 0.0) + sum(cost or 0.0 for cost in gradings)


def pick_explored(ranked, answered: str) -> str | None:
    """
    The candidate to explore (see the module docstring): of `ranked` (`CandidateEstimate`s: name,
    quality, cost) other than `answered`, the cheaper ones' closest in predicted quality, else the
    closest in predicted quality. None when there is no other candidate.
    """
    by_name = {c.name: c for c in ranked}
    if answered not in by_name:
        return None
    mine = by_name[answered]
    others = [c for c in ranked if c.name != answered]
    if not others:
        return None
    cheaper = [c for c in others if c.cost < mine.cost]
    pool = cheaper or others
    return min(pool, key=lambda c: (abs(c.quality - mine.quality), c.cost, c.name)).name


def pick_most_uncertain(ranked, answered: str) -> str | None:
    """The other candidate whose predicted quality is nearest 0.5 (the largest q·(1 − q): the least sure)."""
    others = [c for c in ranked if c.name != answered]
    return min(others, key=lambda c: (abs(c.quality - 0.5), c.cost, c.name)).name if others else None


def pick_most_expensive(ranked, answered: str) -> str | None:
    """The other candidate with the highest predicted cost."""
    others = [c for c in ranked if c.name != answered]
    return max(others, key=lambda c: (c.cost, c.name)).name if others else None


def pick_random(ranked, answered: str, rng: random.Random) -> str | None:
    """Any other candidate, uniformly (`rng`: the explorer's own seeded generator)."""
    others = sorted(c.name for c in ranked if c.name != answered)
    return rng.choice(others) if others else None


# The explored-candidate rules compared by scripts/bench_exploration.py (docs/exploration.md has the figures).
PICK_RULES = {
    "closest-cheaper": pick_explored,
    "most-uncertain": pick_most_uncertain,
    "most-expensive": pick_most_expensive,
    "random": pick_random,
}


async def judge_answers(judge, prompt: str, messages, answers: dict[str, str]) -> dict[str, Score]:
    """
    Grade each of `answers` ({model: text}, answers to one request) alone with `judge` (a collect
    scorer: `JudgeScorer`), all in parallel. A judge call that raised leaves its answer unscored with
    the reason, never 0: `{model: Score}` in the order of `answers`.
    """
    messages = tuple(messages)
    graded = await asyncio.gather(*(judge.score(ScoringInput(prompt, answer, messages=messages))
                                    for answer in answers.values()), return_exceptions=True)
    scores: dict[str, Score] = {}
    for model, grade in zip(answers, graded):
        if isinstance(grade, BaseException):
            grade = Score(None, f"the judge failed: {type(grade).__name__}: {str(grade)[:200]}",
                          scorer=getattr(judge, "name", "judge"))
        scores[model] = grade
    return scores


def exploration_audit(job: ExploreJob, judge: str, explored, scores: dict, error: str | None, redact) -> dict:
    """
    The audit record of one exploration (`OutcomeLog.explored`): what was asked, what it cost, each
    answer's label with its reason (unscored ones too). `explored` is the explored candidate's
    `Completion` (None when it failed, or when none was asked); `redact` scrubs keys from text.
    """
    audit = {
        "request_id": job.request_id, "chosen": job.chosen, "explored": job.explored, "judge": judge,
        "predicted": {model: {"quality": q, "cost": c} for model, (q, c) in job.predicted.items()},
        "predicted_cost": job.predicted_cost,
        "status": "ok" if error is None else "explored_failed",
    }
    if error is not None:
        audit["error"] = redact(error)
    if explored is not None:
        audit["explored_usage"] = {"prompt_tokens": explored.input_tokens, "completion_tokens": explored.output_tokens}
        audit["explored_cost"] = explored.cost
    if scores:
        audit["judge_cost"] = sum(score.judge_cost for score in scores.values())
        audit["labels"] = {model: {"score": score.value, "reason": redact(score.reason or "")}
                           for model, score in scores.items()}
    return audit


def plain_chat(payload: dict) -> bool:
    """True for a request a judge can compare as text: no tools, functions or response format."""
    return not any(payload.get(key) not in (None, [], {}) for key in NOT_PLAIN_KEYS)


class Explorer:
    """
    The exploration queue and its workers, on the gateway's event loop.

    `ask(candidate, messages, sampling) -> Completion` calls an upstream (`collect.asking.Asker`);
    `judge` is a `collect` scorer (`JudgeScorer`); `record(job, explored, scores, error)` is awaited
    with the outcome (the gateway writes the log and feeds the learner). `metrics` is the gateway's.
    """

    def __init__(self, settings: ExploreSettings, ask, judge, record: Callable, metrics, clock=None,
                 ledger: SpendLedger | None = None):
        self.settings, self.ask, self.judge, self.record, self.metrics = settings, ask, judge, record, metrics
        self._random = random.Random(settings.seed)
        self._pick_random = random.Random(None if settings.seed is None else settings.seed + 1)  # the random rule's own
        self._queue: asyncio.Queue | None = None
        self._workers: list[asyncio.Task] = []
        # The day's sums; the gateway's ledger is shared with its other workers and earlier runs of the day.
        self.ledger = ledger if ledger is not None else SpendLedger(None, clock=clock or utc_day)
        self.stats = {"queued": 0, "finished": 0, "dropped": 0}
        if metrics is not None:
            metrics.explore_share_source = self.share_today

    # ------------------------------------------------------------------ sampling

    def sampled(self, in_distribution: bool | None) -> bool:
        rate = self.settings.ood_rate if in_distribution is False else self.settings.rate
        return rate > 0 and self._random.random() < rate

    def pick(self, ranked, answered: str) -> str | None:
        """The candidate to explore by the settings' rule (`PICK_RULES`), None when there is no other."""
        rule = PICK_RULES[self.settings.pick_rule]
        return rule(ranked, answered, self._pick_random) if rule is pick_random else rule(ranked, answered)

    def spent_today(self) -> float:
        """US$ spent exploring (explored answers and judge calls) this UTC day, by every process of the ledger."""
        return self.ledger.today().explored

    def served_today(self) -> float:
        """US$ of served requests' realised cost this UTC day (what `carrot_spend_dollars_total` counts)."""
        return self.ledger.today().served

    def served(self, dollars: float | None) -> None:
        """The gateway's realised cost of one served request (None: unknown, not counted)."""
        if dollars:
            self.ledger.served(dollars)

    def share_today(self) -> float:
        """Exploration's spend today over serving's (0 when neither spent; inf when only exploration did)."""
        day = self.ledger.today()
        if day.served > 0:
            return day.explored / day.served
        return float("inf") if day.explored > 0 else 0.0

    def _held_back(self, predicted_cost: float) -> str | None:
        """
        Why an exploration predicted to cost `predicted_cost` must not run now (a drop reason), else None:
        today's exploration spend, explorations in flight (at their predicted cost) and this one would pass
        the budget, or `max_share` × today's serving spend. The day's sums are read once (other workers' files).
        """
        budget, share = self.settings.budget_per_day, self.settings.max_share
        if budget is None and share is None:
            return None
        day = self.ledger.today()
        committed = day.explored + day.reserved + max(predicted_cost, 0.0)
        if budget is not None and committed > budget:
            return "budget"
        if share is not None and committed > share * day.served:
            return "share"
        return None

    def _drop(self, reason: str) -> None:
        self.metrics.explore_dropped.labels(reason).inc()
        self.stats["dropped"] += 1

    def _spend(self, dollars: float | None, kind: str) -> None:
        if dollars:
            self.ledger.spend(dollars)
            self.metrics.explore_spend.labels(kind).inc(dollars)

    # ------------------------------------------------------------------ queue

    def offer(self, job: ExploreJob, predicted_cost: float | None = None) -> bool:
        """
        Queue `job` without waiting; False (and counted) when a cap would be passed or the queue is full.
        `predicted_cost` (default: the job's own) is what the caps are checked with, now and again before it starts.
        """
        if predicted_cost is not None:
            job.predicted_cost = predicted_cost
        reason = self._held_back(job.predicted_cost)
        if reason is not None:
            self._drop(reason)
            return False
        if self._queue is None:
            self._queue = asyncio.Queue(self.settings.queue_size)
            self._workers = [asyncio.create_task(self._work(), name=f"carrot-explore-{i}")
                             for i in range(self.settings.workers)]
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self._drop("queue_full")
            return False
        self.stats["queued"] += 1
        return True

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self.explore(job)
            except Exception:  # noqa: BLE001  (a bug in one exploration must not stop the worker)
                logger.exception("exploration of %s failed", job.request_id)
            finally:
                self.stats["finished"] += 1
                self._queue.task_done()

    async def explore(self, job: ExploreJob) -> None:
        """Ask the explored candidate, judge both answers, hand the outcome to `record`."""
        from .upstreams import UpstreamFailure, UpstreamRejected

        # A cap reached while this job waited: checked again with the exploration's predicted cost, as when it was queued.
        reason = self._held_back(job.predicted_cost)
        if reason is not None:
            self._drop(reason)
            return
        reserved = max(job.predicted_cost, 0.0)
        self.ledger.reserve(reserved)  # until it ends, other explorations' caps count it as spent
        try:
            try:
                explored = await self.ask(job.explored, job.messages, job.sampling)
            except (UpstreamFailure, UpstreamRejected) as error:
                self.metrics.explored.labels("explored_failed").inc()
                await self.record(job, None, {}, f"the explored candidate {job.explored!r} failed: {str(error)[:200]}")
                return
            self._spend(explored.cost, "explored")
            scores = await judge_answers(self.judge, job.prompt, job.messages,
                                         {job.chosen: job.chosen_answer, job.explored: explored.text})
            for grade in scores.values():
                self._spend(grade.judge_cost, "judge")
        finally:
            self.ledger.release(reserved)
        n_scored = sum(score.scored for score in scores.values())
        self.metrics.explored.labels({2: "judged", 1: "partly_judged", 0: "unscored"}[n_scored]).inc()
        await self.record(job, explored, scores, None)

    async def join(self) -> None:
        """Wait until every queued exploration has finished (tests, shutdown)."""
        if self._queue is not None:
            await self._queue.join()

    async def aclose(self, drain_s: float = 5.0) -> None:
        """Give queued explorations up to `drain_s` seconds, then cancel the workers."""
        if self._queue is None:
            return
        try:
            await asyncio.wait_for(self.join(), drain_s)
        except TimeoutError:
            logger.warning("%d explorations were still queued at shutdown and were dropped", self._queue.qsize())
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
