"""The LLMs behind the gateway: the upstreams file, and calls to OpenAI-compatible endpoints.

The upstreams file (YAML or JSON) maps each candidate name a client may call to an endpoint:

    gpt-4-1106-preview:
      base_url: https://api.openai.com/v1
      model: gpt-4-1106-preview        # the upstream's own model id
      api_key_env: OPENAI_API_KEY      # the variable holding the key (keys never live in the file)
      timeout: 60                      # seconds, optional
      max_concurrency: 32              # open connections to this upstream, optional
      max_response_bytes: 16777216     # a larger answer fails like a broken upstream, optional

It may also be wrapped as `{"upstreams": {...}}`. `api_key_env` may be left out for endpoints that
need no key (a local server). Calls go through one `httpx.AsyncClient` per upstream; a failure that
is the upstream's fault (no connection, timeout, 429, 5xx, or a refused key) raises
`UpstreamFailure` so that the gateway can try the next candidate, while a 4xx caused by the request
itself raises `UpstreamRejected`, returned to the client as is. Key values are scrubbed from every
message and error body that leaves this module.

Callers that would rather wait than fall back (`carrot collect`) use `complete_with_retries`: at most
`max_concurrency` calls in flight per upstream, and transient failures (timeouts, lost connections,
408/409/429/5xx) retried with exponential backoff that honours the upstream's `Retry-After`.

`timeout` bounds each attempt as a whole, not only each read: a plain answer must be complete, and
a stream's first event must arrive, within it (else `UpstreamFailure`, and the gateway falls back);
after that, each next event must follow within it. SSE comments and pings do not count as events,
so an upstream that only keeps the connection warm cannot hold a request.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
import httpx
from httpx_sse import EventSource

from .strict_json import JSONRejected, loads_strict
from .stream_redaction import SplitKeyGuard

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_CONCURRENCY = 64
# An answer (plain, streamed, or an error body) larger than this fails like a broken upstream: far more
# than any chat answer, and it keeps one huge body from taking the gateway's memory.
DEFAULT_MAX_RESPONSE_BYTES = 16 * 2**20
UPSTREAM_KEYS = ("base_url", "model", "api_key_env", "timeout", "max_concurrency", "max_response_bytes")
# Statuses that say the upstream (or its key) failed, not the request: the next candidate is tried.
FALLBACK_STATUSES = frozenset({401, 403, 404, 408, 409, 429})
# Bodies whose messages hold more text than this are encoded on a worker thread (a 4 MB prompt took
# ~80 ms of the event loop, every other request waiting).
LARGE_BODY_CHARS = 256 * 1024
JSON_HEADERS = {"content-type": "application/json"}
# Of those failures, the ones worth asking the same upstream again (a refused key or unknown model is not).
RETRY_STATUSES = frozenset({408, 409, 429})


class UpstreamConfigError(ValueError):
    """The upstreams file is unreadable or wrong (one line; `carrot serve` exits with code 2)."""


@dataclass(frozen=True)
class UpstreamSpec:
    """One candidate's endpoint, as the upstreams file gives it."""

    name: str
    base_url: str
    model: str
    api_key_env: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES


