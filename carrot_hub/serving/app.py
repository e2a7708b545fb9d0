"""The OpenAI-compatible routing gateway: a Starlette app around a CARROT router and its upstreams.

    POST /v1/chat/completions   model "carrot" | "carrot:<mu>" | a candidate; stream true/false
    GET  /v1/models             the virtual "carrot" model and the callable candidates
    POST /v1/feedback           {request_id, score}: a quality label for a served request
    GET  /health, GET /metrics  liveness; Prometheus metrics

A routed request is encoded with its neighbours in time (`RoutingBatcher`, off the event loop),
then sent to the chosen upstream; if that upstream fails before the first byte reaches the client
(connection error, timeout, 429, 5xx), the next candidate by utility that is allowed and within
`max_cost` is tried, up to `max_fallbacks` times. A failure in the middle of a stream ends the
stream with an `error` event: an answer cannot switch models half way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import anyio
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..modeling_carrot import RoutingOptionError, RoutingOptions, prompt_problem
from .batching import RoutedChoice, RoutingBatcher, route_batch
from .exploration import (
    SAMPLING_KEYS,
    Explorer,
    ExploreJob,
    ExploreSettings,
    exploration_audit,
    plain_chat,
    predicted_exploration_cost,
)
from .chat_request import ROUTE_ON, VIRTUAL_MODEL, ChatRequest, RequestError, parse_chat_request, parse_json_body
from .latency import LatencyTracker
from .outcome_log_writer import MAX_ANSWER_CHARS
from .prometheus_metrics import GatewayMetrics
from .sessions import (
    DEFAULT_MAX_SESSIONS,
    DEFAULT_SESSION_TTL_S,
    SessionIdError,
    SessionState,
    SessionStore,
    check_session_policy,
    choose_for_session,
    session_id,
)
from .spend_ledger import SpendLedger
from .strict_json import JSONRejected, loads_strict
from .stream_redaction import SplitKeyGuard, guard_chunk, leftover_chunk
from .upstreams import UpstreamFailure, UpstreamPool, UpstreamRejected

logger = logging.getLogger("carrot_hub.serving")
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_BODY_TIMEOUT_S = 30.0
LARGE_BODY_BYTES = 256 * 1024
DOLLARS_PER_MILLION = 1e6
# Token counts an upstream reports are untrusted: above this (no context window comes close) they are invalid.
MAX_REPORTED_TOKENS = 100_000_000
# The gateway's ids are "carrot-" + 32 hex digits; a longer one is unknown without a lookup (and is not echoed).
MAX_REQUEST_ID_CHARS = 128
MIN_GATEWAY_KEY_CHARS = 16
LATENCY_PROFILE_REFRESH_S = 1.0  # the measured speeds reach routing at most this stale (and requests keep grouping)


def gateway_key_problem(key: str) -> str | None:
    """Why `key` cannot be the gateway's key (a clause naming no character of it), or None when it can."""
    if len(key) < MIN_GATEWAY_KEY_CHARS or not all("!" <= character <= "~" for character in key):
        return (f"must be at least {MIN_GATEWAY_KEY_CHARS} printable ASCII characters without spaces "
                f"(it has {len(key)} characters{'' if key.isascii() and key.isprintable() and ' ' not in key else ', some not allowed'}); "
                "make one with: python -c \"import secrets; print(secrets.token_urlsafe(32))\"")
    return None


@dataclass
class GatewaySettings:
    """
    How the gateway serves. `api_key`: the bearer token clients must send (None: no check; else at
    least 16 printable ASCII characters). `body_timeout_s`: a client must send its whole request
    body within this many seconds (HTTP 408 otherwise).
    """

    route_on: str = "last-user"
    max_fallbacks: int = 2
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    api_key: str | None = None
    route_window_s: float = 0.002
    route_batch_size: int = 64
    feedback_wait_s: float = 0.0  # how long feedback waits for another worker's record (see _record_feedback)
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    session_policy: str = "off"
    max_sessions: int = DEFAULT_MAX_SESSIONS
    session_ttl_s: float = DEFAULT_SESSION_TTL_S

    def __post_init__(self):
        check_session_policy(self.session_policy)
        if self.api_key is not None and gateway_key_problem(self.api_key):
            raise ValueError(f"api_key {gateway_key_problem(self.api_key)}.")
        if not self.body_timeout_s > 0 or self.body_timeout_s == float("inf"):
            raise ValueError(f"body_timeout_s must be a positive number of seconds, got {self.body_timeout_s!r}.")
        if self.route_on not in ROUTE_ON:
            raise ValueError(f"route_on must be one of {ROUTE_ON}, got {self.route_on!r}.")
        if self.max_fallbacks < 0:
            raise ValueError(f"max_fallbacks must be ≥ 0, got {self.max_fallbacks}.")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, got {self.max_body_bytes}.")


@dataclass
class _Served:
    """What happened to one request, for its headers and its outcome-log record."""

    request_id: str
    started: float
    chat: ChatRequest
    choice: RoutedChoice | None
    prices: dict
    model: str | None = None
    fallbacks: list | None = None
    status: str = "ok"
    usage: dict | None = None
    usage_invalid: str | None = None  # why the upstream's usage block was refused, when it was
    ttfb_s: float | None = None
    error: str | None = None
    session: str | None = None
    session_state: SessionState | None = None  # the conversation as it was before this turn
    session_switched: bool = False
    context_tokens: int = 0  # earlier turns' tokens the session's model already processed (its prompt cache)
    answer_parts: list | None = None  # the answer's text, kept only when the request may be explored
    key_guard: SplitKeyGuard | None = None  # a stream's text that could begin a key, held back until it cannot
    completion_id: str | None = None  # the stream's chunk id, for a last chunk of held text
    stream_choices: dict = field(default_factory=dict)  # a stream's choice index -> whether its finish_reason came


