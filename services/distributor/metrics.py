"""The distributor's Prometheus metrics (``confbus_distributor_*``): small fixed label sets,
no node ids or versions as labels."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class DistributorMetrics:
    nodes: Gauge
    rollouts: Counter
    waves: Counter
    wave_switch_seconds: Histogram
    catchups: Counter
    failing_nodes: Gauge
    drift: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> DistributorMetrics:
        return cls(
            nodes=Gauge(
                "confbus_distributor_nodes",
                "Known nodes by liveness.",
                ["liveness"],
                registry=registry,
            ),
            rollouts=Counter(
                "confbus_distributor_rollouts",
                "Rollouts ended, by outcome (completed, failed, superseded, rolled_back).",
                ["outcome"],
                registry=registry,
            ),
            waves=Counter(
                "confbus_distributor_waves",
                "Wave attempts, by outcome (committed, aborted, retrying).",
                ["outcome"],
                registry=registry,
            ),
            wave_switch_seconds=Histogram(
                "confbus_distributor_wave_switch_seconds",
                "Time of one wave's atomic switch, as the distributor waits for it.",
                registry=registry,
            ),
            catchups=Counter(
                "confbus_distributor_catchups",
                "Catch-ups and re-syncs of single nodes, by kind and outcome.",
                ["kind", "outcome"],
                registry=registry,
            ),
            failing_nodes=Gauge(
                "confbus_distributor_failing_nodes",
                "Nodes whose catch-up or re-sync keeps failing (retried at the capped rate).",
                registry=registry,
            ),
            drift=Counter(
                "confbus_distributor_drift",
                "Drift detected: a live file whose sha256 is not its target version's.",
                registry=registry,
            ),
        )
