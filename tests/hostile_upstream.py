"""An OpenAI-compatible upstream that misbehaves in the ways the gateway audit (issue 23) found:
it quotes the key it was sent, ends streams without [DONE], keeps a request alive with SSE
comments only, or answers JSON nested thousands of levels deep. Served on loopback by the tests."""

from __future__ import annotations

import asyncio
import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

BEHAVIOURS = ("quote_key", "quote_key_escaped", "split_key", "split_key_unfinished", "no_done", "cut_short",
              "comments_only", "nested")


def _chunk(content: str | None, finish_reason=None) -> dict:
    delta = {} if content is None else {"content": content}
    return {"id": "chatcmpl-hostile", "object": "chat.completion.chunk", "created": 0, "model": "hostile",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def _frame(chunk) -> bytes:
    return f"data: {json.dumps(chunk) if not isinstance(chunk, str) else chunk}\n\n".encode()


class HostileUpstream:
    """`behaviour` (one of `BEHAVIOURS`) decides every answer; `comment_every_s` paces `comments_only`."""

    def __init__(self, behaviour: str, comment_every_s: float = 0.1, max_comments: int = 600):
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {BEHAVIOURS}, got {behaviour!r}.")
        self.behaviour, self.comment_every_s, self.max_comments = behaviour, comment_every_s, max_comments
        self.requests = 0
        self.app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])

    async def _chat(self, request: Request):
        body = await request.json()
        self.requests += 1
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        stream = bool(body.get("stream"))
        if self.behaviour == "nested":
            nested = "[" * 50_000 + "]" * 50_000
            if stream:
                return StreamingResponse(iter([_frame(nested), _frame("[DONE]")]), media_type="text/event-stream")
            return Response(nested, media_type="application/json")
        if self.behaviour == "comments_only":
            return StreamingResponse(self._comments(), media_type="text/event-stream" if stream else "application/json")
        if self.behaviour.startswith("split_key"):
            return StreamingResponse(self._split_key_stream(key), media_type="text/event-stream")
        quoted = key if self.behaviour == "quote_key" else "".join(f"\\u{ord(c):04x}" for c in key)
        if not stream:
            text = ('{"id":"chatcmpl-hostile","object":"chat.completion","created":0,"model":"hostile",'
                    '"choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":'
                    '"my key is ' + quoted + '"}}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}')
            return Response(text, media_type="application/json")
        return StreamingResponse(self._quoting_stream(key), media_type="text/event-stream")

    async def _quoting_stream(self, key: str):
        first = _frame(_chunk(f"key first: {key}"))
        middle = _frame(_chunk(f" and again: {key} "))
        yield first
        yield _frame(_chunk("some words"))
        # The next event arrives in two TCP writes, split inside the key.
        cut = middle.index(key.encode()) + len(key) // 2
        yield middle[:cut]
        await asyncio.sleep(0.05)
        yield middle[cut:]
        yield _frame({"error": f"{key} in a non-chunk event"})  # JSON, but not a chunk
        yield f"data: not json {key}\n\n".encode()
        if self.behaviour == "cut_short":  # closed mid-answer: no finish_reason, no [DONE]
            return
        yield _frame(_chunk(None, finish_reason="stop"))
        if self.behaviour != "no_done":  # no_done: finished, then closed without the sentinel
            yield _frame("[DONE]")

    async def _split_key_stream(self, key: str):
        """The key spread over the content of three events, then text ending in the key's first letter."""
        for piece in ("my key is ", key[:4], key[4:9], key[9:] + ". And it has ", "s"):
            yield _frame(_chunk(piece))
        if self.behaviour == "split_key":
            yield _frame(_chunk(None, finish_reason="stop"))
        yield _frame("[DONE]")

    async def _comments(self):
        for _ in range(self.max_comments):  # bounded: a minute at most with the defaults
            yield b": still thinking\n\n"
            await asyncio.sleep(self.comment_every_s)