def _reliability_headers(choice: RoutedChoice | None) -> dict:
    """
    What the router knew about the prompt: its support in [0, 1], whether it was in distribution
    (`true`/`false`, `unknown` for a router without support statistics) and whether the ood policy
    changed the choice; `none`/`unknown`/`false` for a pinned request (nothing was routed).
    """
    if choice is None:
        return {"x-carrot-support": "none", "x-carrot-in-distribution": "unknown", "x-carrot-ood-applied": "false"}
    return {
        "x-carrot-support": "unknown" if choice.support is None else f"{choice.support:.6g}",
        "x-carrot-in-distribution": {True: "true", False: "false", None: "unknown"}[choice.in_distribution],
        "x-carrot-ood-applied": "true" if choice.ood_applied else "false",
    }


class Gateway:
    """The app's state and handlers; `app` is the Starlette application."""

    def __init__(self, router, upstreams: UpstreamPool, settings: GatewaySettings | None = None,
                 outcome_log=None, learner=None, revision: str | None = None,
                 explore: ExploreSettings | None = None):
        self.router = router
        self.revision = revision  # the router revision in use (a store's revision name or a Hub commit)
        router.carrot_revision = revision
        self.upstreams = upstreams
        self.settings = settings or GatewaySettings()
        self.outcome_log = outcome_log
        self.learner = learner
        self.metrics = GatewayMetrics()
        self.metrics.set_revision(revision)
        self.reloader = None
        self._loop: asyncio.AbstractEventLoop | None = None
        if outcome_log is not None:
            self.metrics.track(self.metrics.log_failing, lambda: float(outcome_log.failing))
        self.candidates = list(router.config.candidate_models)
        unknown = [name for name in upstreams.names if name not in self.candidates]
        if unknown:
            raise ValueError(f"Upstreams {unknown} are not candidates of the router "
                             f"(known: {', '.join(self.candidates)}).")
        self.callable = [name for name in self.candidates if name in upstreams]
        # Candidates without an upstream are never chosen: routing is restricted to these.
        self._all_callable = len(self.callable) == len(self.candidates)
        policy = router.config.ood_policy or "predict"
        if policy.startswith("model:") and policy[len("model:"):] not in self.callable:
            raise ValueError(
                f"The router's ood_policy {policy!r} sends prompts out of distribution to a candidate with no "
                f"upstream here (callable: {', '.join(self.callable)}). Give it an upstream, or set the router's "
                "ood_policy to 'predict', 'prior' or 'model:<a callable candidate>'.")
        self.default_prices = router.config.prices
        self.sessions = SessionStore(self.settings.max_sessions, self.settings.session_ttl_s)
        self.metrics.track(self.metrics.sessions, lambda: float(len(self.sessions)))
        self.latency = LatencyTracker()
        self._latency_profile: tuple[float, dict | None] = (0.0, None)
        # A router with remembered prompts (--learn, carrot learn) also gets the trained rows' distribution measured in
        # the same batch (trained_distribution): exploration samples by it, and /metrics reports its share.
        self.batcher = RoutingBatcher(router, self.settings.route_window_s, self.settings.route_batch_size,
                                      on_batch=self.metrics.observe_batch,
                                      route_fn=functools.partial(route_batch, trained_support=True))
        self._log_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="carrot-outcome-log")
        self._learning = ThreadPoolExecutor(max_workers=1, thread_name_prefix="carrot-learning")
        # Feedback looks requests up here, not on the writer thread: a lookup that reads other shards
        # never holds up the records being written.
        self._feedback_lookup = ThreadPoolExecutor(max_workers=1, thread_name_prefix="carrot-feedback")
        self._pending_records: dict[str, asyncio.Future] = {}
        self.explorer = self._explorer(explore) if explore is not None else None
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._guard(self.chat_completions), methods=["POST"]),
                Route("/v1/models", self._guard(self.list_models), methods=["GET"]),
                Route("/v1/feedback", self._guard(self.feedback), methods=["POST"]),
                Route("/health", self.health, methods=["GET"]),
                Route("/metrics", self._guard(self.prometheus), methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )
        self.app.state.gateway = self

    # ------------------------------------------------------------------------------ plumbing

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        self._loop = asyncio.get_running_loop()
        if self.reloader is not None:
            self.reloader.start()
        refreshing = asyncio.create_task(self._refresh_metrics()) if self.metrics.multiprocess_dir else None
        yield
        if refreshing is not None:
            refreshing.cancel()
        await self.aclose()

    async def _refresh_metrics(self, every_s: float = 1.0) -> None:
        """With --workers: this worker's gauges read from functions (sessions, a failing log) into its metric file."""
        while True:
            self.metrics.refresh()
            await asyncio.sleep(every_s)

    def swap_router(self, router, revision: str | None) -> None:
        """
        Serve `router` (a loaded, checked revision) from now on; callable from any thread. The swap
        runs on the event loop: a batch already on the routing thread keeps the router it was given.
        """
        def swap():
            self.router = router
            self.batcher.router = router
            self.default_prices = router.config.prices
            self.revision = revision
            self.metrics.set_revision(revision)
            self.metrics.reloads.inc()

        if self._loop is None:
            swap()
        else:
            self._loop.call_soon_threadsafe(swap)

    def _explorer(self, explore: ExploreSettings) -> Explorer:
        """The judged-exploration queue: a `ValueError` (one line) when the judge is not an upstream."""
        from ..collect.asking import Asker
        from ..collect.scorers import ScorerSpecError, build_scorer

        if self.outcome_log is None:
            raise ValueError("--explore writes its labels to the outcome log; this gateway keeps none.")
        # Connections of its own (one per worker, two per worker for the judge's parallel grades): an
        # exploration never holds a connection of an upstream's max_concurrency that a client waits for.
        self._explore_upstreams = self.upstreams.apart(2 * explore.workers)
        ask = Asker(self._explore_upstreams, prices=self.default_prices)
        try:
            judge = build_scorer(f"judge:{explore.judge}", ask=ask, candidates=list(self.upstreams.names),
                                 allow_code_execution=False)
        except ScorerSpecError as error:
            raise ValueError(str(error)) from None
        # The caps count the day's spend of every worker and earlier run writing this outcome log.
        ledger = SpendLedger(self.outcome_log.folder)
        return Explorer(explore, ask, judge, self._record_exploration, self.metrics, ledger=ledger)

    async def aclose(self) -> None:
        """Finish pending log writes, then close the upstream clients, the batcher, the learner and the log."""
        if self.reloader is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.reloader.stop)
        if self.explorer is not None:
            await self.explorer.aclose()
            self.explorer.ledger.close()
            await self._explore_upstreams.aclose()
        if self._pending_records:
            await asyncio.gather(*self._pending_records.values(), return_exceptions=True)
        await self.batcher.aclose()
        await self.upstreams.aclose()
        self._log_writer.shutdown(wait=True)
        self._feedback_lookup.shutdown(wait=True)
        self._learning.shutdown(wait=True)
        if self.learner is not None:
            self.learner.close()
        if self.outcome_log is not None:
            self.outcome_log.close()

    def _guard(self, handler):
        """Bearer-token check (when a gateway key is set) and OpenAI-format errors around a handler."""

        async def guarded(request: Request):
            try:
                self._check_key(request)
                return await handler(request)
            except RequestError as error:
                self.metrics.rejected.labels(str(error.status)).inc()
                return JSONResponse(error.to_json(), status_code=error.status)
            except Exception as error:  # noqa: BLE001  (a bug: still an OpenAI-format answer, counted and logged)
                logger.error("internal error on %s: %s", request.url.path,
                             self.upstreams.redact(f"{type(error).__name__}: {str(error)[:200]}"))
                self.metrics.rejected.labels("500").inc()
                failure = RequestError(f"The gateway failed on this request ({type(error).__name__}); it was logged.",
                                       status=500, code="internal_error", type_="server_error")
                return JSONResponse(failure.to_json(), status_code=500)

        return guarded

    def _check_key(self, request: Request) -> None:
        expected = self.settings.api_key
        if expected is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise RequestError("Missing or wrong gateway key: send `Authorization: Bearer $CARROT_API_KEY`.",
                               status=401, code="invalid_api_key")

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        too_large = RequestError(f"The request body is larger than the gateway's limit of {limit} bytes.",
                                 status=413, code="request_too_large")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        try:
            with anyio.fail_after(self.settings.body_timeout_s):  # a client trickling its body holds no slot forever
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise too_large
                    chunks.append(chunk)
        except ClientDisconnect:
            raise RequestError("The client disconnected while sending the request.") from None
        except TimeoutError:
            raise RequestError(f"The request body did not arrive within {self.settings.body_timeout_s:g} s.",
                               status=408, code="request_timeout") from None
        return b"".join(chunks)

    # ------------------------------------------------------------------------------ endpoints

    async def health(self, request: Request):
        """200 while the gateway answers; `degraded` (still 200) while the outcome log cannot be written."""
        body = {"status": "ok", "candidates": self.callable, "revision": self.revision}
        if self.outcome_log is not None:
            body["outcome_log"] = self.outcome_log.health()
            if self.outcome_log.failing:
                body["status"] = "degraded"
        return JSONResponse(body)

    async def prometheus(self, request: Request):
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    async def list_models(self, request: Request):
        created = 0
        data = [{"id": VIRTUAL_MODEL, "object": "model", "created": created, "owned_by": "carrot_hub",
                 "description": "routed by CARROT with the router's default mu; 'carrot:<mu>' sets mu in [0, 1]",
                 "default_mu": self.router.config.default_mu}]
        for name in self.callable:
            data.append({"id": name, "object": "model", "created": created, "owned_by": "carrot_hub-upstream"})
        return JSONResponse({"object": "list", "data": data})

    async def feedback(self, request: Request):
        body = parse_json_body(await self._read_body(request))
        request_id, score = body.get("request_id"), body.get("score")
        if not isinstance(request_id, str) or not request_id:
            raise RequestError("`request_id` must be the x-carrot-request-id of a served request.", param="request_id")
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            raise RequestError(f"`request_id` is {len(request_id)} characters long; the ids this gateway gives "
                               "(x-carrot-request-id) are short.", status=404, param="request_id",
                               code="unknown_request_id")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
            raise RequestError(f"`score` must be a number in [0, 1], got {score!r}.", param="score")
        if self.outcome_log is None:
            raise RequestError("This gateway keeps no outcome log, so it cannot take feedback.", status=503)
        pending = self._pending_records.get(request_id)
        if pending is not None:  # the record may still be on its way to disk
            await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        try:
            record = await self._record_feedback(request_id, float(score))
        except OSError as error:  # a full disk: the label was not written
            self.metrics.records_lost.inc()
            raise RequestError(f"The outcome log cannot be written ({error.strerror or type(error).__name__}); "
                               "the label was not recorded. Retry later.", status=503, code="outcome_log_unavailable",
                               type_="server_error") from None
        except KeyError:  # the log's own message names its folder: not for clients
            raise RequestError(f"No served request has the id {request_id!r}: send the x-carrot-request-id of a "
                               "response this gateway gave.", status=404, param="request_id",
                               code="unknown_request_id") from None
        except ValueError as error:  # e.g. the request was not answered: nothing to score
            raise RequestError(str(error), param="request_id") from None
        answer = {"request_id": request_id, "score": float(score), "status": "recorded"}
        if self.learner is not None:
            # Off the event loop (it encodes the prompt); the router's memory is swapped under its own lock.
            try:
                await loop.run_in_executor(self._learning, self.learner.on_feedback, request_id, float(score), record)
            except Exception as error:  # noqa: BLE001  (the label is written: a 500 would tell the client to resend it)
                logger.warning("feedback for %s was recorded but not learned: %s", request_id, error)
                answer["learned"] = False
        return JSONResponse(answer)

    async def _record_feedback(self, request_id: str, score: float) -> dict:
        """
        `outcome_log.feedback` off the event loop. With several workers the request may have been
        served by another one whose record is still on its way to the shared folder: an unknown id
        is looked up again for up to `settings.feedback_wait_s`.
        """
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.settings.feedback_wait_s
        while True:
            try:
                return await loop.run_in_executor(self._feedback_lookup, self.outcome_log.feedback, request_id, score)
            except KeyError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.05)

    async def chat_completions(self, request: Request):
        started = time.perf_counter()
        raw = await self._read_body(request)
        if len(raw) > LARGE_BODY_BYTES:  # parsing megabytes holds the loop for tens of ms: a worker thread does it
            chat = await anyio.to_thread.run_sync(self._read_chat, raw)
        else:
            chat = self._read_chat(raw)
        request_id = f"carrot-{uuid.uuid4().hex}"
        choice, prices = None, self.default_prices
        try:
            session = session_id(request.headers.get("x-carrot-session"), chat.session_field, chat.user_field)
        except SessionIdError as error:
            raise RequestError(str(error), param="carrot.session") from None
        state = self.sessions.get(session) if session and self.settings.session_policy != "off" else None
        if chat.pinned is None:
            options = self._routing_options(chat.options)
            problem = prompt_problem(chat.routed_text)  # the router's own rule, before this prompt joins a batch
            if problem is not None:
                raise RequestError(f"The routed text {problem}.", param="messages")
            try:
                choice = await self.batcher.route(chat.routed_text, options)
            except (ValueError, TypeError) as error:
                raise RequestError(str(error), param="carrot") from None
            prices = choice.prices
            self.metrics.routed.labels(choice.chosen.name).inc()
            self.metrics.observe_distribution(choice.in_distribution, choice.trained_in_distribution)
            order = self._session_order(choice, state)[: 1 + self.settings.max_fallbacks]
        else:
            if chat.options:  # a pinned request's options get the same checks; its prices are theirs
                prices = self._checked_options(chat.options).prices
                self._check_pinned_within_options(chat.pinned, chat.options)
            order = [chat.pinned]
        served = _Served(request_id, started, chat, choice, prices, fallbacks=[], session=session, session_state=state,
                         context_tokens=state.context_tokens if state is not None else 0)
        if self._may_explore(served) or self._logs_answers():
            served.answer_parts = []
        if chat.stream:
            return await self._stream(served, order)
        return await self._complete(served, order)

    def _read_chat(self, raw: bytes) -> ChatRequest:
        return parse_chat_request(parse_json_body(raw), self.callable, self.settings.route_on)

    # ------------------------------------------------------------------------------ routing

    def _routing_options(self, requested: dict) -> RoutingOptions:
        """The request's options resolved by the router, the choice restricted to candidates with an upstream."""
        requested = dict(requested)
        allowed = requested.get("allowed")
        if allowed is not None:
            callable_allowed = tuple(name for name in allowed if name in self.upstreams)
            if len(callable_allowed) < len(allowed):
                self._checked_options({"allowed": allowed})  # a name that is no candidate: route()'s own error
            if not callable_allowed:
                raise RequestError(
                    f"carrot.allowed ({', '.join(allowed)}) names no candidate this gateway can call. "
                    f"Callable candidates: {', '.join(self.callable)}.", param="carrot.allowed")
            requested["allowed"] = callable_allowed
        elif not self._all_callable:
            requested["allowed"] = tuple(self.callable)
        return self._checked_options(requested)

    def _session_order(self, choice: RoutedChoice, state: SessionState | None) -> list[str]:
        """The candidates to try, the session policy's model first (the router's ranking when sessions are off)."""
        ranked = [candidate.name for candidate in choice.ranked]
        if state is None:
            return ranked
        eligible = set(ranked)  # allowed, callable, within max_cost and the latency bound for this turn
        kept = choose_for_session(self.settings.session_policy, state, choice.chosen.name,
                                  {c.name: c.quality for c in choice.ranked}, eligible.__contains__)
        return [kept.model, *(name for name in ranked if name != kept.model)]

    def _latency_in_force(self) -> dict | None:
        """The upstreams' measured speeds for routing, refreshed at most every `LATENCY_PROFILE_REFRESH_S`."""
        stamp, profile = self._latency_profile
        now = time.monotonic()
        if now - stamp > LATENCY_PROFILE_REFRESH_S:
            profile = self.latency.profile() or None
            self._latency_profile = (now, profile)
        return profile

    def _checked_options(self, requested: dict) -> RoutingOptions:
        """`router.routing_options(**requested)`; a refused value is a 400 naming `carrot.<option>`."""
        if "latency" not in requested:
            measured = self._latency_in_force()
            if measured:
                requested = {**requested, "latency": measured}
        try:
            return self.router.routing_options(**requested)
        except RoutingOptionError as error:
            raise RequestError(str(error), param=f"carrot.{error.option}") from None

    @staticmethod
    def _check_pinned_within_options(pinned: str, options: dict) -> None:
        """A pinned model must be allowed; `max_cost` needs a routing decision, which a pinned request does not make."""
        allowed = options.get("allowed")
        if allowed is not None and pinned not in allowed:
            raise RequestError(f"model {pinned!r} is not in carrot.allowed ({', '.join(allowed)}): "
                               "name an allowed model, or use model \"carrot\" to route among them.",
                               param="carrot.allowed")
        if options.get("max_cost") is not None:
            raise RequestError(f"carrot.max_cost bounds the routed choice, but model {pinned!r} is pinned, so nothing "
                               "would be chosen within it: drop max_cost, or use model \"carrot\".",
                               param="carrot.max_cost")

    # ------------------------------------------------------------------------------ answers

    def _headers(self, served: _Served) -> dict:
        estimate = served.choice.estimate(served.model) if served.choice and served.model else None
        return {
            "x-carrot-request-id": served.request_id,
            "x-carrot-model": served.model or "",
            "x-carrot-mu": "none" if served.choice is None else f"{served.choice.mu:g}",
            "x-carrot-predicted-quality": "none" if estimate is None else f"{estimate.quality:.6g}",
            "x-carrot-predicted-cost": "none" if estimate is None else f"{self._predicted_cost(served, estimate):.6g}",
            "x-carrot-predicted-latency": "none" if estimate is None or estimate.latency_s is None
            else f"{estimate.latency_s:.6g}",
            "x-carrot-fallbacks": ",".join(served.fallbacks or []),
            **_reliability_headers(served.choice),
        }

    def _failed(self, served: _Served, failure: UpstreamFailure) -> None:
        served.fallbacks.append(failure.name)
        reason = failure.reason.split(" (")[0]
        self.metrics.fallbacks.labels(failure.name, reason).inc()
        logger.warning("upstream %s failed for %s: %s", failure.name, served.request_id,
                       self.upstreams.redact(failure.reason))

    def _all_failed(self, served: _Served, failures: list[UpstreamFailure]) -> JSONResponse:
        served.status = "upstream_error"
        served.model = failures[-1].name if failures else None
        served.fallbacks = served.fallbacks[:-1]  # the last one tried is the record's model
        reasons = "; ".join(f"{f.name}: {f.reason}" for f in failures)
        served.error = self.upstreams.redact(reasons)
        status = failures[-1].status if failures and failures[-1].status in (429, 500, 502, 503, 504) else 502
        if status == 502 and failures and failures[-1].reason.startswith("timeout"):
            status = 504
        error = RequestError(f"Every candidate tried failed ({served.error}).", status=status,
                             code="upstream_failed", type_="upstream_error")
        headers = self._headers(served)
        self._finish(served)
        return JSONResponse(error.to_json(), status_code=status, headers=headers)

    def _rejected(self, served: _Served, rejected: UpstreamRejected) -> Response:
        served.status, served.model = "client_error", rejected.name
        served.error = f"HTTP {rejected.status}"
        headers = self._headers(served)
        self._finish(served)
        return Response(self._scrubbed_body(rejected.body), status_code=rejected.status,
                        media_type=rejected.content_type, headers=headers)

    def _scrubbed_body(self, body: bytes) -> bytes:
        """An upstream's body with the keys scrubbed, also where JSON escapes spelled them (`\\u0073k-…`)."""
        try:
            body = _json_bytes(loads_strict(body))
        except JSONRejected:
            pass
        return self.upstreams.redact_bytes(body)

    async def _first_answer(self, served: _Served, order: list[str], call):
        """
        Fallback: `call(upstream)` on each candidate of `order` until one answers → `(name, answer)`.
        A request the upstream rejects, or every upstream failing, gives `(None, response to send)`.
        """
        failures = []
        for name in order:
            try:
                return name, await call(self.upstreams[name])
            except UpstreamFailure as failure:
                failures.append(failure)
                self._failed(served, failure)
            except UpstreamRejected as rejected:
                return None, self._rejected(served, rejected)
        return None, self._all_failed(served, failures)

    async def _complete(self, served: _Served, order: list[str]) -> Response:
        name, answer = await self._first_answer(served, order, lambda upstream: upstream.complete(served.chat.payload))
        if name is None:
            return answer
        served.model = name
        answer["model"] = name
        served.usage, served.usage_invalid = _usage(answer.get("usage"))
        served.ttfb_s = time.perf_counter() - served.started
        if served.answer_parts is not None:
            served.answer_parts.append(_message_text(answer))
        headers = self._headers(served)
        self._finish(served)
        return Response(self.upstreams.redact_bytes(_json_bytes(answer)), media_type="application/json", headers=headers)

    async def _stream(self, served: _Served, order: list[str]) -> Response:
        name, stream = await self._first_answer(
            served, order, lambda upstream: upstream.open_stream(served.chat.payload)
        )
        if name is None:
            return stream
        served.model = name
        served.key_guard = self.upstreams.split_key_guard()
        return EventSourceResponse(self._relay(served, stream), headers=self._headers(served), sep="\n", ping=15)

    async def _relay(self, served: _Served, stream):
        """Relay the upstream's events with `model` set to the candidate; an error event if it breaks."""
        finished = False
        try:
            data = stream.first_data
            served.ttfb_s = time.perf_counter() - served.started
            while True:
                if data == "[DONE]":
                    finished = True
                    leftover = self._held_text_chunk(served)
                    if leftover is not None:
                        yield {"data": leftover}
                    yield {"data": "[DONE]"}
                    return
                out = self._rewrite_chunk(served, data)
                if out is not None:
                    yield {"data": out}
                data = await anext(stream.events, None)
                if data is None:
                    if not _every_choice_finished(served.stream_choices):  # cut short, however politely
                        raise UpstreamFailure(served.model, "closed the stream before [DONE]")
                    # Every choice gave its finish_reason, then the stream closed without the [DONE]
                    # sentinel (`transformers serve` ends streams so): the answer is whole, so the client's
                    # stream ends as a whole one does.
                    data = "[DONE]"
        except (asyncio.CancelledError, GeneratorExit):
            served.status, served.error = "stream_error", "the client disconnected"
            raise
        except Exception as error:  # noqa: BLE001  (the upstream broke mid-stream)
            served.status = "stream_error"
            served.error = self.upstreams.redact(str(error)[:200] if isinstance(error, UpstreamFailure) else
                                                 f"{type(error).__name__}: {str(error)[:200]}")
            logger.warning("stream from %s broke for %s: %s", served.model, served.request_id, served.error)
            what = error.reason if isinstance(error, UpstreamFailure) else type(error).__name__
            message = (f"The upstream {served.model} failed in the middle of the answer ({self.upstreams.redact(what)}); "
                       "the stream ends here. Retry the request.")
            yield {"data": json.dumps({"error": {"message": message, "type": "upstream_error", "param": None,
                                                 "code": "stream_interrupted"}})}
        finally:
            if not finished and served.status == "ok":
                served.status = "stream_error"
            try:
                self._finish(served)
            finally:  # the upstream connection goes back to its pool whatever happened above
                with anyio.CancelScope(shield=True):  # also when the client left and the task is cancelled
                    await stream.aclose()

    def _rewrite_chunk(self, served: _Served, data: str) -> str | None:
        """An upstream event's data as the client gets it: `model` set, usage as asked, keys scrubbed."""
        try:
            chunk = loads_strict(data)
        except JSONRejected:
            return self.upstreams.redact(data)
        if not isinstance(chunk, dict):
            return self.upstreams.redact(data)
        if "model" in chunk:
            chunk["model"] = served.model
        if served.completion_id is None and isinstance(chunk.get("id"), str):
            served.completion_id = chunk["id"]
        if served.key_guard is not None:
            guard_chunk(served.key_guard, chunk)
        if served.answer_parts is not None:
            served.answer_parts.append(_delta_text(chunk))
        _note_choices(served.stream_choices, chunk)
        if chunk.get("usage"):
            served.usage, served.usage_invalid = _usage(chunk["usage"])
            if not served.chat.client_wants_usage:
                if not chunk.get("choices"):
                    return None  # the usage-only chunk the gateway asked for, not the client
                chunk.pop("usage")
        return self.upstreams.redact(json.dumps(chunk))

    def _held_text_chunk(self, served: _Served) -> str | None:
        """The text the key guard still holds when the stream is done, as one last chunk (None: nothing held)."""
        if served.key_guard is None or not served.key_guard.holding:
            return None
        chunk = leftover_chunk(served.key_guard.flush_all(), served.model, served.completion_id)
        if served.answer_parts is not None:
            served.answer_parts.append(_delta_text(chunk))
        return self.upstreams.redact(json.dumps(chunk))

    # ------------------------------------------------------------------------------ outcome

    def _finish(self, served: _Served) -> None:
        """
        Count the request in the metrics and queue its outcome-log record. Never raises: it runs after
        the upstream answered (and was paid), so a failure here must not cost the client its answer,
        the record, or the upstream connection.
        """
        latency = time.perf_counter() - served.started
        realised = None
        try:
            realised = self._count(served, latency)
        except Exception:  # noqa: BLE001  (metrics are best effort; the record below is not)
            logger.exception("could not count %s in the metrics", served.request_id)
        try:
            self._observe_turn(served, latency)
        except Exception:  # noqa: BLE001  (sessions and speeds are best effort, like metrics)
            logger.exception("could not update the session or speed estimate of %s", served.request_id)
        if self.outcome_log is None:
            return
        try:
            self._queue_record(served, latency, realised)
        except Exception:  # noqa: BLE001
            logger.exception("could not queue the outcome record of %s", served.request_id)
            return
        try:
            self._offer_exploration(served)
        except Exception:  # noqa: BLE001  (exploration is best effort: the client has its answer)
            logger.exception("could not queue the exploration of %s", served.request_id)

    # ------------------------------------------------------------------------------ exploration

    def _may_explore(self, served: _Served) -> bool:
        """Whether this request could be explored once answered: routed, plain chat, not opted out, logged."""
        if self.explorer is None or served.choice is None or not served.chat.explore:
            return False
        if not plain_chat(served.chat.payload):
            return False
        return self.outcome_log.log_prompts or self.explorer.settings.private

    def _logs_answers(self) -> bool:
        """`carrot serve --log-answers`: the outcome log keeps answers (never where it keeps no prompts)."""
        return self.outcome_log is not None and self.outcome_log.log_answers

    def _offer_exploration(self, served: _Served) -> None:
        """After the answer: sample the request, pick the candidate to explore and queue the job."""
        if served.answer_parts is None or served.status != "ok" or not served.model or not self._may_explore(served):
            return
        choice = served.choice
        trained = choice.trained_in_distribution
        if not self.explorer.sampled(choice.in_distribution if trained is None else trained):
            return
        explored = self.explorer.pick(choice.ranked, served.model)
        if explored is None:
            return
        payload = served.chat.payload
        job = ExploreJob(
            request_id=served.request_id, messages=list(payload["messages"]),
            sampling={key: payload[key] for key in SAMPLING_KEYS if key in payload},
            prompt=served.chat.routed_text or "", chosen=served.model, chosen_answer="".join(served.answer_parts),
            explored=explored,
            predicted={c.name: (c.quality, c.cost) for c in choice.ranked if c.name in (served.model, explored)},
        )
        estimate, chosen, usage = choice.estimate(explored), choice.estimate(served.model), served.usage or {}
        chosen_tokens = usage.get("completion_tokens", chosen.output_tokens if chosen else 0.0)
        job.predicted_cost = predicted_exploration_cost(estimate.cost, self.default_prices.get(self.explorer.settings.judge),
                                                        usage.get("prompt_tokens", 0), [chosen_tokens, estimate.output_tokens])
        self.explorer.offer(job)

    async def _record_exploration(self, job: ExploreJob, explored, scores: dict, error: str | None) -> None:
        """
        An exploration's outcome into the outcome log: its audit record, and one `source: "judge"`
        feedback record per scored answer, applied by the learner as user feedback is. An unscored
        answer (a judge that failed or answered without a grade) is recorded with its reason only.
        """
        pending = self._pending_records.get(job.request_id)
        if pending is not None:  # the served record first: feedback looks it up
            await asyncio.shield(pending)
        audit = exploration_audit(job, self.explorer.settings.judge, explored, scores, error, self.upstreams.redact)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._log_writer, self._write_exploration, audit)
        for model, score in scores.items():
            if not score.scored:
                continue
            usage = audit["explored_usage"] if model == job.explored else None
            try:
                record = await loop.run_in_executor(
                    self._feedback_lookup,
                    lambda: self.outcome_log.feedback(job.request_id, score.value, source="judge",
                                                      model=model if model == job.explored else None, usage=usage))
            except (OSError, KeyError, ValueError) as failure:
                self.metrics.records_lost.inc()
                logger.warning("the judge label of %s on %s was not recorded: %s", model, job.request_id, failure)
                continue
            if self.learner is None:
                continue
            labelled = dict(record) if model == job.chosen else {**record, "model": model, "usage": usage}
            try:
                await loop.run_in_executor(self._learning, self.learner.on_feedback, job.request_id, score.value, labelled)
            except Exception as failure:  # noqa: BLE001  (recorded, not learned: serving goes on)
                logger.warning("the judge label of %s on %s was recorded but not learned: %s", model, job.request_id, failure)

    def _write_exploration(self, audit: dict) -> None:
        try:
            self.outcome_log.explored(audit)
        except Exception as error:  # noqa: BLE001  (a full disk: counted, as served records are)
            self.metrics.records_lost.inc()
            logger.error("could not write the exploration record of %s: %s", audit["request_id"], error)

    def _observe_turn(self, served: _Served, latency: float) -> None:
        """After an answer: the upstream's measured speed, and the conversation's model (a switch is counted)."""
        if served.status != "ok" or not served.model:
            return
        if served.usage and served.chat.stream:
            # Only a stream shows both parts: a plain answer's first byte comes with its last token.
            self.latency.observe(served.model, served.ttfb_s, served.usage["completion_tokens"], latency)
            speed = self.latency.estimate(served.model)
            if speed is not None:
                self.metrics.upstream_ttft.labels(served.model).set(speed["ttft_s"])
                self.metrics.upstream_speed.labels(served.model).set(speed["tokens_per_s"])
        if served.session is None or self.settings.session_policy == "off":
            return
        state = served.session_state
        served.session_switched = state is not None and state.model != served.model
        if served.session_switched:
            self.metrics.session_switches.labels(self.settings.session_policy).inc()
        estimate = served.choice.estimate(served.model) if served.choice else None
        quality = estimate.quality if estimate else (state.quality if state else float("nan"))
        # What the model has now processed of the conversation: its whole input and its answer.
        context = served.usage["prompt_tokens"] + served.usage["completion_tokens"] if served.usage else 0
        self.sessions.put(served.session, SessionState(served.model, quality, (state.turns if state else 0) + 1, context))

    def _predicted_cost(self, served: _Served, estimate) -> float:
        """
        The answering model's predicted cost, with the conversation's earlier turns: charged at its
        cached-input price when the turn stays on the model that processed them, else at its input price.
        """
        state = served.session_state
        if state is None or not state.context_tokens or served.model is None:
            return estimate.cost
        price = served.prices.get(served.model) or {}
        per_million = price.get("cached_input", price.get("input", 0.0)) if state.model == served.model else price.get("input", 0.0)
        return estimate.cost + state.context_tokens * per_million / DOLLARS_PER_MILLION

    def _count(self, served: _Served, latency: float) -> float | None:
        """The request in the metrics; returns its realised cost (None when unknown)."""
        model = served.model or "none"
        stream = "true" if served.chat.stream else "false"
        self.metrics.requests.labels(model, served.status).inc()
        self.metrics.latency.labels(stream).observe(latency)
        if served.ttfb_s is not None:
            self.metrics.ttfb.labels(stream).observe(served.ttfb_s)
        if served.usage_invalid:
            self.metrics.invalid_usage.labels(model).inc()
        realised = _realised_cost(served.usage, served.prices.get(served.model)) if served.model else None
        if realised is not None:
            self.metrics.spend.labels(model).inc(realised)
            if self.explorer is not None:  # --explore-max-share is a share of this spend
                self.explorer.served(realised)
        if served.usage:
            self.metrics.tokens.labels(model, "prompt").inc(served.usage["prompt_tokens"])
            self.metrics.tokens.labels(model, "completion").inc(served.usage["completion_tokens"])
        return realised

    def _queue_record(self, served: _Served, latency: float, realised: float | None) -> None:
        """Queue the outcome-log record of `served` on the writer thread (feedback waits for it)."""
        estimate = served.choice.estimate(served.model) if served.choice and served.model else None
        record = {
            "request_id": served.request_id,
            "time": time.time(),
            "prompt": self.upstreams.redact(served.chat.routed_text) if served.chat.routed_text else None,
            "model": served.model,
            "mu": served.choice.mu if served.choice else None,
            "in_distribution": served.choice.in_distribution if served.choice else None,
            "predicted_quality": estimate.quality if estimate else None,
            "predicted_output_tokens": estimate.output_tokens if estimate else None,
            "predicted_cost": self._predicted_cost(served, estimate) if estimate else None,
            "predicted_latency_s": estimate.latency_s if estimate else None,
            "support": served.choice.support if served.choice else None,
            "ood_policy": served.choice.ood_policy if served.choice else None,
            "ood_applied": served.choice.ood_applied if served.choice else False,
            "usage": served.usage,
            "realised_cost": realised,
            "latency_s": latency,
            "ttfb_s": served.ttfb_s,
            "fallbacks": list(served.fallbacks or []),
            "status": served.status,
            "route_on": self.settings.route_on,
            "revision": served.choice.revision if served.choice is not None else self.revision,
            "pinned": served.chat.pinned is not None,
            "stream": served.chat.stream,
        }
        if served.error:
            record["error"] = served.error
        if served.answer_parts is not None and served.status == "ok" and self._logs_answers():
            record.update(self._logged_answer(served))
        if served.usage_invalid:
            record["usage_invalid"] = served.usage_invalid
        if served.session is not None and self.settings.session_policy != "off":
            record["session_policy"] = self.settings.session_policy
            record["session_switched"] = served.session_switched
            record["session_turn"] = (served.session_state.turns if served.session_state else 0) + 1
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._log_writer, self._write_record, record)
        self._pending_records[served.request_id] = future
        future.add_done_callback(lambda _: self._pending_records.pop(served.request_id, None))

    def _logged_answer(self, served: _Served) -> dict:
        """
        `answer` (the assembled text, streamed or not, keys scrubbed, at most `MAX_ANSWER_CHARS`),
        `answer_truncated` when cut, and `plain_chat` (whether a judge can grade it as text).
        Cut before scrubbing with a margin longer than any key, so a huge answer costs no more.
        """
        text = "".join(served.answer_parts)
        cut = len(text) > MAX_ANSWER_CHARS
        answer = self.upstreams.redact(text[: MAX_ANSWER_CHARS + 1024] if cut else text)
        logged = {"answer": answer[:MAX_ANSWER_CHARS], "plain_chat": plain_chat(served.chat.payload)}
        if cut or len(answer) > MAX_ANSWER_CHARS:
            logged["answer_truncated"] = True
        return logged

    def _write_record(self, record: dict) -> None:
        """On the writer thread. A record that cannot be written (a full disk) is counted and logged, and
        serving goes on: the client already has its answer, and refusing traffic would turn a logging
        problem into an outage. `/health` says `degraded` and `/metrics` counts the lost records meanwhile."""
        try:
            self.outcome_log.record(record)
        except Exception as error:  # noqa: BLE001  (OSError from the disk; anything else is a bug, logged the same)
            self.metrics.records_lost.inc()
            logger.error("could not write the outcome record of %s: %s", record["request_id"], error)