def read_upstreams_file(path: str | os.PathLike) -> dict[str, UpstreamSpec]:
    """Parse and check an upstreams file (YAML or JSON) into `{candidate name: UpstreamSpec}`."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise UpstreamConfigError(f"Cannot read the upstreams file {path}: {reason}.") from None
    try:
        if path.suffix.lower() == ".json":
            content = json.loads(text, object_pairs_hook=_mapping_without_duplicates)
        else:  # YAML is a superset of JSON
            content = _load_yaml_without_duplicates(text)
    except DuplicateKeyError as error:
        raise UpstreamConfigError(f"The upstreams file {path} {error}") from None
    except Exception as error:  # noqa: BLE001  (the parser's own message, one line)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UpstreamConfigError(f"The upstreams file {path} is not valid YAML/JSON: {first}") from None
    return parse_upstreams(content, source=str(path))


class DuplicateKeyError(ValueError):
    """A mapping in the upstreams file names one key twice (a parser would silently keep the last)."""


def _mapping_without_duplicates(pairs) -> dict:
    mapping = {}
    for key, value in pairs:
        if key in mapping:
            raise DuplicateKeyError(f"names {str(key)[:100]!r} twice; keep one entry.")
        mapping[key] = value
    return mapping


def _load_yaml_without_duplicates(text: str):
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise DuplicateKeyError(f"names {str(key)[:100]!r} twice (line {key_node.start_mark.line + 1}); "
                                            "keep one entry.")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return yaml.load(text, Loader=Loader)  # noqa: S506  (a SafeLoader subclass)


def _has_host(url: str) -> bool:
    try:
        return bool(httpx.URL(url).host)
    except Exception:  # noqa: BLE001  (httpx's own InvalidURL and friends)
        return False


def parse_upstreams(content, source: str = "the upstreams") -> dict[str, UpstreamSpec]:
    """Check a parsed upstreams mapping; `UpstreamConfigError` names the first bad entry."""
    if isinstance(content, Mapping) and set(content) == {"upstreams"}:
        content = content["upstreams"]
    if not isinstance(content, Mapping) or not content:
        raise UpstreamConfigError(
            f"{source} must map candidate names to endpoints, e.g. "
            "{name: {base_url: ..., model: ..., api_key_env: ...}}; it names no upstream."
        )
    specs = {}
    for name, entry in content.items():
        where = f"{source}: upstream {name!r}"
        if not isinstance(name, str) or not name.strip():
            raise UpstreamConfigError(f"{source}: candidate names must be non-empty strings, got {name!r}.")
        if not isinstance(entry, Mapping):
            raise UpstreamConfigError(f"{where} must be a mapping with base_url, model and api_key_env.")
        unknown = sorted(set(entry) - set(UPSTREAM_KEYS))
        if unknown:
            raise UpstreamConfigError(f"{where} has unknown keys {unknown}; allowed: {', '.join(UPSTREAM_KEYS)}.")
        base_url = entry.get("base_url")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")) or not _has_host(base_url):
            raise UpstreamConfigError(f"{where}: base_url must be an http(s) URL with a host, such as "
                                      f"https://api.openai.com/v1, got {base_url!r:.200}.")
        model = entry.get("model")
        if not isinstance(model, str) or not model.strip():
            raise UpstreamConfigError(f"{where}: model (the upstream's own model id) must be a non-empty string.")
        key_env = entry.get("api_key_env")
        if key_env is not None and (not isinstance(key_env, str) or not key_env.strip()):
            raise UpstreamConfigError(f"{where}: api_key_env must name an environment variable, got {key_env!r}.")
        timeout = entry.get("timeout", DEFAULT_TIMEOUT_S)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
            raise UpstreamConfigError(f"{where}: timeout must be a positive number of seconds, got {timeout!r}.")
        limit = entry.get("max_concurrency", DEFAULT_MAX_CONCURRENCY)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise UpstreamConfigError(f"{where}: max_concurrency must be a positive integer, got {limit!r}.")
        most = entry.get("max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES)
        if isinstance(most, bool) or not isinstance(most, int) or most < 1024:
            raise UpstreamConfigError(f"{where}: max_response_bytes must be an integer of at least 1024, got {most!r}.")
        specs[name] = UpstreamSpec(name, base_url.rstrip("/"), model, key_env, float(timeout), limit, most)
    return specs


def check_keys(specs: Mapping[str, UpstreamSpec], environ: Mapping[str, str] | None = None) -> None:
    """Raise `UpstreamConfigError` if an upstream's key variable is not set (the message names it, never a value)."""
    environ = os.environ if environ is None else environ
    for name, spec in specs.items():
        if spec.api_key_env is not None and not environ.get(spec.api_key_env):
            raise UpstreamConfigError(
                f"Upstream {name!r} reads its API key from ${spec.api_key_env}, which is not set: "
                f"export {spec.api_key_env}=... before starting the gateway."
            )


def check_candidates(specs: Mapping[str, UpstreamSpec], candidates) -> None:
    """Raise `UpstreamConfigError` if an upstream names a model the router does not know."""
    known = list(candidates)
    for name in specs:
        if name not in known:
            raise UpstreamConfigError(
                f"The upstreams file names {name!r}, which is not a candidate of the router. "
                f"Known candidates: {', '.join(known)}."
            )


