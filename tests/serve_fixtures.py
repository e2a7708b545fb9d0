"""Shared pieces of the gateway tests: fake upstreams on loopback and a gateway around the tiny router."""

from __future__ import annotations

from contextlib import contextmanager

from carrot_hub.data.outcome_log_reader import read_outcome_log
from carrot_hub.serving.app import Gateway, GatewaySettings
from carrot_hub.serving.fake_upstream import FakeUpstream, FakeUpstreamConfig
from carrot_hub.serving.local_server import LocalServer
from carrot_hub.serving.upstreams import UpstreamPool, parse_upstreams


def served_records(log) -> dict:
    """The outcome log's served records by request id, read back from its shards."""
    return read_outcome_log(log.folder).served


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
def running_gateway(router, entries: dict, environ=None, log=None, learner=None, revision=None, explore=None,
                    **settings):
    """A gateway on loopback (`explore`: `ExploreSettings` for judged exploration): yields `(gateway, server)`."""
    pool = UpstreamPool(parse_upstreams(entries), environ=environ)
    gateway = Gateway(router, pool, GatewaySettings(**settings), outcome_log=log, learner=learner, revision=revision,
                      explore=explore)
    with LocalServer(gateway.app) as server:
        yield gateway, server


def wait_records(gateway) -> None:
    """Records are written off the event loop; the tests read them once the writer is idle."""
    gateway._log_writer.submit(lambda: None).result(timeout=5)