def _usage(usage) -> tuple[dict | None, str | None]:
    """
    An upstream's `usage` block, untrusted: `(usage, None)` when both counts are whole numbers in
    [0, MAX_REPORTED_TOKENS], `(None, why)` when the block is there but wrong, `(None, None)` without one.
    """
    if usage is None:
        return None, None
    if not isinstance(usage, Mapping):
        return None, f"usage is a {type(usage).__name__}, not an object"
    counts = {}
    for key in ("prompt_tokens", "completion_tokens"):
        value = usage.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REPORTED_TOKENS:
            shown = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else f"an integer of {len(str(abs(value)))} digits"
            return None, f"{key} {shown[:80]} is not a whole number in [0, {MAX_REPORTED_TOKENS}]"
        counts[key] = value
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    if cached is not None:  # prompt caching: these input tokens are billed at the cached price
        if isinstance(cached, bool) or not isinstance(cached, int) or not 0 <= cached <= counts["prompt_tokens"]:
            return None, f"prompt_tokens_details.cached_tokens {str(cached)[:80]} is not a whole number in [0, prompt_tokens]"
        counts["cached_tokens"] = cached
    return counts, None


def _message_text(answer) -> str:
    """The text of a chat completion's first choice ("" when it has none)."""
    choices = answer.get("choices") if isinstance(answer, Mapping) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        return ""
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, Mapping) else None
    return content if isinstance(content, str) else ""


