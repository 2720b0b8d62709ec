"""The coordinator's Prometheus metrics."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class CoordinatorMetrics:
    decisions: Counter
    takeovers: Counter
    fenced: Counter
    vote_seconds: Histogram
    oldest_in_doubt: Gauge
    leases_held: Gauge
    forwarded: Counter
    lost_leases: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> CoordinatorMetrics:
        return cls(
            decisions=Counter(
                "confbus_coordinator_decisions",
                "Decisions written, by outcome.",
                ["outcome"],
                registry=registry,
            ),
            takeovers=Counter(
                "confbus_coordinator_takeovers",
                "Namespaces this replica took over (epoch bumps).",
                registry=registry,
            ),
            fenced=Counter(
                "confbus_coordinator_fenced",
                "Decisions this replica could not write: a newer epoch existed.",
                registry=registry,
            ),
            vote_seconds=Histogram(
                "confbus_coordinator_vote_seconds",
                "Prepare sent to the last vote in (or the deadline).",
                registry=registry,
            ),
            oldest_in_doubt=Gauge(
                "confbus_coordinator_oldest_in_doubt_seconds",
                "Age of the oldest undecided transaction.",
                registry=registry,
            ),
            leases_held=Gauge(
                "confbus_coordinator_leases",
                "Namespaces whose lease this replica holds (it leads them).",
                registry=registry,
            ),
            forwarded=Counter(
                "confbus_coordinator_forwarded",
                "Switch requests forwarded to the replica leading their namespace.",
                registry=registry,
            ),
            lost_leases=Counter(
                "confbus_coordinator_lost_leases",
                "Switches cut short because this replica lost the namespace's lease.",
                registry=registry,
            ),
        )
