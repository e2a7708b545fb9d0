"""A minimal OpenAI-compatible server for the local LLM (`local_llm.py`), on loopback only.

    python -m carrot_hub.serving.local_llm_server --port 8001 [--model gemma3] [--fail-first 2]

Endpoints: `POST /v1/chat/completions` (`stream` true or false; with `stream_options.include_usage`
the last chunk carries the usage), `GET /v1/models`, `GET /health`. The model's chat template is
applied; `max_tokens` (or `max_completion_tokens`), `temperature` (0 = greedy), `top_p` and `seed`
are honoured; what this small server cannot do (tools, response formats, stop sequences, n > 1,
logprobs) is refused with a 400 in OpenAI's error format rather than ignored. Requests are answered
one at a time (one model, a few CPU cores). `--fail-first N` answers the first N chat requests with
a 503, so that a gateway's fallback can be shown against a real model.

It exists so that `carrot serve`, its demo (`scripts/serve_demo.sh`) and its end-to-end tests route
to a real LLM without a network or an API key. `transformers serve FOLDER` (transformers 5.24) also
serves the converted folder offline, but it cannot inject failures, and its streams differ from
OpenAI's (usage always rides on the finishing chunk; no `[DONE]`). It is not meant as a production server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import threading
import time
import uuid
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse

from .local_llm import LOCAL_MODELS, LocalLLM, LocalLLMError, ensure_local_llm

HOST = "127.0.0.1"
DEFAULT_MAX_TOKENS = 256  # when a request names none: a 135M model rambles
UNSUPPORTED = ("tools", "functions", "response_format", "stop", "logprobs", "top_logprobs", "audio")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The part of OpenAI's chat-completions body this server acts on; other keys are checked separately."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "server_error" if status >= 500 else ("not_found_error" if status == 404 else "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


class FailureInjector:
    """Answers the first `fail_first` chat requests with a 503 (thread-safe count)."""

    def __init__(self, fail_first: int = 0):
        self.remaining = fail_first
        self.injected = 0
        self._lock = threading.Lock()

    def should_fail(self) -> bool:
        with self._lock:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
            self.injected += 1
            return True


def create_app(llm: LocalLLM, fail_first: int = 0, max_tokens_limit: int = 1024) -> FastAPI:
    """The ASGI app serving `llm` under its `model_id`."""
    app = FastAPI(title=f"{llm.model_id} (local)", docs_url=None, redoc_url=None, openapi_url=None)
    failures = FailureInjector(fail_first)
    created = int(time.time())
    app.state.failures = failures

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, error: RequestValidationError):
        problem = error.errors()[0]
        if problem.get("type") == "json_invalid":
            return openai_error(400, "The request body is not valid JSON.", code="invalid_json")
        where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
        return openai_error(400, f"{where or 'body'}: {problem.get('msg')}", param=where or None)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": llm.model_id}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": llm.model_id, "object": "model", "created": created,
                                            "owned_by": "local"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        if failures.should_fail():
            return openai_error(503, f"Injected failure {failures.injected} of {failures.injected + failures.remaining} "
                                     "(--fail-first).", code="injected_failure")
        if body.model != llm.model_id:
            return openai_error(404, f"The model {body.model!r} does not exist here; this server has {llm.model_id!r}.",
                                param="model", code="model_not_found")
        extra = body.model_extra or {}
        unsupported = [key for key in UNSUPPORTED if extra.get(key) not in (None, False, {"type": "text"})]
        if extra.get("tool_choice") not in (None, "none"):
            unsupported.append("tool_choice")
        if unsupported:
            return openai_error(400, f"This local server does not support {', '.join(unsupported)}.",
                                param=unsupported[0], code="unsupported_parameter")
        max_tokens = body.max_completion_tokens or body.max_tokens or min(DEFAULT_MAX_TOKENS, max_tokens_limit)
        if max_tokens > max_tokens_limit:
            return openai_error(400, f"max_tokens is {max_tokens}; this server allows at most {max_tokens_limit}.",
                                param="max_tokens")
        messages = [{"role": message.role, "content": message.text()} for message in body.messages]
        prompt_tokens = int(llm.prompt_ids(messages).shape[1])
        if prompt_tokens >= llm.max_context:
            return openai_error(400, f"The messages have {prompt_tokens} tokens; the model's context is "
                                     f"{llm.max_context}.", param="messages", code="context_length_exceeded")
        options = {"max_new_tokens": max_tokens, "temperature": body.temperature, "top_p": body.top_p,
                   "seed": body.seed}
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return EventSourceResponse(_stream(llm, messages, options, completion_id, include_usage),
                                       sep="\n", ping=600)
        result = await asyncio.to_thread(llm.generate, messages, **options)
        return {
            "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": llm.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": result.finish_reason, "logprobs": None}],
            "usage": _usage(result),
        }

    return app


def _usage(result) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


async def _stream(llm: LocalLLM, messages, options, completion_id: str, include_usage: bool):
    """SSE events of one streamed completion; generation runs in a thread and stops if the client leaves."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    cancelled = threading.Event()
    end = object()
    created = int(time.time())

    def chunk(delta: dict, finish_reason: str | None = None) -> dict:
        return {"data": json.dumps({
            "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": llm.model_id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        })}

    async def generate():
        try:
            return await asyncio.to_thread(
                llm.generate, messages, **options, cancelled=cancelled,
                on_text=lambda piece: loop.call_soon_threadsafe(pieces.put_nowait, piece),
            )
        finally:  # queued after every piece: to_thread's result is delivered through the same loop
            pieces.put_nowait(end)

    task = asyncio.create_task(generate())
    try:
        yield chunk({"role": "assistant", "content": ""})
        while (piece := await pieces.get()) is not end:
            yield chunk({"content": piece})
        try:
            result = await task
        except Exception as error:  # noqa: BLE001 - the stream has started: report in-band, as OpenAI does
            yield {"data": json.dumps({"error": {"message": f"Generation failed: {error}", "type": "server_error"}})}
            return
        yield chunk({}, finish_reason=result.finish_reason)
        if include_usage:
            yield {"data": json.dumps({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                                       "model": llm.model_id, "choices": [], "usage": _usage(result)})}
        yield {"data": "[DONE]"}
    finally:
        cancelled.set()