def _note_choices(seen: dict, chunk: dict) -> None:
    """Record in `seen` (choice index -> finished) the choices of one stream chunk and which have finished."""
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return
    for choice in choices:
        if isinstance(choice, dict):
            index = choice.get("index", 0)
            key = index if isinstance(index, int) else 0
            seen[key] = seen.get(key, False) or choice.get("finish_reason") is not None


def _every_choice_finished(seen: dict) -> bool:
    """A stream whose every choice has given its finish_reason carries a whole answer (False for no choice at all)."""
    return bool(seen) and all(seen.values())


def _delta_text(chunk: dict) -> str:
    """The text a stream chunk adds to the first choice."""
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        return ""
    delta = choices[0].get("delta")
    content = delta.get("content") if isinstance(delta, Mapping) else None
    return content if isinstance(content, str) else ""


def _json_bytes(value) -> bytes:
    """JSON as Starlette's `JSONResponse` renders it (compact, UTF-8)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _realised_cost(usage: dict | None, price: dict | None) -> float | None:
    """US$ from reported usage: cached input tokens at the `cached_input` price where the table has one."""
    if not usage or not price:
        return None
    cached = usage.get("cached_tokens", 0)
    input_cost = (usage["prompt_tokens"] - cached) * price["input"] + cached * price.get("cached_input", price["input"])
    return (input_cost + usage["completion_tokens"] * price["output"]) / DOLLARS_PER_MILLION


def create_app(router, upstreams: UpstreamPool, settings: GatewaySettings | None = None,
               outcome_log=None, learner=None, explore: ExploreSettings | None = None) -> Starlette:
    """The gateway's ASGI app (its `Gateway` is `app.state.gateway`)."""
    return Gateway(router, upstreams, settings, outcome_log, learner, explore).app
