"""Rollouts and catch-up: each wave is one atomic switch by the coordinator.

This first cut drives the ``all-at-once`` strategy (one wave over every live agent of the
namespace) and catch-up (a node behind the production version gets a one-node switch, with
exponential backoff and jitter when it fails). Waves, bake times and resumable rollout
state build on the same pieces.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Literal

import anyio

from schemas.api import store as store_api
from schemas.api import txn as txn_api
from schemas.events import (
    NodeOutcome,
    RolloutCompleted,
    RolloutFailed,
    RolloutStarted,
    RolloutWave,
    VoteRecord,
)
from schemas.node import Heartbeat
from schemas.policy import Policy
from schemas.versions import VersionInfo
from services.distributor.membership import Membership
from services.runtime.api import call
from services.runtime.bus import Bus
from services.runtime.errors import ConfbusError, NotFound
from services.runtime.events import emit

log = logging.getLogger("confbus.distributor")

CATCHUP_BASE_S = 0.5
CATCHUP_CAP_S = 60.0


@dataclass
class _Backoff:
    attempts: int = 0
    not_before: float = 0.0


@dataclass
class Distributor:
    bus: Bus
    membership: Membership
    instance: str
    production: dict[str, VersionInfo] = field(default_factory=dict)
    rolling: set[str] = field(default_factory=set)
    catching_up: set[tuple[str, str]] = field(default_factory=set)
    backoff: dict[tuple[str, str], _Backoff] = field(default_factory=dict)

    async def _store(
        self, op: str, req: object, reply: type[store_api.VersionReply]
    ) -> store_api.VersionReply:
        return await call(self.bus, store_api.SERVICE, op, req, reply, timeout=10.0)

    async def policy(self, namespace: str) -> Policy:
        return await call(
            self.bus,
            store_api.SERVICE,
            "policy_get",
            store_api.PolicyGetRequest(namespace=namespace),
            Policy,
        )

    async def production_of(self, namespace: str, refresh: bool = False) -> VersionInfo | None:
        if refresh or namespace not in self.production:
            try:
                reply = await self._store(
                    "get",
                    store_api.GetRequest(namespace=namespace, ref="production", content=False),
                    store_api.VersionReply,
                )
            except NotFound:
                return None
            self.production[namespace] = reply.info
        return self.production.get(namespace)

    # -- rollouts ------------------------------------------------------------------------------

    async def rollout(self, namespace: str, version: int, selector: dict[str, str] | None) -> None:
        info = (
            await self._store(
                "get",
                store_api.GetRequest(namespace=namespace, ref=str(version), content=False),
                store_api.VersionReply,
            )
        ).info
        if info.status != "approved":
            return  # already rolled out, superseded, or not approved: a redelivery
        prod = await self.production_of(namespace, refresh=True)
        if prod is not None and prod.version >= version:
            return
        policy = await self.policy(namespace)
        await self.membership.warm()
        targets = self.membership.live_nodes(namespace, selector or policy.selector or None)
        rollout_id = f"{namespace}-v{version}"
        self.rolling.add(namespace)
        started = time.monotonic()
        try:
            await emit(
                self.bus,
                RolloutStarted(
                    namespace=namespace,
                    actor=self.instance,
                    rollout_id=rollout_id,
                    version=version,
                    strategy="all-at-once",
                    waves=[targets] if targets else [],
                ),
                msg_id=f"rollout:{rollout_id}:started",
            )
            report: list[NodeOutcome] = []
            if targets:
                ok, report = await self._wave(namespace, version, targets, policy, rollout_id)
                if not ok:
                    await emit(
                        self.bus,
                        RolloutFailed(
                            namespace=namespace,
                            actor=self.instance,
                            rollout_id=rollout_id,
                            version=version,
                            wave=0,
                            report=report,
                            reason=_failure_reason(report),
                        ),
                        msg_id=f"rollout:{rollout_id}:failed",
                    )
                    return
            await self._promote(namespace, version, rollout_id, targets)
            await emit(
                self.bus,
                RolloutCompleted(
                    namespace=namespace,
                    actor=self.instance,
                    rollout_id=rollout_id,
                    version=version,
                    report=report,
                    seconds=time.monotonic() - started,
                    reason="" if targets else "no live agents: nodes catch up when they join",
                ),
                msg_id=f"rollout:{rollout_id}:completed",
            )
        finally:
            self.rolling.discard(namespace)

    async def _wave(
        self, namespace: str, version: int, targets: list[str], policy: Policy, rollout_id: str
    ) -> tuple[bool, list[NodeOutcome]]:
        """One atomic switch; retried once without nodes that only missed the deadline,
        if that leaves out no more than the policy's ``max_excluded`` share (DESIGN §3.7)."""
        excluded: list[str] = []
        nodes = targets
        for attempt in (1, 2):
            reply = await self._switch(namespace, version, nodes, policy)
            outcome: Literal["committed", "aborted"] = (
                "committed" if reply.outcome == "commit" else "aborted"
            )
            report = [_outcome(v, attempt, reply.outcome == "commit") for v in reply.votes] + [
                NodeOutcome(node=n, outcome="excluded", reason="missed the vote deadline")
                for n in excluded
            ]
            await emit(
                self.bus,
                RolloutWave(
                    namespace=namespace,
                    actor=self.instance,
                    rollout_id=rollout_id,
                    version=version,
                    wave=0,
                    txid=reply.txid,
                    outcome=outcome,
                    nodes=report,
                ),
                msg_id=f"rollout:{rollout_id}:wave0:{reply.txid}",
            )
            if reply.outcome == "commit":
                return True, report
            missing = [v.node for v in reply.votes if v.vote == "missing"]
            said_no = any(v.vote == "no" for v in reply.votes)
            if said_no or not missing or attempt == 2:
                return False, report
            if (len(excluded) + len(missing)) / len(targets) > policy.max_excluded:
                return False, report
            excluded += missing
            nodes = [n for n in nodes if n not in missing]
            if not nodes:
                return False, report
        return False, []  # pragma: no cover - the loop returns

    async def _switch(
        self, namespace: str, version: int, nodes: list[str], policy: Policy
    ) -> txn_api.SwitchReply:
        return await call(
            self.bus,
            txn_api.SERVICE,
            "switch",
            txn_api.SwitchRequest(
                namespace=namespace,
                version=version,
                nodes=nodes,
                timeout_s=policy.vote_timeout_s,
                actor=self.instance,
            ),
            txn_api.SwitchReply,
            timeout=policy.vote_timeout_s + 15.0,
        )

    async def _promote(
        self, namespace: str, version: int, rollout_id: str, nodes: list[str]
    ) -> None:
        reply = await self._store(
            "promote",
            store_api.PromoteRequest(
                namespace=namespace,
                version=version,
                actor=self.instance,
                reason=f"rollout {rollout_id} switched {len(nodes)} node(s)",
            ),
            store_api.VersionReply,
        )
        self.production[namespace] = reply.info

    # -- catch-up ------------------------------------------------------------------------------

    async def on_heartbeat(self, hb: Heartbeat, tg: anyio.abc.TaskGroup) -> None:
        self.membership.observe(hb)
        for state in hb.namespaces:
            ns = state.namespace
            key = (ns, hb.node)
            if ns in self.rolling or key in self.catching_up:
                continue
            prod = self.production.get(ns)
            if prod is None:
                tg.start_soon(self._learn_production, ns)
                continue
            if state.applied_version is not None and state.applied_version >= prod.version:
                self.backoff.pop(key, None)
                continue
            if state.prepared_txid is not None:
                continue  # a transaction is under way on that node
            b = self.backoff.get(key)
            if b is not None and time.monotonic() < b.not_before:
                continue
            self.catching_up.add(key)
            tg.start_soon(self._catch_up, ns, hb.node, prod.version)

    async def _learn_production(self, namespace: str) -> None:
        try:
            await self.production_of(namespace)
        except ConfbusError as exc:
            log.warning("cannot read production", extra={"namespace": namespace, "error": str(exc)})

    async def _catch_up(self, namespace: str, node: str, version: int) -> None:
        key = (namespace, node)
        try:
            policy = await self.policy(namespace)
            reply = await self._switch(namespace, version, [node], policy)
            ok = reply.outcome == "commit"
            why = "; ".join(f"{v.vote}: {v.reason}" for v in reply.votes if v.vote != "yes")
        except ConfbusError as exc:
            ok, why = False, str(exc)
        finally:
            self.catching_up.discard(key)
        if ok:
            self.backoff.pop(key, None)
            log.info("caught up", extra={"namespace": namespace, "node": node, "version": version})
            return
        b = self.backoff.setdefault(key, _Backoff())
        b.attempts += 1
        ceiling = min(CATCHUP_CAP_S, CATCHUP_BASE_S * 2 ** (b.attempts - 1))
        b.not_before = time.monotonic() + random.uniform(ceiling / 2, ceiling)
        log.warning(
            "catch-up failed",
            extra={"namespace": namespace, "node": node, "attempts": b.attempts, "reason": why},
        )


def _outcome(v: VoteRecord, attempt: int, committed: bool) -> NodeOutcome:
    if v.vote == "yes":
        return NodeOutcome(
            node=v.node,
            outcome="applied" if committed else "skipped",
            attempts=attempt,
            reason="" if committed else "transaction aborted",
        )
    return NodeOutcome(node=v.node, outcome=v.vote, attempts=attempt, reason=v.reason)


def _failure_reason(report: list[NodeOutcome]) -> str:
    no = [f"{o.node}: {o.reason}" for o in report if o.outcome == "no"]
    if no:
        return "voted no: " + "; ".join(no)
    missing = [o.node for o in report if o.outcome in ("missing", "excluded")]
    return "missed the vote deadline: " + ", ".join(missing)
