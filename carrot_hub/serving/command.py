"""`carrot serve`: the OpenAI-compatible routing gateway under uvicorn.

Start-up problems are one line and exit code 2: an unreadable or wrong upstreams file, an upstream
naming a model the router does not know, an unset API-key variable, a port in use, a non-loopback
address without a gateway key (`CARROT_API_KEY`), or a gateway key shorter than 16 characters or
not printable ASCII (such a key is guessable, or can never match what a client sends).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import math
import os
import socket
import sys
from pathlib import Path

from ..cli_common import Failure, UsageError, load_router, positive_float, positive_int
from ..log_learning import parse_duration
from ..precision import ENCODER_DTYPE_CHOICES, resolve_encoder_dtype
from .chat_request import ROUTE_ON
from .sessions import DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_TTL_S, SESSION_POLICIES

GATEWAY_KEY_ENV = "CARROT_API_KEY"
LOOPBACK_NAMES = ("localhost",)


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `carrot serve`."""
    parser.add_argument("router", nargs="?", help="router folder or Hub id (default: the embedded default router)")
    parser.add_argument("--upstreams", required=True,
                        help="YAML/JSON file mapping candidate names to {base_url, model, api_key_env, timeout, "
                             "max_concurrency}")
    parser.add_argument("--host", default="127.0.0.1",
                        help=f"address to bind (default 127.0.0.1; any other needs ${GATEWAY_KEY_ENV})")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    parser.add_argument("--route-on", choices=ROUTE_ON, default="last-user",
                        help="what the router reads: the last user message (default) or the whole conversation")
    parser.add_argument("--max-fallbacks", type=int, default=2,
                        help="other candidates tried when the chosen upstream fails before answering (default 2)")
    parser.add_argument("--max-body-bytes", type=positive_int, default=4 * 1024 * 1024,
                        help="larger request bodies are refused with HTTP 413 (default 4 MiB)")
    parser.add_argument("--body-timeout", type=float, default=30.0,
                        help="seconds a client has to send its whole request body; slower ones get HTTP 408 "
                             "(default 30)")
    parser.add_argument("--route-window-ms", type=float, default=None,
                        help="how long the first request of a routing batch waits for others (default 2 ms; "
                             "0 for a static-encoder router)")
    parser.add_argument("--route-batch-size", type=positive_int, default=64,
                        help="most prompts routed in one encoder pass (default 64)")
    parser.add_argument("--dtype", choices=ENCODER_DTYPE_CHOICES, default="auto",
                        help="the encoder's dtype (default auto: bfloat16 on CPUs with bf16 units)")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads for routing (default: 1 for a static-encoder router, else torch's choice)")
    parser.add_argument("--log-dir", default="carrot-logs",
                        help="folder of the outcome log: one record per served request (default ./carrot-logs)")
    parser.add_argument("--feedback-window", type=positive_int, default=None,
                        help="feedback reaches the N most recent served requests (default 100000; the index "
                             "that finds them costs at most about 190 bytes per request)")
    parser.add_argument("--session-policy", choices=SESSION_POLICIES, default="off",
                        help="conversations named by carrot.session, the x-carrot-session header or `user`: "
                             "'sticky' keeps a conversation on its first model (it moves when that model is no "
                             "longer allowed, over max_cost or failing), 'upgrade-only' lets it move only to a "
                             "model of higher predicted quality, 'off' routes every turn on its own (default)")
    parser.add_argument("--max-sessions", type=positive_int, default=DEFAULT_MAX_SESSIONS,
                        help=f"conversations kept in memory, least recently used dropped first (default {DEFAULT_MAX_SESSIONS})")
    parser.add_argument("--session-ttl", type=positive_float, default=DEFAULT_SESSION_TTL_S,
                        help=f"seconds a conversation is remembered after its last turn (default {DEFAULT_SESSION_TTL_S:g})")
    parser.add_argument("--no-prompt-log", action="store_true",
                        help="keep only a hash of the routed text in the outcome log")
    parser.add_argument("--log-answers", action="store_true",
                        help="also keep each answer's text in the outcome log (keys scrubbed, at most 32,768 "
                             "characters), so `carrot logs judge` can grade it later; not with --no-prompt-log")
    parser.add_argument("--learn", action="store_true",
                        help="apply each feedback label to the kNN router's memory as it arrives, saving the grown "
                             "router as a new folder under --learn-dir every --learn-every labels and on shutdown")
    parser.add_argument("--learn-dir", default="carrot-learned",
                        help="folder for the grown routers (default ./carrot-learned; never the router's own folder)")
    parser.add_argument("--learn-every", type=int, default=500,
                        help="save the grown router after this many labels (0: only on shutdown; default 500)")
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="serving processes sharing the port, each with its own routing thread and outcome-log "
                             "shard (default 1)")
    parser.add_argument("--reload-every", type=parse_duration, metavar="DURATION",
                        help="follow a store of router revisions (a carrot learn --out folder, or a Hub repo): check "
                             "it this often (e.g. 60s) and swap in each new revision between routing batches")
    parser.add_argument("--push-logs", metavar="ORG/NAME",
                        help="ship the outcome log to this Hub dataset repo (private when created) with "
                             "huggingface_hub's CommitScheduler; carrot learn reads it back")
    parser.add_argument("--push-every", type=parse_duration, default=600.0, metavar="DURATION",
                        help="how often --push-logs commits (default 10m)")
    parser.add_argument("--explore", type=float, default=None, metavar="RATE",
                        help="judged exploration: for this share in [0, 1] of routed plain chat requests, after the "
                             "answer, ask one other candidate and have --judge grade both; labels go to the outcome "
                             "log as source 'judge' (and into the router with --learn). See docs/exploration.md")
    parser.add_argument("--judge", default=None, metavar="CANDIDATE",
                        help="the upstream that grades answers for --explore (with the rubric of carrot collect)")
    parser.add_argument("--explore-budget", type=float, default=None, metavar="DOLLARS_PER_DAY",
                        help="stop exploring for the rest of the UTC day once its spend (explored answers and the "
                             "judge; all --workers and every run of the day, kept in LOG_DIR/explore-spend) "
                             "reaches this many US$ (default: no cap)")
    parser.add_argument("--explore-max-share", type=float, default=None, metavar="F",
                        help="hold exploration's spend (explored answers and the judge) this UTC day to at most F "
                             "times the day's serving spend, e.g. 0.25 for at most 25%% extra (default: no cap)")
    parser.add_argument("--explore-ood-rate", type=float, default=None, metavar="R",
                        help="share of out-of-distribution requests explored (default 4 x RATE, at most 1)")
    parser.add_argument("--explore-private", action="store_true",
                        help="with --no-prompt-log, explore those requests too (their labels are logged without the prompt)")
    parser.add_argument("--access-log", action="store_true", help="print one line per HTTP request")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return parser


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (127.0.0.0/8, ::1) or `localhost`."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket bound to (host, port); `UsageError` (exit 2) when the port is taken."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be in 0…65535, got {port}.")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise UsageError(f"Port {port} on {host} is already in use: stop what listens there, "
                             "or pick another --port.") from None
        raise UsageError(f"Cannot bind {host}:{port}: {error.strerror or error}.") from None
    # Listen now, not when uvicorn starts: a client that connects as soon as the address is announced
    # waits in the backlog instead of being refused (seen once under load in the CLI test).
    sock.listen(2048)
    return sock


