"""``cfg.api.dist.*``: status of a namespace's fleet, its rollout, and the rollout controls.

Any replica answers: every replica hears every heartbeat and mirrors the targets, and the
rollout record is read from ``CFG_STATE``; controls are compare-and-sets on that record, so
the replica driving the rollout sees them at its next step.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from confbus.distributor.intent import Intents
from confbus.distributor.membership import Membership, MembershipKeeper
from confbus.distributor.repairs import Repairs
from confbus.distributor.rollouts import Rollouts
from confbus.distributor.targets import Targets
from confbus.runtime.api import Endpoint
from confbus.runtime.errors import ConfbusError
from confbus.schemas.api import dist as api
from confbus.schemas.api.operation import Operation


@dataclass
class DistApi:
    membership: Membership
    targets: Targets
    rollouts: Rollouts
    intents: Intents
    repairs: Repairs
    keeper: MembershipKeeper

    async def status(self, req: api.StatusRequest) -> api.StatusReply:
        ns = req.namespace
        try:
            prod = await self.targets.production_of(ns, refresh=True)
        except ConfbusError:
            prod = self.targets.production.get(ns)  # the store is down: what we know
        now = time.monotonic()
        nodes = []
        for node in self.membership.known_nodes(ns):
            m = self.membership.members[node]
            st = m.state(ns)
            repair = self.repairs.describe(ns, node)
            target, why = self.targets.explain(ns, node, m.labels)
            status = Repairs.status_text(repair) or (st.status if st else "ok")
            nodes.append(
                api.NodeStatus(
                    node=node,
                    liveness=m.liveness(now),
                    liveness_reason=m.why(now),
                    duplicate=m.duplicate_report(now),
                    applied_version=st.applied_version if st else None,
                    sha256=st.sha256 if st else None,
                    target_version=target,
                    target_reason=why,
                    last_heartbeat=m.last_heartbeat,
                    labels=m.labels,
                    status=status,
                    attempts=repair.attempts if repair else 0,
                    last_error=repair.last_error if repair else "",
                    next_retry_s=repair.next_retry_s if repair and repair.failing else None,
                )
            )
        entry = await self.rollouts.read(ns)
        rollout = entry.value
        return api.StatusReply(
            namespace=ns,
            production_version=prod.version if prod else None,
            production_sha256=prod.sha256 if prod else None,
            nodes=nodes,
            rollout=None if rollout is None else _public(rollout, entry.revision),
        )

    async def rollout(self, req: api.RolloutRequest) -> api.RolloutReply:
        entry = await self.rollouts.read(req.namespace)
        rec = entry.value
        return api.RolloutReply(rollout=None if rec is None else _public(rec, entry.revision))

    def control(
        self, op: Operation[api.ControlRequest, api.RolloutReply]
    ) -> Callable[[api.ControlRequest], Awaitable[api.RolloutReply]]:
        async def handle(req: api.ControlRequest) -> api.RolloutReply:
            rec = await self.intents.control(op, req)
            return api.RolloutReply(rollout=_public(rec, rec.revision))

        return handle

    async def forget(self, req: api.ForgetRequest) -> api.ForgetReply:
        namespaces = await self.keeper.forget(req.node, req.actor, req.reason)
        return api.ForgetReply(node=req.node, namespaces=namespaces)

    def endpoints(self) -> list[Endpoint[Any, Any]]:
        return [
            Endpoint(api.STATUS, self.status),
            Endpoint(api.ROLLOUT, self.rollout),
            Endpoint(api.FORGET, self.forget),
            *(Endpoint(op, self.control(op), concurrent=True) for op in api.CONTROLS.values()),
        ]


def _public(rec: api.RolloutInfo, revision: int) -> api.RolloutInfo:
    """The outbox is plumbing; replies carry the KV revision instead."""
    return msgspec.structs.replace(rec, outbox=[], revision=revision)
