"""Helpers of the health-watcher tests: a stand-in version-store (its real API contract over
real NATS), samples, alert collection, reading a process's /metrics."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol, Self, TypeVar

import anyio
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro.service import Service
from prometheus_client.parser import text_string_to_metric_families

from confbus.runtime.api import Endpoint, serve_api, stop_api
from confbus.runtime.bus import Bus
from confbus.runtime.errors import NotFound
from confbus.runtime.http import http_get
from confbus.schemas import subjects
from confbus.schemas.api import store as store_api
from confbus.schemas.health import Alert, HealthSample, decode_alert
from confbus.schemas.policy import HealthRule, Policy

B = TypeVar("B", bound="OnTheBus")


@dataclass
class StoreStub:
    """Answers ``cfg.api.store.policy_get`` and ``cfg.api.store.namespaces`` from a dict the
    test edits — the version-store's contract, served over the real bus."""

    policies: dict[str, Policy] = field(default_factory=dict)
    service: Service | None = None

    async def _policy_get(self, req: store_api.PolicyGetRequest) -> Policy:
        policy = self.policies.get(req.namespace)
        if policy is None:
            raise NotFound(f"no namespace {req.namespace!r}")
        return policy

    async def _namespaces(self, _req: store_api.NamespacesRequest) -> store_api.NamespacesReply:
        return store_api.NamespacesReply(namespaces=sorted(self.policies))

    async def start(self, bus: Bus) -> StoreStub:
        self.service = await serve_api(
            bus,
            [
                Endpoint(store_api.POLICY_GET, self._policy_get),
                Endpoint(store_api.NAMESPACES, self._namespaces),
            ],
            partial=True,
        )
        return self

    async def stop(self) -> None:
        if self.service is not None:
            await stop_api(self.service)


class OnTheBus(Protocol):
    """A test's stand-in that serves or listens on the bus between ``start`` and ``stop``."""

    async def start(self, bus: Bus) -> Self: ...

    async def stop(self) -> None: ...


@contextlib.asynccontextmanager
async def started(stand_in: B, bus: Bus) -> AsyncIterator[B]:
    """``stand_in`` started on ``bus`` for the block, stopped however the block ends."""
    await stand_in.start(bus)
    try:
        yield stand_in
    finally:
        await stand_in.stop()


def rule(name: str, metric: str, op: str, threshold: float, **kw: float) -> HealthRule:
    return HealthRule(name=name, metric=metric, op=op, threshold=threshold, **kw)  # type: ignore[arg-type]


async def publish_sample(
    bus: Bus,
    ns: str,
    node: str,
    version: int | None,
    metrics: dict[str, float] | None = None,
    status_code: int | None = None,
    error: str = "",
) -> None:
    sample = HealthSample(
        namespace=ns,
        node=node,
        version=version,
        metrics=metrics or {},
        status_code=status_code,
        error=error,
    )
    await bus.publish(subjects.health(ns, node), sample)


@dataclass
class AlertLog:
    """Every alert *published* on cfg.alert.> (a core subscription: duplicates the stream
    would drop are seen too, so a doubled alert cannot hide)."""

    alerts: list[Alert] = field(default_factory=list)
    sub: Subscription | None = None
    _event: anyio.Event = field(default_factory=anyio.Event)

    async def start(self, bus: Bus) -> AlertLog:
        async def on_msg(msg: Msg) -> None:
            self.alerts.append(decode_alert(msg.data))
            self._event.set()
            self._event = anyio.Event()

        self.sub = await bus.nc.subscribe(subjects.ALERTS_ALL, cb=on_msg)
        return self

    async def stop(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()

    async def wait(self, match: Callable[[Alert], bool], timeout: float = 20.0) -> Alert:
        with anyio.fail_after(timeout):
            while True:
                for a in self.alerts:
                    if match(a):
                        return a
                await self._event.wait()

    def matching(self, match: Callable[[Alert], bool]) -> list[Alert]:
        return [a for a in self.alerts if match(a)]


async def metric(port: int, name: str, **labels: str) -> float:
    """The sum of a process's samples named ``name`` with these labels (0 if none)."""
    status, body = await http_get("127.0.0.1", port, "/metrics")
    assert status == 200
    total = 0.0
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            wanted = s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
            if wanted and not math.isnan(s.value):
                total += s.value
    return total
