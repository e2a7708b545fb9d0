"""Does judged exploration slow the client? Time to first byte with `--explore` off and on, in one run.

    python scripts/bench_exploration_overhead.py [--router FOLDER] [--rates 0.2,1.0] [--rounds 3]
        [--requests 640] [--clients 64] [--learn] [--max-concurrency N] [--max-seconds 900]

Starts, on 127.0.0.1 only, two fake OpenAI-compatible upstreams answering in a fixed 50 ms (one
answering "Score: 7", so that the judge's grades parse) and one `carrot serve` per setting, side by
side, each its own process with its own outcome log: exploration off, and `--explore RATE --judge
<judge>` for each RATE (0.2, and 1.0 as a stress point). The router is the default static kNN router
(RouterBench) unless `--router`; requests are routed between two candidates (`carrot.allowed`),
one of them the judge, so that the exploration's calls share the upstream connection pools the
clients use.

Each round measures, for streamed then non-streamed requests, the fake alone and every gateway in
turn (the order rotates per round), `--clients` clients sending `--requests` RouterBench test
prompts each time. Before the next measurement starts, the gateway just measured finishes its
queued explorations (each setting pays for its own exploration; none spills into the next one's
figures). Reported per setting and mode: time to first byte (p50, p90, p99) pooled over the rounds
and per round, total latency, requests/s, the gateway's CPU seconds per request, explorations
queued, dropped and finished; and per mode and rate the p50 difference from exploration off against
the noise (the spread of the off setting's per-round p50s). The machine's load average is recorded
with each measurement. Every loop is bounded in count and time. The last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from carrot_hub.serving.bench_setup import (  # noqa: E402
    SERVER_URL, routerbench_test_prompts, server_env, start_process, stop_process)
from carrot_hub.serving.load_clients import Deadline, load, percentiles  # noqa: E402

CHAT = "/chat/completions"
CHEAP, JUDGE = "mistralai/mixtral-8x7b-chat", "gpt-3.5-turbo-1106"
QUANTILES = (50, 90, 99)
MODES = ("stream", "plain")


def metric_sum(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def exploration_counts(base: str) -> dict:
    """Explorations finished and dropped so far, from the gateway's /metrics."""
    text = httpx.get(base + "/metrics", timeout=30).text
    return {"finished": metric_sum(text, "carrot_explored_total"),
            "dropped": metric_sum(text, "carrot_explore_dropped_total")}


def drain(base: str, deadline: Deadline, quiet_s: float = 1.0, limit_s: float = 120.0) -> float:
    """Wait until the gateway's finished explorations stop growing for `quiet_s`: seconds waited."""
    started = time.monotonic()
    last, still_since = None, time.monotonic()
    while time.monotonic() - started < limit_s and not deadline.passed():
        now = exploration_counts(base)["finished"]
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= quiet_s:
            break
        time.sleep(0.2)
    return round(time.monotonic() - started, 1)


def serve_command(router: str, upstreams: Path, log_dir: Path, rate: float | None, learn: bool) -> list[str]:
    command = [sys.executable, "-m", "carrot_hub.cli", "serve", router, "--upstreams", str(upstreams),
               "--port", "0", "--log-dir", str(log_dir)]
    if rate is not None:
        command += ["--explore", f"{rate:g}", "--judge", JUDGE]
    return command + (["--learn"] if learn else [])


def measure(url: str, bodies, args, deadline: Deadline, process: psutil.Process | None = None) -> dict:
    """One measurement: the replies, wall seconds, the process's CPU seconds, the load average before and after."""
    load_before = os.getloadavg()[0]
    cpu_before = sum(process.cpu_times()[:2]) if process is not None else None
    started = time.perf_counter()
    replies = asyncio.run(load(url + CHAT, bodies, args.clients, args.requests, deadline))
    wall = time.perf_counter() - started
    cpu = sum(process.cpu_times()[:2]) - cpu_before if process is not None else None
    return {"replies": replies, "wall_s": wall, "cpu_s": cpu, "load": (load_before, os.getloadavg()[0])}


