"""Benchmark of `carrot serve` past one process, on loopback. The last line is a JSON summary.

    python scripts/bench_scaleout.py [--requests 640] [--labels 2000] [--reloads 5] [--max-seconds 900]

Builds the embedded default router with the static encoder (kNN, RouterBench) into a scratch folder,
starts a fake OpenAI-compatible upstream answering in 50 ms, then, on 127.0.0.1 only:

1. workers: requests/s and the time-to-first-byte overhead (gateway minus the fake alone, p50 and
   p99) at 64 clients, routed requests, for `--workers 1` and `--workers 2` in the same run;
2. exactly once: `carrot serve --workers 2` and one `carrot learn` on the shared log folder (a
   folder store): N new prompts served and labelled (feedback spread over both workers by the
   kernel); when `carrot learn` has published them all, every label must be in the published router
   exactly once (its remembered rows and their observed cells, counted) and the router must equal the
   one a single process gets by `remember()`-ing the same labels;
3. reloads: `carrot serve STORE --workers 2 --reload-every 1s` under 64-client load while labels
   arrive and `carrot learn --every 1s` publishes `--reloads` revisions: failed requests (must be 0),
   and per label the time from its feedback to a replica reporting (`/health`) a revision holding it.
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
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from carrot_hub.serving.bench_setup import (  # noqa: E402
    SERVER_URL, routerbench_test_prompts, server_env, start_process, stop_process)
from carrot_hub.serving.load_clients import Deadline, load, percentiles, run_clients  # noqa: E402

CHAT = "/chat/completions"
URL = SERVER_URL


def serve_command(router: str, upstreams: Path, log_dir: Path, workers: int, *extra) -> list[str]:
    return [sys.executable, "-m", "carrot_hub.cli", "serve", router, "--upstreams", str(upstreams), "--port", "0",
            "--log-dir", str(log_dir), "--workers", str(workers), *extra]


def wait_for_workers(log_file: Path, workers: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log_file.read_text().count("candidates (") >= workers:
            return
        time.sleep(0.2)
    raise RuntimeError(f"not every worker started:\n{log_file.read_text()[-2000:]}")


def phase_workers(router, upstreams, fake_url, prompts, work, env, args, deadline, rounds: int = 2) -> dict:
    """Both gateways run side by side; measurements alternate (1, 2, 1, 2, …) so that the load of a
    shared machine weighs on both alike."""
    routed = [{"model": "carrot", "stream": True, "messages": [{"role": "user", "content": p}]} for p in prompts]
    direct = [{"model": "fake", "stream": True, "messages": [{"role": "user", "content": p}]} for p in prompts]
    servers = {}
    try:
        for workers in (1, 2):
            log_file = work / f"serve-w{workers}.log"
            servers[workers] = start_process(serve_command(router, upstreams, work / f"log-w{workers}", workers), URL,
                                             env, 300, log_file)
            wait_for_workers(log_file, workers)
            asyncio.run(load(servers[workers][1] + CHAT, routed[-128:], 64, 256, deadline))  # warm-up
        runs = {1: [], 2: []}
        fakes = {1: [], 2: []}
        walls = {1: 0.0, 2: 0.0}
        for _ in range(rounds):
            for workers in (1, 2):
                fakes[workers] += asyncio.run(load(fake_url + CHAT, direct, 64, args.requests, deadline))
                started = time.perf_counter()
                runs[workers] += asyncio.run(load(servers[workers][1] + CHAT, routed, 64, args.requests, deadline))
                walls[workers] += time.perf_counter() - started
    finally:
        for process, _ in servers.values():
            stop_process(process)
    result = {}
    for workers in (1, 2):
        gateway, fake = (percentiles([r.ttfb_s for r in rs if r.ok]) for rs in (runs[workers], fakes[workers]))
        result[f"workers_{workers}"] = {
            "requests_per_s": round(len(runs[workers]) / walls[workers], 1), "requests": len(runs[workers]),
            "ok": sum(r.ok for r in runs[workers]),
            "overhead_p50_ms": round(gateway["p50_ms"] - fake["p50_ms"], 2),
            "overhead_p99_ms": round(gateway["p99_ms"] - fake["p99_ms"], 2),
            "fake_alone_ttfb_p50_ms": fake["p50_ms"],
        }
        print(f"--workers {workers}: {json.dumps(result[f'workers_{workers}'])}", flush=True)
    result["rps_ratio_2_over_1"] = round(result["workers_2"]["requests_per_s"] / result["workers_1"]["requests_per_s"], 3)
    result["load_average_1min_at_end"] = round(os.getloadavg()[0], 1)
    return result


async def serve_and_label(url: str, prompts, scores, concurrency: int, deadline: Deadline) -> list[dict]:
    """Each prompt served once (routed) and labelled; returns what was sent, with the answering model."""

    async def send(client, i):
        response = await client.post(url + CHAT, json={"model": "carrot",
                                                       "messages": [{"role": "user", "content": prompts[i]}]})
        if response.status_code != 200:
            return {"prompt": prompts[i], "error": response.status_code}
        request_id = response.headers["x-carrot-request-id"]
        label = await client.post(url + "/feedback", json={"request_id": request_id, "score": scores[i]})
        return {"prompt": prompts[i], "model": response.headers["x-carrot-model"], "score": scores[i],
                "request_id": request_id, "status": label.status_code, "time": time.time()}

    # New connections for every request: the kernel spreads them over both workers.
    return await run_clients(send, concurrency, len(prompts), deadline, keepalive=False)


def latest_state(store: Path) -> dict:
    from carrot_hub.router_store import FolderStore

    folder = FolderStore(store)
    revision = folder.current()
    return {} if revision is None else {"revision": revision, **folder.read_state(revision)}


def wait_for_labels(store: Path, labels: int, deadline: Deadline, timeout_s: float = 300) -> dict:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and not deadline.passed():
        state = latest_state(store)
        if state.get("labels_applied", 0) >= labels:
            return state
        time.sleep(0.2)
    return latest_state(store)


def sorted_rows(router) -> dict:
    """The memory's remembered rows as tensors sorted by prompt key (row order is arrival order)."""
    memory, n = router.predictor, router.config.knn_remembered_rows
    keys = memory.prompt_keys[-n:] if n else memory.prompt_keys[:0]
    order = torch.argsort(keys)
    return {name: getattr(memory, name)[-n:][order] if n else getattr(memory, name)[:0]
            for name in ("prompt_keys", "embeddings", "quality", "quality_observed", "log_output_tokens",
                         "output_tokens_observed")}


