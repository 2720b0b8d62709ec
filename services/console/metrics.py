"""The console's metrics: requests by route and status class, their time, open event streams,
and the audit-log events its rollout pages read."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from confbus.runtime.metrics import metric_name


class ConsoleMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            metric_name("console", "requests"),
            "HTTP requests, by route (an API op or a page) and status class (2xx, 4xx, 5xx).",
            ["route", "status"],
            registry=registry,
        )
        self.seconds = Histogram(
            metric_name("console", "request_seconds"),
            "Time to answer a request (an event stream: until its headers).",
            ["route"],
            registry=registry,
        )
        self.rollout_events_read = Counter(
            metric_name("console", "rollout_events_read"),
            "Audit-log events read to bring rollout pages up to date (each only once).",
            registry=registry,
        )
        self.streams = Gauge(
            metric_name("console", "event_streams"),
            "Server-Sent Event streams open now.",
            registry=registry,
        )

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, f"{status // 100}xx").inc()
        self.seconds.labels(route).observe(seconds)
