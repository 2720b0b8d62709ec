"""The console's metrics: requests by route and status class, their time, open event streams,
and the audit-log events its rollout pages read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from prometheus_client import Counter, Gauge, Histogram

from confbus.runtime.metrics import Metric, ServiceMetrics


@dataclass
class ConsoleMetrics(ServiceMetrics):
    SERVICE = "console"

    requests: Annotated[
        Counter,
        Metric(
            "requests",
            "HTTP requests, by route (an API op or a page) and status class (2xx, 4xx, 5xx).",
            "route",
            "status",
        ),
    ]
    seconds: Annotated[
        Histogram,
        Metric(
            "request_seconds",
            "Time to answer a request (an event stream: until its headers).",
            "route",
        ),
    ]
    rollout_events_read: Annotated[
        Counter,
        Metric(
            "rollout_events_read",
            "Audit-log events read to bring rollout pages up to date (each only once).",
        ),
    ]
    streams: Annotated[Gauge, Metric("event_streams", "Server-Sent Event streams open now.")]

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, f"{status // 100}xx").inc()
        self.seconds.labels(route).observe(seconds)