class ResponseTooLarge(httpx.ReadError):
    """An upstream's body passed its `max_response_bytes` while being read (an httpx error: handled as one)."""


class _LimitedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, limit: int, request: httpx.Request):
        self.inner, self.limit, self.request = inner, limit, request

    async def __aiter__(self):
        size = 0
        async for chunk in self.inner:
            size += len(chunk)
            if size > self.limit:
                raise ResponseTooLarge(f"more than max_response_bytes = {self.limit} bytes", request=self.request)
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class BoundedBodies(httpx.AsyncBaseTransport):
    """
    A transport whose response bodies stop at `limit` bytes (as sent on the wire): past it, reading
    raises `ResponseTooLarge`, so a huge answer fails like a broken upstream (the gateway falls back,
    or ends a stream with an error event) instead of being held in memory whole.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, limit: int):
        self.inner, self.limit = inner, limit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await response.aclose()
            raise ResponseTooLarge(f"declares {declared} bytes, more than max_response_bytes = {self.limit}",
                                   request=request)
        return httpx.Response(response.status_code, headers=response.headers, extensions=response.extensions,
                              stream=_LimitedStream(response.stream, self.limit, request))

    async def aclose(self) -> None:
        await self.inner.aclose()


class UpstreamFailure(Exception):
    """The upstream failed (connection, timeout, 429, 5xx, refused key): try the next candidate."""

    def __init__(self, name: str, reason: str, status: int | None = None, body: bytes = b"",
                 retry_after: float | None = None):
        super().__init__(f"{name}: {reason}")
        self.name, self.reason, self.status, self.body = name, reason, status, body
        self.retry_after = retry_after  # seconds the upstream asked us to wait (`Retry-After`), if it said
        self.attempts = 1  # calls made before giving up (set by `complete_with_retries`)

    @property
    def transient(self) -> bool:
        """Worth retrying on the same upstream: no answer at all (timeout, connection), 408/409/429 or 5xx."""
        return self.status is None or self.status in RETRY_STATUSES or self.status >= 500


class UpstreamRejected(Exception):
    """A 4xx the request itself caused: returned to the client with the upstream's status and body."""

    def __init__(self, name: str, status: int, body: bytes, content_type: str):
        super().__init__(f"{name}: HTTP {status}")
        self.name, self.status, self.body, self.content_type = name, status, body, content_type


@dataclass
class UpstreamStream:
    """An open streamed answer whose first event has arrived (so no fallback is possible any more)."""

    first_data: str
    events: AsyncIterator[str]
    response: httpx.Response

    async def aclose(self) -> None:
        await self.response.aclose()


