"""In-process confbus around the distributor, on a real nats-server: the real coordinator and
distributor services (their ``main`` in this event loop), real agents (``NodeAgent`` writing
real files in a temp dir), and a small real version-store endpoint that keeps versions in
memory and speaks the ``cfg.api.store.*`` contract (the real store is exercised end to end in
tests/e2e)."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskGroup
from prometheus_client import CollectorRegistry

from confbus.agent.node import Binding, NodeAgent
from confbus.coordinator import service as coordinator_service
from confbus.distributor import service as distributor_service
from confbus.runtime.api import Endpoint, serve_api, stop_api
from confbus.runtime.bus import Bus, connect
from confbus.runtime.errors import NotFound
from confbus.runtime.events import emit
from confbus.runtime.http import HttpServer
from confbus.runtime.service import ServiceContext
from confbus.runtime.settings import Settings
from confbus.schemas.api import health as health_api
from confbus.schemas.api import store as store_api
from confbus.schemas.api.dist import RolloutInfo, decode_rollout_info
from confbus.schemas.events import AnyEvent, VersionLastGood, VersionPromoted
from confbus.schemas.policy import Policy
from confbus.schemas.versions import VersionInfo
from tests.helpers import eventually
from tests.versions import created, version_info

NS = "web"
HEARTBEAT_S = 0.2


def content_of(version: int) -> bytes:
    return f'{{"version": {version}, "pool": {version * 10}}}\n'.encode()


@dataclass
class MemoryStore:
    """The ``cfg.api.store.*`` ops the distributor and coordinator use, over a dict."""

    bus: Bus
    versions: dict[tuple[str, int], tuple[VersionInfo, bytes]] = field(default_factory=dict)
    policies: dict[str, Policy] = field(default_factory=dict)
    production: dict[str, int] = field(default_factory=dict)
    last_good: dict[str, int] = field(default_factory=dict)
    promotions: list[tuple[str, int]] = field(default_factory=list)
    # Every ``get`` as (namespace, ref, content), and a delay to play a slow store.
    asked: list[tuple[str, str, bool]] = field(default_factory=list)
    get_delay_s: float = 0.0

    def _find(self, ns: str, ref: str) -> tuple[VersionInfo, bytes]:
        if ref == "production":
            if ns not in self.production:
                raise NotFound(f"{ns} has no production version")
            ref = str(self.production[ns])
        elif ref == "last-good":
            if ns not in self.last_good:
                raise NotFound(f"{ns} has no last known good version")
            ref = str(self.last_good[ns])
        elif ref == "latest":
            numbers = [v for (n, v) in self.versions if n == ns]
            if not numbers:
                raise NotFound(f"{ns} has no version")
            ref = str(max(numbers))
        found = self.versions.get((ns, int(ref)))
        if found is None:
            raise NotFound(f"{ns} v{ref} does not exist")
        return found

    async def get(self, req: store_api.GetRequest) -> store_api.VersionReply:
        self.asked.append((req.namespace, req.ref, req.content))
        if self.get_delay_s:
            await anyio.sleep(self.get_delay_s)
        info, content = self._find(req.namespace, req.ref)
        return store_api.VersionReply(info=info, content=content if req.content else None)

    async def promote(self, req: store_api.PromoteRequest) -> store_api.VersionReply:
        info, content = self._find(req.namespace, str(req.version))
        prev = self.production.get(req.namespace)
        if prev is not None:
            p_info, p_content = self.versions[(req.namespace, prev)]
            self.versions[(req.namespace, prev)] = (
                msgspec.structs.replace(p_info, status="superseded"),
                p_content,
            )
        info = msgspec.structs.replace(info, status="production")
        self.versions[(req.namespace, req.version)] = (info, content)
        self.production[req.namespace] = req.version
        self.promotions.append((req.namespace, req.version))
        await emit(
            self.bus,
            VersionPromoted(
                namespace=req.namespace, actor=req.actor, version=req.version, previous=prev
            ),
        )
        return store_api.VersionReply(info=info)

    async def mark_good(self, req: store_api.MarkGoodRequest) -> store_api.VersionReply:
        info, _ = self._find(req.namespace, str(req.version))
        self.last_good[req.namespace] = req.version
        await emit(self.bus, VersionLastGood(namespace=req.namespace, version=req.version))
        return store_api.VersionReply(info=info)

    async def policy_get(self, req: store_api.PolicyGetRequest) -> Policy:
        return self.policies.get(req.namespace, Policy(namespace=req.namespace))

    def endpoints(self) -> list[Endpoint[Any, Any]]:
        return [
            Endpoint(store_api.GET, self.get),
            Endpoint(store_api.PROMOTE, self.promote),
            Endpoint(store_api.MARK_GOOD, self.mark_good),
            Endpoint(store_api.POLICY_GET, self.policy_get),
        ]

    async def publish(
        self,
        ns: str,
        content: bytes | None = None,
        *,
        strategy: str | None = None,
        selector: dict[str, str] | None = None,
        rollback_of: int | None = None,
        announce: bool = True,
    ) -> int:
        """Store the next version (approved) and announce it, as the version-store does
        (``announce=False``: not yet — ``announce`` does, as a late redelivery would)."""
        version = 1 + max((v for (n, v) in self.versions if n == ns), default=0)
        content = content if content is not None else content_of(version)
        info = version_info(
            ns, version, content, change_id=f"c{version}", author="ci", rollback_of=rollback_of
        )
        self.versions[(ns, version)] = (info, content)
        if announce:
            await self.announce(ns, version, strategy=strategy, selector=selector)
        return version

    async def announce(
        self,
        ns: str,
        version: int,
        *,
        strategy: str | None = None,
        selector: dict[str, str] | None = None,
    ) -> None:
        info, content = self.versions[(ns, version)]
        await emit(self.bus, created(info, content, strategy=strategy, selector=selector))


Verdicts = Callable[[health_api.VerdictRequest], Awaitable[health_api.VerdictReply]]


@dataclass
class Harness:
    root: Path
    url: str
    bus: Bus
    store: MemoryStore
    tg: TaskGroup
    agents: dict[str, tuple[NodeAgent, anyio.CancelScope]] = field(default_factory=dict)
    services: dict[str, anyio.CancelScope] = field(default_factory=dict)
    dist_args: list[str] = field(default_factory=list)
    events: list[AnyEvent] = field(default_factory=list)

    def live(self, node: str, ns: str = NS) -> Path:
        return self.root / "nodes" / node / f"{ns}.conf"

    def read(self, node: str, ns: str = NS) -> bytes | None:
        path = self.live(node, ns)
        return path.read_bytes() if path.exists() else None

    async def start_agent(
        self,
        node: str,
        labels: dict[str, str] | None = None,
        ns: str = NS,
        validate: str | None = None,
    ) -> NodeAgent:
        agent = NodeAgent(
            node=node,
            bindings=[Binding(ns, str(self.live(node, ns)))],
            state_dir=str(self.root / "nodes" / node / "state"),
            labels=labels or {},
            heartbeat_interval_s=HEARTBEAT_S,
            validate_cmd=validate,
        )
        await agent.load()
        scope = anyio.CancelScope()
        bus = await connect(self.url, name=f"agent-{node}")

        async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            try:
                with scope:
                    await agent.run(bus, task_status=task_status)
            finally:
                with anyio.CancelScope(shield=True):
                    await bus.close()

        await self.tg.start(run)
        self.agents[node] = (agent, scope)
        return agent

    def stop_agent(self, node: str) -> None:
        _, scope = self.agents.pop(node)
        scope.cancel()

    async def start_service(
        self, name: str, module: Any, argv: list[str], instance: str | None = None
    ) -> None:
        parser = argparse.ArgumentParser()
        module.add_args(parser)
        args = parser.parse_args(argv)
        bus = await connect(self.url, name=name)
        settings = Settings(nats_url=self.url, instance=instance or name)
        registry = CollectorRegistry()
        ctx = ServiceContext(name, settings, bus, registry, HttpServer(registry), args)
        scope = anyio.CancelScope()

        async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            try:
                with scope:
                    await module.main(ctx, task_status)
            finally:
                with anyio.CancelScope(shield=True):
                    await bus.close()

        await self.tg.start(run)
        self.services[instance or name] = scope

    async def start_distributor(self, *extra: str, instance: str = "dist-1") -> None:
        argv = [
            "--heartbeat-interval",
            str(HEARTBEAT_S),
            "--lease-ttl",
            "1.0",
            "--catchup-base",
            "0.2",
            "--catchup-cap",
            "1.0",
            "--status-event-gap",
            "0.5",
            *self.dist_args,
            *extra,
        ]
        await self.start_service("distributor", distributor_service, argv, instance)

    def stop_service(self, instance: str) -> None:
        self.services.pop(instance).cancel()

    async def serve_verdicts(self, verdicts: Verdicts) -> None:
        svc = await serve_api(self.bus, [Endpoint(health_api.VERDICT, verdicts)])
        self.tg.start_soon(_stop_later, svc)

    async def rollout(self, ns: str = NS) -> RolloutInfo | None:
        kv = await self.bus.kv("CFG_STATE")
        try:
            entry = await kv.get(f"rollout.{ns}")
        except Exception:
            return None
        return decode_rollout_info(entry.value) if entry.value else None

    async def wait_rollout_state(
        self, version: int, states: tuple[str, ...], timeout: float = 20.0, ns: str = NS
    ) -> RolloutInfo:
        async def probe() -> RolloutInfo | None:
            rec = await self.rollout(ns)
            return (
                rec if rec is not None and rec.version == version and rec.state in states else None
            )

        return await eventually(probe, timeout=timeout, what=f"v{version} rollout in {states}")

    def of_type(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait_event(self, kind: type[Any], timeout: float = 10.0, **match: Any) -> Any:
        """The first event of ``kind`` whose fields equal ``match`` (events are published
        after the state change they follow: wait for them, do not assume them)."""

        async def probe() -> Any:
            for e in self.of_type(kind):
                if all(getattr(e, k) == v for k, v in match.items()):
                    return e
            return None

        return await eventually(probe, timeout=timeout, what=f"{kind.__name__} {match}")

    async def wait_files(self, nodes: list[str], content: bytes, timeout: float = 15.0) -> None:
        async def probe() -> bool:
            return all(self.read(n) == content for n in nodes)

        await eventually(probe, timeout=timeout, what=f"files of {nodes}")


async def _stop_later(svc: Any) -> None:
    try:
        await anyio.sleep_forever()
    finally:
        await stop_api(svc)


@asynccontextmanager
async def harness(
    root: Path, url: str, *, dist_args: list[str] | None = None, start_distributor: bool = True
) -> AsyncIterator[Harness]:
    bus = await connect(url, name="harness")
    try:
        async with anyio.create_task_group() as tg:
            store = MemoryStore(bus)
            svc = await serve_api(bus, store.endpoints(), partial=True)
            h = Harness(root, url, bus, store, tg, dist_args=list(dist_args or []))

            async def collect(msg: Any) -> None:
                from confbus.schemas.events import decode_event

                try:
                    h.events.append(decode_event(msg.data))
                except (msgspec.ValidationError, msgspec.DecodeError):
                    pass

            await bus.nc.subscribe("cfg.event.>", cb=collect)
            await h.start_service(
                "coordinator",
                coordinator_service,
                ["--vote-timeout", "2", "--recovery-interval", "0.5"],
            )
            if start_distributor:
                await h.start_distributor()
            try:
                yield h
            finally:
                await stop_api(svc)
                tg.cancel_scope.cancel()
    finally:
        await bus.close()
