"""The version-store's own metrics (``confbus_version_store_*``), beside the consumer's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from prometheus_client import Counter, Histogram

from confbus.runtime.metrics import Metric, ServiceMetrics


@dataclass
class StoreMetrics(ServiceMetrics):
    SERVICE = "version-store"

    changes: Annotated[
        Counter,
        Metric("changes", "Changes decided, by outcome (stored, duplicate, rejected).", "outcome"),
    ]
    batch_size: Annotated[
        Histogram,
        Metric(
            "batch_size",
            "Changes per group commit.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        ),
    ]
    append_seconds: Annotated[
        Histogram, Metric("append_seconds", "Time of one group commit in the store.")
    ]
    leader_moves: Annotated[
        Counter,
        Metric(
            "leader_moves",
            "Leaders of CFG_CHANGES_ALT (or its consumer) moved off CFG_CHANGES' servers.",
        ),
    ]
