"""Benchmark of `carrot serve` on loopback: overhead, throughput, fallback under failures, a soak.

    python scripts/bench_gateway.py [--router FOLDER] [--soak 10000] [--max-seconds 900]

Starts, on 127.0.0.1 only, two fake OpenAI-compatible upstreams answering in a fixed 50 ms (one of
them failing 30% of its requests with HTTP 503) and the gateway itself (`carrot serve`, its own
process, with an outcome log), then measures with real RouterBench test prompts:

- overhead: time to first byte (streamed requests) through the gateway minus directly to the fake,
  p50 and p99, at 1 and 64 concurrent clients; routed (`model: carrot`) and pinned (no routing);
- throughput with 64 clients when routing is the bottleneck (requests/s, mean routing batch, the
  share of the wall time the routing thread was busy);
- with two upstreams, one failing 30%: the share of requests answered, and how many fell back;
- a soak of N requests (a share of them routed, the rest pinned): the gateway's RSS after warm-up,
  its peak and at the end, and whether the outcome log holds one record per request served.

Every loop is bounded in count and time (`--max-seconds` for the whole run). The last line of the
output is a JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from carrot_hub.serving.bench_setup import (  # noqa: E402
    SERVER_URL, routerbench_test_prompts, server_env, start_process, stop_process)
from carrot_hub.serving.load_clients import Deadline, load, percentiles  # noqa: E402


def metric_sum(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


def count_records(log_dir: Path) -> int:
    """Served records in the outcome log, read back with the log's own reader."""
    from carrot_hub.data.outcome_log_reader import read_outcome_log

    return len(read_outcome_log(log_dir).served)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--router", help="router folder (default: the embedded default router)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="the fake upstreams' fixed latency")
    parser.add_argument("--requests-c1", type=int, default=100, help="requests per path at 1 client")
    parser.add_argument("--requests-c64", type=int, default=640, help="requests per path at 64 clients")
    parser.add_argument("--failure-requests", type=int, default=500)
    parser.add_argument("--soak", type=int, default=10_000, help="requests in the soak")
    parser.add_argument("--soak-routed-share", type=float, default=0.1,
                        help="share of the soak's requests that are routed (the rest name a candidate: on a "
                             "shared 2-core CPU the encoder routes ~10 prompts/s, too slow for 10,000 routed)")
    parser.add_argument("--max-seconds", type=float, default=900, help="bound on the whole run")
    parser.add_argument("--threads", type=int, help="torch threads of the gateway")
    parser.add_argument("--learn-aiq", action="store_true",
                        help="also measure RouterBench test AIQ before/after feeding one candidate's train labels "
                             "as feedback (training.evaluation.learning_benchmark.measure_learning_aiq)")
    parser.add_argument("--cache-dir", help="embedding cache for --learn-aiq")
    parser.add_argument("--skip", default="", help="comma-separated phases to skip: overhead,throughput,failures,soak")
    args = parser.parse_args(argv)
    deadline = Deadline(args.max_seconds)
    env = server_env(ROOT)
    prompts = routerbench_test_prompts()

    fake_command = [sys.executable, "-m", "carrot_hub.serving.fake_upstream", "--port", "0",
                    "--latency-ms", str(args.latency_ms)]
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    healthy, healthy_url = start_process(fake_command + ["--model", "fake-healthy"], SERVER_URL, env, 60,
                                         work / "fake-healthy.log")
    failing, failing_url = start_process(fake_command + ["--model", "fake-failing", "--failure-rate", "0.3",
                                                         "--failure", "503", "--seed", "1"],
                                         SERVER_URL, env, 60, work / "fake-failing.log")
    cheap, mid, strong = "mistralai/mixtral-8x7b-chat", "gpt-3.5-turbo-1106", "gpt-4-1106-preview"
    upstreams = {cheap: {"base_url": healthy_url, "model": "fake-healthy"},
                 mid: {"base_url": healthy_url, "model": "fake-healthy"},
                 strong: {"base_url": failing_url, "model": "fake-failing"}}
    (work / "upstreams.json").write_text(json.dumps(upstreams))
    command = [sys.executable, "-m", "carrot_hub.cli", "serve", *([args.router] if args.router else []),
               "--upstreams", str(work / "upstreams.json"), "--port", "0", "--log-dir", str(work / "log")]
    if args.threads:
        command += ["--threads", str(args.threads)]
    gateway, gateway_url = start_process(command, SERVER_URL, env, 300, work / "gateway.log")
    gateway_ps = psutil.Process(gateway.pid)
    summary = {"latency_ms_upstream": args.latency_ms, "cpu_count": os.cpu_count()}
    try:
        healthy_only = {"allowed": [cheap, mid]}
        routed = [{"model": "carrot", "stream": True, "carrot": {**healthy_only, "mu": random.Random(i).random()},
                   "messages": [{"role": "user", "content": p}]} for i, p in enumerate(prompts)]
        pinned = [{"model": cheap, "stream": True, "messages": [{"role": "user", "content": p}]} for p in prompts]
        direct = [{"model": "fake-healthy", "stream": True, "messages": [{"role": "user", "content": p}]}
                  for p in prompts]
        chat = "/chat/completions"

        # Warm-up (first encoder passes, connection pools).
        asyncio.run(load(gateway_url + chat, routed[-64:], 8, 64, deadline))

        skip = set(filter(None, args.skip.split(",")))
        overhead = {}
        for clients, count in ((1, args.requests_c1), (64, args.requests_c64)) if "overhead" not in skip else ():
            runs = {
                "direct": asyncio.run(load(healthy_url + chat, direct, clients, count, deadline)),
                "pinned": asyncio.run(load(gateway_url + chat, pinned, clients, count, deadline)),
            }
            started = time.perf_counter()
            runs["routed"] = asyncio.run(load(gateway_url + chat, routed, clients, count, deadline))
            routed_seconds = time.perf_counter() - started
            stats = {name: percentiles([r.ttfb_s for r in results if r.ok]) for name, results in runs.items()}
            entry = {"ttfb": stats}
            for path in ("routed", "pinned"):
                for q in ("p50_ms", "p99_ms"):
                    if stats[path][q] is not None and stats["direct"][q] is not None:
                        entry[f"overhead_{path}_{q}"] = round(stats[path][q] - stats["direct"][q], 2)
            entry["routed_requests_per_s"] = round(len(runs["routed"]) / routed_seconds, 1)
            overhead[f"clients_{clients}"] = entry
            print(f"overhead at {clients} client(s): {json.dumps(entry)}", flush=True)
        summary["overhead"] = overhead

        # Throughput when routing is the bottleneck: 64 clients, routed requests, routing stats from /metrics.
        if "throughput" not in skip:
            before = httpx.get(gateway_url.removesuffix("/v1") + "/metrics").text
            started = time.perf_counter()
            results = asyncio.run(load(gateway_url + chat, routed, 64, max(args.requests_c64, 1000), deadline))
            wall = time.perf_counter() - started
            after = httpx.get(gateway_url.removesuffix("/v1") + "/metrics").text
            busy = metric_sum(after, "carrot_routing_batch_seconds_sum") - metric_sum(before, "carrot_routing_batch_seconds_sum")
            batches = metric_sum(after, "carrot_routing_batch_size_count") - metric_sum(before, "carrot_routing_batch_size_count")
            routed_n = metric_sum(after, "carrot_routing_batch_size_sum") - metric_sum(before, "carrot_routing_batch_size_sum")
            summary["throughput"] = {
                "requests_per_s": round(len(results) / wall, 1), "requests": len(results),
                "ok": sum(r.ok for r in results),
                "mean_routing_batch": round(routed_n / batches, 1) if batches else None,
                "routing_thread_busy_share": round(busy / wall, 3),
            }
            print(f"throughput: {json.dumps(summary['throughput'])}", flush=True)

        # Two upstreams, one failing 30% of its requests with HTTP 503.
        if "failures" not in skip:
            failing_pair = [{**body, "carrot": {"allowed": [strong, cheap], "mu": body["carrot"]["mu"] / 2}}
                            for body in routed]
            results = asyncio.run(load(gateway_url + chat, failing_pair, 16, args.failure_requests, deadline))
            answered = sum(r.ok for r in results)
            summary["failures"] = {
                "requests": len(results), "answered_share": round(answered / max(1, len(results)), 4),
                "fell_back": sum(bool(r.headers.get("x-carrot-fallbacks")) for r in results),
                "answered_by": {m: sum(r.headers.get("x-carrot-model") == m for r in results if r.ok) for m in (strong, cheap)},
            }
            print(f"one upstream failing 30%: {json.dumps(summary['failures'])}", flush=True)

        # Soak: RSS sampled every 0.5 s; records counted after a clean shutdown.
        if "soak" not in skip:
            metrics_before = httpx.get(gateway_url.removesuffix("/v1") + "/metrics").text
            served_before = metric_sum(metrics_before, "carrot_requests_total")
            samples, stop_sampling = [], threading.Event()

            def sample():
                while not stop_sampling.wait(0.5):
                    samples.append((time.perf_counter(), gateway_ps.memory_info().rss))

            sampler = threading.Thread(target=sample, daemon=True)
            every = max(1, round(1 / args.soak_routed_share)) if args.soak_routed_share > 0 else None
            soak_bodies = [routed[i] if every and i % every == 0 else pinned[i] for i in range(len(prompts))]
            warm = min(1000, args.soak // 10)
            asyncio.run(load(gateway_url + chat, soak_bodies, 64, warm, deadline))
            rss_start = gateway_ps.memory_info().rss
            sampler.start()
            started = time.perf_counter()
            results = asyncio.run(load(gateway_url + chat, soak_bodies, 64, args.soak - warm, deadline))
            soak_wall = time.perf_counter() - started
            stop_sampling.set()
            sampler.join()
            rss_end = gateway_ps.memory_info().rss
            rss_peak = max([rss_start, rss_end] + [rss for _, rss in samples])
            served_total = metric_sum(httpx.get(gateway_url.removesuffix("/v1") + "/metrics").text, "carrot_requests_total")
            summary["soak"] = {
                "requests": warm + len(results), "ok_after_warm_up": sum(r.ok for r in results),
                "transport_errors": sum(r.status == 0 for r in results),
                "routed_share": args.soak_routed_share, "seconds": round(soak_wall, 1), "rss_mb_start": round(rss_start / 2**20, 1),
                "rss_mb_peak": round(rss_peak / 2**20, 1), "rss_mb_end": round(rss_end / 2**20, 1),
                "rss_growth": round(rss_end / rss_start - 1, 4),
                "served_in_soak": int(served_total - served_before),
            }
    finally:
        code = stop_process(gateway)
        stop_process(healthy)
        stop_process(failing)
    summary["gateway_exit_code"] = code
    if code != 0:
        summary["gateway_log_tail"] = (work / "gateway.log").read_text()[-1500:]
    if "soak" in summary:
        served = int(served_total)
        records = count_records(work / "log")
        summary["soak"]["requests_served_total"] = served
        summary["soak"]["log_records"] = records
        summary["soak"]["records_equal_requests"] = records == served
    summary["work_dir"] = str(work)
    if args.learn_aiq:  # minutes on a CPU: opt-in (also `python scripts/bench_learning.py`)
        from training.evaluation.learning_benchmark import measure_learning_aiq

        summary["learn_aiq"] = measure_learning_aiq(cache_dir=args.cache_dir)
    else:
        summary["learn_aiq"] = "not run: pass --learn-aiq (or run scripts/bench_learning.py)"
    summary["timed_out"] = deadline.passed()
    return summary


if __name__ == "__main__":
    print(json.dumps(main()))