def run_serve(args: argparse.Namespace) -> int:
    """`carrot serve`: see the module docstring and `carrot serve --help`."""
    try:
        import sse_starlette, starlette, uvicorn, httpx_sse, prometheus_client  # noqa: F401, E401
    except ImportError as error:
        raise Failure(f"carrot serve needs the gateway's packages ({error.name} is missing): "
                      "pip install 'carrot_hub[serve]'.") from None
    from .upstreams import UpstreamConfigError, UpstreamPool, check_candidates, check_keys, read_upstreams_file

    if args.max_fallbacks < 0:
        raise UsageError(f"--max-fallbacks must be ≥ 0, got {args.max_fallbacks}.")
    if args.learn_every < 0:
        raise UsageError(f"--learn-every must be ≥ 0, got {args.learn_every}.")
    if args.route_window_ms is not None and not (args.route_window_ms >= 0 and args.route_window_ms < 1000):
        raise UsageError(f"--route-window-ms must be in [0, 1000), got {args.route_window_ms}.")
    try:
        specs = read_upstreams_file(args.upstreams)
        check_keys(specs)
    except UpstreamConfigError as error:
        raise UsageError(str(error)) from None
    _explore_settings(args, list(specs))  # its errors before anything starts; each serving process builds its own
    if args.log_answers and args.no_prompt_log:
        raise UsageError("--log-answers keeps what the models answered, which tells as much as the prompt that "
                         "--no-prompt-log keeps out of the log: give one of them.")
    if not (args.body_timeout > 0 and math.isfinite(args.body_timeout)):
        raise UsageError(f"--body-timeout must be a positive number of seconds, got {args.body_timeout}.")
    gateway_key = os.environ.get(GATEWAY_KEY_ENV) or None
    if gateway_key is not None:
        from .app import gateway_key_problem

        problem = gateway_key_problem(gateway_key)
        if problem is not None:
            raise UsageError(f"${GATEWAY_KEY_ENV} {problem}.")
    if not is_loopback(args.host) and gateway_key is None:
        raise UsageError(f"Refusing to serve on {args.host} without a gateway key: set {GATEWAY_KEY_ENV} "
                         "(clients then send it as a bearer token), or bind 127.0.0.1.")
    _check_scale_out_options(args)
    sock = bind_socket(args.host, args.port)
    pusher = _start_log_pusher(args)
    try:
        if args.workers > 1:
            from .workers import run_workers

            return run_workers(args, sock, serve_in_this_process, gateway_key)
        return serve_in_this_process(args, sock, gateway_key, progress=True)
    finally:
        sock.close()
        if pusher is not None:
            from .log_pushing import stop_log_pusher

            stop_log_pusher(pusher)


