"""The health-watcher's Prometheus metrics (``confbus_health_watcher_*``): small fixed label
sets — no namespace, node or version labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from prometheus_client import Counter, Gauge

from confbus.runtime.metrics import Metric, ServiceMetrics


@dataclass
class WatcherMetrics(ServiceMetrics):
    SERVICE = "health-watcher"

    samples: Annotated[
        Counter,
        Metric(
            "samples",
            "Health samples read from CFG_HEALTH, by outcome (accepted, invalid, impostor).",
            "outcome",
        ),
    ]
    evaluations: Annotated[
        Counter,
        Metric(
            "evaluations",
            "Rule evaluations of the namespaces this replica leads, by result (ok, bad, no_data).",
            "result",
        ),
    ]
    alerts: Annotated[
        Counter,
        Metric(
            "alerts",
            "Alerts published on cfg.alert.<ns>, by state and source "
            "(rules, alertmanager); duplicates the stream dropped are not counted.",
            "state",
            "source",
        ),
    ]
    verdicts: Annotated[
        Counter,
        Metric(
            "verdicts",
            "Verdicts given on cfg.api.health.verdict, by result (pass, fail, no_data).",
            "result",
        ),
    ]
    receiver_requests: Annotated[
        Counter,
        Metric("receiver_requests", "Alertmanager webhook requests, by HTTP status.", "status"),
    ]
    scrapes: Annotated[
        Counter,
        Metric(
            "scrapes", "Scrapes of the policies' scrape targets, by outcome (ok, error).", "outcome"
        ),
    ]
    leases: Annotated[
        Gauge, Metric("leases", "Namespaces this replica holds the evaluation lease of.")
    ]
