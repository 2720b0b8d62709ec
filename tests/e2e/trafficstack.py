"""A whole confbus (real nats-server, every service and agent as processes, ``stack.py``) with a
real app behind its nodes (``traffic_app.py``) that the module's real Prometheus scrapes
(``promstack.py``), and the health-watcher's Alertmanager receiver on the port the module's
Alertmanager posts to."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from confbus import Client
from confbus.schemas import subjects
from confbus.schemas.events import AnyEvent
from confbus.schemas.policy import HealthRule
from tests.e2e.promstack import PromStack
from tests.e2e.stack import Stack, start_stack
from tests.e2e.traffic_app import TrafficApp
from tests.helpers import eventually

SERVICES = ("version_store", "coordinator", "distributor", "rollbacker")
WATCHER_ARGS = ("--policy-ttl", "0.2", "--eval-interval", "0.2")

# PromQL over the app's counters, templated by the health-watcher (promql.py).
SELECTOR = 'confbus_namespace="{{namespace}}",confbus_node=~"{{nodes}}"'
ERROR_RATIO = (
    f"sum(rate(app_errors_total{{{SELECTOR}}}[{{{{window}}}}]))"
    f" / sum(rate(app_requests_total{{{SELECTOR}}}[{{{{window}}}}]))"
)
REQUESTS = f"sum(increase(app_requests_total{{{SELECTOR}}}[{{{{window}}}}]))"


def error_ratio_rule(name: str, threshold: float, window_s: float, **more: Any) -> HealthRule:
    """A rule on the app's error ratio in Prometheus (``ERROR_RATIO``), judged only once the
    window holds at least 20 requests (``REQUESTS``)."""
    return HealthRule(
        name=name,
        metric="error_ratio",
        query=ERROR_RATIO,
        samples_query=REQUESTS,
        min_samples=20,
        threshold=threshold,
        window_s=window_s,
        **more,
    )


@dataclass
class World:
    stack: Stack
    client: Client
    app: TrafficApp
    namespace: str
    nodes: Sequence[str]

    def files_hold(self, content: bytes) -> bool:
        return all(self.stack.agents[n].read(self.namespace) == content for n in self.nodes)

    async def events(self, kind: str) -> list[AnyEvent]:
        out = []
        async for item in self.client.events(subjects.event(self.namespace, kind)):
            if item.event is not None:
                out.append(item.event)
        return out

    async def wait_event(self, kind: str, timeout: float = 60.0) -> list[AnyEvent]:
        async def probe() -> list[AnyEvent]:
            return await self.events(kind)

        return await eventually(probe, timeout=timeout, every=0.2, what=kind)

    async def watcher_metric(self, series: str) -> float:
        return await self.stack.metric("health_watcher", series)


def _start(root: Path, receiver_port: int, namespace: str, nodes: Sequence[str]) -> Stack:
    stack = start_stack(root, services=SERVICES)
    try:
        stack.start_service(
            "health_watcher", "--alertmanager-port", str(receiver_port), *WATCHER_ARGS
        )
        stack.start_agents(nodes, (namespace,))
    except BaseException:
        stack.stop()
        raise
    return stack


@asynccontextmanager
async def traffic_world(
    root: Path, prom: PromStack, namespace: str, nodes: Sequence[str]
) -> AsyncIterator[World]:
    stack = await anyio.to_thread.run_sync(_start, root, prom.receiver_port, namespace, nodes)
    try:
        app = TrafficApp({n: stack.agents[n].files[namespace] for n in nodes})
        async with anyio.create_task_group() as tg:
            port = await app.start(tg)
            prom.scrape(namespace, port, {n: {"confbus_namespace": namespace} for n in nodes})

            async def up() -> bool:
                return await anyio.to_thread.run_sync(prom.targets_up, nodes)

            await eventually(up, timeout=30, every=0.2, what="Prometheus scraping every node")
            async with Client(stack.url) as client:
                yield World(stack, client, app, namespace, nodes)
            tg.cancel_scope.cancel()
    finally:
        prom.unscrape(namespace)
        await anyio.to_thread.run_sync(stack.stop)
