"""A small confbus for the rollbacker's service tests: a real nats-server (the ``bus``
fixture), the real coordinator and rollbacker as processes, real agents (``NodeAgent``, in
this process, writing real files), and the fakes of ``fakes.py`` for the services that are
not under test.

Everything a test waits for is an event it subscribed to *before* acting (``EventTap``), or a
fact it polls with a deadline (``tests.helpers.eventually``) — never a sleep.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import anyio

from confbus.agent.node import Binding, NodeAgent, run_agents
from confbus.procs.nats import NatsServer
from confbus.procs.proc import Proc
from confbus.runtime.api import call
from confbus.runtime.bus import Bus, connect
from confbus.runtime.codec import encode
from confbus.runtime.http import http_get
from confbus.schemas import subjects
from confbus.schemas.api import txn as txn_api
from confbus.schemas.health import Alert
from confbus.schemas.policy import HealthRule, Policy, RollbackPolicy
from confbus.schemas.state import Ledger, decode_ledger, ledger_key
from confbus.schemas.streams import CFG_STATE
from tests.e2e.helpers import EventTap
from tests.helpers import eventually
from tests.rollbacker.fakes import FakeDist, FakeHealth, FakeStore

T = TypeVar("T")

NS = "web"
GOOD = b'{"fail_ratio": 0.0, "name": "good"}\n'
BAD = b'{"fail_ratio": 0.9, "name": "bad"}\n'

ROLLBACKER_ARGS = (
    "--lease",
    "3",
    "--verify-timeout",
    "2",
    "--verify-interval",
    "0.1",
    "--resume-interval",
    "0.5",
    "--webhook-backoff",
    "0.2",
    "--webhook-timeout",
    "1",
)


def policy(*, webhooks: Sequence[str] = (), rules: bool = True, **rollback: object) -> Policy:
    """The test namespace's policy; keyword arguments go to its ``RollbackPolicy``."""
    return Policy(
        namespace=NS,
        vote_timeout_s=2.0,
        health_rules=[HealthRule(name="errors", metric="error_rate", threshold=0.05)]
        if rules
        else [],
        rollback=RollbackPolicy(**rollback),  # type: ignore[arg-type]
        webhooks=list(webhooks),
    )


@dataclass
class World:
    bus: Bus
    url: str
    root: Path
    store: FakeStore
    dist: FakeDist
    health: FakeHealth
    agents: list[NodeAgent]
    tap: EventTap
    rollbacker: Proc | None = None
    procs: list[Proc] = field(default_factory=list)

    @property
    def nodes(self) -> list[str]:
        return [a.node for a in self.agents]

    def live_file(self, node: str) -> Path:
        return self.root / "nodes" / node / f"{NS}.json"

    def read(self, node: str) -> bytes | None:
        path = self.live_file(node)
        return path.read_bytes() if path.exists() else None

    def start_rollbacker(self, *extra: str, env: dict[str, str] | None = None) -> Proc:
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        proc = Proc.service(
            "rollbacker", self.url, logs, *ROLLBACKER_ARGS, *extra, env=env, name="rollbacker"
        )
        proc.start()
        self.rollbacker = proc
        self.procs.append(proc)
        return proc

    async def metric(self, name: str, labels: str = "") -> float:
        """A value from the rollbacker's /metrics (0 if the series does not exist yet)."""
        assert self.rollbacker is not None and self.rollbacker.ready is not None
        _, body = await http_get("127.0.0.1", self.rollbacker.ready["http_port"], "/metrics")
        series = f"{name}{{{labels}}}" if labels else name
        for line in body.decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    async def metric_at_least(self, name: str, labels: str, bound: float) -> bool:
        return await self.metric(name, labels) >= bound

    async def ledger(self) -> Ledger:
        kv = await self.bus.kv(CFG_STATE.name)
        try:
            entry = await kv.get(ledger_key(NS))
        except Exception:
            return Ledger(namespace=NS)
        return decode_ledger(entry.value or b"")

    async def switch(self, version: int, nodes: Sequence[str] | None = None) -> None:
        reply = await call(
            self.bus,
            txn_api.SWITCH,
            txn_api.SwitchRequest(
                namespace=NS, version=version, nodes=list(nodes or self.nodes), timeout_s=3.0
            ),
        )
        assert reply.outcome == "commit", reply
        await self.on_version(version, nodes)

    async def on_version(self, version: int, nodes: Sequence[str] | None = None) -> None:
        """Wait until the fake distributor has heard each node report ``version``."""
        want = list(nodes or self.nodes)
        await eventually(
            lambda: _true(all(self.dist.applied(NS, n) == version for n in want)),
            what=f"nodes on v{version}",
        )

    async def seed(self, good: bytes = GOOD, bad: bytes = BAD) -> tuple[int, int]:
        """v1 good (last known good), then v2 bad (production), on every node."""
        v1 = await self.store.add(NS, good, "good-1")
        await self.switch(v1)
        await self.store.promote(NS, v1)
        await self.store.mark_good(NS, v1)
        v2 = await self.store.add(NS, bad, "bad-2")
        await self.switch(v2)
        await self.store.promote(NS, v2)
        return v1, v2

    async def alert(self, alert_id: str, version: int | None = None, **kw: object) -> None:
        """Publish an alert *without* a message id, so a repeat really is delivered again."""
        a = Alert(alert_id=alert_id, namespace=NS, version=version, **kw)  # type: ignore[arg-type]
        await self.bus.js.publish(subjects.alert(NS), encode(a))


async def _true(value: bool) -> bool:
    return value


@asynccontextmanager
async def world(
    nats_server: NatsServer,
    bus: Bus,
    root: Path,
    nodes: int = 4,
    pol: Policy | None = None,
    start_rollbacker: bool = True,
) -> AsyncIterator[World]:
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    coordinator = Proc.service("coordinator", nats_server.url, logs).start()
    agents_bus = await connect(nats_server.url, name="agents")
    store = FakeStore(bus)
    store.set_policy(pol or policy())
    dist = FakeDist(bus)
    health = FakeHealth(bus)
    tap = EventTap()
    await bus.nc.subscribe(subjects.events_of(NS), cb=tap.on_event)
    await bus.nc.subscribe(subjects.alert(NS), cb=tap.on_alert)
    agents = [
        NodeAgent(
            node=f"n{i}",
            bindings=[Binding(NS, str(root / "nodes" / f"n{i}" / f"{NS}.json"))],
            state_dir=str(root / "nodes" / f"n{i}" / "state"),
            heartbeat_interval_s=0.2,
        )
        for i in range(1, nodes + 1)
    ]
    w = World(bus, nats_server.url, root, store, dist, health, agents, tap, procs=[coordinator])
    try:
        async with anyio.create_task_group() as tg:
            await store.start(tg)
            await dist.start()
            await health.start()
            await run_agents(agents_bus, agents, tg)
            if start_rollbacker:
                w.start_rollbacker()
            try:
                yield w
            finally:
                tg.cancel_scope.cancel()
    finally:
        for proc in reversed(w.procs):
            proc.stop()
        await store.stop()
        await dist.stop()
        await health.stop()
        await agents_bus.close()
