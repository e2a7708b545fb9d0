"""Gateway memory under huge upstream answers (issue 23, item 10).

    python scripts/measure_upstream_bodies.py --answers 15 --answer-mb 64
    python scripts/measure_upstream_bodies.py --answers 15 --answer-mb 64 --max-response-mb 0   # no limit

A fake upstream in a child process answers every request with `--answer-mb` MB of content; a
gateway in this process (the tiny packaged default router, loopback only) is asked `--answers`
times, pinned to that upstream. Reports this process's peak resident memory (ru_maxrss) before
and after, and the statuses the client got. `--max-response-mb 0` sets the limit above the answer
size, to show the memory without a bound. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _serve_huge(port_queue, megabytes: int) -> None:
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from carrot_hub.serving.local_server import LocalServer

    body = json.dumps({"id": "x", "object": "chat.completion", "model": "m",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": "x" * (megabytes * 2**20)}}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()

    async def chat(request):
        await request.body()
        return Response(body, media_type="application/json")

    with LocalServer(Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])) as server:
        port_queue.put(server.base_url)
        time.sleep(3600)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--answers", type=int, default=15)
    parser.add_argument("--answer-mb", type=int, default=64)
    parser.add_argument("--max-response-mb", type=int, default=16, help="the upstream's max_response_bytes in MiB (0: above the answer)")
    args = parser.parse_args(argv)

    import httpx

    from carrot_hub import default_router
    from carrot_hub.serving.app import Gateway, GatewaySettings
    from carrot_hub.serving.local_server import LocalServer
    from carrot_hub.serving.upstreams import UpstreamPool, parse_upstreams

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_serve_huge, args=(queue, args.answer_mb), daemon=True)
    child.start()
    try:
        base_url = queue.get(timeout=120)
        router = default_router(progress=False, encoder="static")
        name = router.config.candidate_models[0]
        limit = (args.max_response_mb or 2 * args.answer_mb) * 2**20
        pool = UpstreamPool(parse_upstreams({name: {"base_url": base_url, "model": "m", "timeout": 120,
                                                    "max_response_bytes": limit}}))
        gateway = Gateway(router, pool, GatewaySettings(max_fallbacks=0))
        before = _peak_mb()
        statuses = []
        with LocalServer(gateway.app) as server:
            for _ in range(args.answers):
                response = httpx.post(server.base_url + "/chat/completions", timeout=300,
                                      json={"model": name, "messages": [{"role": "user", "content": "hi"}]})
                statuses.append(response.status_code)
        after = _peak_mb()
    finally:
        child.terminate()
    print(json.dumps({"answers": args.answers, "answer_mb": args.answer_mb, "max_response_mb": limit / 2**20,
                      "peak_rss_mb_before": round(before), "peak_rss_mb_after": round(after),
                      "statuses": sorted(set(statuses))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
