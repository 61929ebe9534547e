"""Prometheus metrics of one service, in its own registry (several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from nerft.serve.batcher import BatchStats

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# Route labels (anything else is "other") and error kinds by status code.
ROUTES = ("/", "/health", "/metrics", "/v1/models", "/v1/task", "/v1/ner", "/v1/feedback",
          "/v1/chat/completions", "/docs", "/openapi.json")
ERROR_KINDS = {401: "unauthorized", 403: "forbidden_host", 404: "not_found", 409: "conflict",
               413: "too_large", 422: "invalid", 499: "client_gone", 503: "unavailable",
               504: "timeout"}


class ServiceMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("nerft_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=r)
        self.in_progress = Gauge("nerft_requests_in_progress", "Requests being answered",
                                 ["route"], registry=r)
        self.latency = Histogram("nerft_request_seconds", "Request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_sentences = Histogram("nerft_batch_sentences", "Sentences per decode call",
                                         buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("nerft_batch_seconds", "Seconds per decode call",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.sentences = Counter("nerft_sentences", "Sentences decoded", registry=r)
        self.run_sentences = Counter("nerft_run_sentences", "Sentences answered, by served run",
                                     ["run"], registry=r)
        self.queue_depth = Gauge("nerft_queue_sentences", "Sentences waiting for the decoder",
                                 registry=r)
        self.errors = Counter("nerft_errors", "Rejected or failed requests by kind", ["kind"],
                              registry=r)

    def refused(self, path: str, status: int) -> None:
        """A request answered before it reached the app (the body cap)."""
        self.requests.labels(path if path in ROUTES else "other", str(status)).inc()
        self.errors.labels(ERROR_KINDS.get(status, "client_error")).inc()

    def batch_stats(self) -> BatchStats:
        def on_batch(n: int, seconds: float) -> None:
            self.batch_sentences.observe(n)
            self.batch_seconds.observe(seconds)
            self.sentences.inc(n)

        return BatchStats(on_batch=on_batch, on_depth=self.queue_depth.set,
                          on_error=lambda kind: self.errors.labels(kind).inc())

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
