"""The version-store's own metrics (``confbus_version_store_*``), beside the consumer's."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from confbus.runtime.metrics import metric_name


@dataclass
class StoreMetrics:
    changes: Counter
    batch_size: Histogram
    append_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> StoreMetrics:
        return cls(
            changes=Counter(
                metric_name("version-store", "changes"),
                "Changes decided, by outcome (stored, duplicate, rejected).",
                ["outcome"],
                registry=registry,
            ),
            batch_size=Histogram(
                metric_name("version-store", "batch_size"),
                "Changes per group commit.",
                buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
                registry=registry,
            ),
            append_seconds=Histogram(
                metric_name("version-store", "append_seconds"),
                "Time of one group commit in the store.",
                registry=registry,
            ),
        )
