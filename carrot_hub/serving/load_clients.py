"""Bounded load on loopback for the benchmark scripts: N clients sharing M requests, each timed.

    replies = asyncio.run(load("http://127.0.0.1:8000/v1/chat/completions", bodies, clients=64,
                               total=640, deadline=Deadline(120)))
    percentiles([r.ttfb_s for r in replies if r.ok])   # {"p50_ms": …, "p99_ms": …, "n": …}

`clients` workers share one request counter: they stop after `total` requests between them, at the
deadline, or when `stop` is set, whichever comes first. Every request goes to a loopback address
(127.0.0.1, ::1, localhost); any other host is refused with a `ValueError` before anything is sent.
A request is timed from the moment it is sent to its first body byte (time to first byte, TTFB:
the first event of a stream, the whole answer of a plain request) and to its last; one that breaks
in transport is a `Reply` with status 0, never an exception.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class Deadline:
    """A wall-clock bound on a whole benchmark run."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def passed(self) -> bool:
        return self.left() <= 0


@dataclass(frozen=True)
class Reply:
    """
    One timed request: HTTP status (0: it broke in transport), seconds to the first body byte (None
    when none came) and to the last (or to the break), the response headers.
    """

    status: int
    ttfb_s: float | None
    total_s: float | None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == 200


async def _loopback_only(request: httpx.Request) -> None:
    if request.url.host not in LOOPBACK_HOSTS:
        raise ValueError(f"load clients send to loopback only (127.0.0.1, ::1, localhost), not {request.url.host!r}.")


async def timed_request(client: httpx.AsyncClient, method: str, url: str, **kwargs) -> Reply:
    """`client.stream(method, url, **kwargs)` read to the end, timed; status 0 when the transport broke."""
    started = time.perf_counter()
    ttfb = None
    try:
        async with client.stream(method, url, **kwargs) as response:
            async for _ in response.aiter_raw():
                if ttfb is None:
                    ttfb = time.perf_counter() - started
    except httpx.TransportError:
        return Reply(0, None, time.perf_counter() - started)
    return Reply(response.status_code, ttfb, time.perf_counter() - started, response.headers)


async def run_clients(send: Callable[[httpx.AsyncClient, int], Awaitable], clients: int, total: int,
                      deadline: Deadline, *, timeout_s: float = 60, keepalive: bool = True,
                      stop: asyncio.Event | None = None) -> list:
    """
    `clients` workers calling `await send(client, index)` for index 0 … total - 1 between them, on
    one connection pool of `clients` connections (`keepalive` False: a new connection per request,
    e.g. to spread requests over the processes accepting on one socket). Returns what `send`
    returned, in completion order.
    """
    if clients < 1 or total < 0:
        raise ValueError(f"need at least one client and a request count ≥ 0, got {clients} and {total}.")
    results = []
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients if keepalive else 0)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, event_hooks={"request": [_loopback_only]}) as client:

        async def worker():
            for index in counter:
                if deadline.passed() or (stop is not None and stop.is_set()):
                    return
                results.append(await send(client, index))

        await asyncio.gather(*(worker() for _ in range(clients)))
    return results


def posting(url: str, bodies: Sequence[dict], headers: Mapping | None = None):
    """A `send` for `run_clients`: POST `bodies[index % len(bodies)]` as JSON to `url`, timed."""

    async def send(client: httpx.AsyncClient, index: int) -> Reply:
        return await timed_request(client, "POST", url, json=bodies[index % len(bodies)], headers=headers)

    return send


async def load(url: str, bodies: Sequence[dict], clients: int, total: int, deadline: Deadline,
               headers: Mapping | None = None) -> list[Reply]:
    """`clients` clients POSTing `total` JSON bodies (cycled) to `url`: one `Reply` each."""
    return await run_clients(posting(url, bodies, headers), clients, total, deadline)


def percentiles(values, quantiles: Sequence[int] = (50, 99)) -> dict:
    """`{"p50_ms": …, "p99_ms": …, "n": …}` of seconds (None values left out; None figures when empty)."""
    values = np.asarray([v for v in values if v is not None], dtype=float)
    if not len(values):
        return {**{f"p{q}_ms": None for q in quantiles}, "n": 0}
    return {**{f"p{q}_ms": round(float(np.percentile(values, q)) * 1000, 2) for q in quantiles}, "n": int(len(values))}
