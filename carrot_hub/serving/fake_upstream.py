"""An in-process fake OpenAI-compatible upstream for fast tests and the gateway benchmark.

It speaks the chat-completions schema (JSON and SSE streaming, usage, `stream_options`), answers
after a fixed latency, and fails on demand: a share of requests at random (seeded), or the next N
requests, with one of `FAILURE_KINDS`:

- `"500"`, `"502"`, `"503"`, `"429"`, `"400"`, `"401"`, `"422"`: that HTTP status with an OpenAI error body;
- `"timeout"`: holds the request `hang_s` seconds before answering;
- `"drop"`: sends the response headers, then drops the connection before any body;
- `"midstream"`: a stream sends two chunks, then drops the connection (a plain answer drops at once).

It remembers what it last received (`received`: bodies; `authorizations`: headers) for tests to inspect.
Answers are not language: the content is `"<model> says: "` followed by numbered words, or a fixed
`reply` (a judge's `"Score: 7"`, for instance); or, in replay
mode (`replay`: a `ReplayRecord`), the recorded answer of the request's model to its prompt, with the
record's token counts as `usage` and every cell's requests counted (`GET /v1/replay/counts`). With
`replay_judge` too, a request that is a judge rubric (`carrot collect`'s judge, which `carrot serve
--explore` uses) is graded with the quoted answer's recorded score ("Score: 10" / "Score: 0"; see
`carrot_hub.serving.replay_judge`), so one fake serves both the candidates and the judge.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from .replay_judge import replay_grade

RECEIVED_KEPT = 1000
FAILURE_KINDS = ("500", "502", "503", "429", "400", "401", "422", "timeout", "drop", "midstream")


@dataclass
class FakeUpstreamConfig:
    """How the fake behaves. `api_key`: the bearer it expects (None accepts anything)."""

    model: str = "fake-model"
    latency_s: float = 0.0
    reply_words: int = 8
    tokens_per_s: float | None = None  # a stream's decode speed in usage tokens per second (None: at once)
    chunk_words: int = 2
    failure_rate: float = 0.0
    failure: str = "500"
    hang_s: float = 30.0
    api_key: str | None = None
    seed: int = 0
    send_usage: bool = True  # False: answers carry no `usage` (as some servers do)
    retry_after_s: float | None = None  # sent as `Retry-After` with injected 429/503 failures
    replay: object | None = None  # a `ReplayRecord`: answer from the record instead of numbered words
    replay_judge: bool = False  # with `replay`: grade judge rubric requests with the record's scores
    reply: str | None = None  # answer with this text instead of numbered words (a judge's "Score: 7", say)

    def __post_init__(self):
        if self.failure not in FAILURE_KINDS:
            raise ValueError(f"failure must be one of {FAILURE_KINDS}, got {self.failure!r}.")
        if self.replay_judge and self.replay is None:
            raise ValueError("replay_judge grades from a record: give replay too.")


@dataclass
class FakeUpstream:
    """The fake's state: its config, scripted failures, and what it received."""

    config: FakeUpstreamConfig = field(default_factory=FakeUpstreamConfig)
    # The last RECEIVED_KEPT bodies and Authorization headers (bounded: the fake also serves soaks).
    received: deque = field(default_factory=lambda: deque(maxlen=RECEIVED_KEPT))
    authorizations: deque = field(default_factory=lambda: deque(maxlen=RECEIVED_KEPT))
    requests: int = 0
    failures: int = 0

    def __post_init__(self):
        self._scripted: list[str] = []
        self._lock = threading.Lock()
        self._random = random.Random(self.config.seed)
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/v1/replay/counts", self._replay_counts, methods=["GET"]),
        ])

    def fail_next(self, kind: str, count: int = 1) -> None:
        """The next `count` requests fail with `kind` (see `FAILURE_KINDS`)."""
        if kind not in FAILURE_KINDS:
            raise ValueError(f"kind must be one of {FAILURE_KINDS}, got {kind!r}.")
        with self._lock:
            self._scripted.extend([kind] * count)

    def _next_failure(self) -> str | None:
        with self._lock:
            self.requests += 1
            if self._scripted:
                kind = self._scripted.pop(0)
            elif self.config.failure_rate and self._random.random() < self.config.failure_rate:
                kind = self.config.failure
            else:
                return None
            self.failures += 1
            return kind

    async def _models(self, request: Request):
        return JSONResponse({"object": "list", "data": [{"id": self.config.model, "object": "model",
                                                         "owned_by": "fake"}]})

    async def _replay_counts(self, request: Request):
        if self.config.replay is None:
            return _error(404, "this fake upstream is not in replay mode", "not_found")
        return JSONResponse(self.config.replay.count_summary())

    async def _chat(self, request: Request):
        body = await request.json()
        authorization = request.headers.get("authorization")
        self.received.append(body)
        self.authorizations.append(authorization)
        config = self.config
        if config.api_key is not None and authorization != f"Bearer {config.api_key}":
            # Like some providers, the message quotes the key it was given.
            given = (authorization or "").removeprefix("Bearer ")
            return _error(401, f"Incorrect API key provided: {given}.", "invalid_api_key")
        failure = self._next_failure()
        if failure == "timeout":
            await asyncio.sleep(config.hang_s)
        elif failure is not None and failure.isdigit():
            headers = ({"retry-after": f"{config.retry_after_s:g}"}
                       if config.retry_after_s is not None and failure in ("429", "503") else None)
            return _error(int(failure), f"injected failure {failure}", "injected", headers)
        if config.latency_s:
            await asyncio.sleep(config.latency_s)
        words = [f"w{i}" for i in range(config.reply_words)]
        prompt_tokens = sum(len(_text(m).split()) for m in body.get("messages", []))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                 "total_tokens": prompt_tokens + len(words)}
        content = f"{config.model} says: " + " ".join(words)
        if config.reply is not None:
            content, words = config.reply, config.reply.split()
            usage["completion_tokens"] = len(words)
            usage["total_tokens"] = prompt_tokens + len(words)
        if config.replay is not None:
            users = [_text(m) for m in body.get("messages", []) if isinstance(m, dict) and m.get("role") == "user"]
            asked = users[-1] if users else ""
            graded = replay_grade(config.replay, asked) if config.replay_judge else None
            if graded is not None:
                content, usage = graded
                words = content.split()
            else:
                recorded = config.replay.lookup(asked, body.get("model"))
                if recorded is None:
                    return _error(404, f"the replay record has no answer of {body.get('model')!r} to this prompt",
                                  "not_recorded")
                content, words = recorded.text, recorded.text.split()
                usage = {"prompt_tokens": recorded.input_tokens, "completion_tokens": recorded.output_tokens}
            usage["total_tokens"] = (usage["prompt_tokens"] or 0) + (usage["completion_tokens"] or 0)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        if failure == "drop" or (failure == "midstream" and not body.get("stream")):
            return StreamingResponse(_dropping([]), media_type="text/event-stream")
        if not body.get("stream"):
            return JSONResponse({
                "id": completion_id, "object": "chat.completion", "created": created, "model": body.get("model"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                **({"usage": usage} if config.send_usage else {}),
            })
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = [_chunk(completion_id, created, body.get("model"), {"role": "assistant", "content": ""})]
        step = max(1, config.chunk_words)
        for start in range(0, len(words), step):
            chunks.append(_chunk(completion_id, created, body.get("model"),
                                 {"content": " ".join(words[start:start + step]) + " "}))
        chunks.append(_chunk(completion_id, created, body.get("model"), {}, finish_reason="stop"))
        if include_usage:
            chunks.append({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                           "model": body.get("model"), "choices": [], "usage": usage})
        if failure == "midstream":
            return StreamingResponse(_dropping([f"data: {json.dumps(c)}\n\n".encode() for c in chunks[:2]]),
                                     media_type="text/event-stream")
        delay = 0.0
        if config.tokens_per_s:  # the answer's tokens arrive at tokens_per_s, spread over its chunks after the first
            content_chunks = max(1, -(-len(words) // step))
            delay = (usage["completion_tokens"] or len(words)) / config.tokens_per_s / content_chunks
        return EventSourceResponse(_events(chunks, delay), sep="\n", ping=600)


def _text(message) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _chunk(completion_id, created, model, delta, finish_reason=None) -> dict:
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


async def _events(chunks, delay_s: float = 0.0):
    for index, chunk in enumerate(chunks):
        if delay_s and 1 < index < len(chunks) - 1:  # the content chunks after the first arrive at the decode speed
            await asyncio.sleep(delay_s)
        yield {"data": json.dumps(chunk)}
    yield {"data": "[DONE]"}


async def _dropping(frames: list[bytes]):
    """Send `frames`, then fail: uvicorn aborts the response, the client sees a broken connection."""
    for frame in frames:
        yield frame
    await asyncio.sleep(0.01)
    raise ConnectionAbortedError("injected connection drop")


def _error(status: int, message: str, code: str, headers: dict | None = None) -> JSONResponse:
    kind = "rate_limit_error" if status == 429 else ("server_error" if status >= 500 else "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=status,
                        headers=headers)


def main(argv=None) -> int:
    """`python -m carrot_hub.serving.fake_upstream --port 0 --latency-ms 50`: serve a fake on loopback
    until interrupted; prints `fake upstream on http://127.0.0.1:PORT/v1` once listening."""
    import argparse
    import signal

    from .local_server import LocalServer

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--reply-words", type=int, default=8)
    parser.add_argument("--reply", help="answer with this text instead of numbered words (e.g. 'Score: 7')")
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--failure", choices=FAILURE_KINDS, default="500")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replay", metavar="TABLE",
                        help="replay mode: answer from this SPROUT-layout table's record (e.g. zeroeval-2024)")
    parser.add_argument("--responses", metavar="PATH",
                        help="the recorded answers (parquet file or folder; default: TABLE/responses)")
    parser.add_argument("--replay-judge", action="store_true",
                        help="with --replay: grade judge rubric requests with the recorded scores (Score: 10 / 0)")
    args = parser.parse_args(argv)
    if args.replay_judge and not args.replay:
        parser.error("--replay-judge grades from a record: give --replay TABLE too.")
    replay = None
    if args.replay:
        from .replay_record import ReplayRecord

        replay = ReplayRecord.from_files(args.replay, args.responses)
    fake = FakeUpstream(FakeUpstreamConfig(model=args.model, latency_s=args.latency_ms / 1000,
                                           reply_words=args.reply_words, failure_rate=args.failure_rate,
                                           failure=args.failure, seed=args.seed, replay=replay,
                                           replay_judge=args.replay_judge, reply=args.reply))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with LocalServer(fake.app, port=args.port, backlog=4096, timeout_keep_alive=75) as server:
        print(f"fake upstream on {server.base_url}", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