def serve_in_this_process(args, sock, gateway_key, progress: bool = True, worker: str = "") -> int:
    """Load the router (the store's current revision for a store) and serve on `sock` until stopped."""
    from .upstreams import UpstreamConfigError, UpstreamPool, check_candidates, read_upstreams_file

    specs = read_upstreams_file(args.upstreams)
    spec, revision = args.router, None
    if args.router is not None:
        from ..router_store import resolve_router_source

        try:
            spec, revision = resolve_router_source(args.router)
        except FileNotFoundError as error:
            raise UsageError(str(error)) from None
    reload_source = None
    if args.reload_every is not None:
        from .reloading import RevisionSource

        reload_source = RevisionSource(args.router)
        if reload_source.store is None:  # a Hub repo: serve the commit its main branch has now
            try:
                revision = reload_source.current()
            except Exception as error:  # noqa: BLE001
                raise Failure(f"Cannot read the revision of {args.router} on the Hub: {error}") from None
    router = load_router(spec, progress=progress, dtype=args.dtype)
    _set_routing_threads(router, args.threads)
    try:
        check_candidates(specs, router.config.candidate_models)
    except UpstreamConfigError as error:
        raise UsageError(str(error)) from None
    return _serve(router, UpstreamPool(specs), sock, args, gateway_key, revision=revision,
                  reload_source=reload_source, worker=worker, explore=_explore_settings(args, list(specs)))


def _check_scale_out_options(args) -> None:
    """--workers, --reload-every, --push-logs: what goes together, checked before anything starts."""
    if args.learn and args.workers > 1:
        raise UsageError("--learn grows one process's router; with --workers, run one `carrot learn LOG_DIR --out STORE` "
                         "on the shared log and serve the store with --reload-every.")
    if args.reload_every is not None:
        if args.learn:
            raise UsageError("--learn and --reload-every both change the served router: pick one (with --reload-every, "
                             "`carrot learn` publishes the revisions).")
        if args.router is None:
            raise UsageError("--reload-every follows a store of router revisions: give it as ROUTER (a carrot learn "
                             "--out folder, or a Hub repo id).")
        from .reloading import RevisionSource

        try:
            RevisionSource(args.router)
        except ValueError as error:
            raise UsageError(str(error)) from None
    if args.push_logs is not None:
        from ..router_publishing import check_repo_id

        try:
            check_repo_id(args.push_logs)
        except Exception as error:  # noqa: BLE001  (a malformed id: one line, exit 2)
            raise UsageError(f"--push-logs: {error}") from None
        from huggingface_hub import get_token

        if not get_token():
            raise UsageError("--push-logs needs a Hub token with write access: set HF_TOKEN or run `hf auth login`.")


def _start_log_pusher(args):
    if args.push_logs is None:
        return None
    from .log_pushing import start_log_pusher

    Path(args.log_dir).expanduser().mkdir(parents=True, exist_ok=True)
    try:
        return start_log_pusher(args.log_dir, args.push_logs, args.push_every)
    except Exception as error:  # noqa: BLE001  (the repo cannot be created or reached)
        from ..hub_checks import redact

        raise Failure(f"--push-logs: cannot push to the Hub dataset repo {args.push_logs}: {redact(str(error))}") from None


def _route_window_ms(router, window_ms: float | None) -> float:
    """
    `--route-window-ms`, else 0 for a static router and 2 ms for a transformer one. A static router
    routes one prompt in about a millisecond, so waiting for company costs more than it saves; under
    load its batches still form while the routing thread is busy. A transformer's pass costs ~20 ms
    whatever the batch, so gathering the first burst pays.
    """
    if window_ms is not None:
        return window_ms
    return 0.0 if router.is_static else 2.0


def _set_routing_threads(router, threads: int | None) -> None:
    """
    torch's intra-op threads for routing: `--threads` if given; else one for a static router, whose
    small batches cost less than waking a second thread (which, on a machine whose other cores serve
    the proxy, waits for a core: single-prompt routing went from 1.3 to 8 ms on 2 cores under load).
    """
    import torch

    if threads is None and router.is_static:
        threads = 1
    if threads:
        torch.set_num_threads(threads)


