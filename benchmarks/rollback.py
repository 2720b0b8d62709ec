"""Rollback: alert → every node restored, 100 agents, ``all-at-once`` and ``batches:5``.

The real services run as processes: version-store (SQLite), coordinator, distributor and
rollbacker; 100 real ``NodeAgent``s write real files (fsynced) in 4 processes with 2 NATS
connections each. The bake is excluded: the health verdict is a stub answering ``pass`` at
once (the health-watcher would wait for samples), and the policy's ``batch_delay_s`` is 0.

One iteration: a bad version is published and rolled out everywhere (the distributor), then
an alert is published on ``cfg.alert.bench``; the figure is the time from that publish to
the moment the **last** node has announced ``node.applied`` for the rollback version — the
rollbacker's decision (ledger compare-and-set), the new version stored by the version-store,
the distributor's rollout ended, one atomic switch per batch, each batch's verdict.

Baseline, interleaved so that both see the same noise: one atomic switch of the same 100
nodes (``cfg.api.txn.switch`` → last ``node.applied``) to a stored version — the floor a
rollback of one batch cannot go under.

``python -m benchmarks.rollback [--smoke]`` prints the figures as JSON; ``python -m
benchmarks rollback`` puts them in the benchmark report.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
from nats.aio.msg import Msg

from benchmarks.fleets import AgentFleet, AgentSpec, wait_heartbeats
from benchmarks.processes import Context, open_bus, run_alone, version_store_available
from benchmarks.report import Figure, stats
from benchmarks.switch import publish_change
from confbus.runtime.api import Endpoint, call, serve_api, stop_api
from confbus.runtime.bus import Bus
from confbus.runtime.codec import encode
from confbus.schemas import subjects
from confbus.schemas.api import dist as dist_api
from confbus.schemas.api import health as health_api
from confbus.schemas.api import store as store_api
from confbus.schemas.api import txn as txn_api
from confbus.schemas.events import (
    NodeApplied,
    RollbackCompleted,
    RollbackStuck,
    RolloutCompleted,
    RolloutFailed,
    VersionCreated,
    VersionRejected,
    readable_event,
)
from confbus.schemas.health import Alert
from confbus.schemas.node import decode_heartbeat
from confbus.schemas.policy import HealthRule, Policy, RollbackPolicy

BENCH = "rollback"
NS = "bench"
STRATEGIES = ("all-at-once", "batches:5")


@dataclass(frozen=True)
class Size:
    agents: int
    iterations: int  # per strategy
    processes: int
    connections: int = 2


FULL = Size(100, 6, processes=4)
SMOKE = Size(6, 1, processes=1, connections=1)


def config(name: str, i: int, fail_ratio: float) -> bytes:
    return json.dumps({"fail_ratio": fail_ratio, "name": name, "i": i}).encode() + b"\n"


class Fleetwatch:
    """From the namespace's events (core subscription): which version each node applied last,
    when the last node reached a version, and the outcome of changes, rollouts, rollbacks."""

    def __init__(self, nodes: int) -> None:
        self.nodes = nodes
        self.applied: dict[str, int] = {}
        self.created: dict[str, VersionCreated | VersionRejected] = {}
        self.rollouts: dict[int, str] = {}
        self.rollbacks: dict[str, str] = {}  # rollback_id -> completed | stuck: reason
        self.rollback_versions: set[int] = set()
        self.last_good: dict[str, int | None] = {}  # node -> last known good (heartbeats)
        self.restored: int = 0  # the last rollback's new version
        self.changed = anyio.Event()

    async def on_heartbeat(self, msg: Msg) -> None:
        try:
            hb = decode_heartbeat(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return
        for st in hb.namespaces:
            if st.namespace == NS:
                self.last_good[hb.node] = st.last_good
        self.changed.set()
        self.changed = anyio.Event()

    def all_know_good(self, version: int) -> bool:
        return sum(1 for v in self.last_good.values() if v == version) >= self.nodes

    async def on_event(self, msg: Msg) -> None:
        if (ev := readable_event(msg.data)) is None:
            return
        if isinstance(ev, NodeApplied):
            self.applied[ev.node] = max(ev.version, self.applied.get(ev.node, 0))
        elif isinstance(ev, VersionCreated | VersionRejected):
            self.created[ev.change_id] = ev
            if isinstance(ev, VersionCreated) and ev.rollback_of is not None:
                self.rollback_versions.add(ev.version)
        elif isinstance(ev, RolloutCompleted):
            self.rollouts[ev.version] = "completed"
        elif isinstance(ev, RolloutFailed):
            self.rollouts[ev.version] = f"failed: {ev.reason}"
        elif isinstance(ev, RollbackCompleted):
            self.rollbacks[ev.rollback_id] = "completed"
            self.restored = ev.new_version
        elif isinstance(ev, RollbackStuck):
            self.rollbacks[ev.rollback_id] = f"stuck: {ev.reason}"
        self.changed.set()
        self.changed = anyio.Event()

    def all_beyond(self, version: int) -> bool:
        return sum(1 for v in self.applied.values() if v > version) >= self.nodes

    def all_on(self, version: int) -> bool:
        return sum(1 for v in self.applied.values() if v >= version) >= self.nodes

    async def until(self, probe: Any, timeout: float, what: str) -> None:
        try:
            with anyio.fail_after(timeout):
                while not probe():
                    await self.changed.wait()
        except TimeoutError:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}") from None


async def store_change(
    bus: Bus, watch: Fleetwatch, content: bytes, *, rollback_of: int | None = None
) -> int:
    change_id = f"bench-{secrets.token_hex(6)}"
    await publish_change(bus, NS, change_id, content, rollback_of=rollback_of)
    await watch.until(lambda: change_id in watch.created, 30, f"change {change_id} stored")
    ev = watch.created[change_id]
    if not isinstance(ev, VersionCreated):
        raise RuntimeError(f"change rejected: {ev.reason}")
    return ev.version


async def set_policy(bus: Bus, strategy: str) -> None:
    policy = Policy(
        namespace=NS,
        strategy="all-at-once",
        bake_s=0.0,
        vote_timeout_s=10.0,
        # A rule, so that the rollbacker asks for a verdict after every batch (the stub's).
        health_rules=[HealthRule(name="errors", metric="error_rate", threshold=0.05)],
        rollback=RollbackPolicy(
            strategy=strategy, batch_delay_s=0.0, cooldown_s=0.0, max_per_window=10_000
        ),
    )
    await call(bus, store_api.POLICY_SET, store_api.PolicySetRequest(policy=policy))


async def live_nodes(bus: Bus) -> int:
    try:
        reply = await call(bus, dist_api.STATUS, dist_api.StatusRequest(namespace=NS))  # fmt: skip
    except Exception:
        return 0
    return sum(1 for n in reply.nodes if n.liveness == "live")


@dataclass
class Samples:
    rollback: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STRATEGIES})
    switch: list[float] = field(default_factory=list)


async def measure(ctx: Context, size: Size) -> tuple[Samples, dict[str, Any]]:
    nats = ctx.start_nats()
    bus = await open_bus(nats.url)
    try:
        return await _measure(ctx, size, nats.url, bus)
    finally:
        await bus.close()


async def _measure(ctx: Context, size: Size, url: str, bus: Bus) -> tuple[Samples, dict[str, Any]]:
    store_db = ctx.path("store") / "store.db"
    ctx.service("version_store", url, "--store", f"sqlite:///{store_db}")
    ctx.service("coordinator", url)
    ctx.service("distributor", url, "--heartbeat-interval", "1.0")
    ctx.service("rollbacker", url, "--verify-interval", "0.05")
    nodes = [f"n{i:03d}" for i in range(size.agents)]
    watch = Fleetwatch(size.agents)

    async def verdict(req: health_api.VerdictRequest) -> health_api.VerdictReply:
        # Rollback versions pass at once (the bake is excluded). Anything else has no data,
        # so the distributor never makes a bad version the last known good.
        if req.version in watch.rollback_versions:
            return health_api.VerdictReply(verdict="pass", samples=1, healthy_nodes=list(req.nodes))
        return health_api.VerdictReply(verdict="no_data", unknown_nodes=list(req.nodes))

    health = await serve_api(bus, [Endpoint(health_api.VERDICT, verdict)])
    await bus.nc.subscribe(subjects.events_of(NS), cb=watch.on_event)
    await bus.nc.subscribe(subjects.HEARTBEATS_ALL, cb=watch.on_heartbeat)
    fleet = AgentFleet(
        ctx,
        url,
        ctx.path("fleet"),
        [AgentSpec(n, (NS,)) for n in nodes],
        processes=size.processes,
        connections=size.connections,
        heartbeat_interval=1.0,
    )
    fleet.start()
    ctx.on_close(fleet.stop)
    samples = Samples()
    try:
        await wait_heartbeats(bus, nodes)
        await set_policy(bus, "all-at-once")
        with anyio.fail_after(60):  # the distributor must see every agent live
            while True:
                if await live_nodes(bus) >= size.agents:
                    break
                await anyio.sleep(0.2)
        good = await store_change(bus, watch, config("good", 0, 0.0))
        await watch.until(lambda: watch.rollouts.get(good) == "completed", 60, "v1 rolled out")
        good_req = store_api.MarkGoodRequest(namespace=NS, version=good, actor="bench")
        await call(bus, store_api.MARK_GOOD, good_req)
        for i in range(size.iterations):
            for strategy in STRATEGIES:
                samples.rollback[strategy].append(await one_rollback(bus, watch, strategy, i))
                samples.switch.append(await one_switch(bus, watch, nodes, good))
    finally:
        await stop_api(health)
    params = {
        "agents": size.agents,
        "agent_processes": fleet.describe(),
        "iterations": size.iterations,
        "bake": "excluded (verdict stub answers pass at once; batch_delay_s 0)",
    }
    return samples, params


async def one_rollback(bus: Bus, watch: Fleetwatch, strategy: str, i: int) -> float:
    await set_policy(bus, strategy)
    bad = await store_change(bus, watch, config("bad", i, 0.9))
    await watch.until(lambda: watch.all_on(bad), 60, f"bad v{bad} everywhere")
    await watch.until(lambda: bad in watch.rollouts, 60, f"rollout of v{bad} ended")
    alert = Alert(
        alert_id=f"bench-{secrets.token_hex(6)}",
        namespace=NS,
        version=bad,
        rule="errors",
        value=0.9,
        threshold=0.05,
        source="health-watcher",
    )
    ended = len(watch.rollbacks)
    started = time.perf_counter()
    await bus.js.publish(subjects.alert(NS), encode(alert))
    await watch.until(lambda: watch.all_beyond(bad), 60, f"every node back from v{bad}")
    seconds = time.perf_counter() - started
    # Let it finish (promote) before the next round.
    await watch.until(lambda: len(watch.rollbacks) > ended, 60, "the rollback to end")
    if not _done(watch):
        raise RuntimeError(f"a rollback did not complete: {watch.rollbacks}")
    # Every batch passed with data, so the rollback version became the last known good and
    # every agent records it (an fsync each): let that finish before the next measurement.
    restored = watch.restored
    await watch.until(lambda: watch.all_know_good(restored), 30, "agents recorded last good")
    return seconds


def _done(watch: Fleetwatch) -> bool:
    return all(v == "completed" for v in watch.rollbacks.values())


async def one_switch(bus: Bus, watch: Fleetwatch, nodes: list[str], good: int) -> float:
    """The baseline: one atomic switch of every node to a stored version (a ``rollback_of``
    version: the distributor leaves those alone, so this switch is the only one)."""
    version = await store_change(bus, watch, config("good", 0, 0.0), rollback_of=good)
    started = time.perf_counter()
    reply = await call(
        bus,
        txn_api.SWITCH,
        txn_api.SwitchRequest(namespace=NS, version=version, nodes=nodes, timeout_s=10.0),
        timeout=40.0,
    )
    if reply.outcome != "commit":
        raise RuntimeError(f"baseline switch aborted: {reply.votes[:3]}")
    await watch.until(lambda: watch.all_on(version), 60, f"every node on v{version}")
    seconds = time.perf_counter() - started
    # Production follows, so the next bad version is rolled out over this one.
    promote = store_api.PromoteRequest(namespace=NS, version=version, actor="bench")
    await call(bus, store_api.PROMOTE, promote)
    return seconds


async def run(ctx: Context) -> list[Figure]:
    if not version_store_available():
        ctx.skipped.append("the version-store service does not exist yet")
        return []
    size = SMOKE if ctx.smoke else FULL
    samples, params = await measure(ctx, size)
    baseline = stats([s * 1000 for s in samples.switch])
    figures = []
    for strategy in STRATEGIES:
        fig = Figure(
            benchmark=BENCH,
            name=f"alert → {size.agents} nodes restored, {strategy}",
            unit="ms",
            value=stats([s * 1000 for s in samples.rollback[strategy]]),
            baseline=baseline,
            baseline_name=f"one atomic switch of {size.agents} nodes",
            params={**params, "strategy": strategy},
            notes="" if strategy == "all-at-once" else "five atomic switches and five verdicts",
        )
        if strategy == "all-at-once" and not ctx.smoke:
            fig.target_median(1000.0)
        figures.append(fig)
    return figures


def main(argv: list[str] | None = None) -> int:
    return run_alone(BENCH, run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
