"""What two per-request checks of the gateway cost on their own (issue 23 items 7 and 10), too small
to see in `scripts/bench_gateway.py` on a shared machine:

- the outcome log's check before each record that its open shard is still the file at its path
  (`os.stat` + `os.fstat`, on the log writer's thread);
- the wrapper that counts each upstream body's bytes against `max_response_bytes` (per chunk, on
  the event loop), for an answer of 20 chunks.

    python scripts/measure_record_checks.py      # last line: JSON (microseconds)
"""

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import httpx

from carrot_hub.serving.outcome_log_writer import OutcomeLog
from carrot_hub.serving.upstreams import _LimitedStream

REPEATS = 20_000
CHUNKS = 20


class Chunks(httpx.AsyncByteStream):
    """A body of `n` chunks of 100 bytes, made in memory (no network: only the wrapper is timed)."""

    def __init__(self, n: int):
        self.n = n

    async def __aiter__(self):
        for _ in range(self.n):
            yield b"x" * 100

    async def aclose(self):
        pass


def inode_check_us() -> float:
    """Microseconds per `_shard_in_place()` on an open outcome log."""
    with tempfile.TemporaryDirectory() as folder:
        log = OutcomeLog(Path(folder) / "log")
        log.record({"request_id": "carrot-" + "0" * 32, "status": "ok", "model": "m", "prompt": "p"})
        for _ in range(1000):  # warm-up
            log._shard_in_place()
        started = time.perf_counter()
        for _ in range(REPEATS):
            log._shard_in_place()
        seconds = time.perf_counter() - started
        log.close()
    return seconds / REPEATS * 1e6


async def body_us(wrapped: bool) -> float:
    """Microseconds to read a body of CHUNKS chunks, through the size-counting wrapper or not."""
    request = httpx.Request("GET", "http://127.0.0.1/")
    n = REPEATS // 10
    started = time.perf_counter()
    for _ in range(n):
        stream = Chunks(CHUNKS)
        async for _ in (_LimitedStream(stream, 16 << 20, request) if wrapped else stream):
            pass
    return (time.perf_counter() - started) / n * 1e6


async def wrapper_us() -> float:
    """The wrapper's cost per body: best of two of each, alternated."""
    plain, wrapped = [], []
    for _ in range(2):
        plain.append(await body_us(False))
        wrapped.append(await body_us(True))
    return min(wrapped) - min(plain)


def main() -> dict:
    result = {"inode_check_us_per_record": round(inode_check_us(), 2),
              f"body_wrapper_us_per_response_of_{CHUNKS}_chunks": round(asyncio.run(wrapper_us()), 2),
              "load_average_1min": round(os.getloadavg()[0], 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