def phase_exactly_once(router_folder, upstreams, work, env, args, deadline, prompts) -> dict:
    from carrot_hub.label_reading import FolderLogSource, LabelReader
    from carrot_hub.modeling_carrot import CarrotRouter, prompt_key_of

    log_dir, store = work / "log-shared", work / "store"
    serve_log, learn_log = work / "serve-exactly-once.log", work / "learn.log"
    server, url = start_process(serve_command(router_folder, upstreams, log_dir, 2), URL, env, 300, serve_log)
    wait_for_workers(serve_log, 2)
    learn = None
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        learn, _ = start_process([sys.executable, "-m", "carrot_hub.cli", "learn", str(log_dir), "--router",
                                  router_folder, "--out", str(store), "--every", "2s"], r"(carrot learn: )", env, 300,
                                 learn_log)
        rng = random.Random(1)
        scores = [float(rng.random() < 0.6) for _ in prompts]
        started = time.perf_counter()
        sent = asyncio.run(serve_and_label(url, prompts, scores, 32, deadline))
        feeding_s = time.perf_counter() - started
        labelled = [s for s in sent if s.get("status") == 200]
        state = wait_for_labels(store, len(labelled), deadline)
    finally:
        if learn is not None:
            stop_process(learn)
        stop_process(server)
    published = CarrotRouter.from_pretrained(store / state["revision"])
    original = CarrotRouter.from_pretrained(router_folder)
    memory = published.predictor
    columns = published.config.candidate_models
    rows = memory.rows_of([prompt_key_of(s["prompt"]) for s in labelled])
    found = sum(1 for s, row in zip(labelled, rows) if row is not None
                and memory.quality_observed[row, columns.index(s["model"])] == 1
                and abs(memory.quality[row, columns.index(s["model"])].item() - s["score"]) < 1e-6)
    remembered = published.config.knn_remembered_rows
    observed_in_remembered = int(memory.quality_observed[-remembered:].sum()) if remembered else 0
    # One process: the same labels, in the order the log gives them, remembered by one router.
    labels = LabelReader(FolderLogSource(log_dir), original.config.candidate_models).read_new()
    original.remember([l.prompt for l in labels], [l.model for l in labels], [l.score for l in labels],
                      [l.output_tokens for l in labels])
    a, b = sorted_rows(published), sorted_rows(original)
    equal = all(torch.equal(a[name], b[name]) for name in a) and \
        published.config.knn_memory_size == original.config.knn_memory_size
    result = {
        "labels_sent": len(labelled), "labels_refused": len(sent) - len(labelled),
        "feeding_seconds": round(feeding_s, 1),
        "shards": len(list(log_dir.glob("outcomes-*.jsonl"))),
        "labels_applied_by_carrot_learn": state.get("labels_applied"), "revision": state.get("revision"),
        "labels_found_once_in_published_memory": found, "remembered_rows": remembered,
        "observed_cells_in_remembered_rows": observed_in_remembered,
        "exactly_once": found == len(labelled) == remembered == observed_in_remembered == state.get("labels_applied"),
        "equals_one_process_remember": bool(equal),
    }
    print(f"exactly once: {json.dumps(result)}", flush=True)
    return result