def _explore_settings(args, upstream_names):
    """`--explore ...` as `ExploreSettings` (None without --explore); `UsageError` (exit 2) on bad values."""
    given = [flag for flag, value in (("--judge", args.judge), ("--explore-budget", args.explore_budget),
                                      ("--explore-max-share", args.explore_max_share),
                                      ("--explore-ood-rate", args.explore_ood_rate)) if value is not None]
    if args.explore is None:
        if given or args.explore_private:
            raise UsageError(f"{(given or ['--explore-private'])[0]} only applies with --explore RATE.")
        return None
    if args.judge is None:
        raise UsageError("--explore needs --judge CANDIDATE: the upstream that grades the answers.")
    if args.judge not in upstream_names:
        raise UsageError(f"The judge {args.judge!r} is not an upstream (upstreams: {', '.join(upstream_names)}): "
                         "add it to the upstreams file or name one of them.")
    from .exploration import ExploreSettings

    try:
        return ExploreSettings(rate=args.explore, judge=args.judge, budget_per_day=args.explore_budget,
                               max_share=args.explore_max_share,
                               ood_rate=args.explore_ood_rate, private=args.explore_private)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _open_outcome_log(args, router):
    from .outcome_log_writer import OutcomeLog

    try:
        window = {} if args.feedback_window is None else {"feedback_window": args.feedback_window}
        return OutcomeLog(args.log_dir, log_prompts=not args.no_prompt_log, log_answers=args.log_answers,
                          prices=router.config.prices,
                          prices_recorded_on=router.config.prices_recorded_on, **window)
    except (OSError, ValueError) as error:
        raise UsageError(f"Cannot open the outcome log in {args.log_dir}: {error}") from None


def _open_learner(args, router):
    if not args.learn:
        return None
    from .learning import OnlineLearner

    from ..router_store import StoreLocked

    try:
        learner = OnlineLearner(router, args.learn_dir, every=args.learn_every)
        if learner.store.folder.is_dir():  # refuse now, not at the first save, if carrot learn writes there
            learner.store.lock("a check by carrot serve --learn").release()
        return learner
    except (TypeError, ValueError, OSError, StoreLocked) as error:
        raise UsageError(f"--learn: {error}") from None


def _serve(router, upstreams, sock, args, gateway_key, revision=None, reload_source=None, worker: str = "",
           explore=None) -> int:
    import uvicorn

    from .app import Gateway, GatewaySettings

    settings = GatewaySettings(
        route_on=args.route_on,
        max_fallbacks=args.max_fallbacks,
        max_body_bytes=args.max_body_bytes,
        api_key=gateway_key,
        route_window_s=_route_window_ms(router, args.route_window_ms) / 1000,
        route_batch_size=args.route_batch_size,
        body_timeout_s=args.body_timeout,
        session_policy=args.session_policy,
        max_sessions=args.max_sessions,
        session_ttl_s=args.session_ttl,
        feedback_wait_s=1.0 if args.workers > 1 else 0.0,
    )
    learner = _open_learner(args, router)
    outcome_log = _open_outcome_log(args, router)
    try:
        gateway = Gateway(router, upstreams, settings, outcome_log=outcome_log, learner=learner, revision=revision,
                          explore=explore)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if reload_source is not None:
        from .reloading import RouterReloader

        gateway.reloader = RouterReloader(
            reload_source, revision, router.config.candidate_models, gateway.swap_router, args.reload_every,
            prepare=lambda new: None,
            on_failure=lambda bad, message: gateway.metrics.reload_failures.labels(bad).inc(),
            dtype=resolve_encoder_dtype(args.dtype),
        )
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"carrot serve{worker}: {len(gateway.callable)} candidates ({', '.join(gateway.callable)}) on "
          f"http://{shown}:{port}/v1; outcome log in {args.log_dir}"
          + (f"; learning from feedback into {args.learn_dir}" if learner else "")
          + (f"; revision {revision}" if revision else "")
          + (f", checked every {args.reload_every:g} s" if reload_source is not None else "")
          + (f"; exploring {explore.rate:g} (ood {explore.ood_rate:g}) judged by {explore.judge}" if explore else "")
          + ("; gateway key required" if gateway_key else ""), file=sys.stderr, flush=True)
    # Keep idle client connections 75 s (uvicorn's 5 s races with clients reusing pooled connections).
    config = uvicorn.Config(gateway.app, log_level="warning", access_log=args.access_log, lifespan="on",
                            timeout_graceful_shutdown=10, timeout_keep_alive=75)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down gracefully, then re-raised Ctrl-C: a normal stop
        pass
    print(f"carrot serve{worker}: stopped", file=sys.stderr)
    return 0
