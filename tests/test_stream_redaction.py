"""The split-key guard: a key spread over stream events is scrubbed whole, and no other text is lost."""

from carrot_hub.serving.stream_redaction import SplitKeyGuard, guard_chunk, leftover_chunk

KEY = "sk-abcdef123456"


def _redact(text: str) -> str:
    return text.replace(KEY, "***")


def _chunk(content=None, finish_reason=None, arguments=None) -> dict:
    delta = {} if content is None else {"content": content}
    if arguments is not None:
        delta["tool_calls"] = [{"index": 0, "function": {"arguments": arguments}}]
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def test_a_key_in_three_pieces_is_scrubbed_whole():
    guard = SplitKeyGuard([KEY], _redact)
    sent = [guard.feed((0, "content"), piece) for piece in ("key: sk", "-abc", "def123456 done")]
    assert sent == ["key: ", "", "*** done"] and not guard.holding


def test_text_that_only_looks_like_a_key_start_is_sent_late_not_lost():
    guard = SplitKeyGuard([KEY], _redact)
    assert guard.feed((0, "content"), "tasks") == "task"  # "s" could begin the key
    assert guard.feed((0, "content"), "k-free") == "sk-free"
    assert guard.feed((0, "content"), "yes") == "ye" and guard.flush((0, "content")) == "s"


def test_a_finishing_choice_gets_what_was_held_for_it_and_tool_arguments_are_guarded():
    guard = SplitKeyGuard([KEY], _redact)
    first = _chunk("a", arguments='{"k": "sk-ab')
    guard_chunk(guard, first)
    assert first["choices"][0]["delta"] == {"content": "a", "tool_calls": [{"index": 0, "function": {"arguments": '{"k": "'}}]}
    middle = _chunk(arguments='cdef123456"}')
    guard_chunk(guard, middle)
    assert middle["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] == '***"}'
    guard_chunk(guard, _chunk("s"))
    last = _chunk(finish_reason="stop")
    guard_chunk(guard, last)
    assert last["choices"][0]["delta"] == {"content": "s"} and not guard.holding


def test_text_held_at_the_end_of_a_stream_becomes_one_last_chunk():
    guard = SplitKeyGuard([KEY], _redact)
    guard_chunk(guard, _chunk("the end: s"))
    chunk = leftover_chunk(guard.flush_all(), "big-model", "chatcmpl-1")
    assert chunk == {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "big-model",
                     "choices": [{"index": 0, "delta": {"content": "s"}, "finish_reason": None}]}


def test_no_keys_means_nothing_is_held():
    guard = SplitKeyGuard(["", None and ""], _redact)
    assert guard.feed((0, "content"), "sk-abc") == "sk-abc" and not guard.holding
