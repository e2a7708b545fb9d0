"""
Latency as a routing constraint, through `carrot serve`'s gateway on loopback with real answers.

Three ZeroEval candidates answer through replay upstreams (each (prompt, model) gets its recorded
answer and token counts) at a decode speed each: the strongest is made slow (`--slow-speed`, a tenth
of the others' by default). Phase 1 streams `--requests` routed test prompts with μ drawn uniformly
(so every upstream gets traffic): the gateway learns each upstream's time to first token and speed
from the streams, and reports the predicted latency of its choice (`x-carrot-predicted-latency`,
time to first token + predicted output tokens / speed). We compare it with the measured time to the
last byte over the second half of phase 1, per upstream. Phase 2 sends `--bounded` requests at μ = 0
(quality first: the slow model's ground) with and without `carrot.max_latency_s`.

    python scripts/bench_latency.py       # last line: JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
from pathlib import Path

from carrot_hub.data.loading import load_routing_table
from carrot_hub.data.packaged import packaged_table_dir
from carrot_hub.default import default_router
from carrot_hub.serving.app import Gateway, GatewaySettings
from carrot_hub.serving.fake_upstream import FakeUpstream, FakeUpstreamConfig
from carrot_hub.serving.load_clients import Deadline, run_clients, timed_request
from carrot_hub.serving.local_server import LocalServer
from carrot_hub.serving.replay_record import ReplayRecord
from carrot_hub.serving.upstreams import UpstreamPool, parse_upstreams

CANDIDATES = ("gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18", "Meta-Llama-3.1-8B-Instruct")
SLOW = CANDIDATES[0]


def streaming(url: str, prompts: list[str], carrots: list[dict]):
    """A `send` for `run_clients`: prompt i streamed, routed with `carrots[i]` →
    (answering model, predicted latency, measured seconds to the last byte)."""

    async def send(client, i: int) -> tuple[str, float | None, float]:
        reply = await timed_request(client, "POST", url, json={
            "model": "carrot", "stream": True, "carrot": carrots[i],
            "messages": [{"role": "user", "content": prompts[i]}]})
        if not reply.ok:
            raise RuntimeError(f"HTTP {reply.status} from the gateway")
        predicted = reply.headers.get("x-carrot-predicted-latency")
        return reply.headers["x-carrot-model"], None if predicted in (None, "none") else float(predicted), reply.total_s

    return send


def clients(url: str, prompts: list[str], carrots: list[dict], n_clients: int) -> list:
    """Every prompt once, `n_clients` at a time (bounded by the prompt count and 10 minutes)."""
    return asyncio.run(run_clients(streaming(url, prompts, carrots), n_clients, len(prompts), Deadline(600)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--responses", default="../shared/data/zeroeval-2024/responses",
                        help="ZeroEval's raw answers (parquet files with key, model, response)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--bounded", type=int, default=60)
    parser.add_argument("--fast-speed", type=float, default=2000.0, help="tokens per second of the fast upstreams")
    parser.add_argument("--slow-speed", type=float, default=200.0, help="tokens per second of the slow upstream")
    parser.add_argument("--max-latency", type=float, default=0.5, help="carrot.max_latency_s in phase 2")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not Path(args.responses).exists():
        parser.error(f"--responses {args.responses} does not exist (the zeroeval-2024 raw answers)")
    table_dir = packaged_table_dir("zeroeval-2024")
    record = ReplayRecord.from_files(table_dir, args.responses)
    test = load_routing_table(str(table_dir), split="test")
    router = default_router(data="zeroeval-2024", progress=False)
    rng = random.Random(args.seed)
    fakes = {name: FakeUpstream(FakeUpstreamConfig(model=name, latency_s=0.02, chunk_words=8, replay=record,
                                                   tokens_per_s=args.slow_speed if name == SLOW else args.fast_speed))
             for name in CANDIDATES}
    servers = {name: LocalServer(fake.app).start() for name, fake in fakes.items()}
    try:
        entries = {name: {"base_url": servers[name].base_url, "model": name, "timeout": 60} for name in CANDIDATES}
        gateway = Gateway(router, UpstreamPool(parse_upstreams(entries)), GatewaySettings())
        with LocalServer(gateway.app) as server:
            url = server.base_url + "/chat/completions"
            prompts = [test.prompts[i] for i in rng.sample(range(len(test)), args.requests)]
            mus = [rng.random() for _ in prompts]
            phase1 = clients(url, prompts, [{"mu": mu} for mu in mus], args.clients)
            profile = gateway.latency.profile()
            late = phase1[len(phase1) // 2:]
            errors = {}
            for name in CANDIDATES:
                pairs = [(p, m) for model, p, m in late if model == name and p is not None]
                if pairs:
                    errors[name] = {
                        "requests": len(pairs),
                        "median_abs_error_s": statistics.median(abs(p - m) for p, m in pairs),
                        "median_measured_s": statistics.median(m for _, m in pairs),
                        "median_relative_error": statistics.median(abs(p - m) / m for p, m in pairs),
                    }
            bounded_prompts = [test.prompts[i] for i in rng.sample(range(len(test)), args.bounded)]
            free = clients(url, bounded_prompts, [{"mu": 0.0}] * len(bounded_prompts), args.clients)
            bound = clients(url, bounded_prompts, [{"mu": 0.0, "max_latency_s": args.max_latency}] * len(bounded_prompts),
                            args.clients)
    finally:
        for item in servers.values():
            item.stop()
    share = lambda results: sum(model == SLOW for model, _, _ in results) / len(results)  # noqa: E731
    results = {
        "slow_model": SLOW, "speeds": {"fast": args.fast_speed, "slow": args.slow_speed},
        "measured_profile": profile,
        "predicted_vs_measured": errors,
        "phase2": {
            "max_latency_s": args.max_latency,
            "slow_share_without_bound": share(free),
            "slow_share_with_bound": share(bound),
            "median_seconds_without_bound": statistics.median(m for _, _, m in free),
            "median_seconds_with_bound": statistics.median(m for _, _, m in bound),
            "share_within_bound": sum(m <= args.max_latency for _, _, m in bound) / len(bound),
        },
    }
    for name, row in errors.items():
        print(f"{name:<28} predicted vs measured: median |error| {row['median_abs_error_s']:.3f} s "
              f"(measured median {row['median_measured_s']:.3f} s, {row['requests']} requests)", file=sys.stderr)
    phase2 = results["phase2"]
    print(f"μ = 0: slow model chosen for {phase2['slow_share_without_bound']:.0%} without a bound, "
          f"{phase2['slow_share_with_bound']:.0%} with max_latency_s = {args.max_latency:g}", file=sys.stderr)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
