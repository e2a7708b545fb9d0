"""`carrot serve --workers N`: N serving processes accepting on one listening socket.

The supervising process binds the port (so a port in use is still one line and exit code 2), then
starts N workers with the `spawn` start method (a fresh interpreter each: no torch state crosses a
fork), handing each the listening socket; the kernel gives each new connection to one worker. Each
worker loads the router itself and has its own event loop, routing thread and outcome-log shard
(shard names carry the process id, so records never interleave). Feedback may reach another worker
than the one that served: every worker's feedback lookup reads every shard of the shared folder.
The workers' Prometheus metrics live in files of one temporary folder (`PROMETHEUS_MULTIPROC_DIR`),
so `/metrics` on any worker reports the whole gateway; the supervisor removes the folder at the end.

The supervisor forwards SIGTERM/SIGINT to the workers and waits for their graceful shutdown; if a
worker dies, the others are stopped and the command exits with an error (a process manager or a
Kubernetes Deployment restarts the whole).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time

from .prometheus_metrics import MULTIPROCESS_ENV

STOP_GRACE_S = 20.0


def _worker_main(args, sock, index: int, gateway_key: str | None, serve) -> None:
    """One worker: serve on the inherited socket until stopped (`serve` is the command's serve_in_this_process)."""
    from ..cli_common import Failure, UsageError

    try:
        code = serve(args, sock, gateway_key, progress=False, worker=f" [worker {index}]")
    except (UsageError, Failure) as error:
        print(f"carrot serve [worker {index}]: error: {error}", file=sys.stderr, flush=True)
        code = 2 if isinstance(error, UsageError) else 1
    sys.exit(code)


def run_workers(args, sock, serve, gateway_key: str | None) -> int:
    """
    Start `args.workers` workers on `sock` and supervise them; returns the exit code. Each runs
    `serve(args, sock, gateway_key, progress=..., worker=...)` (passed in by the command, so that
    this module does not import it back).
    """
    context = multiprocessing.get_context("spawn")
    # Every worker's metrics in files of one fresh folder, so that a scrape of any worker reports all of them.
    metrics_dir = tempfile.mkdtemp(prefix="carrot-metrics-")
    previous_env = os.environ.get(MULTIPROCESS_ENV)
    os.environ[MULTIPROCESS_ENV] = metrics_dir  # inherited by the spawned workers
    workers = [context.Process(target=_worker_main, args=(args, sock, i, gateway_key, serve), name=f"carrot-worker-{i}")
               for i in range(args.workers)]
    stopping = False

    def stop(signum=None, frame=None):
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for worker in workers:
            worker.start()
        print(f"carrot serve: {args.workers} workers (pids {', '.join(str(w.pid) for w in workers)})",
              file=sys.stderr, flush=True)
        failed = None
        while not stopping:
            for worker in workers:
                if worker.exitcode is not None:
                    failed = worker
                    break
            if failed is not None:
                break
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for worker in workers:
            if worker.is_alive():
                worker.terminate()  # SIGTERM: uvicorn finishes in-flight requests, the gateway closes its log
        deadline = time.monotonic() + STOP_GRACE_S
        for worker in workers:
            worker.join(timeout=max(0.1, deadline - time.monotonic()))
            if worker.is_alive():
                worker.kill()
                worker.join()
        if previous_env is None:
            os.environ.pop(MULTIPROCESS_ENV, None)
        else:
            os.environ[MULTIPROCESS_ENV] = previous_env
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if failed is not None and not stopping:
        print(f"carrot serve: worker {workers.index(failed)} (pid {failed.pid}) exited with code {failed.exitcode}; "
              "stopped the others", file=sys.stderr, flush=True)
        return 2 if failed.exitcode == 2 else 1
    print("carrot serve: stopped", file=sys.stderr, flush=True)
    return 0