class Upstream:
    """One candidate's OpenAI-compatible endpoint, called with its own pooled `httpx.AsyncClient`."""

    def __init__(self, spec: UpstreamSpec, api_key: str | None, transport: httpx.AsyncBaseTransport | None = None):
        self.spec = spec
        self.name = spec.name
        self._slots: asyncio.Semaphore | None = None  # made on first use, inside the caller's event loop
        self._api_key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=spec.max_concurrency, max_keepalive_connections=spec.max_concurrency)
        self._client = httpx.AsyncClient(
            base_url=spec.base_url + "/",
            headers=headers,
            # connect/read/write per the file; waiting for a free connection is bounded the same way.
            timeout=httpx.Timeout(spec.timeout),
            limits=limits,
            transport=BoundedBodies(transport or httpx.AsyncHTTPTransport(limits=limits), spec.max_response_bytes),
        )

    def redact(self, text: str) -> str:
        """`text` with this upstream's key replaced by `***`."""
        if self._api_key and self._api_key in text:
            text = text.replace(self._api_key, "***")
        return text

    def _redact_bytes(self, body: bytes) -> bytes:
        if self._api_key and self._api_key.encode() in body:
            body = body.replace(self._api_key.encode(), b"***")
        return body

    def _body(self, payload: dict) -> dict:
        return {**payload, "model": self.spec.model}

    async def _encoded_body(self, payload: dict) -> bytes:
        """The request body as httpx's `json=` would encode it; a large one on a worker thread, off the event loop."""
        body = self._body(payload)
        if _text_size(payload) > LARGE_BODY_CHARS:
            return await anyio.to_thread.run_sync(_json_bytes, body)
        return _json_bytes(body)

    def _raise_for_status(self, response: httpx.Response, body: bytes) -> None:
        status = response.status_code
        if status < 400:
            return
        body = self._redact_bytes(body)
        if status >= 500 or status in FALLBACK_STATUSES:
            detail = _error_message(body)
            raise UpstreamFailure(self.name, f"HTTP {status}" + (f" ({detail})" if detail else ""), status, body,
                                  retry_after=parse_retry_after(response.headers.get("retry-after")))
        raise UpstreamRejected(self.name, status, body, response.headers.get("content-type", "application/json"))

    def _failure(self, error: Exception) -> UpstreamFailure:
        if isinstance(error, ResponseTooLarge):
            return UpstreamFailure(self.name, f"answer too large ({error})")
        kind = "timeout" if isinstance(error, httpx.TimeoutException) else "connection error"
        # httpx messages name the URL, never the Authorization header; redact all the same.
        detail = self.redact(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
        return UpstreamFailure(self.name, f"{kind} ({detail})")

    def _deadline_passed(self, what: str) -> UpstreamFailure:
        return UpstreamFailure(self.name, f"timeout ({what} within {self.spec.timeout:g} s)")

    async def complete(self, payload: dict) -> dict:
        """A non-streamed chat completion: the upstream's JSON answer."""
        try:
            with anyio.fail_after(self.spec.timeout):
                response = await self._client.post("chat/completions", content=await self._encoded_body(payload),
                                                   headers=JSON_HEADERS)
        except httpx.HTTPError as error:
            raise self._failure(error) from None
        except TimeoutError:
            raise self._deadline_passed("no complete answer") from None
        self._raise_for_status(response, response.content)
        try:
            answer = loads_strict(response.content)
        except JSONRejected as error:
            raise UpstreamFailure(self.name, f"answered with a body the gateway cannot relay ({error})",
                                  response.status_code) from None
        if not isinstance(answer, dict):
            raise UpstreamFailure(self.name, "answered with JSON that is not an object", response.status_code)
        return answer

    async def complete_with_retries(self, payload: dict, retries: RetryPolicy | None = None) -> RetriedAnswer:
        """
        `complete`, with at most `max_concurrency` calls of this upstream in flight (the others wait
        their turn, so queued work never times out in the connection pool) and transient failures
        retried per `retries` (backoff sleeps hold no slot). The last failure is raised once retries are
        spent (its `attempts` says how many calls were made); `UpstreamRejected` and non-transient
        failures at once.
        """
        retries = retries or RetryPolicy()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.spec.max_concurrency)
        attempt = 0
        while True:
            async with self._slots:
                started = time.perf_counter()
                try:
                    answer = await self.complete(payload)
                    return RetriedAnswer(answer, time.perf_counter() - started, attempt + 1)
                except UpstreamFailure as failure:
                    failure.attempts = attempt + 1
                    if not failure.transient or attempt >= retries.max_retries:
                        raise
                    delay = retries.delay(attempt, failure.retry_after)
            attempt += 1
            await asyncio.sleep(delay)

    async def open_stream(self, payload: dict) -> UpstreamStream:
        """
        Start a streamed chat completion and wait for its first SSE event. Any failure up to that
        point raises `UpstreamFailure`/`UpstreamRejected`, when the gateway can still fall back.
        """
        request = self._client.build_request("POST", "chat/completions", content=await self._encoded_body(payload),
                                             headers=JSON_HEADERS)
        response = None
        try:
            with anyio.fail_after(self.spec.timeout):
                response = await self._client.send(request, stream=True)
                if response.status_code >= 400:
                    self._raise_for_status(response, await response.aread())
                events = self._data_events(response)
                first = await anext(events, None)
                if first is None:
                    raise UpstreamFailure(self.name, "closed the stream before sending any event", response.status_code)
        except TimeoutError:
            if response is not None:
                await response.aclose()
            raise self._deadline_passed("no first event") from None
        except httpx.HTTPError as error:
            if response is not None:
                await response.aclose()
            raise self._failure(error) from None
        except BaseException:
            if response is not None:
                await response.aclose()
            raise
        return UpstreamStream(first, events, response)

    async def _data_events(self, response: httpx.Response) -> AsyncIterator[str]:
        """
        The `data` of each SSE event (comments and pings are skipped; `[DONE]` included), each within
        `timeout` of the previous one (`UpstreamFailure` otherwise).
        """
        events = EventSource(response).aiter_sse()
        while True:
            try:
                with anyio.fail_after(self.spec.timeout):
                    event = await anext(events, None)
                    while event is not None and not event.data:
                        event = await anext(events, None)
            except TimeoutError:
                raise self._deadline_passed("no event") from None
            if event is None:
                return
            yield event.data

    async def aclose(self) -> None:
        await self._client.aclose()