def phase_reloads(upstreams, work, env, args, deadline, prompts, store) -> dict:
    # The same shared log as the exactly-once phase: the restarted carrot learn resumes after its labels.
    log_dir, serve_log, learn_log = work / "log-shared", work / "serve-reload.log", work / "learn-reload.log"
    server, url = start_process(serve_command(str(store), upstreams, log_dir, 2, "--reload-every", "1s"), URL, env,
                                300, serve_log)
    wait_for_workers(serve_log, 2)
    base = url.removesuffix("/v1")
    learn = None
    stop_load, results = threading.Event(), []
    routed = [{"model": "carrot", "stream": True, "messages": [{"role": "user", "content": p}]} for p in prompts]

    def background_load():
        while not stop_load.is_set() and not deadline.passed():
            results.extend(asyncio.run(load(url + CHAT, routed, 64, 640, deadline)))

    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        learn, _ = start_process([sys.executable, "-m", "carrot_hub.cli", "learn", str(log_dir), "--out", str(store),
                                  "--every", "1s"], r"(carrot learn: )", env, 300, learn_log)
        loader = threading.Thread(target=background_load)
        loader.start()
        seen_revisions, delays = [], []
        client = httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))
        for round_ in range(args.reloads):
            if deadline.passed():
                break
            response = client.post(url + CHAT, json={"model": "carrot", "messages": [
                {"role": "user", "content": f"reload round {round_}: {prompts[round_]}"}]})
            labelled_at = time.time()
            client.post(url + "/feedback", json={"request_id": response.headers["x-carrot-request-id"], "score": 1.0})
            end = time.monotonic() + 60
            while time.monotonic() < end:
                revision = client.get(base + "/health").json().get("revision")
                state = latest_state(store)
                if revision and revision == state.get("revision") and state.get("newest_label_time", 0) >= labelled_at - 1:
                    delays.append(time.time() - labelled_at)
                    seen_revisions.append(revision)
                    break
                time.sleep(0.05)
        stop_load.set()
        loader.join(timeout=120)
        client.close()
    finally:
        stop_load.set()
        if learn is not None:
            stop_process(learn)
        stop_process(server)
    from carrot_hub.data.outcome_log_reader import iter_shard_records

    record_revisions = {r.get("revision") for _, r in iter_shard_records(log_dir) if r.get("type") == "served"}
    reloads = sum(text.count("now routing with revision") for text in [serve_log.read_text()])
    result = {
        "requests_under_load": len(results), "failed_requests": sum(not r.ok for r in results),
        "rounds": len(delays), "reloads_logged_by_workers": reloads,
        "revisions_named_in_outcome_records": len(record_revisions - {None}),
        "label_to_serving_s": {"each": [round(d, 2) for d in delays],
                               "median": round(float(np.median(delays)), 2) if delays else None,
                               "max": round(max(delays), 2) if delays else None},
    }
    print(f"reloads: {json.dumps(result)}", flush=True)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=640, help="requests per measurement at 64 clients")
    parser.add_argument("--labels", type=int, default=2000, help="labels fed in the exactly-once phase")
    parser.add_argument("--reloads", type=int, default=5, help="revisions published under load")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--max-seconds", type=float, default=1200, help="bound on the whole run")
    parser.add_argument("--skip", default="", help="comma-separated phases to skip: workers,exactly_once,reloads")
    args = parser.parse_args(argv)
    deadline = Deadline(args.max_seconds)
    skip = set(filter(None, args.skip.split(",")))
    env = server_env(ROOT)
    from carrot_hub.default import default_router

    prompts = routerbench_test_prompts()
    work = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    router_folder = work / "router"
    router = default_router(cache_dir=router_folder, encoder="static", progress=False)
    candidates = list(router.config.candidate_models)
    fake, fake_url = start_process([sys.executable, "-m", "carrot_hub.serving.fake_upstream", "--port", "0",
                                    "--latency-ms", str(args.latency_ms), "--model", "fake"], URL, env, 60,
                                   work / "fake.log")
    upstreams = work / "upstreams.json"
    upstreams.write_text(json.dumps({name: {"base_url": fake_url, "model": "fake"} for name in candidates}))
    summary = {"cpu_count": os.cpu_count(), "latency_ms_upstream": args.latency_ms, "router": "default static kNN",
               "clients": 64}
    try:
        if "workers" not in skip:
            summary["workers"] = phase_workers(str(router_folder), upstreams, fake_url, prompts, work, env, args, deadline)
        # New prompts (not in the router's memory): each label must add one row, so rows count labels.
        fresh = [f"{prompts[i % len(prompts)]}\n(request {i})" for i in range(args.labels)]
        if "exactly_once" not in skip:
            summary["exactly_once"] = phase_exactly_once(str(router_folder), upstreams, work, env, args, deadline, fresh)
        if "reloads" not in skip and (work / "store").is_dir():
            summary["reloads"] = phase_reloads(upstreams, work, env, args, deadline, prompts, work / "store")
    finally:
        stop_process(fake)
    summary["work_dir"] = str(work)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
