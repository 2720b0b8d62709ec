"""The rollbacker's Prometheus metrics (``confbus_rollbacker_*``; webhook metrics are declared
in ``notify``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from prometheus_client import Counter, Gauge, Histogram

from confbus.rollbacker.notify import WebhookMetrics
from confbus.runtime.metrics import Metric, ServiceMetrics


@dataclass
class RollbackerMetrics(ServiceMetrics):
    SERVICE = "rollbacker"

    alerts: Annotated[
        Counter,
        Metric(
            "alerts",
            "Alerts judged, by outcome (started, duplicate, ignored, cooldown, cap, busy, "
            "held, refused).",
            "outcome",
        ),
    ]
    rollbacks: Annotated[
        Counter,
        Metric(
            "rollbacks",
            "Rollbacks by outcome (started, completed, stuck, refused, resumed).",
            "outcome",
        ),
    ]
    rollback_seconds: Annotated[
        Histogram,
        Metric(
            "rollback_seconds",
            "From the start of a rollback to every batch restored and promoted.",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
        ),
    ]
    batch_seconds: Annotated[
        Histogram,
        Metric(
            "batch_seconds",
            "One batch: its atomic switch and its health check.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        ),
    ]
    active: Annotated[Gauge, Metric("active_rollbacks", "Rollbacks this replica is driving now.")]
    webhook: WebhookMetrics
