"""Does one huge prompt stall everyone else? Latency of other requests while ~4 MB prompts are routed.

    python scripts/bench_hostile_prompt.py [--router FOLDER] [--requests 300] [--max-seconds 300]

Starts, on 127.0.0.1 only, a fake OpenAI-compatible upstream (fixed 20 ms) and `carrot serve` (its
own process, default router unless --router). Then, twice, 8 clients send `--requests` requests
between them: routed ones (`model: carrot`, RouterBench test prompts), pinned ones (a candidate
named, no routing) and `GET /health`. The first time nothing else runs ("quiet"); the second time
one more client sends, back to back, prompts of about 4 MB of distinct random words ("hostile",
each with words never seen before). Reported per phase and kind: p50/p99 latency of the whole
answer, the count, and any status other than 200; plus the hostile requests' own latency. Every
loop is bounded in count and time. The last line of the output is a JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from carrot_hub.serving.bench_setup import (  # noqa: E402
    SERVER_URL, routerbench_test_prompts, server_env, start_process, stop_process)
from carrot_hub.serving.load_clients import Deadline, percentiles, run_clients, timed_request  # noqa: E402

HUGE_PROMPT_CHARS = 4_000_000


def distinct_words_prompt(seed: int, n_chars: int = HUGE_PROMPT_CHARS) -> str:
    """About `n_chars` characters of random lowercase words (3-9 letters): nearly all distinct."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words, size = [], 0
    while size < n_chars:
        word = "".join(rng.choices(letters, k=rng.randint(3, 9)))
        words.append(word)
        size += len(word) + 1
    return " ".join(words) + " Which planet is known as the red planet?"


async def others(base: str, prompts: list[str], candidate: str, total: int, deadline: Deadline) -> list:
    """8 clients, `total` requests cycling routed / pinned / health: (kind, status, seconds) each."""

    async def send(client, index):
        kind = ("routed", "pinned", "health")[index % 3]
        if kind == "health":
            reply = await timed_request(client, "GET", base.removesuffix("/v1") + "/health")
        else:
            model = "carrot" if kind == "routed" else candidate
            reply = await timed_request(client, "POST", base + "/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": prompts[index % len(prompts)]}]})
        return kind, reply.status, reply.total_s

    return await run_clients(send, 8, total, deadline, timeout_s=120)


async def hostile(base: str, bodies: list[bytes], stop: asyncio.Event, deadline: Deadline) -> list:
    """Send the huge prompts back to back until `stop`: (status, seconds) each."""

    async def send(client, index):
        reply = await timed_request(client, "POST", base + "/chat/completions", content=bodies[index % len(bodies)],
                                    headers={"content-type": "application/json"})
        return reply.status, reply.total_s

    return await run_clients(send, 1, 1000, deadline, timeout_s=300, stop=stop)


async def phase(base, prompts, candidate, total, deadline, huge_bodies=None) -> dict:
    stop = asyncio.Event()
    sender = asyncio.create_task(hostile(base, huge_bodies, stop, deadline)) if huge_bodies else None
    if sender is not None:
        await asyncio.sleep(0.5)  # the first huge prompt is on its way
    results = await others(base, prompts, candidate, total, deadline)
    stop.set()
    summary = {}
    for kind in ("routed", "pinned", "health"):
        rows = [r for r in results if r[0] == kind]
        summary[kind] = {**percentiles([r[2] for r in rows]),
                         "not_200": sum(1 for r in rows if r[1] != 200)}
    if sender is not None:
        sent = await sender
        summary["hostile"] = {**percentiles([s for _, s in sent]), "statuses": sorted({st for st, _ in sent})}
    return summary


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--router", help="router folder (default: the embedded default router)")
    parser.add_argument("--requests", type=int, default=300, help="other requests per phase (routed, pinned, health)")
    parser.add_argument("--max-seconds", type=float, default=300, help="bound on the whole run")
    args = parser.parse_args(argv)
    deadline = Deadline(args.max_seconds)
    env = server_env(ROOT)
    prompts = routerbench_test_prompts()
    huge_bodies = [json.dumps({"model": "carrot", "messages": [{"role": "user", "content": distinct_words_prompt(seed)}]})
                   .encode() for seed in range(3)]

    work = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    fake, fake_url = start_process([sys.executable, "-m", "carrot_hub.serving.fake_upstream", "--port", "0",
                                    "--latency-ms", "20"], SERVER_URL, env, 60, work / "fake.log")
    cheap, strong = "mistralai/mixtral-8x7b-chat", "gpt-4-1106-preview"
    (work / "upstreams.json").write_text(json.dumps({name: {"base_url": fake_url, "model": "fake"}
                                                     for name in (cheap, strong)}))
    command = [sys.executable, "-m", "carrot_hub.cli", "serve", *([args.router] if args.router else []),
               "--upstreams", str(work / "upstreams.json"), "--port", "0", "--log-dir", str(work / "log"),
               "--max-body-bytes", str(8 * 1024 * 1024)]
    gateway, base = start_process(command, SERVER_URL, env, 300, work / "gateway.log")
    summary = {"huge_prompt_chars": HUGE_PROMPT_CHARS, "cpu_count": os.cpu_count()}
    try:
        asyncio.run(others(base, prompts, cheap, 60, deadline))  # warm-up
        summary["quiet"] = asyncio.run(phase(base, prompts, cheap, args.requests, deadline))
        summary["hostile"] = asyncio.run(phase(base, prompts, cheap, args.requests, deadline, huge_bodies))
    finally:
        stop_process(gateway)
        stop_process(fake)
    for name in ("quiet", "hostile"):
        print(name, json.dumps(summary.get(name)))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
