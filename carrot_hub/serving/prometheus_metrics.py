"""Prometheus metrics of the gateway, on a registry of its own (so that several apps in one process
do not collide). `GET /metrics` serves `GatewayMetrics.render()`.

Under `carrot serve --workers N` a scrape reaches one worker, yet must report the whole gateway:
otherwise each scrape shows another worker's counters, which then go up and down between scrapes
and break `rate()`. The supervisor sets `PROMETHEUS_MULTIPROC_DIR` (a fresh folder) for its workers,
and prometheus_client's multiprocess mode keeps every worker's counters, histograms and gauges in
files there; `render()` then merges all of them. Gauges say how they merge (`multiprocess_mode`):
a sum (sessions held), the max (a failing log, the revision in use) or the most recent value (an
upstream's speed). The shares (out of distribution, exploration spend) are not merged as gauges,
since a mean of shares is not the share: they are computed at render time, from the merged
counters and from the exploration spend ledger, which already spans the workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
ROUTING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_FLAG_LABEL = {True: "true", False: "false", None: "unknown"}  # an in-distribution flag as a metric label


class GatewayMetrics:
    """Counters and histograms: requests, chosen models, fallbacks, realised spend, latency, routing batches."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, multiprocess_dir: str | None = None):
        """`multiprocess_dir`: the folder of every worker's metric files (default: $PROMETHEUS_MULTIPROC_DIR, if set)."""
        self.multiprocess_dir = multiprocess_dir or os.environ.get(MULTIPROCESS_ENV) or None
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("carrot_requests", "Chat completions served, by answering model and status",
                                ["model", "status"], registry=r)
        self.routed = Counter("carrot_routed", "Routing decisions, by the model the router chose", ["model"], registry=r)
        self.fallbacks = Counter("carrot_fallbacks", "Upstream failures that led to trying another candidate",
                                 ["model", "reason"], registry=r)
        self.spend = Counter("carrot_spend_dollars", "Realised spend in US dollars (upstream usage x prices in force)",
                             ["model"], registry=r)
        self.invalid_usage = Counter("carrot_invalid_usage", "Answers whose usage block was not valid token counts "
                                     "(recorded without usage)", ["model"], registry=r)
        self.tokens = Counter("carrot_tokens", "Tokens reported by the upstreams", ["model", "kind"], registry=r)
        self.latency = Histogram("carrot_request_latency_seconds", "Time from request to the end of the answer",
                                 ["stream"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttfb = Histogram("carrot_time_to_first_byte_seconds", "Time from request to the first byte of the answer",
                              ["stream"], buckets=LATENCY_BUCKETS, registry=r)
        self.routing_seconds = Histogram("carrot_routing_batch_seconds", "Time to route one batch (encoder + decision)",
                                         buckets=ROUTING_BUCKETS, registry=r)
        self.routing_batch = Histogram("carrot_routing_batch_size", "Prompts routed together in one batch",
                                       buckets=BATCH_BUCKETS, registry=r)
        self.records_lost = Counter("carrot_outcome_records_lost", "Outcome-log records (served or feedback) that "
                                    "could not be written, e.g. on a full disk", registry=r)
        self.log_failing = Gauge("carrot_outcome_log_failing", "1 while the outcome log's latest write failed, else 0",
                                 registry=r, multiprocess_mode="max")
        self.rejected = Counter("carrot_rejected_requests", "Requests refused before any upstream call, by HTTP status",
                                ["status"], registry=r)
        self.session_switches = Counter("carrot_session_switches", "Conversation turns answered by another model "
                                        "than the conversation's previous turn", ["policy"], registry=r)
        self.sessions = Gauge("carrot_sessions", "Conversations held in the gateway's session store", registry=r,
                              multiprocess_mode="sum")
        self.upstream_ttft = Gauge("carrot_upstream_ttft_seconds", "Moving estimate of each upstream's time to "
                                   "first token, from served traffic", ["model"], registry=r,
                                   multiprocess_mode="mostrecent")
        self.upstream_speed = Gauge("carrot_upstream_tokens_per_second", "Moving estimate of each upstream's "
                                    "output tokens per second after the first, from served traffic", ["model"], registry=r,
                                    multiprocess_mode="mostrecent")

        self.revision = Gauge("carrot_router_revision", "The router revision in use (1 for the one serving)",
                              ["revision"], registry=r, multiprocess_mode="max")
        self.reloads = Counter("carrot_reloads", "New router revisions swapped in", registry=r)
        self.reload_failures = Counter("carrot_reload_failures", "Router revisions that failed to load and were skipped",
                                       ["revision"], registry=r)
        self._revision: str | None = None
        self.routed_distribution = Counter("carrot_routed_in_distribution", "Routed requests by whether the router "
                                           "found the prompt in distribution (true, false, unknown)",
                                           ["in_distribution"], registry=r)
        self.routed_trained_distribution = Counter(
            "carrot_routed_in_trained_distribution", "Routed requests by whether the prompt is in the distribution the "
            "router was trained on (remembered prompts left out of the support; true, false, unknown)",
            ["in_distribution"], registry=r)
        self.explored = Counter("carrot_explored", "Judged explorations finished, by outcome (judged, "
                                "partly_judged, unscored, explored_failed)", ["outcome"], registry=r)
        self.explore_dropped = Counter("carrot_explore_dropped", "Explorations sampled but not run, by reason "
                                       "(queue_full, budget, share)", ["reason"], registry=r)
        self.explore_spend = Counter("carrot_explore_spend_dollars", "US$ spent exploring (the explored candidate "
                                     "and the judge), never billed to a request", ["kind"], registry=r)
        self.explore_share_source: Callable[[], float] | None = None  # the explorer's day share (None: 0)
        self._tracked: list[tuple[Gauge, Callable[[], float]]] = []
        r.register(_Shares(self, lambda: [*self.routed_distribution.collect(), *self.routed_trained_distribution.collect()]))

    def set_revision(self, revision: str | None) -> None:
        """Label the router in use (`carrot_router_revision{revision="…"} 1`; "none" for a plain router folder)."""
        if self._revision is not None:
            self.revision.labels(self._revision).set(0)  # what another worker's merge sees; gone from this one's
            self.revision.remove(self._revision)
        self._revision = revision or "none"
        self.revision.labels(self._revision).set(1)

    def track(self, gauge: Gauge, value: Callable[[], float]) -> None:
        """
        `gauge` shows `value()`: read at each scrape in one process; with workers, written to the
        worker's metric file by `refresh()` (the gateway calls it every second and before rendering).
        """
        if self.multiprocess_dir is None:
            gauge.set_function(value)
        else:
            self._tracked.append((gauge, value))
            gauge.set(value())

    def refresh(self) -> None:
        for gauge, value in self._tracked:
            gauge.set(value())

    def observe_distribution(self, in_distribution: bool | None, trained_in_distribution: bool | None = None) -> None:
        """
        One routed request, counted by in/out of distribution; `trained_in_distribution` (None: not
        measured, the router has remembered nothing) is the flag among the trained rows only
        (`trained_distribution`), which is `in_distribution` itself when not measured.
        """
        self.routed_distribution.labels(_FLAG_LABEL[in_distribution]).inc()
        trained = in_distribution if trained_in_distribution is None else trained_in_distribution
        self.routed_trained_distribution.labels(_FLAG_LABEL[trained]).inc()

    def observe_batch(self, size: int, seconds: float) -> None:
        self.routing_batch.observe(size)
        self.routing_seconds.observe(seconds)

    def render(self) -> bytes:
        """The exposition text: this process's metrics, or with workers every worker's, merged."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        self.refresh()
        merged = list(MultiProcessCollector(None, path=self.multiprocess_dir).collect())  # every file read once
        registry = CollectorRegistry()
        registry.register(_Shares(self, lambda: merged))
        registry.register(_Collected(merged))
        return generate_latest(registry)


class _Collected:
    """Metric families already collected, as a collector."""

    def __init__(self, families: list):
        self.families = families

    def collect(self):
        return iter(self.families)


class _Shares:
    """
    The share gauges, computed when scraped: out of distribution (all and trained rows) from the
    routed counters of `families()` (this registry's, or every worker's merged), and exploration's
    day share from its source.
    """

    def __init__(self, metrics: GatewayMetrics, families: Callable):
        self.metrics, self.families = metrics, families

    def collect(self):
        counts = {"carrot_routed_in_distribution": {}, "carrot_routed_in_trained_distribution": {}}
        for family in self.families():
            if family.name in counts:
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        flag = sample.labels.get("in_distribution")
                        counts[family.name][flag] = counts[family.name].get(flag, 0.0) + sample.value
        for name, counted, help_text in (
                ("carrot_out_of_distribution_share", counts["carrot_routed_in_distribution"],
                 "Share of routed requests since start that the router flagged out of distribution (a new kind of "
                 "traffic shows here first)"),
                ("carrot_out_of_trained_distribution_share", counts["carrot_routed_in_trained_distribution"],
                 "Share of routed requests since start out of the distribution the router was trained on: as "
                 "carrot_out_of_distribution_share, with the prompts remembered under --learn left out of the support, "
                 "so a new kind of traffic stays visible until the router is retrained")):
            total = sum(counted.values())
            yield GaugeMetricFamily(name, help_text, value=counted.get("false", 0.0) / total if total else 0.0)
        source = self.metrics.explore_share_source
        yield GaugeMetricFamily("carrot_explore_spend_share", "Exploration's spend this UTC day over the day's serving "
                                "spend, all workers (what --explore-max-share caps; 0 without --explore)",
                                value=source() if source is not None else 0.0)
