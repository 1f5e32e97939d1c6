"""Prometheus metrics, in a registry of their own per server (tests run several in one process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("ffp_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.verdicts = Counter(
            "ffp_verdicts", "Verdicts by action and how they were decided",
            ["instance", "source", "action", "decided_by"], registry=r,
        )
        self.labels = Counter("ffp_labels", "Labels found on media", ["instance", "label"], registry=r)
        self.invalid = Counter("ffp_invalid_media", "Media refused as undecodable or hostile", ["kind"], registry=r)
        self.errors = Counter("ffp_errors", "Judgements that failed (classifier, timeout, overload)", ["kind"], registry=r)
        self.fail_open = Counter(
            "ffp_fail_open", "Media accepted without a judgement because a policy says on_error/on_invalid: accept",
            ["instance", "reason"], registry=r,
        )
        self.overload = Counter("ffp_overload", "Requests refused or failed over because a queue was full", ["where"], registry=r)
        self.cache_hits = Counter("ffp_cache_hits", "Verdicts answered from the cache", registry=r)
        self.list_hits = Counter("ffp_hashlist_hits", "Allow/deny hash list hits", ["list"], registry=r)
        self.latency = Histogram(
            "ffp_verdict_latency_seconds", "Time to a verdict", ["source", "decided_by"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "ffp_classifier_batch_size", "Frames per model call", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "ffp_classifier_batch_seconds", "Seconds per model call", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.classifier_ready = Gauge("ffp_classifier_ready", "1 when the classifier is loaded", registry=r)
        self.fetch_errors = Counter("ffp_fetch_errors", "Fetches the proxy made that failed (blocked = SSRF refused)", ["kind"], registry=r)
        self.inbox = Counter("ffp_inbox_deliveries", "Inbox deliveries by outcome", ["instance", "outcome"], registry=r)
        self.uploads = Counter("ffp_uploads", "Intercepted uploads by outcome", ["instance", "outcome"], registry=r)
        self.background = Gauge("ffp_background_judgements", "Judgements running after their request was answered", registry=r)
        self.egress = Counter("ffp_egress_responses", "Egress proxy outcomes", ["outcome"], registry=r)
        self.audit_dropped = Counter("ffp_audit_dropped", "Audit records dropped (writer queue full)", registry=r)

    def watch_queues(self, depths: Callable[[], Mapping[str, int]]) -> None:
        """Report the scorer's queue depths (read at each scrape)."""
        self.registry.register(_QueueDepths(depths))

    def on_batch(self, model: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(size)
        self.batch_seconds.labels(model).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _QueueDepths(Collector):
    def __init__(self, depths: Callable[[], Mapping[str, int]]) -> None:
        self._depths = depths

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("ffp_classifier_queue_depth", "Frames waiting for a model", labels=["model"])
        for name, depth in sorted(self._depths().items()):
            family.add_metric([name], float(depth))
        yield family
