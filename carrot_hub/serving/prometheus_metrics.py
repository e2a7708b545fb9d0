"""Prometheus metrics of the gateway, on a registry of its own (so that several apps in one process
do not collide). `GET /metrics` serves `GatewayMetrics.render()`."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
ROUTING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_FLAG_LABEL = {True: "true", False: "false", None: "unknown"}  # an in-distribution flag as a metric label


class GatewayMetrics:
    """Counters and histograms: requests, chosen models, fallbacks, realised spend, latency, routing batches."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
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
                                 registry=r)
        self.rejected = Counter("carrot_rejected_requests", "Requests refused before any upstream call, by HTTP status",
                                ["status"], registry=r)
        self.session_switches = Counter("carrot_session_switches", "Conversation turns answered by another model "
                                        "than the conversation's previous turn", ["policy"], registry=r)
        self.sessions = Gauge("carrot_sessions", "Conversations held in the gateway's session store", registry=r)
        self.upstream_ttft = Gauge("carrot_upstream_ttft_seconds", "Moving estimate of each upstream's time to "
                                   "first token, from served traffic", ["model"], registry=r)
        self.upstream_speed = Gauge("carrot_upstream_tokens_per_second", "Moving estimate of each upstream's "
                                    "output tokens per second after the first, from served traffic", ["model"], registry=r)

        self.revision = Gauge("carrot_router_revision", "The router revision in use (1 for the one serving)",
                              ["revision"], registry=r)
        self.reloads = Counter("carrot_reloads", "New router revisions swapped in", registry=r)
        self.reload_failures = Counter("carrot_reload_failures", "Router revisions that failed to load and were skipped",
                                       ["revision"], registry=r)
        self._revision: str | None = None
        self.routed_distribution = Counter("carrot_routed_in_distribution", "Routed requests by whether the router "
                                           "found the prompt in distribution (true, false, unknown)",
                                           ["in_distribution"], registry=r)
        self.ood_share = Gauge("carrot_out_of_distribution_share", "Share of routed requests since start that the "
                               "router flagged out of distribution (a new kind of traffic shows here first)", registry=r)
        self.explored = Counter("carrot_explored", "Judged explorations finished, by outcome (judged, "
                                "partly_judged, unscored, explored_failed)", ["outcome"], registry=r)
        self.explore_dropped = Counter("carrot_explore_dropped", "Explorations sampled but not run, by reason "
                                       "(queue_full, budget, share)", ["reason"], registry=r)
        self.explore_spend = Counter("carrot_explore_spend_dollars", "US$ spent exploring (the explored candidate "
                                     "and the judge), never billed to a request", ["kind"], registry=r)
        self.explore_share = Gauge("carrot_explore_spend_share", "Exploration's spend this UTC day over the "
                                   "day's serving spend (what --explore-max-share caps; 0 without --explore)",
                                   registry=r)
        self.trained_ood_share = Gauge(
            "carrot_out_of_trained_distribution_share", "Share of routed requests since start out of the distribution "
            "the router was trained on: as carrot_out_of_distribution_share, with the prompts remembered under --learn "
            "left out of the support, so a new kind of traffic stays visible until the router is retrained", registry=r)
        self._routed_counts = {"true": 0, "false": 0, "unknown": 0}
        self._trained_counts = {"true": 0, "false": 0, "unknown": 0}

    def set_revision(self, revision: str | None) -> None:
        """Label the router in use (`carrot_router_revision{revision="…"} 1`; "none" for a plain router folder)."""
        if self._revision is not None:
            self.revision.remove(self._revision)
        self._revision = revision or "none"
        self.revision.labels(self._revision).set(1)

    def observe_distribution(self, in_distribution: bool | None, trained_in_distribution: bool | None = None) -> None:
        """
        One routed request: counted by in/out of distribution, and the out-of-distribution shares updated;
        `trained_in_distribution` (None: not measured, the router has remembered nothing) is the flag among
        the trained rows only (`trained_distribution`), which is `in_distribution` itself when not measured.
        """
        key = _FLAG_LABEL[in_distribution]
        self._routed_counts[key] += 1
        self.routed_distribution.labels(key).inc()
        self.ood_share.set(self._routed_counts["false"] / sum(self._routed_counts.values()))
        trained = in_distribution if trained_in_distribution is None else trained_in_distribution
        self._trained_counts[_FLAG_LABEL[trained]] += 1
        self.trained_ood_share.set(self._trained_counts["false"] / sum(self._trained_counts.values()))

    def observe_batch(self, size: int, seconds: float) -> None:
        self.routing_batch.observe(size)
        self.routing_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
