"""Alerts from a real health-watcher process: hysteresis, resolution, counter resets, scraping
a real HTTP app, and exactly one evaluating replica."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from confbus.procs.proc import Proc
from confbus.runtime.bus import Bus
from confbus.runtime.codec import encode
from confbus.schemas import subjects
from confbus.schemas.health import Alert
from confbus.schemas.node import Heartbeat, NamespaceState
from confbus.schemas.policy import Policy, ScrapeTarget
from confbus.schemas.state import decode_lease, lease_key
from confbus.schemas.streams import CFG_STATE
from tests.health_watcher.app import MetricsApp
from tests.health_watcher.conftest import StartWatcher
from tests.health_watcher.support import AlertLog, StoreStub, metric, publish_sample, rule
from tests.helpers import eventually

NS = "web"
VERSION = 7


@dataclass
class Feeder:
    """Publishes one latency sample per node every ``every`` seconds: the load generator of
    these tests (not a synchronisation: tests wait on alerts and metrics)."""

    bus: Bus
    nodes: Sequence[str]
    latency_ms: float = 40.0
    every: float = 0.05
    sent: int = 0

    async def run(self) -> None:
        while True:
            for node in self.nodes:
                await publish_sample(
                    self.bus, NS, node, VERSION, {"latency_p99_ms": self.latency_ms}
                )
                self.sent += 1
            await anyio.sleep(self.every)

    async def one(self, node: str, latency_ms: float) -> None:
        await publish_sample(self.bus, NS, node, VERSION, {"latency_p99_ms": latency_ms})
        self.sent += 1


def latency_policy(consecutive: int = 3) -> Policy:
    return Policy(
        namespace=NS,
        health_rules=[
            rule(
                "p99",
                "latency_p99_ms",
                ">",
                500,
                window_s=1.0,
                min_samples=3,
                consecutive=consecutive,
            )
        ],
    )


def firing(a: Alert) -> bool:
    return a.state == "firing" and a.namespace == NS


async def evaluations(port: int) -> float:
    return await metric(port, "confbus_health_watcher_evaluations_total")


async def more_evaluations(port: int, n: int) -> None:
    """Wait until the watcher has evaluated ``n`` more times (each on fresh samples)."""
    start = await evaluations(port)

    async def done() -> bool:
        return await evaluations(port) >= start + n

    await eventually(done, timeout=30.0, what=f"{n} more evaluations")


async def test_one_bad_sample_never_alerts_a_sustained_signal_alerts_once_then_resolves(
    bus: Bus, store: StoreStub, alert_log: AlertLog, start_watcher: StartWatcher
) -> None:
    store.policies[NS] = latency_policy()
    port = (await start_watcher()).ready["http_port"]  # type: ignore[index]
    feeder = Feeder(bus, ["n1", "n2"])
    async with anyio.create_task_group() as tg:
        tg.start_soon(feeder.run)
        await more_evaluations(port, 5)  # healthy and judged

        # One bad sample among good ones: a bad evaluation at most, never an alert.
        await feeder.one("n1", 9000.0)
        await more_evaluations(port, 12)  # until it left the 1 s window
        assert alert_log.matching(firing) == []
        assert await metric(port, "confbus_health_watcher_evaluations_total", result="ok") > 0

        # Sustained: every sample bad.
        feeder.latency_ms = 2000.0
        alert = await alert_log.wait(firing)
        assert alert.rule == "p99" and alert.version == VERSION and alert.source == "health-watcher"
        assert alert.value == 2000.0 and alert.threshold == 500
        assert alert.nodes == ["n1", "n2"]
        assert alert.alert_id.startswith(f"{NS}:{VERSION}:p99:")
        await more_evaluations(port, 10)  # still bad, still judged: no second alert
        assert len(alert_log.matching(firing)) == 1

        feeder.latency_ms = 40.0
        resolved = await alert_log.wait(lambda a: a.state == "resolved")
        assert resolved.alert_id == alert.alert_id and resolved.version == VERSION
        assert len(alert_log.alerts) == 2
        tg.cancel_scope.cancel()

    async def counted() -> bool:  # the counter moves once the publish is acked
        firing_n = await metric(port, "confbus_health_watcher_alerts_total", state="firing")
        resolved_n = await metric(port, "confbus_health_watcher_alerts_total", state="resolved")
        return (firing_n, resolved_n) == (1, 1)

    await eventually(counted, what="the alerts counted once each")


async def _heartbeats(bus: Bus, node: str, version: int) -> None:
    hb = Heartbeat(node=node, namespaces=[NamespaceState(namespace=NS, applied_version=version)])
    while True:
        await bus.nc.publish(subjects.heartbeat(node), encode(hb))
        await anyio.sleep(0.2)


async def _traffic(app: MetricsApp, error_ratio: list[float]) -> None:
    while True:
        app.serve_traffic(100, error_ratio[0])
        await anyio.sleep(0.05)


async def test_error_rate_from_a_scraped_app_with_a_counter_reset(
    bus: Bus, store: StoreStub, alert_log: AlertLog, start_watcher: StartWatcher
) -> None:
    app = MetricsApp()
    ratio = [0.0]
    async with anyio.create_task_group() as tg:
        await app.start(tg)
        store.policies[NS] = Policy(
            namespace=NS,
            health_rules=[
                rule("errors", "error_rate", ">", 0.1, window_s=1.5, min_samples=3, consecutive=2)
            ],
            scrape_targets=[ScrapeTarget(url=app.url(), node="n1", interval_s=0.1)],
        )
        tg.start_soon(_heartbeats, bus, "n1", VERSION)
        tg.start_soon(_traffic, app, ratio)
        port = (await start_watcher()).ready["http_port"]  # type: ignore[index]

        async def scraped() -> bool:
            return await metric(port, "confbus_health_watcher_scrapes_total", outcome="ok") >= 10

        await eventually(scraped, timeout=20.0, what="the watcher scrapes the app")
        await more_evaluations(port, 5)
        # The app restarts: its counters drop to zero. A reset is not a negative error rate,
        # nor a burst of errors.
        app.restart()
        await more_evaluations(port, 10)
        assert alert_log.matching(firing) == []

        ratio[0] = 0.5
        alert = await alert_log.wait(firing)
        assert alert.rule == "errors" and alert.version == VERSION and alert.nodes == ["n1"]
        assert alert.value is not None and 0.1 < alert.value <= 0.5

        ratio[0] = 0.0
        resolved = await alert_log.wait(lambda a: a.state == "resolved")
        assert resolved.alert_id == alert.alert_id
        tg.cancel_scope.cancel()


async def _lease_holder(bus: Bus) -> str:
    kv = await bus.kv(CFG_STATE.name)
    entry = await kv.get(lease_key("health", NS))
    assert entry.value is not None
    lease = decode_lease(entry.value)
    return lease.holder if lease.expires_at.timestamp() > 0 else ""  # 1970: released


async def _who_evaluates(replicas: Sequence[Proc]) -> list[float]:
    return [await evaluations(p.ready["http_port"]) for p in replicas]  # type: ignore[index]


async def test_one_replica_evaluates_a_namespace_and_another_takes_over(
    bus: Bus, store: StoreStub, alert_log: AlertLog, start_watcher: StartWatcher
) -> None:
    store.policies[NS] = latency_policy(consecutive=2)
    # A longer lease than the other tests: a replica starved by a busy machine for over a
    # second must not hand the namespace over in the middle of this test.
    a = await start_watcher("--lease-ttl", "4", name="watcher-a")
    b = await start_watcher("--lease-ttl", "4", name="watcher-b")
    feeder = Feeder(bus, ["n1", "n2", "n3"])
    async with anyio.create_task_group() as tg:
        tg.start_soon(feeder.run)
        feeder.latency_ms = 3000.0
        alert = await alert_log.wait(firing)
        counts = await _who_evaluates([a, b])
        assert sorted(c > 0 for c in counts) == [False, True], counts
        holder, standby = (a, b) if counts[0] > 0 else (b, a)
        assert (await _lease_holder(bus)).endswith(f"-{holder.pid}")

        # Both replicas saw every sample; only one judged. Wait for more evaluations by the
        # holder: still one alert, and the standby never evaluated.
        await more_evaluations(holder.ready["http_port"], 10)  # type: ignore[index]
        assert len(alert_log.matching(firing)) == 1
        assert await evaluations(standby.ready["http_port"]) == 0  # type: ignore[index]

        # The holder dies; the standby takes over once the lease expires, keeps the alert's id
        # (the alert book in CFG_STATE), and resolves it when the signal recovers.
        await anyio.to_thread.run_sync(holder.kill)

        async def taken_over() -> bool:
            return (await _lease_holder(bus)).endswith(f"-{standby.pid}")

        await eventually(taken_over, what="the standby takes the lease")
        feeder.latency_ms = 40.0
        resolved = await alert_log.wait(lambda x: x.state == "resolved")
        assert resolved.alert_id == alert.alert_id
        assert len(alert_log.matching(firing)) == 1
        tg.cancel_scope.cancel()