@dataclass(frozen=True)
class RetryPolicy:
    """
    How `complete_with_retries` waits: attempt n (0-based) sleeps `base_s * 2**n` seconds, at most
    `max_s`, with ±`jitter` of it at random (so that many callers do not retry in step), unless the
    upstream said `Retry-After`, which is honoured (up to `max_retry_after_s`).
    """

    max_retries: int = 5
    base_s: float = 0.5
    max_s: float = 30.0
    jitter: float = 0.25
    max_retry_after_s: float = 120.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after_s)
        delay = min(self.base_s * 2**attempt, self.max_s)
        return delay * (1 + self.jitter * (2 * random.random() - 1))


@dataclass(frozen=True)
class RetriedAnswer:
    """What `complete_with_retries` got: the upstream's JSON answer, the successful call's latency, the calls made."""

    answer: dict
    latency_s: float
    attempts: int


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date), None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            seconds = parsedate_to_datetime(value).timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _json_bytes(value) -> bytes:
    """What httpx sends for `json=value`: compact UTF-8 JSON, NaN refused."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _text_size(payload: dict) -> int:
    """About how many characters of text a chat payload's messages hold (string contents only: cheap)."""
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return 0
    return sum(len(m["content"]) for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str))


def _error_message(body: bytes, limit: int = 200) -> str:
    """The `error.message` of an OpenAI-style error body (cut to `limit` characters), or ''."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return ""
    return " ".join(str(message).split())[:limit]


class UpstreamPool:
    """The gateway's upstreams by candidate name; keys are read from the environment once, here."""

    def __init__(
        self,
        specs: Mapping[str, UpstreamSpec],
        environ: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        environ = os.environ if environ is None else environ
        if not specs:
            raise UpstreamConfigError("No upstream is configured: the gateway would have no model to call.")
        self.upstreams = {
            name: Upstream(spec, environ.get(spec.api_key_env) if spec.api_key_env else None, transport)
            for name, spec in specs.items()
        }
        self._transport = transport

    def apart(self, max_concurrency: int) -> "UpstreamPool":
        """
        The same upstreams (endpoints, keys, timeouts, limits) on connections of their own, at most
        `max_concurrency` per upstream (or its own `max_concurrency` if lower): for calls made beside
        the clients' (judged exploration), which must never hold a connection a client's request waits for.
        """
        keys = {u.spec.api_key_env: u._api_key for u in self.upstreams.values() if u.spec.api_key_env and u._api_key}
        specs = {name: replace(u.spec, max_concurrency=min(u.spec.max_concurrency, max_concurrency))
                 for name, u in self.upstreams.items()}
        return UpstreamPool(specs, environ=keys, transport=self._transport)

    def __contains__(self, name: str) -> bool:
        return name in self.upstreams

    def __getitem__(self, name: str) -> Upstream:
        return self.upstreams[name]

    @property
    def names(self) -> list[str]:
        return list(self.upstreams)

    def split_key_guard(self) -> SplitKeyGuard:
        """A guard for one stream: holds back text that could begin any upstream's key (see `stream_redaction`)."""
        return SplitKeyGuard((upstream._api_key for upstream in self.upstreams.values()), self.redact)

    def redact(self, text: str) -> str:
        """`text` with every upstream key replaced by `***`."""
        for upstream in self.upstreams.values():
            text = upstream.redact(text)
        return text

    def redact_bytes(self, body: bytes) -> bytes:
        """`body` with every upstream key (as UTF-8) replaced by `***`."""
        for upstream in self.upstreams.values():
            body = upstream._redact_bytes(body)
        return body

    async def aclose(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.aclose()
