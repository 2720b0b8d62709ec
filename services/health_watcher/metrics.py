"""The health-watcher's Prometheus metrics (``confbus_health_watcher_*``): small fixed label
sets — no namespace, node or version labels."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from confbus.runtime.metrics import metric_name

SERVICE = "health-watcher"


@dataclass
class WatcherMetrics:
    samples: Counter
    evaluations: Counter
    alerts: Counter
    verdicts: Counter
    receiver_requests: Counter
    scrapes: Counter
    leases: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> WatcherMetrics:
        def name(noun: str) -> str:
            return metric_name(SERVICE, noun)

        return cls(
            samples=Counter(
                name("samples"),
                "Health samples read from CFG_HEALTH, by outcome (accepted, invalid, impostor).",
                ["outcome"],
                registry=registry,
            ),
            evaluations=Counter(
                name("evaluations"),
                "Rule evaluations of the namespaces this replica leads, by result "
                "(ok, bad, no_data).",
                ["result"],
                registry=registry,
            ),
            alerts=Counter(
                name("alerts"),
                "Alerts published on cfg.alert.<ns>, by state and source "
                "(rules, alertmanager); duplicates the stream dropped are not counted.",
                ["state", "source"],
                registry=registry,
            ),
            verdicts=Counter(
                name("verdicts"),
                "Verdicts given on cfg.api.health.verdict, by result (pass, fail, no_data).",
                ["result"],
                registry=registry,
            ),
            receiver_requests=Counter(
                name("receiver_requests"),
                "Alertmanager webhook requests, by HTTP status.",
                ["status"],
                registry=registry,
            ),
            scrapes=Counter(
                name("scrapes"),
                "Scrapes of the policies' scrape targets, by outcome (ok, error).",
                ["outcome"],
                registry=registry,
            ),
            leases=Gauge(
                name("leases"),
                "Namespaces this replica holds the evaluation lease of.",
                registry=registry,
            ),
        )
