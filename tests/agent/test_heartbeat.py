"""The wait between an agent's heartbeats: never past the interval it advertises, and spread so
that agents started together do not keep beating together."""

from __future__ import annotations

import random

from confbus.agent.heartbeat import HEARTBEAT_SPREAD, heartbeat_delay


def test_never_longer_than_the_interval_nor_shorter_than_its_last_fifth() -> None:
    assert heartbeat_delay(2.0, draw=lambda: 0.0) == 2.0
    assert heartbeat_delay(2.0, draw=lambda: 0.999999) > 2.0 * (1 - HEARTBEAT_SPREAD)
    waits = [heartbeat_delay(2.0) for _ in range(1000)]
    assert all(2.0 * (1 - HEARTBEAT_SPREAD) < w <= 2.0 for w in waits)


def test_agents_started_together_drift_apart() -> None:
    # 100 agents beat at t=0 together; after ten beats each, their next beats are spread
    # over more than half of the interval (the same instant for all without the spread).
    rng = random.Random(7)
    next_beat = [sum(heartbeat_delay(1.0, draw=rng.random) for _ in range(10)) for _ in range(100)]
    assert max(next_beat) - min(next_beat) > 0.5
