"""
Keys spread over two stream events: `SplitKeyGuard` holds back the end of a streamed text that
could be the start of an upstream key, so that the whole key is seen, and scrubbed, in one piece.

Scrubbing each event on its own misses a key whose characters arrive in the `content` of two
events (`"… sk-ab"`, then `"cd…"`). The guard keeps, per streamed field of each choice, the longest
tail of the text sent so far that is a proper prefix of some key, and sends it with the next piece
of that field (scrubbed again as a whole) or when the choice finishes. The cost is that a tail such
as a lone `s` reaches the client one event later; nothing is ever dropped or reordered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

# Streamed delta fields whose text is concatenated by clients (tool-call arguments are keyed apart).
TEXT_FIELDS = ("content", "reasoning_content", "refusal")


class SplitKeyGuard:
    """Per-(choice, field) hold-back of text that could begin a key; `redact` scrubs whole keys."""

    def __init__(self, keys: Iterable[str], redact: Callable[[str], str]):
        self._keys = tuple(key for key in keys if key)
        self._redact = redact
        self._held: dict[tuple, str] = {}

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def feed(self, slot: tuple, text: str) -> str:
        """The part of `text` (after what `slot` held) that is safe to send now, keys scrubbed."""
        text = self._redact(self._held.pop(slot, "") + text)
        keep = self._key_prefix_length(text)
        if keep:
            self._held[slot] = text[-keep:]
            text = text[:-keep]
        return text

    def flush(self, slot: tuple) -> str:
        """What `slot` still holds (its stream part is over)."""
        return self._held.pop(slot, "")

    def flush_choice(self, index) -> dict[tuple, str]:
        """`{slot: held text}` of every slot of choice `index`, removed from the guard."""
        slots = [slot for slot in self._held if slot[0] == index]
        return {slot: self._held.pop(slot) for slot in slots}

    def flush_all(self) -> dict[tuple, str]:
        held, self._held = self._held, {}
        return held

    def _key_prefix_length(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a key (0: none)."""
        longest = 0
        for key in self._keys:
            for length in range(min(len(text), len(key) - 1), longest, -1):
                if text.endswith(key[:length]):
                    longest = length
                    break
        return longest


def guard_chunk(guard: SplitKeyGuard, chunk: dict) -> None:
    """
    Pass a parsed `chat.completion.chunk`'s streamed text through `guard`, in place: each choice's
    text fields and tool-call arguments lose the tail that could begin a key and gain what was held
    back before; a choice with a `finish_reason` gets everything still held for it.
    """
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", 0)
        delta = choice.get("delta")
        if isinstance(delta, dict):
            for field in TEXT_FIELDS:
                if isinstance(delta.get(field), str):
                    delta[field] = guard.feed((index, field), delta[field])
            for call in delta.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    slot = (index, "tool_calls", call.get("index", 0))
                    function["arguments"] = guard.feed(slot, function["arguments"])
        if choice.get("finish_reason") is not None:
            held = guard.flush_choice(index)
            if held:
                if not isinstance(delta, dict):
                    delta = choice["delta"] = {}
                put_back(delta, held)


def put_back(delta: dict, held: dict[tuple, str]) -> None:
    """Append held text to a choice's `delta` (text fields, and tool-call arguments by tool index)."""
    for slot, text in held.items():
        if slot[1] == "tool_calls":
            calls = delta.setdefault("tool_calls", [])
            call = next((c for c in calls if isinstance(c, dict) and c.get("index", 0) == slot[2]), None)
            if call is None:
                call = {"index": slot[2], "function": {"arguments": ""}}
                calls.append(call)
            function = call.setdefault("function", {})
            function["arguments"] = (function.get("arguments") or "") + text
        else:
            delta[slot[1]] = (delta.get(slot[1]) or "") + text


def leftover_chunk(held: dict[tuple, str], model: str | None, completion_id: str | None) -> dict:
    """A chunk carrying text still held when a stream ended without a `finish_reason` for it."""
    by_choice: dict = {}
    for slot, text in held.items():
        by_choice.setdefault(slot[0], {})[slot] = text
    choices = []
    for index, slots in by_choice.items():
        delta: dict = {}
        put_back(delta, slots)
        choices.append({"index": index, "delta": delta, "finish_reason": None})
    return {"id": completion_id or "", "object": "chat.completion.chunk", "model": model, "choices": choices}
