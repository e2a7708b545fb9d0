"""Reading a client's chat-completion request: what to route, with which options, and the body to
forward. Anything wrong raises `RequestError`, which the app answers in OpenAI's error format."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..modeling_carrot import prompt_has_content
from .strict_json import JSONRejected, loads_strict

VIRTUAL_MODEL = "carrot"
# The body's `carrot` object: the keywords of `router.routing_options`, which checks their values.
CARROT_OPTIONS = ("mu", "max_cost", "allowed", "prices", "ood", "max_latency_s")
# Keys of the `carrot` object that are not routing options.
CARROT_REQUEST_KEYS = ("session", "explore")
ROUTE_ON = ("last-user", "conversation")


class RequestError(Exception):
    """A request the gateway refuses: HTTP `status`, OpenAI error `type`/`code`/`param`."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.status, self.param, self.code, self.type = message, status, param, code, type_

    def to_json(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    """
    A checked request. `pinned` is the candidate named by the client (no routing), else None and
    `options` say how to route `routed_text`: the routing options the client gave (keywords of
    `router.routing_options`, only those given; the router resolves and checks them). `payload` is
    the body to forward: the client's own, without the `carrot` options (each upstream sets `model`
    to its own id).
    """

    payload: dict
    pinned: str | None
    options: dict
    routed_text: str | None
    stream: bool
    client_wants_usage: bool
    session_field: object = None  # carrot.session as given (checked with the header and `user` by the gateway)
    user_field: object = None  # the OpenAI `user` field as given
    explore: bool = True  # False: `carrot.explore: false`, never explored by `carrot serve --explore`


def parse_json_body(raw: bytes) -> dict:
    """The request body as a JSON object that can be forwarded as it is, or `RequestError`."""
    try:
        body = loads_strict(raw)
    except JSONRejected as error:
        raise RequestError(f"The request body is {error}." if str(error).startswith("not valid JSON")
                           else f"The request body cannot be forwarded: {error}.") from None
    if not isinstance(body, dict):
        raise RequestError(f"The request body must be a JSON object, got {type(body).__name__}.")
    return body


def message_text(message: Mapping) -> str:
    """The text of one chat message: its string content, or its text parts joined by newlines."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = [part.get("text") for part in content if isinstance(part, Mapping) and part.get("type") == "text"]
        return "\n".join(p for p in parts if isinstance(p, str))
    return ""


def routed_text(messages: list, route_on: str) -> str | None:
    """
    What the router reads: the last user message (`last-user`), or the whole conversation as
    `role: text` lines (`conversation`; the router keeps a long prompt's end). None if there is no text.
    """
    if route_on == "conversation":
        lines = [f"{m.get('role', 'user')}: {message_text(m)}" for m in messages if prompt_has_content(message_text(m))]
        text = "\n".join(lines)
    else:
        text = next((message_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
    return text or None  # whether the text can be routed is the router's call (`prompt_problem`)


def parse_model(model, callable_names: Sequence[str]) -> tuple[str | None, float | None]:
    """`"carrot"` → (None, None); `"carrot:0.3"` → (None, 0.3); a callable candidate → (name, None)."""
    if not isinstance(model, str) or not model:
        raise RequestError("`model` is required: \"carrot\", \"carrot:<mu>\" or one of the candidates.",
                           param="model", code="model_not_found")
    if model == VIRTUAL_MODEL:
        return None, None
    if model.startswith(VIRTUAL_MODEL + ":"):
        text = model[len(VIRTUAL_MODEL) + 1:]
        try:
            mu = float(text)
        except ValueError:
            raise RequestError(f"model {model!r}: the part after 'carrot:' must be μ, a number in [0, 1] "
                               "(0 = best quality, 1 = cheapest).", param="model") from None
        return None, mu
    if model in callable_names:
        return model, None
    raise RequestError(
        f"The model {model!r} does not exist here. Use \"carrot\" (routed), \"carrot:<mu>\" or one of the "
        f"candidates: {', '.join(callable_names)}.", status=404, param="model", code="model_not_found")


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"carrot.{what} must be a number, got {value!r}.", param=f"carrot.{what}")
    return float(value)


def parse_carrot_options(options, mu_from_model: float | None) -> dict:
    """
    The body's `carrot` object (and the μ of `model: "carrot:<mu>"`) → the routing options given,
    as keywords of `router.routing_options` (their JSON types are checked here, their values there).
    """
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise RequestError("`carrot` must be an object {mu, max_cost, allowed, prices, ood}.", param="carrot")
    unknown = sorted(set(options) - set(CARROT_OPTIONS) - set(CARROT_REQUEST_KEYS))
    if unknown:
        raise RequestError(f"carrot has unknown keys {unknown}; known: {', '.join(CARROT_OPTIONS + CARROT_REQUEST_KEYS)}.",
                           param="carrot")
    mu = mu_from_model
    if options.get("mu") is not None:
        if mu_from_model is not None:
            raise RequestError("μ is given twice (in `model` and in carrot.mu); give it once.", param="carrot.mu")
        mu = _number(options["mu"], "mu")
    max_cost = options.get("max_cost")
    if max_cost is not None:
        max_cost = _number(max_cost, "max_cost")
    allowed = options.get("allowed")
    if allowed is not None:
        if isinstance(allowed, str):
            allowed = [allowed]
        if not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed):
            raise RequestError("carrot.allowed must be a list of candidate names.", param="carrot.allowed")
        allowed = tuple(allowed)
    prices = options.get("prices")
    if prices is not None and not isinstance(prices, Mapping):
        raise RequestError('carrot.prices must be an object {"model": {"input": $/M, "output": $/M}}.',
                           param="carrot.prices")
    ood = options.get("ood")
    if ood is not None and not isinstance(ood, str):
        raise RequestError('carrot.ood must be "predict", "prior" or "model:<candidate>".', param="carrot.ood")
    max_latency_s = options.get("max_latency_s")
    if max_latency_s is not None:
        max_latency_s = _number(max_latency_s, "max_latency_s")
    given = {"mu": mu, "prices": dict(prices) if prices is not None else None, "allowed": allowed,
             "max_cost": max_cost, "ood": ood, "max_latency_s": max_latency_s}
    return {name: value for name, value in given.items() if value is not None}


def parse_chat_request(body: dict, callable_names: Sequence[str], route_on: str) -> ChatRequest:
    """Check a chat-completion body and split it into what to route and what to forward."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("`messages` must be a non-empty list of chat messages.", param="messages")
    if not all(isinstance(m, Mapping) for m in messages):
        raise RequestError("every entry of `messages` must be an object with `role` and `content`.", param="messages")
    pinned, mu_from_model = parse_model(body.get("model"), callable_names)
    options = parse_carrot_options(body.get("carrot"), mu_from_model)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(f"`stream` must be true or false, got {stream!r}.", param="stream")
    text = routed_text(messages, route_on)
    if pinned is None and text is None:
        what = "no user message has text" if route_on == "last-user" else "no message has text"
        raise RequestError(f"Nothing to route: {what}. Add a user message, or name a candidate as `model`.",
                           param="messages")
    payload = {key: value for key, value in body.items() if key != "carrot"}
    client_wants_usage = False
    if stream:
        stream_options = payload.get("stream_options")
        if stream_options is not None and not isinstance(stream_options, Mapping):
            raise RequestError("`stream_options` must be an object.", param="stream_options")
        client_wants_usage = bool((stream_options or {}).get("include_usage"))
        # Usage is asked for in streams too (the outcome log needs it); the client only sees it if it asked.
        payload["stream_options"] = {**(stream_options or {}), "include_usage": True}
    carrot = body.get("carrot") if isinstance(body.get("carrot"), Mapping) else {}
    explore = carrot.get("explore", True)
    if not isinstance(explore, bool):
        raise RequestError(f"carrot.explore must be true or false, got {explore!r}.", param="carrot.explore")
    return ChatRequest(payload, pinned, options, text, stream, client_wants_usage,
                       session_field=carrot.get("session"), user_field=body.get("user"), explore=explore)
