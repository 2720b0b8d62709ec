"""The historian's Prometheus metrics."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass
class HistorianMetrics:
    events: Counter
    checkpoints: Counter
    failures: Counter
    checkpoint_bytes: Gauge
    lag: Gauge
    namespaces: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> HistorianMetrics:
        return cls(
            events=Counter(
                "confbus_historian_events", "Events folded into fleet states.", registry=registry
            ),
            checkpoints=Counter(
                "confbus_historian_checkpoints",
                "Checkpoints written, by kind (kept: every --every events; tail: after --idle).",
                ["kind"],
                registry=registry,
            ),
            failures=Counter(
                "confbus_historian_checkpoint_failures",
                "Checkpoints that could not be written (readers then fold from an older one).",
                registry=registry,
            ),
            checkpoint_bytes=Gauge(
                "confbus_historian_checkpoint_bytes",
                "Size of the last checkpoint written (compressed).",
                registry=registry,
            ),
            lag=Gauge(
                "confbus_historian_lag_events",
                "Events stored in CFG_EVENTS and not folded yet.",
                registry=registry,
            ),
            namespaces=Gauge(
                "confbus_historian_namespaces",
                "Namespaces whose fleet is kept in memory.",
                registry=registry,
            ),
        )
