"""Rollout intents and controls: what the version events and the operators ask of a
namespace's rollout, recorded in its record (``rollouts``) and left for the driver to act on.

The version-event consumer only **records** a rollout's intent in ``rollout.<ns>`` (a quick
compare-and-set, then ack); the driver of the namespace does the rest.

A newer approved version is recorded as ``next``: with ``on_newer_version="supersede"`` the
driver ends the running rollout as ``superseded`` at its next wave boundary (not in the middle
of a switch; a bake in progress is cut short) and starts the newer one; with ``"queue"`` the
newer one starts when the running one ends. Only the newest waiting version is kept — one
replaced while waiting gets a ``rollout.superseded`` event of its own, and so does a version
whose event comes after a newer version's (redelivered after a broker restart).

Versions with ``rollback_of`` are created by the rollbacker, which switches them batch by
batch itself: the distributor does not start a rollout for them. It ends the namespace's
rollout as ``rolled_back`` on ``rollback.started`` (or on ``cfg.api.dist.abort`` with
``rolled_back=true``), and their ``txn.committed`` events raise node targets like any other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from confbus.distributor import record as R
from confbus.distributor.metrics import DistributorMetrics
from confbus.distributor.rollouts import Rollouts
from confbus.distributor.store import Store
from confbus.distributor.targets import Targets
from confbus.distributor.txnlog import created_event
from confbus.runtime.bus import Bus
from confbus.runtime.concurrency import gather
from confbus.runtime.errors import Conflict
from confbus.runtime.events import emit
from confbus.runtime.kv import Entry
from confbus.schemas.api import dist as dist_api
from confbus.schemas.api.dist import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    ControlRequest,
    PendingVersion,
    RolloutInfo,
)
from confbus.schemas.api.operation import Operation
from confbus.schemas.events import RollbackStarted, RolloutSuperseded

log = logging.getLogger("confbus.distributor")


@dataclass
class Intents:
    rollouts: Rollouts
    bus: Bus
    store: Store
    targets: Targets
    metrics: DistributorMetrics
    instance: str

    async def on_version(
        self,
        namespace: str,
        version: int,
        *,
        strategy: str | None,
        selector: dict[str, str] | None,
        from_approval: bool = False,
    ) -> RolloutInfo | None:
        """Record that ``version`` should roll out (idempotent; quick: no switch here).

        ``from_approval``: the event (``version.approved``) does not carry the version's
        overrides; they come from its ``version.created`` event (the store's reply has none).
        """
        # The reads at once: this is the path from a publish to its switch. Production is
        # for the plan, which follows at once (driver.PLAN_READS_MAX_AGE_S).
        info, policy, _ = await gather(
            self.store.version(namespace, version),
            self.store.policy(namespace, max_age_s=0),
            self.targets.production_of(namespace, refresh=True),
        )
        if info.rollback_of is not None:
            log.info(
                "version restores an older one: the rollbacker switches it",
                extra={"namespace": namespace, "version": version},
            )
            return None
        if info.status != "approved":
            return None  # a draft waits for approval; production/superseded/rejected: done
        if from_approval and strategy is None and selector is None:
            created = await created_event(self.bus, namespace, version, info.created_at)
            if created is not None:
                strategy, selector = created.strategy, created.selector
        replaced: list[PendingVersion] = []
        newer: list[int] = []  # a newer version got there first: this one never starts

        def change(cur: RolloutInfo | None) -> RolloutInfo | None:
            replaced.clear()
            newer.clear()
            if cur is not None and cur.version >= version:
                if cur.version > version:
                    newer.append(cur.version)
                return None
            if cur is not None and cur.next is not None and cur.next.version >= version:
                if cur.next.version > version:
                    newer.append(cur.next.version)
                return None
            if cur is None or (cur.state in TERMINAL_STATES and cur.next is None):
                return R.new_rollout(
                    namespace, version, strategy=strategy, selector=selector, actor=self.instance
                )
            if cur.next is not None:
                replaced.append(cur.next)
            return R.set_next(
                cur,
                PendingVersion(
                    version=version,
                    mode=policy.on_newer_version,
                    strategy=strategy,
                    selector=selector,
                ),
            )

        entry, wrote = await self.rollouts.mutate(namespace, change)
        if wrote:
            log.info("rollout recorded", extra={"namespace": namespace, "version": version})
        # (waiting, newer): a waiting version replaced — or this one, whose event came after
        # a newer version's (redelivered after a broker restart): whoever waits for its
        # rollout hears that there will be none.
        ends = [(old.version, version) for old in replaced] + [(version, n) for n in newer]
        for old, by in ends:
            await emit(
                self.bus,
                RolloutSuperseded(
                    namespace=namespace,
                    actor=self.instance,
                    reason=f"v{by} came while v{old} was still waiting to start",
                    rollout_id=f"{namespace}-v{old}-waiting",
                    version=old,
                    by_version=by,
                ),
                msg_id=f"rollout:{namespace}-v{old}-waiting:superseded",
            )
        return entry.value

    async def on_rollback(self, ev: RollbackStarted) -> None:
        """The rollbacker took over: the namespace's rollout ends ``rolled_back``."""
        reason = (
            f"rolled back by {ev.rollback_id}: v{ev.from_version} → content of v{ev.to_version}"
        )
        await self.end_rolled_back(ev.namespace, reason, actor=ev.actor or "rollbacker")

    async def end_rolled_back(
        self, namespace: str, reason: str, *, actor: str, version: int | None = None
    ) -> Entry[RolloutInfo]:
        def change(cur: RolloutInfo | None) -> RolloutInfo | None:
            if cur is None or cur.state not in ("running", "paused", "failed"):
                return None
            if version is not None and cur.version != version:
                return None
            return R.rolled_back(cur, reason, actor=actor)

        entry, wrote = await self.rollouts.mutate(namespace, change)
        if wrote:
            self.metrics.rollouts.labels("rolled_back").inc()
            await self.rollouts.flush(namespace, entry)
        return entry

    # -- controls (cfg.api.dist.pause / resume / abort) ----------------------------------------

    async def control(self, op: Operation[ControlRequest, Any], req: ControlRequest) -> RolloutInfo:
        actor, verb = req.actor or "operator", op.name
        if op is dist_api.ABORT and req.rolled_back:
            entry = await self.end_rolled_back(
                req.namespace, req.reason or "rolled back", actor=actor, version=req.version
            )
            if entry.value is None or entry.value.state != "rolled_back":
                raise Conflict(_no_rollout(req.namespace, entry.value, "roll back"))
            return entry.value
        wanted = {dist_api.PAUSE: ("running",), dist_api.RESUME: ("paused",)}.get(op, ACTIVE_STATES)
        problem: list[str] = []

        def change(cur: RolloutInfo | None) -> RolloutInfo | None:
            problem.clear()
            if (
                cur is None
                or cur.state not in wanted
                or (req.version is not None and cur.version != req.version)
            ):
                problem.append(_no_rollout(req.namespace, cur, verb))
                return None
            if op is dist_api.PAUSE:
                return R.pause(cur, actor=actor, reason=req.reason)
            if op is dist_api.RESUME:
                return R.resume(cur, actor=actor, reason=req.reason)
            why = f"aborted by {actor}" + (f": {req.reason}" if req.reason else "")
            return R.fail(cur, cur.current_wave if cur.planned else -1, why, actor=actor)

        entry, wrote = await self.rollouts.mutate(req.namespace, change)
        if problem or entry.value is None:
            raise Conflict(problem[0] if problem else f"no rollout of {req.namespace}")
        if wrote:
            if op is dist_api.ABORT:
                self.metrics.rollouts.labels("failed").inc()
            await self.rollouts.flush(req.namespace, entry)
        return R.replace(entry.value, revision=entry.revision)


def _no_rollout(namespace: str, rec: RolloutInfo | None, op: str) -> str:
    if rec is None:
        return f"cannot {op}: {namespace} has no rollout"
    return (
        f"cannot {op}: the rollout of {namespace} (v{rec.version}, {rec.rollout_id}) is {rec.state}"
    )