def bind_loopback(port: int) -> socket.socket:
    """A socket bound to 127.0.0.1:`port` (0 = a free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as error:
        sock.close()
        raise SystemExit(f"error: cannot listen on {HOST}:{port} ({error.strerror or error}); pick another --port.")
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m carrot_hub.serving.local_llm_server",
        description="Serve a local small LLM (SmolLM2 or Gemma 3) behind an OpenAI-compatible API on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one, printed on start)")
    parser.add_argument("--model", choices=LOCAL_MODELS, default="smollm2",
                        help="which packaged model: smollm2 (SmolLM2-135M-Instruct) or gemma3 (Gemma 3 270M, base)")
    parser.add_argument("--model-dir", help="a converted model folder (default: the --model's GGUF, converted once)")
    parser.add_argument("--model-id", help="the id clients call (default: the GGUF file's name)")
    parser.add_argument("--fail-first", type=int, default=0, metavar="N",
                        help="answer the first N chat requests with a 503 (to show fallback)")
    parser.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: with more, a CPU shared with the gateway and its "
                             "clients slowed generation five-fold in our measurements)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535 or args.fail_first < 0 or args.max_tokens_limit < 1 or args.threads < 1:
        parser.error("--port must be in 0…65535, --fail-first ≥ 0, --max-tokens-limit and --threads ≥ 1")

    import torch
    import uvicorn

    torch.set_num_threads(args.threads)
    sock = bind_loopback(args.port)  # before the slow load: a taken port fails at once
    try:
        folder = args.model_dir or ensure_local_llm(args.model)
        llm = LocalLLM.from_folder(folder, model_id=args.model_id)
    except LocalLLMError as error:
        sock.close()
        print(f"error: {error}", file=sys.stderr)
        return 2
    app = create_app(llm, fail_first=args.fail_first, max_tokens_limit=args.max_tokens_limit)
    port = sock.getsockname()[1]
    print(f"Serving {llm.model_id} on http://{HOST}:{port}/v1", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, lifespan="off"))
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
