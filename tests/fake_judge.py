"""A fake LLM judge on loopback for the exploration tests (`carrot serve --explore`, `carrot logs judge`):
it answers the collect rubric with a fixed "Score: N" and remembers what it was asked."""

from __future__ import annotations

import asyncio
import threading
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


class FakeJudge:
    """Grades every answer: "Score: 3" when the answer is small-model's, else "Score: 8"; or `reply` as given."""

    def __init__(self, reply: str | None = None):
        self.reply, self.asked = reply, []
        self.hold: threading.Event | None = None  # set: grading requests wait for it (at most 20 s)
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request):
        body = await request.json()
        text = body["messages"][-1]["content"]
        self.asked.append(text)
        end = time.monotonic() + 20
        while self.hold is not None and "Score:" in text and not self.hold.is_set() and time.monotonic() < end:
            await asyncio.sleep(0.01)
        reply = self.reply if self.reply is not None else (
            "Weak answer.\nScore: 3" if "small-model-upstream-id says" in text else "Fine.\nScore: 8")
        return JSONResponse({"id": "j", "object": "chat.completion", "model": "judge",
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 100, "completion_tokens": 10}})
