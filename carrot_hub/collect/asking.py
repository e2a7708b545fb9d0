"""Asking a candidate through the gateway's own upstream client: the `AskFn` of `carrot collect`.

One HTTP stack: each call is `Upstream.complete_with_retries` (per-upstream concurrency, exponential
backoff on 429/5xx/timeouts honouring `Retry-After`). The answer becomes a `Completion` with its
tokens from `usage`, or, where the upstream reported none, counted with the router's tokenizer
(all-MiniLM-L6-v2's, the yardstick of the packaged tables) and flagged `tokens_counted` (counted,
not billed); its cost comes from the price table.
"""

from __future__ import annotations

import contextvars
import math
import threading
from collections.abc import Mapping, Sequence

from ..serving.upstreams import RetryPolicy, UpstreamFailure, UpstreamPool, UpstreamRejected
from .contracts import Completion

DOLLARS_PER_MILLION = 1e6
# The calls that failed every retry within the current task, when the caller set a list here (the runner
# does around a scorer: a judge that could not be reached leaves the cell to be scored again next run).
failed_calls: contextvars.ContextVar[list | None] = contextvars.ContextVar("failed_calls", default=None)


class TokenCounter:
    """Counts tokens with the router's tokenizer, loaded on first use (a second or two, offline)."""

    def __init__(self, tokenizer=None):
        self._tokenizer = tokenizer
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> list[int]:
        from ..data.tokens import count_tokens, load_counting_tokenizer

        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = load_counting_tokenizer()
        return [int(n) for n in count_tokens(list(texts), self._tokenizer)]


def messages_text(messages: Sequence[Mapping]) -> str:
    """The text of a chat request's messages, one per line (what is counted as its input tokens)."""
    parts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, (list, tuple)):
            parts += [p.get("text", "") for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)]
    return "\n".join(parts)


def cell_cost(price: Mapping | None, input_tokens: int | None, output_tokens: int | None) -> float | None:
    """US$ of one answer from a `{"input", "output"}` $/M price; None when unpriced or tokens unknown."""
    if not price or input_tokens is None or output_tokens is None:
        return None
    return (input_tokens * price["input"] + output_tokens * price["output"]) / DOLLARS_PER_MILLION


def _usage_count(usage, name: str) -> int | None:
    value = usage.get(name) if isinstance(usage, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return int(value)


def _answer_text(answer: dict) -> tuple[str, str | None]:
    """`(text, finish_reason)` of a chat completion; `UpstreamFailure` when it holds no choice."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise UpstreamFailure("upstream", "answered without any choice", 200)
    choice = choices[0]
    message = choice.get("message") if isinstance(choice.get("message"), Mapping) else {}
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return (content if isinstance(content, str) else ""), choice.get("finish_reason")


class Asker:
    """
    `await asker(candidate, messages, sampling) -> Completion` (an `AskFn`): one chat completion from
    the upstream named `candidate`, retried per `retries`. Raises `UpstreamFailure` once retries are
    spent, `UpstreamRejected` when the upstream refused the request itself.
    """

    def __init__(self, pool: UpstreamPool, prices: Mapping | None = None, retries: RetryPolicy | None = None,
                 counter: TokenCounter | None = None):
        self.pool = pool
        self.prices = dict(prices or {})
        self.retries = retries or RetryPolicy()
        self.counter = counter or TokenCounter()

    async def __call__(self, candidate: str, messages: list[dict], sampling: dict) -> Completion:
        payload = {"messages": messages, **{k: v for k, v in sampling.items() if v is not None}, "stream": False}
        upstream = self.pool[candidate]
        try:
            result = await upstream.complete_with_retries(payload, self.retries)
        except (UpstreamFailure, UpstreamRejected) as error:
            failures = failed_calls.get()
            if failures is not None:
                failures.append(error)
            raise
        try:
            text, finish_reason = _answer_text(result.answer)
        except UpstreamFailure as failure:
            raise UpstreamFailure(candidate, failure.reason, 200) from None
        usage = result.answer.get("usage")
        n_in, n_out = _usage_count(usage, "prompt_tokens"), _usage_count(usage, "completion_tokens")
        counted = n_in is None or n_out is None
        if counted:
            n_in, n_out = self.counter([messages_text(messages), text])
        return Completion(
            model=candidate, text=text, input_tokens=n_in, output_tokens=n_out, tokens_counted=counted,
            cost=cell_cost(self.prices.get(candidate), n_in, n_out), latency_s=result.latency_s,
            finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        )


def failure_reason(error: Exception) -> tuple[str, int | None, int]:
    """`(reason, HTTP status or None, calls made)` of a failed ask, for the store."""
    if isinstance(error, UpstreamRejected):
        from ..serving.upstreams import _error_message

        detail = _error_message(error.body)
        return f"refused the request: HTTP {error.status}" + (f" ({detail})" if detail else ""), error.status, 1
    if isinstance(error, UpstreamFailure):
        return error.reason, error.status, getattr(error, "attempts", 1)
    return f"{type(error).__name__}: {error}", None, 1
