"""The alert book in a real ``CFG_STATE``: it carries the epoch of its writer's lease, so a replica
that lost the namespace (paused past its lease while another took over) can neither change the
book nor raise an alert, however sure it still is of its lease."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from confbus.health_watcher.alerts import Alerter
from confbus.health_watcher.metrics import WatcherMetrics
from confbus.health_watcher.rules import RuleOutcome
from confbus.runtime.bus import Bus
from confbus.runtime.kv import StateKV
from confbus.runtime.leases import RELEASED, Leases
from confbus.schemas.state import LeaseRecord, alert_book_key, decode_alert_book, lease_key
from confbus.schemas.streams import CFG_STATE
from tests.health_watcher.support import AlertLog, rule

pytestmark = pytest.mark.anyio

NS = "web"


def bad(now: float) -> RuleOutcome:
    r = rule("errors", "error_rate", ">", 0.05)
    return RuleOutcome(
        rule=r, value=0.5, ok=False, samples=3, window_start=now - 10, window_s=10, newest=now
    )


async def test_a_replica_that_lost_the_namespace_cannot_write_its_book_or_alert(
    bus: Bus, alert_log: AlertLog
) -> None:
    kv = await StateKV.open(bus, CFG_STATE)
    metrics = WatcherMetrics.create(CollectorRegistry())
    a = Leases(kv.kv, "health", "a", ttl_s=30.0)
    b = Leases(kv.kv, "health", "b", ttl_s=30.0)
    assert await a.acquire(NS) is not None
    by_a = Alerter(NS, bus, kv, a, metrics)
    await by_a.load()
    assert await by_a.fire(1, bad(time.time()), ["n1"])

    # a stalls; its lease runs out on the wall clock and b takes the namespace (epoch 2) and
    # resolves what a raised. a's own clock has not moved: it still believes it holds it.
    entry = await kv.kv.get(lease_key("health", NS))
    lapsed = LeaseRecord(holder="a", epoch=1, expires_at=RELEASED)
    await kv.cas(lease_key("health", NS), lapsed, entry.revision or 0)
    grant = await b.acquire(NS)
    assert grant is not None and grant.epoch == 2
    by_b = Alerter(NS, bus, kv, b, metrics)
    await by_b.load()
    assert await by_b.resolve(1, "errors", "recovered")
    assert a.held(NS)

    assert not await by_a.fire(2, bad(time.time()), ["n1"])
    await bus.nc.flush()
    book = (await kv.read(alert_book_key(NS), decode_alert_book)).value
    assert book is not None and book.epoch == 2 and book.firing == {}
    assert [(x.version, x.state) for x in alert_log.alerts] == [(1, "firing"), (1, "resolved")]
