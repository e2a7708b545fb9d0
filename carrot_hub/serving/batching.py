"""Routing concurrent requests together, off the event loop.

Requests that arrive within a short collection window (or while the previous batch is being
encoded) are routed as one batch: one `router.predict` call for all their prompts in a worker
thread, then one `router.decide` per distinct set of options (μ, prices, allowed, max_cost). The
event loop only queues prompts and receives choices; the encoder never runs on it.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from ..modeling_carrot import PromptPredictions


@dataclass(frozen=True)
class RoutingOptions:
    """Per-request routing options, with the same meaning and checks as `router.route()`."""

    mu: float | None = None
    prices: dict | None = None
    allowed: tuple[str, ...] | None = None
    max_cost: float | None = None

    def key(self) -> str:
        """Requests with equal keys are decided together."""
        return json.dumps([self.mu, self.prices, self.allowed, self.max_cost], sort_keys=True)


@dataclass(frozen=True)
class CandidateEstimate:
    """The router's predictions for one candidate on one prompt."""

    name: str
    quality: float
    output_tokens: float
    cost: float


@dataclass(frozen=True)
class RoutedChoice:
    """
    The decision for one prompt: the candidates that may answer, best utility first (`ranked[0]`
    is the router's choice; the rest are the fallbacks, all allowed and within `max_cost`).
    """

    ranked: tuple[CandidateEstimate, ...]
    mu: float
    input_tokens: int
    prices: dict
    truncated: bool
    over_budget: bool
    in_distribution: bool | None = None  # the router's support flag (None: unknown); `carrot collect` reads it

    @property
    def chosen(self) -> CandidateEstimate:
        return self.ranked[0]

    def estimate(self, name: str) -> CandidateEstimate | None:
        return next((c for c in self.ranked if c.name == name), None)


def empty_predictions(n_models: int) -> PromptPredictions:
    """Predictions for no prompt: `decide` on them checks options and returns the price table in force."""
    return PromptPredictions(torch.zeros(0, n_models), torch.zeros(0, n_models), torch.zeros(0), [])


def choices_from_decision(decision) -> list[RoutedChoice]:
    """Split a `RoutingDecision` `(batch, n_models)` into one `RoutedChoice` per prompt."""
    order = torch.argsort(decision.utility, dim=1, descending=True, stable=True)
    utility, quality = decision.utility.tolist(), decision.quality.tolist()
    tokens, cost = decision.output_tokens.tolist(), decision.cost.tolist()
    names = decision.candidate_models
    choices = []
    for row, columns in enumerate(order.tolist()):
        ranked = tuple(
            CandidateEstimate(names[c], quality[row][c], tokens[row][c], cost[row][c])
            for c in columns
            if math.isfinite(utility[row][c])
        )
        choices.append(
            RoutedChoice(
                ranked=ranked,
                mu=decision.mu,
                input_tokens=int(decision.input_tokens[row]),
                prices=decision.prices,
                truncated=bool(decision.truncated[row]),
                over_budget=bool(decision.over_budget[row]),
                in_distribution=decision.in_distribution[row] if decision.in_distribution is not None else None,
            )
        )
    return choices


def route_batch(router, prompts: Sequence[str], options: Sequence[RoutingOptions]) -> list[RoutedChoice | Exception]:
    """
    Route `prompts` in one encoder pass; each prompt with its own options. A prompt whose options
    are rejected gets the exception in its place instead of a choice.
    """
    predictions = router.predict(list(prompts), batch_size=max(1, len(prompts)))
    results: list = [None] * len(prompts)
    groups: dict[str, list[int]] = {}
    for row, option in enumerate(options):
        groups.setdefault(option.key(), []).append(row)
    for rows in groups.values():
        option = options[rows[0]]
        index = torch.tensor(rows)
        subset = PromptPredictions(
            predictions.quality[index],
            predictions.output_tokens[index],
            predictions.input_tokens[index],
            [predictions.truncated[r] for r in rows],
        )
        try:
            decision = router.decide(
                subset,
                mu=option.mu,
                prices=option.prices,
                allowed=list(option.allowed) if option.allowed is not None else None,
                max_cost=option.max_cost,
            )
        except (ValueError, TypeError) as error:
            for row in rows:
                results[row] = error
            continue
        for row, choice in zip(rows, choices_from_decision(decision)):
            results[row] = choice
    return results


@dataclass
class _Pending:
    prompt: str
    options: RoutingOptions
    future: asyncio.Future
    arrived: float


class RoutingBatcher:
    """
    Collects concurrent routing requests and routes them in batches on one worker thread.

    A batch starts `window_s` after its first request arrived (or at once when `max_batch` are
    waiting); requests arriving while a batch is being routed wait for the next one, so that under
    load batches grow to what the encoder can absorb. `on_batch(size, seconds)` is told about each batch.
    """

    def __init__(
        self,
        router,
        window_s: float = 0.002,
        max_batch: int = 64,
        on_batch: Callable[[int, float], None] | None = None,
        route_fn: Callable = route_batch,
    ):
        if window_s < 0 or not math.isfinite(window_s):
            raise ValueError(f"window_s must be a finite number of seconds ≥ 0, got {window_s!r}.")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch!r}.")
        self.router = router
        self.window_s = window_s
        self.max_batch = max_batch
        self.on_batch = on_batch
        self._route_fn = route_fn
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="carrot-routing")
        self._pending: list[_Pending] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    async def route(self, prompt: str, options: RoutingOptions) -> RoutedChoice:
        """Route one prompt (batched with its neighbours in time); raises what `decide` raises for bad options."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._run())
        future = loop.create_future()
        self._pending.append(_Pending(prompt, options, future, time.perf_counter()))
        self._wakeup.set()
        result = await future
        if isinstance(result, Exception):
            raise result
        return result

    async def run_exclusive(self, fn: Callable, *args):
        """Run `fn(*args)` on the routing thread, between batches (e.g. growing the router's memory)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            if len(self._pending) < self.max_batch:
                wait = self._pending[0].arrived + self.window_s - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            if not self._pending:
                self._wakeup.clear()
            batch = [item for item in batch if not item.future.done()]  # cancelled by a client that left
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._executor, self._route_fn, self.router, [i.prompt for i in batch], [i.options for i in batch]
                )
            except Exception as error:  # noqa: BLE001  (every waiting request learns of it)
                results = [error] * len(batch)
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - started)
            for item, result in zip(batch, results):
                if not item.future.done():
                    item.future.set_result(result)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(RuntimeError("the gateway is shutting down"))
        self._pending = []
        self._executor.shutdown(wait=False, cancel_futures=True)
