"""The seam between asking candidates and scoring their answers (`carrot collect`, judged exploration).

Three small frozen records and one protocol, shared by the collection runner (which asks upstreams),
the scorers (which turn an answer into a score in [0, 1]) and the gateway's exploration (which asks a
second candidate and a judge). Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Completion:
    """One upstream answer to one chat request.

    `output_tokens`/`input_tokens` come from the response's `usage`; when the upstream reported none
    they were counted with the router's tokenizer and `tokens_counted` is True (counted, not billed).
    `cost` is US$ from the price table (None when the candidate has no price).
    """

    model: str
    text: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    tokens_counted: bool = False
    cost: float | None = None
    latency_s: float | None = None
    finish_reason: str | None = None


# Ask one candidate (an upstream name) a chat request: `(candidate, messages, sampling) -> Completion`.
# `sampling` holds OpenAI request fields such as `temperature` and `max_tokens`. Raises the upstream
# client's `UpstreamFailure` once retries are spent.
AskFn = Callable[[str, list[dict], dict], Awaitable[Completion]]


@dataclass(frozen=True)
class ScoringInput:
    """What a scorer sees of one (prompt, candidate) cell."""

    prompt: str
    answer: str
    reference: str | None = None
    tests: str | None = None
    task: str | None = None
    messages: tuple = field(default=())  # the full chat request, when the prompt came as messages


@dataclass(frozen=True)
class Score:
    """A score in [0, 1], or unscored (`value is None`) with the reason; never 0 for "could not score".

    `judge_cost` (US$) and `judge_model` record what an LLM judge cost: kept apart, never added to
    the judged model's cost.
    """

    value: float | None
    reason: str | None = None
    scorer: str = ""
    judge_model: str | None = None
    judge_cost: float = 0.0

    @property
    def scored(self) -> bool:
        return self.value is not None


class Scorer(Protocol):
    """Turns one answer into a `Score`. `name` is the spec it was built from (`number`, `judge:gpt-4o`)."""

    name: str
    needs_reference: bool
    needs_tests: bool

    async def score(self, item: ScoringInput) -> Score: ...
