"""Shared pieces of the gateway tests: fake upstreams on loopback, a gateway around the tiny router,
and an in-memory stand-in for the outcome log (the real one is tested in its own module)."""

from __future__ import annotations

import threading
from contextlib import contextmanager

from carrot_hub.serving.app import Gateway, GatewaySettings
from carrot_hub.serving.fake_upstream import FakeUpstream, FakeUpstreamConfig
from carrot_hub.serving.local_server import LocalServer
from carrot_hub.serving.upstreams import UpstreamPool, parse_upstreams


class MemoryLog:
    """The outcome log's interface (record / feedback / close), kept in memory."""

    def __init__(self):
        self.records, self.labels = [], []
        self._lock = threading.Lock()
        self.closed = False

    def record(self, record: dict) -> None:
        with self._lock:
            self.records.append(dict(record))

    def feedback(self, request_id: str, score: float) -> dict:
        if not 0 <= score <= 1:
            raise ValueError(f"score must be in [0, 1], got {score}")
        with self._lock:
            for record in self.records:
                if record["request_id"] == request_id:
                    self.labels.append((request_id, score))
                    return record
        raise KeyError(request_id)

    def close(self) -> None:
        self.closed = True


@contextmanager
def fake_upstreams(names, **config):
    """One `FakeUpstream` per name, each served on its own loopback port: yields `{name: (fake, server)}`."""
    fakes = {name: FakeUpstream(FakeUpstreamConfig(model=f"{name}-upstream-id", **config)) for name in names}
    servers = {}
    try:
        for name, fake in fakes.items():
            servers[name] = LocalServer(fake.app).start()
        yield {name: (fakes[name], servers[name]) for name in names}
    finally:
        for server in servers.values():
            server.stop()


def upstream_entries(upstreams, **extra) -> dict:
    """The upstreams-file mapping for fakes from `fake_upstreams`."""
    return {name: {"base_url": server.base_url, "model": fake.config.model, **extra}
            for name, (fake, server) in upstreams.items()}


@contextmanager
def running_gateway(router, entries: dict, environ=None, log=None, **settings):
    """A gateway on loopback: yields `(gateway, server)`."""
    pool = UpstreamPool(parse_upstreams(entries), environ=environ)
    gateway = Gateway(router, pool, GatewaySettings(**settings), outcome_log=log)
    with LocalServer(gateway.app) as server:
        yield gateway, server
