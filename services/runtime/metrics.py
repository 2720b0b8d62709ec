"""Prometheus metrics: one injected ``CollectorRegistry`` per service, names
``confbus_<service>_<noun>_<unit>``, small fixed label sets (no node ids, no versions)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram


def metric_name(service: str, noun: str) -> str:
    return f"confbus_{service.replace('-', '_')}_{noun}"


@dataclass
class ConsumerMetrics:
    messages: Counter
    handle_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry, service: str, consumer: str) -> ConsumerMetrics:
        prefix = metric_name(service, consumer.replace("-", "_").lower())
        return cls(
            messages=Counter(
                f"{prefix}_messages",  # exposed as ..._messages_total
                "Messages consumed, by outcome (acked, retried, dead_lettered, skipped).",
                ["outcome"],
                registry=registry,
            ),
            handle_seconds=Histogram(
                f"{prefix}_handle_seconds",
                "Time to handle one fetched batch.",
                registry=registry,
            ),
        )
