"""Run an ASGI app under uvicorn on a background thread, on loopback (tests, benchmarks, fixtures)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import uvicorn


class LocalServer:
    """
    `with LocalServer(app) as server: server.base_url` — uvicorn on 127.0.0.1 (a free port unless
    `port` is given) in a daemon thread with its own event loop; stopped on exit.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 start_timeout_s: float = 30.0, **config):
        self.app, self.host = app, host
        # IPPROTO_TCP explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP,
        # and with Nagle on, small writes wait ~40 ms for delayed ACKs.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.port = self.sock.getsockname()[1]
        self.start_timeout_s = start_timeout_s
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on", **config))
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (`.../v1`)."""
        return self.url + "/v1"

    def start(self) -> "LocalServer":
        def run():
            asyncio.run(self.server.serve(sockets=[self.sock]))

        self.thread = threading.Thread(target=run, name=f"uvicorn-{self.port}", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"The server on {self.url} stopped while starting.")
            if time.monotonic() > deadline:
                raise TimeoutError(f"The server on {self.url} did not start within {self.start_timeout_s} s.")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout_s)
            if self.thread.is_alive():  # open streams keep it busy: close them
                self.server.force_exit = True
                self.thread.join(timeout_s)
        self.sock.close()

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