def summarise(runs: list[dict]) -> dict:
    replies = [r for run in runs for r in run["replies"]]
    ok = [r for r in replies if r.ok]
    per_round = [percentiles([r.ttfb_s for r in run["replies"] if r.ok], (50,))["p50_ms"] for run in runs]
    summary = {
        "ttfb": percentiles([r.ttfb_s for r in ok], QUANTILES),
        "ttfb_p50_ms_per_round": per_round,
        "total": percentiles([r.total_s for r in ok], QUANTILES),
        "requests": len(replies), "ok": len(ok),
        "requests_per_s": round(len(replies) / sum(run["wall_s"] for run in runs), 1),
        "load_average_1min": [round(x, 1) for run in runs for x in run["load"]],
    }
    if runs[0]["cpu_s"] is not None:
        summary["gateway_cpu_ms_per_request"] = round(1000 * sum(run["cpu_s"] for run in runs) / max(1, len(replies)), 2)
    if "explored" in runs[0]:
        for key in ("offered", "finished", "dropped", "drain_s", "drain_cpu_s"):
            summary[f"explore_{key}"] = round(sum(run["explored"][key] for run in runs), 1)
    return summary


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--router", help="router folder (default: the default static kNN router, built once)")
    parser.add_argument("--rates", default="0.2,1.0", help="comma-separated --explore rates to compare with off")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each setting and mode, interleaved")
    parser.add_argument("--requests", type=int, default=640, help="requests per measurement")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=50.0, help="the fake upstreams' fixed latency")
    parser.add_argument("--modes", default="stream,plain", help="comma-separated: stream, plain")
    parser.add_argument("--learn", action="store_true", help="serve with --learn (judge labels remembered)")
    parser.add_argument("--max-concurrency", type=int,
                        help="the upstreams' max_concurrency (default: the gateway's, 64); below --clients the "
                             "clients fill the connection pools the exploration's calls share")
    parser.add_argument("--max-seconds", type=float, default=900, help="bound on the whole run")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    modes = [m for m in args.modes.split(",") if m]
    if not set(modes) <= set(MODES) or not rates or not all(0 < r <= 1 for r in rates) or args.rounds < 1:
        parser.error("--modes takes stream and/or plain; --rates shares in (0, 1]; --rounds at least 1")
    deadline = Deadline(args.max_seconds)
    env = server_env(ROOT)
    prompts = routerbench_test_prompts()
    work = Path(tempfile.mkdtemp(prefix="bench-explore-"))
    router = args.router
    if router is None:
        from carrot_hub.default import default_cache_dir, default_router

        default_router(encoder="static", progress=False)
        router = str(default_cache_dir("static"))

    fake = [sys.executable, "-m", "carrot_hub.serving.fake_upstream", "--port", "0", "--latency-ms", str(args.latency_ms)]
    answers, answers_url = start_process(fake + ["--model", "fake"], SERVER_URL, env, 60, work / "fake.log")
    grades, grades_url = start_process(fake + ["--model", "fake-judge", "--reply", "Score: 7"], SERVER_URL, env, 60,
                                       work / "fake-judge.log")
    upstreams = work / "upstreams.json"
    limit = {"max_concurrency": args.max_concurrency} if args.max_concurrency else {}
    upstreams.write_text(json.dumps({CHEAP: {"base_url": answers_url, "model": "fake", **limit},
                                     JUDGE: {"base_url": grades_url, "model": "fake-judge", **limit}}))
    settings = {"off": None, **{f"explore_{r:g}": r for r in rates}}
    gateways = {}
    summary = {"cpu_count": os.cpu_count(), "clients": args.clients, "requests_per_measurement": args.requests,
               "rounds": args.rounds, "latency_ms_upstream": args.latency_ms, "judge": JUDGE,
               "allowed": [CHEAP, JUDGE], "learn": args.learn,
               "max_concurrency": args.max_concurrency, "router": args.router or "default static kNN"}
    try:
        for name, rate in settings.items():
            process, url = start_process(serve_command(router, upstreams, work / f"log-{name}", rate, args.learn),
                                         SERVER_URL, env, 300, work / f"gateway-{name}.log")
            gateways[name] = (process, url, psutil.Process(process.pid))
        bodies = {mode: [{"model": "carrot", "stream": mode == "stream",
                          "carrot": {"allowed": [CHEAP, JUDGE], "mu": random.Random(i).random()},
                          "messages": [{"role": "user", "content": p}]} for i, p in enumerate(prompts)]
                  for mode in modes}
        direct = {mode: [{"model": "fake", "stream": mode == "stream", "messages": [{"role": "user", "content": p}]}
                         for p in prompts] for mode in modes}
        for name, (_, url, _) in gateways.items():  # warm-up: connection pools, first routing batches
            asyncio.run(load(url + CHAT, bodies[modes[0]][-256:], args.clients, 256, deadline))
            if settings[name] is not None:
                drain(url.removesuffix("/v1"), deadline)
        runs = {(name, mode): [] for name in ["direct", *settings] for mode in modes}
        order = list(settings)
        for round_ in range(args.rounds):
            for mode in modes:
                runs[("direct", mode)].append(measure(answers_url, direct[mode], args, deadline))
                for name in order[round_ % len(order):] + order[:round_ % len(order)]:
                    _, url, ps = gateways[name]
                    base = url.removesuffix("/v1")
                    before = exploration_counts(base)
                    run = measure(url, bodies[mode], args, deadline, ps)
                    if settings[name] is not None:
                        cpu_before = sum(ps.cpu_times()[:2])
                        waited = drain(base, deadline)
                        after = exploration_counts(base)
                        run["explored"] = {"finished": after["finished"] - before["finished"],
                                           "dropped": after["dropped"] - before["dropped"],
                                           "drain_s": waited, "drain_cpu_s": sum(ps.cpu_times()[:2]) - cpu_before}
                        run["explored"]["offered"] = run["explored"]["finished"] + run["explored"]["dropped"]
                    runs[(name, mode)].append(run)
                    print(f"round {round_ + 1} {mode} {name}: ttfb "
                          f"{json.dumps(percentiles([r.ttfb_s for r in run['replies'] if r.ok], QUANTILES))} "
                          f"load {run['load'][1]:.1f}", flush=True)
    finally:
        codes = {name: stop_process(process) for name, (process, _, _) in gateways.items()}
        stop_process(answers)
        stop_process(grades)
    summary["gateway_exit_codes"] = codes
    results = {mode: {name: summarise(runs[(name, mode)]) for name in ["direct", *settings]
                      if runs[(name, mode)]} for mode in modes}
    summary["results"] = results
    verdict = {}
    for mode in modes:
        off = results[mode].get("off")
        if not off or None in off["ttfb_p50_ms_per_round"]:
            continue
        noise = max(off["ttfb_p50_ms_per_round"]) - min(off["ttfb_p50_ms_per_round"])
        for name in settings:
            row = results[mode].get(name)
            if name == "off" or not row or None in row["ttfb_p50_ms_per_round"]:
                continue
            delta = statistics.median(row["ttfb_p50_ms_per_round"]) - statistics.median(off["ttfb_p50_ms_per_round"])
            verdict[f"{mode}/{name}"] = {"p50_delta_ms": round(delta, 2), "noise_ms": round(noise, 2),
                                         "within_noise": abs(delta) <= noise}
    summary["p50_on_minus_off"] = verdict
    summary["log_records"] = {name: sum(1 for f in (work / f"log-{name}").glob("outcomes-*.jsonl")
                                        for _ in f.open()) for name in settings}
    summary["work_dir"] = str(work)
    summary["timed_out"] = deadline.passed()
    return summary


if __name__ == "__main__":
    print(json.dumps(main()))
