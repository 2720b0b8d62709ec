"""The coordinator's Prometheus metrics (``confbus_coordinator_*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from prometheus_client import Counter, Gauge, Histogram

from confbus.runtime.metrics import Metric, ServiceMetrics


@dataclass
class CoordinatorMetrics(ServiceMetrics):
    SERVICE = "coordinator"

    decisions: Annotated[Counter, Metric("decisions", "Decisions written, by outcome.", "outcome")]
    takeovers: Annotated[
        Counter, Metric("takeovers", "Namespaces this replica took over (epoch bumps).")
    ]
    fenced: Annotated[
        Counter, Metric("fenced", "Decisions this replica could not write: a newer epoch existed.")
    ]
    prepares_refused: Annotated[
        Counter,
        Metric(
            "prepares_refused",
            "Prepares the stream refused: a newer epoch's marker was stored (the namespace was "
            "lost).",
        ),
    ]
    vote_seconds: Annotated[
        Histogram, Metric("vote_seconds", "Prepare sent to the last vote in (or the deadline).")
    ]
    oldest_in_doubt: Annotated[
        Gauge, Metric("oldest_in_doubt_seconds", "Age of the oldest undecided transaction.")
    ]
    leases_held: Annotated[
        Gauge, Metric("leases", "Namespaces whose lease this replica holds (it leads them).")
    ]
    forwarded: Annotated[
        Counter,
        Metric("forwarded", "Switch requests forwarded to the replica leading their namespace."),
    ]
    lost_leases: Annotated[
        Counter,
        Metric(
            "lost_leases", "Switches cut short because this replica lost the namespace's lease."
        ),
    ]
