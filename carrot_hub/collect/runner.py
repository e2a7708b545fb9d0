"""The collection loop: ask every (prompt, candidate) cell the store lacks, store each answer as it
arrives, score it, within a spend limit, with a progress bar.

Per candidate, as many workers as its upstream's `max_concurrency` take the prompts in order. A
worker skips a cell the store has an answer for (scoring it if the current scorer has not), asks
the others, appends the answer (or the failure, once retries are spent) to the store at once, then
scores it and appends the score. Nothing is held only in memory: a kill loses the calls in flight.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..serving.upstreams import UpstreamFailure, UpstreamRejected
from .asking import TokenCounter, failed_calls, failure_reason
from .cell_store import CellStore, Failure
from .contracts import AskFn, Completion, Score, Scorer, ScoringInput
from .prompt_sets import PromptItem
from .spending import SpendTracker


def _judge_of(scorer: Scorer | None) -> str | None:
    """The upstream a scorer asks to grade (`JudgeScorer.judge`), None for scorers that ask nobody."""
    judge = getattr(scorer, "judge", None)
    return judge if isinstance(judge, str) else None


def scorer_for(scorers: Mapping[str, Scorer], task: str) -> Scorer | None:
    """The scorer of a task: its own, else the `default` one, else None (the cell stays unscored)."""
    return scorers.get(task) or scorers.get("default")


@dataclass
class RunCounts:
    """What one run did (not what the store held before it)."""

    asked: int = 0
    answered: int = 0
    failed: int = 0
    scored: int = 0
    scoring_failed: int = 0
    not_asked: int = 0  # left for a later run when --max-spend stopped this one
    not_judged: int = 0  # answers left unscored for a later run: grading them would pass --max-spend
    scoring_errors: dict = field(default_factory=dict)  # (key, model) -> reason, for cells whose scorer raised


class CollectionRun:
    """
    One run over `items` × `models`. `ask` is the `AskFn`; `scorers` maps task names (and
    `default`) to scorers; `concurrency` the workers per model; `spend` the spend gate.
    """

    def __init__(self, items: Sequence[PromptItem], models: Sequence[str], store: CellStore, ask: AskFn,
                 scorers: Mapping[str, Scorer], sampling: dict, spend: SpendTracker,
                 concurrency: Mapping[str, int], counter: TokenCounter | None = None, progress: bool = True):
        self.items, self.models, self.store, self.ask = list(items), list(models), store, ask
        self.scorers, self.sampling, self.spend = dict(scorers), dict(sampling), spend
        self.concurrency, self.counter, self.progress = dict(concurrency), counter, progress
        self.counts = RunCounts()
        self._input_tokens: dict[str, int] = {}
        self._judge_input_tokens: dict[str, int] = {}  # rubric + prompt + reference, the answer excluded
        self._bar = None

    def pending(self, model: str) -> list[PromptItem]:
        """The prompts `model` has no stored answer for (failed ones included: they are asked again)."""
        return [item for item in self.items if self.store.answer(item.key, model) is None]

    def _count_inputs(self) -> None:
        """Input tokens of the prompts still to ask, for the spend estimates (only under a limit)."""
        if self.spend.max_spend is None:
            return
        from .asking import messages_text

        counter = self.counter or TokenCounter()
        todo = {item.key: item for model in self.models for item in self.pending(model)}
        if todo:
            counts = counter([messages_text(item.messages) for item in todo.values()])
            self._input_tokens = dict(zip(todo, counts))
        judged = [item for item in self.items if _judge_of(scorer_for(self.scorers, item.task)) is not None]
        if judged:
            from .judge import judge_request

            # The judge's request for an empty answer: what it reads besides the answer.
            requests = [judge_request(ScoringInput(prompt=item.prompt, answer="", reference=item.reference,
                                                   task=item.task, messages=item.messages)) for item in judged]
            counts = counter([messages_text(request) for request in requests])
            self._judge_input_tokens = {item.key: count for item, count in zip(judged, counts)}

    async def run(self) -> RunCounts:
        for (key, model), answer in self.store.answers.items():
            self.spend.observe(model, answer.get("output_tokens"))
        self._count_inputs()
        total = sum(len(self.pending(model)) for model in self.models)
        if self.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="collecting", unit="call", file=sys.stderr, dynamic_ncols=True)
        try:
            workers = []
            for model in self.models:
                queue = iter(self.items)
                for _ in range(max(1, min(self.concurrency.get(model, 1), len(self.items)))):
                    workers.append(self._worker(model, queue))
            await asyncio.gather(*workers)
        finally:
            if self._bar is not None:
                self._bar.close()
        self.counts.not_asked = sum(len(self.pending(model)) for model in self.models) - self.counts.failed
        return self.counts

    async def _worker(self, model: str, queue) -> None:
        for item in queue:  # workers of one model share the iterator: each prompt goes to one of them
            stored = self.store.answer(item.key, model)
            if stored is None:
                if self.spend.stopped:
                    continue
                stored = await self._ask(model, item)
                if stored is None:
                    continue
            await self._score(model, item, stored)

    def _grading_estimate(self, item: PromptItem, answer_tokens: float) -> tuple[str | None, float]:
        """`(judge, predicted US$ of grading an answer of answer_tokens)`; `(None, 0.0)` without a judge."""
        judge = _judge_of(scorer_for(self.scorers, item.task))
        if judge is None or self.spend.max_spend is None:
            return judge, 0.0
        return judge, self.spend.judge_estimate(judge, self._judge_input_tokens.get(item.key, 0) + answer_tokens)

    async def _ask(self, model: str, item: PromptItem) -> dict | None:
        _, grading = self._grading_estimate(item, self.spend.predicted_output_tokens(model))
        held = self.spend.reserve(model, self._input_tokens.get(item.key, 0), extra=grading)
        if held is None:
            return None
        self.counts.asked += 1
        try:
            completion: Completion = await self.ask(model, item.chat_messages(), self.sampling)
        except (UpstreamFailure, UpstreamRejected) as error:
            reason, status, attempts = failure_reason(error)
            self.store.add_failure(item.key, model, item.prompt_sha256, Failure(reason, status, attempts))
            self.spend.settle(held, None)
            self.counts.failed += 1
            self._tick()
            return None
        record = self.store.add_answer(item.key, item.prompt_sha256, completion)
        self.spend.settle(held, completion.cost)
        self.spend.observe(model, completion.output_tokens)
        self.counts.answered += 1
        self._tick()
        return record

    async def _score(self, model: str, item: PromptItem, answer: dict) -> None:
        scorer = scorer_for(self.scorers, item.task)
        if scorer is None or self.store.score(item.key, model, scorer.name) is not None:
            return
        scoring = ScoringInput(prompt=item.prompt, answer=answer.get("text") or "", reference=item.reference,
                               tests=item.tests, task=item.task, messages=item.messages)
        judge, grading = self._grading_estimate(item, answer.get("output_tokens") or 0)
        held = 0.0
        if judge is not None and self.spend.max_spend is not None:
            held = self.spend.reserve_amount(grading)
            if held is None:
                self.counts.not_judged += 1
                return
        try:
            await self._score_with(scorer, item, model, scoring)
        finally:
            if held:
                self.spend.release(held)

    async def _score_with(self, scorer: Scorer, item: PromptItem, model: str, scoring: ScoringInput) -> None:
        failures = failed_calls.set([])
        try:
            score: Score = await scorer.score(scoring)
        except Exception as error:  # noqa: BLE001  (a judge that failed every retry, a scorer bug): not stored
            reason = failure_reason(error)[0] if isinstance(error, (UpstreamFailure, UpstreamRejected)) else (
                f"{type(error).__name__}: {error}")
            self.counts.scoring_failed += 1
            self.counts.scoring_errors[(item.key, model)] = f"scorer {scorer.name} failed: {reason}"
            return
        finally:
            unreached = failed_calls.get()
            failed_calls.reset(failures)
        if unreached and score.value is None:  # its judge could not be reached: score it again next run
            self.counts.scoring_failed += 1
            self.counts.scoring_errors[(item.key, model)] = score.reason or f"scorer {scorer.name} failed"
            return
        if score.scorer != scorer.name:  # stored under the spec it was built from, which reruns look up
            score = dataclasses.replace(score, scorer=scorer.name)
        self.store.add_score(item.key, model, score)
        self.spend.add_judge(score.judge_cost)
        self.counts.scored += 1

    def _tick(self) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(
                f"answered {self.counts.answered}, failed {self.counts.failed}, "
                f"spent ${self.spend.spent + self.spend.judge_spent:.4f}", refresh=False)
