"""Conversations that stay on one model: the session policy and its bounded in-memory store.

A request names its conversation (see `session_id`); the store remembers, per conversation, the model
that answered its last routed turn and that model's predicted quality then. The policy turns the
router's fresh choice for a new turn into the model the turn is sent to:

- `off`: the fresh choice (each turn is routed on its own, as without sessions);
- `sticky`: the session's model, as long as it is still allowed and within `max_cost` for this
  turn (else the fresh choice, and the session moves); an upstream failure moves it too;
- `upgrade-only`: the fresh choice when its predicted quality for this turn is higher than the
  session model's, else the session's model: a conversation may move up, never down.

Sessions live in memory only: a least-recently-used map with a cap and a time to live, so that a
flood of new session ids costs a bounded amount and nothing survives a restart.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

SESSION_POLICIES = ("off", "sticky", "upgrade-only")
MAX_SESSION_ID_CHARS = 256
DEFAULT_MAX_SESSIONS = 100_000
DEFAULT_SESSION_TTL_S = 3600.0


class SessionIdError(ValueError):
    """A session id the gateway refuses (HTTP 400)."""


def check_session_policy(policy: str) -> str:
    if policy not in SESSION_POLICIES:
        raise ValueError(f"session policy must be one of {', '.join(SESSION_POLICIES)}, got {policy!r}.")
    return policy


def session_id(header: str | None, carrot_field, user_field) -> str | None:
    """
    The conversation a request belongs to: `carrot: {"session": ...}` first, then the
    `x-carrot-session` header, then the OpenAI `user` field.

    The body's own field wins over the header because it is the client's statement about this
    request, while headers are often set once per connection by a proxy; `user` names an end user,
    whose conversations may be many, so it is the weakest signal and used only when nothing else is.
    """
    for value, where in ((carrot_field, "carrot.session"), (header, "the x-carrot-session header"), (user_field, "user")):
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise SessionIdError(f"{where} must be a string, got {type(value).__name__}.")
        if len(value) > MAX_SESSION_ID_CHARS:
            raise SessionIdError(f"{where} is {len(value)} characters long; a session id may have at most "
                                 f"{MAX_SESSION_ID_CHARS}.")
        return value
    return None


@dataclass(frozen=True)
class SessionState:
    """
    What a conversation remembers: the model of its last turn, that model's predicted quality then,
    the turns so far, and `context_tokens`: the conversation's tokens that model has processed (its
    last input and answer), which its upstream may hold in a prompt cache.
    """

    model: str
    quality: float
    turns: int
    context_tokens: int = 0


@dataclass(frozen=True)
class SessionChoice:
    """The model a turn goes to, and whether that moved the conversation off its model."""

    model: str
    switched: bool
    kept: bool  # True when the policy overrode the router's fresh choice to keep the session's model


class SessionStore:
    """A thread-safe LRU map `session id → SessionState`, at most `max_sessions` entries, each living `ttl_s`."""

    def __init__(self, max_sessions: int = DEFAULT_MAX_SESSIONS, ttl_s: float = DEFAULT_SESSION_TTL_S,
                 clock: Callable[[], float] = time.monotonic):
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be ≥ 1, got {max_sessions}.")
        if not ttl_s > 0:
            raise ValueError(f"the session TTL must be > 0 seconds, got {ttl_s}.")
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, SessionState]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> SessionState | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            stamp, state = entry
            if self._clock() - stamp > self.ttl_s:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return state

    def put(self, key: str, state: SessionState) -> None:
        with self._lock:
            self._entries[key] = (self._clock(), state)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_sessions:
                self._entries.popitem(last=False)

    def forget(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)


def choose_for_session(
    policy: str,
    state: SessionState | None,
    fresh_model: str,
    quality: dict[str, float],
    eligible: Callable[[str], bool],
) -> SessionChoice:
    """
    The model a turn goes to under `policy`.

    Args:
        state: the conversation's memory, None for its first routed turn.
        fresh_model: the router's choice for this turn alone.
        quality: this turn's predicted quality per candidate.
        eligible: whether a model may still serve this turn (allowed, callable, within `max_cost`).
    """
    if policy == "off" or state is None:
        return SessionChoice(fresh_model, switched=False, kept=False)
    if not eligible(state.model):
        return SessionChoice(fresh_model, switched=fresh_model != state.model, kept=False)
    if policy == "sticky":
        return SessionChoice(state.model, switched=False, kept=state.model != fresh_model)
    # upgrade-only: move only to a model predicted better for this turn than the session's model.
    if quality.get(fresh_model, float("-inf")) > quality.get(state.model, float("-inf")):
        return SessionChoice(fresh_model, switched=fresh_model != state.model, kept=False)
    return SessionChoice(state.model, switched=False, kept=state.model != fresh_model)
