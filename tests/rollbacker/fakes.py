"""Small real stand-ins for the services the rollbacker talks to, served on the real bus
(``nats.micro`` endpoints and a real ``CFG_CHANGES`` consumer), for the service tests that must
not depend on the version-store, distributor and health-watcher being finished. They speak the
contracts in ``schemas/api``; the end-to-end tests use the real services.

- ``FakeStore``: versions in memory; consumes ``cfg.change.*``; stores a change with
  ``rollback_of`` as ``approved`` at once; answers get / promote / mark_good / policy_get /
  change_status; emits ``version.created`` / ``promoted`` / ``last_good``.
- ``FakeDist``: live nodes and their applied versions from the agents' real heartbeats;
  answers status and records abort requests.
- ``FakeHealth``: verdicts decided by a test function; records every request.
- ``webhook_receiver``: an HTTP server that keeps every JSON body posted to its path.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskGroup
from nats.aio.msg import Msg
from nats.micro.service import Service
from prometheus_client import CollectorRegistry

from confbus.runtime.api import Endpoint, serve_api, stop_api
from confbus.runtime.bus import Bus
from confbus.runtime.consumer import Consumer, per_message
from confbus.runtime.errors import Conflict, InvalidInput, NotFound
from confbus.runtime.events import emit
from confbus.runtime.http import HttpServer, Request, Response
from confbus.runtime.metrics import ConsumerMetrics
from confbus.schemas import subjects
from confbus.schemas.api import dist as dist_api
from confbus.schemas.api import health as health_api
from confbus.schemas.api import store as store_api
from confbus.schemas.base import utcnow
from confbus.schemas.changes import ChangeProposed, decode_change
from confbus.schemas.events import VersionLastGood, VersionPromoted
from confbus.schemas.node import decode_heartbeat
from confbus.schemas.policy import Policy
from confbus.schemas.streams import CFG_CHANGES
from confbus.schemas.versions import VersionInfo, VersionStatus
from confbus.version_store.changes import decide
from confbus.version_store.errors import InvalidConfig
from tests.versions import created, version_info


@dataclass
class _Version:
    info: VersionInfo
    content: bytes


@dataclass
class FakeStore:
    bus: Bus
    versions: dict[str, list[_Version]] = field(default_factory=dict)
    production: dict[str, int] = field(default_factory=dict)
    last_good: dict[str, int] = field(default_factory=dict)
    policies: dict[str, Policy] = field(default_factory=dict)
    changes: dict[tuple[str, str], int] = field(default_factory=dict)
    promotes: list[tuple[str, int, str]] = field(default_factory=list)
    marks: list[tuple[str, int, str]] = field(default_factory=list)  # (ns, version, reason)
    svc: Service | None = None

    # -- test set-up ------------------------------------------------------------------------

    def set_policy(self, policy: Policy) -> None:
        self.policies[policy.namespace] = policy

    async def add(
        self,
        ns: str,
        content: bytes,
        change_id: str,
        *,
        rollback_of: int | None = None,
        status: VersionStatus = "approved",
    ) -> int:
        existing = self.changes.get((ns, change_id))
        if existing is not None:
            return existing
        items = self.versions.setdefault(ns, [])
        version = len(items) + 1
        info = version_info(
            ns,
            version,
            content,
            change_id=change_id,
            author="test",
            status=status,
            rollback_of=rollback_of,
        )
        items.append(_Version(info, content))
        self.changes[(ns, change_id)] = version
        await emit(self.bus, created(info, content), msg_id=f"created:{ns}:{version}")
        return version

    async def promote(self, ns: str, version: int, actor: str = "test") -> None:
        previous = self.production.get(ns)
        for v in self.versions[ns]:
            if v.info.version == version:
                v.info = msgspec.structs.replace(v.info, status="production")
            elif v.info.version == previous:
                v.info = msgspec.structs.replace(v.info, status="superseded")
        self.production[ns] = version
        self.promotes.append((ns, version, actor))
        await emit(
            self.bus,
            VersionPromoted(namespace=ns, actor=actor, version=version, previous=previous),
            msg_id=f"promoted:{ns}:{version}:{time.monotonic_ns()}",
        )

    async def mark_good(self, ns: str, version: int, actor: str = "test", reason: str = "") -> None:
        previous = self.last_good.get(ns, 0)
        self.last_good[ns] = version
        self.marks.append((ns, version, reason))
        await emit(
            self.bus,
            VersionLastGood(namespace=ns, actor=actor, reason=reason, version=version),
            msg_id=f"last_good:{ns}:{version}:{previous}",
        )

    def content(self, ns: str, version: int) -> bytes:
        return self.versions[ns][version - 1].content

    def info(self, ns: str, version: int) -> VersionInfo:
        return self.versions[ns][version - 1].info

    def newest(self, ns: str) -> int:
        return len(self.versions.get(ns, []))

    # -- the service ------------------------------------------------------------------------

    def _resolve(self, ns: str, ref: str) -> _Version:
        items = self.versions.get(ns, [])
        number: int | None
        if ref == "latest":
            number = len(items) or None
        elif ref == "production":
            number = self.production.get(ns)
        elif ref == "last-good":
            number = self.last_good.get(ns)
        else:
            number = int(ref)
        if number is None or not 1 <= number <= len(items):
            raise NotFound(f"{ns}: {ref} names no version")
        v = items[number - 1]
        return _Version(
            msgspec.structs.replace(v.info, last_good=self.last_good.get(ns) == number), v.content
        )

    async def start(self, tg: TaskGroup) -> None:
        async def get(req: store_api.GetRequest) -> store_api.VersionReply:
            v = self._resolve(req.namespace, req.ref)
            return store_api.VersionReply(info=v.info, content=v.content if req.content else None)

        async def promote(req: store_api.PromoteRequest) -> store_api.VersionReply:
            await self.promote(req.namespace, req.version, req.actor)
            v = self._resolve(req.namespace, str(req.version))
            return store_api.VersionReply(info=v.info)

        async def mark_good(req: store_api.MarkGoodRequest) -> store_api.VersionReply:
            await self.mark_good(req.namespace, req.version, req.actor, req.reason)
            v = self._resolve(req.namespace, str(req.version))
            return store_api.VersionReply(info=v.info)

        async def policy_get(req: store_api.PolicyGetRequest) -> Policy:
            return self.policies.get(req.namespace) or Policy(namespace=req.namespace)

        async def dry_run(req: store_api.DryRunRequest) -> store_api.DryRunReply:
            # The version-store's own rule, as its dry run applies it.
            ns = req.change.namespace
            policy = self.policies.get(ns) or Policy(namespace=ns)
            try:
                decide(req.change, policy, None)
            except InvalidConfig as exc:
                return store_api.DryRunReply(ok=False, reason=exc.message, where=exc.where)
            return store_api.DryRunReply(ok=True)

        async def change_status(
            req: store_api.ChangeStatusRequest,
        ) -> store_api.ChangeStatusReply:
            v = self.changes.get((req.namespace, req.change_id))
            if v is None:
                return store_api.ChangeStatusReply(status="unknown")
            return store_api.ChangeStatusReply(status="stored", version=v)

        self.svc = await serve_api(
            self.bus,
            [
                Endpoint(store_api.GET, get),
                Endpoint(store_api.PROMOTE, promote),
                Endpoint(store_api.MARK_GOOD, mark_good),
                Endpoint(store_api.POLICY_GET, policy_get),
                Endpoint(store_api.CHANGE_STATUS, change_status),
                Endpoint(store_api.DRY_RUN, dry_run),
            ],
            partial=True,
        )

        async def on_change(change: ChangeProposed, _msg: Msg) -> None:
            if change.rollback_of is not None and change.rollback_of > self.newest(
                change.namespace
            ):
                raise InvalidInput("rollback_of names no version")
            await self.add(
                change.namespace,
                change.content,
                change.change_id,
                rollback_of=change.rollback_of,
            )

        consumer: Consumer[ChangeProposed] = Consumer(
            bus=self.bus,
            stream=CFG_CHANGES,
            durable="fake-store",
            decode=decode_change,
            handler=per_message(on_change),
            metrics=ConsumerMetrics.create(CollectorRegistry(), "fake_store", "changes"),
            fetch_timeout_s=0.2,
        )
        await tg.start(consumer.run)

    async def stop(self) -> None:
        if self.svc is not None:
            await stop_api(self.svc)


@dataclass
class FakeDist:
    bus: Bus
    nodes: dict[str, dist_api.NodeStatus] = field(default_factory=dict)
    aborts: list[dist_api.ControlRequest] = field(default_factory=list)
    svc: Service | None = None

    async def start(self) -> None:
        async def on_heartbeat(msg: Msg) -> None:
            hb = decode_heartbeat(msg.data)
            for st in hb.namespaces:
                self.nodes[f"{st.namespace}/{hb.node}"] = dist_api.NodeStatus(
                    node=hb.node,
                    liveness="live",
                    applied_version=st.applied_version,
                    sha256=st.sha256,
                    target_version=None,
                    last_heartbeat=hb.at,
                )

        await self.bus.nc.subscribe(subjects.HEARTBEATS_ALL, cb=on_heartbeat)

        async def status(req: dist_api.StatusRequest) -> dist_api.StatusReply:
            prefix = f"{req.namespace}/"
            return dist_api.StatusReply(
                namespace=req.namespace,
                production_version=None,
                production_sha256=None,
                nodes=[s for k, s in sorted(self.nodes.items()) if k.startswith(prefix)],
            )

        async def abort(req: dist_api.ControlRequest) -> dist_api.RolloutReply:
            self.aborts.append(req)
            raise Conflict(f"no rollout of {req.namespace} to roll back")  # it had completed

        self.svc = await serve_api(
            self.bus,
            [
                Endpoint(dist_api.STATUS, status),
                Endpoint(dist_api.ABORT, abort),
            ],
            partial=True,
        )

    def forget(self, node: str, ns: str) -> None:
        self.nodes.pop(f"{ns}/{node}", None)

    def applied(self, ns: str, node: str) -> int | None:
        s = self.nodes.get(f"{ns}/{node}")
        return s.applied_version if s else None

    async def stop(self) -> None:
        if self.svc is not None:
            await stop_api(self.svc)


Judge = Callable[[health_api.VerdictRequest], health_api.VerdictReply]


def all_healthy(req: health_api.VerdictRequest) -> health_api.VerdictReply:
    return health_api.VerdictReply(verdict="pass", samples=5, healthy_nodes=list(req.nodes))


@dataclass
class VerdictCall:
    request: health_api.VerdictRequest
    at: datetime


@dataclass
class FakeHealth:
    bus: Bus
    judge: Judge = all_healthy
    calls: list[VerdictCall] = field(default_factory=list)
    svc: Service | None = None

    async def start(self) -> None:
        async def verdict(req: health_api.VerdictRequest) -> health_api.VerdictReply:
            self.calls.append(VerdictCall(req, utcnow()))
            return self.judge(req)

        self.svc = await serve_api(
            self.bus,
            [Endpoint(health_api.VERDICT, verdict)],
        )

    async def stop(self) -> None:
        if self.svc is not None:
            await stop_api(self.svc)


@asynccontextmanager
async def webhook_receiver(path: str) -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    """A real HTTP server answering 200 to every POST to ``path``: its port, and each body
    (JSON) in the order they came."""
    got: list[dict[str, Any]] = []

    async def hook(req: Request) -> Response:
        got.append(json.loads(req.body))
        return Response(200, b"ok", "text/plain")

    server = HttpServer(CollectorRegistry())
    server.route("POST", path, hook)
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        try:
            yield port, got
        finally:
            tg.cancel_scope.cancel()
