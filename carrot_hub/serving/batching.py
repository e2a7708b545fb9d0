"""Routing concurrent requests together, off the event loop.

Requests that arrive within a short collection window (or while the previous batch is being
encoded) are routed as one batch: one `router.predict` call for all their prompts in a worker
thread, then one `router.decide` per distinct `RoutingOptions` (resolved by the router before the
request is queued). The event loop only queues prompts and receives choices; the encoder never runs on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from ..modeling_carrot import RoutingOptions, prompt_problem
from .trained_distribution import trained_in_distribution


@dataclass(frozen=True)
class CandidateEstimate:
    """The router's predictions for one candidate on one prompt."""

    name: str
    quality: float
    output_tokens: float
    cost: float
    latency_s: float | None = None  # predicted seconds to the whole answer; None without a speed profile


@dataclass(frozen=True)
class RoutedChoice:
    """
    The decision for one prompt: the candidates that may answer, the router's choice first
    (`ranked[0]`), then the fallbacks, best utility first, all allowed and within `max_cost`.
    `support` (None = unknown), `in_distribution` (None = unknown), `ood_policy` and `ood_applied`
    (whether the policy changed the choice) are the decision's, as `route()` reports them.
    """

    ranked: tuple[CandidateEstimate, ...]
    mu: float
    input_tokens: int
    prices: dict
    truncated: bool
    over_budget: bool
    support: float | None = None
    in_distribution: bool | None = None  # None: unknown; `carrot collect` reads it from the outcome log
    ood_policy: str = "predict"
    ood_applied: bool = False
    revision: str | None = None  # the router revision that routed it
    # In the distribution of the rows the router was trained on (remembered prompts left out; see
    # trained_distribution); None: not measured, because the router remembered nothing (then it is in_distribution).
    trained_in_distribution: bool | None = None

    @property
    def chosen(self) -> CandidateEstimate:
        return self.ranked[0]

    def estimate(self, name: str) -> CandidateEstimate | None:
        return next((c for c in self.ranked if c.name == name), None)


def choices_from_decision(decision) -> list[RoutedChoice]:
    """Split a `RoutingDecision` `(batch, n_models)` into one `RoutedChoice` per prompt."""
    order = torch.argsort(decision.utility, dim=1, descending=True, stable=True)
    utility, quality = decision.utility.tolist(), decision.quality.tolist()
    tokens, cost = decision.output_tokens.tolist(), decision.cost.tolist()
    latency = decision.latency.tolist()
    support = decision.support.tolist()
    names = decision.candidate_models
    choices = []
    for row, (chosen, columns) in enumerate(zip(decision.model_indices.tolist(), order.tolist())):
        # The choice comes first even where the utility does not rank it first (an ood policy
        # "model:<name>" sends the prompt to that candidate); the fallbacks follow, best first.
        ranked = tuple(
            CandidateEstimate(names[c], quality[row][c], tokens[row][c], cost[row][c],
                              latency[row][c] if math.isfinite(latency[row][c]) else None)
            for c in [chosen, *(c for c in columns if c != chosen and math.isfinite(utility[row][c]))]
        )
        choices.append(
            RoutedChoice(
                ranked=ranked,
                mu=decision.mu,
                input_tokens=int(decision.input_tokens[row]),
                prices=decision.prices,
                truncated=bool(decision.truncated[row]),
                over_budget=bool(decision.over_budget[row]),
                support=None if math.isnan(support[row]) else support[row],
                in_distribution=decision.in_distribution[row],
                ood_policy=decision.ood_policy,
                ood_applied=bool(decision.ood_applied[row]),
            )
        )
    return choices


def route_batch(router, prompts: Sequence[str], options: Sequence[RoutingOptions],
                trained_support: bool = False) -> list[RoutedChoice | Exception]:
    """
    Route `prompts` in one encoder pass; each prompt with its own options. A prompt the router
    cannot route (`prompt_problem`) or whose options are rejected gets the exception in its place
    instead of a choice: one bad request never fails its neighbours in the batch. With
    `trained_support` (the gateway's), a router that has remembered prompts also says per choice
    whether its prompt is in the distribution of its trained rows (`trained_in_distribution`), from
    the same embeddings.
    """
    results: list = [None] * len(prompts)
    routable = []  # positions of the prompts that go to the encoder
    for position, prompt in enumerate(prompts):
        problem = prompt_problem(prompt)
        if problem is None:
            routable.append(position)
        else:
            results[position] = ValueError(f"The routed text {problem}.")
    if not routable:
        return results
    batch = [prompts[i] for i in routable]
    trained = None
    if trained_support and getattr(router.config, "knn_remembered_rows", 0):
        encoding = router.encode(batch, batch_size=max(1, len(batch)))
        predictions = router.predict_encoded(encoding)
        trained = trained_in_distribution(router, encoding.embeddings)
    else:
        predictions = router.predict(batch, batch_size=max(1, len(batch)))
    revision = getattr(router, "carrot_revision", None)
    groups: dict[RoutingOptions, list[int]] = {}
    for row, position in enumerate(routable):  # row: the prompt's row in `predictions`
        groups.setdefault(options[position], []).append(row)
    for option, rows in groups.items():
        subset = predictions if len(rows) == len(routable) else predictions.select(rows)
        try:
            decision = router.decide(subset, options=option)
        except (ValueError, TypeError) as error:
            for row in rows:
                results[routable[row]] = error
            continue
        for row, choice in zip(rows, choices_from_decision(decision)):
            if revision is not None or trained is not None:
                choice = dataclasses.replace(choice, revision=revision,
                                             trained_in_distribution=None if trained is None else trained[row])
            results[routable[row]] = choice
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
