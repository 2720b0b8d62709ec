"""The distributor's Prometheus metrics (``confbus_distributor_*``): small fixed label sets,
no node ids or versions as labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from prometheus_client import Counter, Gauge, Histogram

from confbus.runtime.metrics import Metric, ServiceMetrics


@dataclass
class DistributorMetrics(ServiceMetrics):
    SERVICE = "distributor"

    nodes: Annotated[Gauge, Metric("nodes", "Known nodes by liveness.", "liveness")]
    rollouts: Annotated[
        Counter,
        Metric(
            "rollouts",
            "Rollouts ended, by outcome (completed, failed, superseded, rolled_back).",
            "outcome",
        ),
    ]
    waves: Annotated[
        Counter,
        Metric("waves", "Wave attempts, by outcome (committed, aborted, retrying).", "outcome"),
    ]
    wave_switch_seconds: Annotated[
        Histogram,
        Metric(
            "wave_switch_seconds",
            "Time of one wave's atomic switch, as the distributor waits for it.",
        ),
    ]
    catchups: Annotated[
        Counter,
        Metric(
            "catchups",
            "Catch-ups and re-syncs of single nodes, by kind and outcome.",
            "kind",
            "outcome",
        ),
    ]
    failing_nodes: Annotated[
        Gauge,
        Metric(
            "failing_nodes",
            "Nodes whose catch-up or re-sync keeps failing (retried at the capped rate).",
        ),
    ]
    drift: Annotated[
        Counter,
        Metric("drift", "Drift detected: a live file whose sha256 is not its target version's."),
    ]
