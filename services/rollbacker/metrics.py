"""The rollbacker's Prometheus metrics (webhook metrics live in ``notify``)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from confbus.rollbacker.notify import WebhookMetrics


@dataclass
class RollbackerMetrics:
    alerts: Counter
    rollbacks: Counter
    rollback_seconds: Histogram
    batch_seconds: Histogram
    active: Gauge
    webhook: WebhookMetrics

    @classmethod
    def create(cls, registry: CollectorRegistry) -> RollbackerMetrics:
        return cls(
            alerts=Counter(
                "confbus_rollbacker_alerts",
                "Alerts judged, by outcome (started, duplicate, ignored, cooldown, cap, busy, "
                "held, refused).",
                ["outcome"],
                registry=registry,
            ),
            rollbacks=Counter(
                "confbus_rollbacker_rollbacks",
                "Rollbacks by outcome (started, completed, stuck, refused, resumed).",
                ["outcome"],
                registry=registry,
            ),
            rollback_seconds=Histogram(
                "confbus_rollbacker_rollback_seconds",
                "From the start of a rollback to every batch restored and promoted.",
                buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
                registry=registry,
            ),
            batch_seconds=Histogram(
                "confbus_rollbacker_batch_seconds",
                "One batch: its atomic switch and its health check.",
                buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
                registry=registry,
            ),
            active=Gauge(
                "confbus_rollbacker_active_rollbacks",
                "Rollbacks this replica is driving now.",
                registry=registry,
            ),
            webhook=WebhookMetrics.create(registry),
        )
