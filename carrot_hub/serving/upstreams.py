"""The LLMs behind the gateway: the upstreams file, and calls to OpenAI-compatible endpoints.

The upstreams file (YAML or JSON) maps each candidate name a client may call to an endpoint:

    gpt-4-1106-preview:
      base_url: https://api.openai.com/v1
      model: gpt-4-1106-preview        # the upstream's own model id
      api_key_env: OPENAI_API_KEY      # the variable holding the key (keys never live in the file)
      timeout: 60                      # seconds, optional
      max_concurrency: 32              # open connections to this upstream, optional

It may also be wrapped as `{"upstreams": {...}}`. `api_key_env` may be left out for endpoints that
need no key (a local server). Calls go through one `httpx.AsyncClient` per upstream; a failure that
is the upstream's fault (no connection, timeout, 429, 5xx, or a refused key) raises
`UpstreamFailure` so that the gateway can try the next candidate, while a 4xx caused by the request
itself raises `UpstreamRejected`, returned to the client as is. Key values are scrubbed from every
message and error body that leaves this module.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from httpx_sse import EventSource

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_CONCURRENCY = 64
UPSTREAM_KEYS = ("base_url", "model", "api_key_env", "timeout", "max_concurrency")
# Statuses that say the upstream (or its key) failed, not the request: the next candidate is tried.
FALLBACK_STATUSES = frozenset({401, 403, 404, 408, 409, 429})


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
            content = json.loads(text)
        else:  # YAML is a superset of JSON
            import yaml

            content = yaml.safe_load(text)
    except Exception as error:  # noqa: BLE001  (the parser's own message, one line)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UpstreamConfigError(f"The upstreams file {path} is not valid YAML/JSON: {first}") from None
    return parse_upstreams(content, source=str(path))


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
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise UpstreamConfigError(f"{where}: base_url must be an http(s) URL, got {base_url!r}.")
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
        specs[name] = UpstreamSpec(name, base_url.rstrip("/"), model, key_env, float(timeout), limit)
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


class UpstreamFailure(Exception):
    """The upstream failed (connection, timeout, 429, 5xx, refused key): try the next candidate."""

    def __init__(self, name: str, reason: str, status: int | None = None, body: bytes = b""):
        super().__init__(f"{name}: {reason}")
        self.name, self.reason, self.status, self.body = name, reason, status, body


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
        self._api_key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=spec.base_url + "/",
            headers=headers,
            # connect/read/write per the file; waiting for a free connection is bounded the same way.
            timeout=httpx.Timeout(spec.timeout),
            limits=httpx.Limits(max_connections=spec.max_concurrency, max_keepalive_connections=spec.max_concurrency),
            transport=transport,
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

    def _raise_for_status(self, response: httpx.Response, body: bytes) -> None:
        status = response.status_code
        if status < 400:
            return
        body = self._redact_bytes(body)
        if status >= 500 or status in FALLBACK_STATUSES:
            detail = _error_message(body)
            raise UpstreamFailure(self.name, f"HTTP {status}" + (f" ({detail})" if detail else ""), status, body)
        raise UpstreamRejected(self.name, status, body, response.headers.get("content-type", "application/json"))

    def _failure(self, error: Exception) -> UpstreamFailure:
        kind = "timeout" if isinstance(error, httpx.TimeoutException) else "connection error"
        # httpx messages name the URL, never the Authorization header; redact all the same.
        detail = self.redact(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
        return UpstreamFailure(self.name, f"{kind} ({detail})")

    async def complete(self, payload: dict) -> dict:
        """A non-streamed chat completion: the upstream's JSON answer."""
        try:
            response = await self._client.post("chat/completions", json=self._body(payload))
        except httpx.HTTPError as error:
            raise self._failure(error) from None
        self._raise_for_status(response, response.content)
        try:
            answer = response.json()
        except ValueError:
            raise UpstreamFailure(self.name, "answered with a body that is not JSON", response.status_code) from None
        if not isinstance(answer, dict):
            raise UpstreamFailure(self.name, "answered with JSON that is not an object", response.status_code)
        return answer

    async def open_stream(self, payload: dict) -> UpstreamStream:
        """
        Start a streamed chat completion and wait for its first SSE event. Any failure up to that
        point raises `UpstreamFailure`/`UpstreamRejected`, when the gateway can still fall back.
        """
        request = self._client.build_request("POST", "chat/completions", json=self._body(payload))
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as error:
            raise self._failure(error) from None
        try:
            if response.status_code >= 400:
                self._raise_for_status(response, await response.aread())
            events = self._data_events(response)
            try:
                first = await anext(events)
            except StopAsyncIteration:
                raise UpstreamFailure(self.name, "closed the stream before sending any event", response.status_code)
        except httpx.HTTPError as error:
            await response.aclose()
            raise self._failure(error) from None
        except BaseException:
            await response.aclose()
            raise
        return UpstreamStream(first, events, response)

    async def _data_events(self, response: httpx.Response) -> AsyncIterator[str]:
        """The `data` of each SSE event (comments and pings are skipped; `[DONE]` included)."""
        async for event in EventSource(response).aiter_sse():
            if event.data:
                yield event.data

    async def aclose(self) -> None:
        await self._client.aclose()


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

    def __contains__(self, name: str) -> bool:
        return name in self.upstreams

    def __getitem__(self, name: str) -> Upstream:
        return self.upstreams[name]

    @property
    def names(self) -> list[str]:
        return list(self.upstreams)

    def redact(self, text: str) -> str:
        """`text` with every upstream key replaced by `***`."""
        for upstream in self.upstreams.values():
            text = upstream.redact(text)
        return text

    async def aclose(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.aclose()
