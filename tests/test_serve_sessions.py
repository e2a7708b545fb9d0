"""The session policy and its bounded store (unit level; the gateway's behaviour is in test_serve_gateway_sessions)."""

import pytest

from carrot_hub.serving.sessions import (
    MAX_SESSION_ID_CHARS,
    SessionIdError,
    SessionState,
    SessionStore,
    check_session_policy,
    choose_for_session,
    session_id,
)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_session_id_prefers_the_body_then_the_header_then_user():
    assert session_id("h", "c", "u") == "c"
    assert session_id("h", None, "u") == "h"
    assert session_id(None, None, "u") == "u"
    assert session_id(None, "", None) is None


def test_session_id_over_256_characters_or_not_a_string_is_refused():
    assert session_id("x" * MAX_SESSION_ID_CHARS, None, None) == "x" * MAX_SESSION_ID_CHARS
    with pytest.raises(SessionIdError, match="257 characters"):
        session_id("x" * (MAX_SESSION_ID_CHARS + 1), None, None)
    with pytest.raises(SessionIdError, match="carrot.session must be a string"):
        session_id(None, 12, None)


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="sticky"):
        check_session_policy("stiky")


def test_store_is_bounded_least_recently_used_first():
    store = SessionStore(max_sessions=2, ttl_s=10)
    store.put("a", SessionState("m1", 0.5, 1))
    store.put("b", SessionState("m2", 0.5, 1))
    assert store.get("a") is not None  # "a" is now the most recently used
    store.put("c", SessionState("m3", 0.5, 1))
    assert store.get("b") is None and store.get("a").model == "m1" and store.get("c").model == "m3"
    assert len(store) == 2


def test_store_forgets_after_its_ttl():
    clock = Clock()
    store = SessionStore(max_sessions=10, ttl_s=5, clock=clock)
    store.put("a", SessionState("m1", 0.5, 1))
    clock.now = 4.9
    assert store.get("a").model == "m1"
    clock.now = 5.1
    assert store.get("a") is None and len(store) == 0


def test_sticky_keeps_the_model_unless_it_is_no_longer_eligible():
    state = SessionState("big", 0.9, 1)
    quality = {"big": 0.9, "small": 0.8}
    kept = choose_for_session("sticky", state, "small", quality, eligible=lambda m: True)
    assert (kept.model, kept.switched, kept.kept) == ("big", False, True)
    moved = choose_for_session("sticky", state, "small", quality, eligible=lambda m: m != "big")
    assert (moved.model, moved.switched) == ("small", True)


def test_upgrade_only_moves_up_never_down():
    state = SessionState("mid", 0.7, 1)
    up = choose_for_session("upgrade-only", state, "big", {"big": 0.9, "mid": 0.7}, eligible=lambda m: True)
    assert (up.model, up.switched) == ("big", True)
    down = choose_for_session("upgrade-only", state, "small", {"small": 0.6, "mid": 0.7}, eligible=lambda m: True)
    assert (down.model, down.switched, down.kept) == ("mid", False, True)


def test_off_and_first_turns_take_the_fresh_choice():
    fresh = choose_for_session("off", SessionState("big", 0.9, 3), "small", {}, eligible=lambda m: True)
    first = choose_for_session("sticky", None, "small", {}, eligible=lambda m: True)
    assert fresh.model == first.model == "small" and not fresh.switched and not first.switched
