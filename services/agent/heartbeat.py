"""When an agent's next heartbeat goes out."""

from __future__ import annotations

import random
from collections.abc import Callable

# Each wait between heartbeats is 80–100 % of the interval, at random (``heartbeat_delay``).
HEARTBEAT_SPREAD = 0.2


def heartbeat_delay(interval_s: float, draw: Callable[[], float] = random.random) -> float:
    """The wait before the next heartbeat. Never longer than the interval — what a heartbeat
    advertises and what the distributor judges liveness by — and random within its last fifth:
    agents started together (a fleet rebooted at once, or one process hosting many agents)
    would otherwise beat together for ever, every beat a burst of work for their hosts, the bus
    and the distributor at the same instant."""
    return interval_s * (1.0 - HEARTBEAT_SPREAD * draw())
