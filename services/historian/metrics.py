"""The historian's Prometheus metrics (``confbus_historian_*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from prometheus_client import Counter, Gauge

from confbus.runtime.metrics import Metric, ServiceMetrics


@dataclass
class HistorianMetrics(ServiceMetrics):
    SERVICE = "historian"

    events: Annotated[Counter, Metric("events", "Events folded into fleet states.")]
    checkpoints: Annotated[
        Counter,
        Metric(
            "checkpoints",
            "Checkpoints written, by kind (kept: every --every events; tail: after --idle).",
            "kind",
        ),
    ]
    failures: Annotated[
        Counter,
        Metric(
            "checkpoint_failures",
            "Checkpoints that could not be written (readers then fold from an older one).",
        ),
    ]
    checkpoint_bytes: Annotated[
        Gauge, Metric("checkpoint_bytes", "Size of the last checkpoint written (compressed).")
    ]
    lag: Annotated[Gauge, Metric("lag_events", "Events stored in CFG_EVENTS and not folded yet.")]
    namespaces: Annotated[Gauge, Metric("namespaces", "Namespaces whose fleet is kept in memory.")]
