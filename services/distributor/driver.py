"""One driver per namespace, on the replica holding ``lease.distributor.<ns>``: it moves the
namespace's rollout one step per loop, each step a compare-and-set on the record (``rollouts``;
see ``record`` for the states):

1. plan: read the policy, parse the strategy and selector, wait for membership to be warm,
   take the live agents of the namespace (narrowed by the selector), split them into waves —
   or refuse (``rollout.failed``, wave -1, with the reason; nothing switched);
2. per wave: one atomic switch, its outcome recorded (``switching``);
3. bake: wait until ``committed_at + bake_s`` (wall time in the record, so a restarted driver
   waits only what is left), then ask ``cfg.api.health.verdict`` about the nodes switched so
   far; no health-watcher is ``no_data``, which the policy's ``on_missing_data`` turns into a
   pass or a fail. A fail stops the rollout and hands it to the rollbacker (an ``Alert`` on
   ``cfg.alert.<ns>``, ``source="distributor"``, id from the rollout id);
4. after the last wave's clean bake: promote (store ``promote``), and mark last known good
   (store ``mark_good``) only on a ``pass`` verdict — never on ``no_data``.

A restarted driver resumes where the record says: a wave whose commit is recorded is never
re-run, a wave left in ``switching`` is found out first. Terminal records (completed, failed,
superseded, rolled_back) are never driven again, but a ``next`` version waiting in one starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio
from anyio.abc import TaskGroup

from confbus.distributor import record as R
from confbus.distributor import record_waves as W
from confbus.distributor.membership import Membership
from confbus.distributor.rollouts import Gone, Rollouts
from confbus.distributor.store import Store
from confbus.distributor.strategy import parse_selector, parse_strategy
from confbus.distributor.switching import WaveSwitch
from confbus.distributor.targets import Targets
from confbus.runtime.api import call
from confbus.runtime.bus import Bus
from confbus.runtime.concurrency import gather
from confbus.runtime.errors import ConfbusError, Conflict, InvalidInput, NotFound, Permanent, Stale
from confbus.runtime.kv import Entry
from confbus.runtime.leases import Leases
from confbus.schemas.api import health as health_api
from confbus.schemas.api.dist import ACTIVE_STATES, TERMINAL_STATES, RolloutInfo
from confbus.schemas.health import Alert
from confbus.schemas.versions import VersionInfo

FIRST_HEARTBEAT_WAIT_S = 3.0  # an agent's start-up to its first heartbeat, with room

log = logging.getLogger("confbus.distributor")

# The plan may use the reads ``on_version`` made of the version, the policy and production:
# an answer this old is no staler than the plan's own reads would be after a slow step.
PLAN_READS_MAX_AGE_S = 0.5


@dataclass
class Driver:
    rollouts: Rollouts
    waves: WaveSwitch
    bus: Bus
    store: Store
    membership: Membership
    targets: Targets
    leases: Leases
    instance: str
    verdict_timeout_s: float = 10.0
    drivers: set[str] = field(default_factory=set)  # namespaces with a driver task here

    def wants_driver(self, namespace: str) -> bool:
        entry = self.rollouts.records.get(namespace)
        rec = entry.value if entry else None
        return rec is not None and (rec.active or bool(rec.outbox) or rec.next is not None)

    async def supervise(self, tg: TaskGroup) -> None:
        """Start a driver for each namespace that has work, on the replica holding its lease."""
        while True:
            for ns in list(self.rollouts.records):
                if ns not in self.drivers and self.leases.held(ns) and self.wants_driver(ns):
                    self.drivers.add(ns)
                    tg.start_soon(self._drive_guarded, ns)
            await self.rollouts.wait_any(0.5)

    async def _drive_guarded(self, namespace: str) -> None:
        try:
            await self.drive(namespace)
        finally:
            self.drivers.discard(namespace)
            self.waves.busy.pop(namespace, None)

    async def drive(self, namespace: str) -> None:
        # Judge no node before membership is warm: a restarted replica has heard no one yet.
        await self.membership.warm()
        delay = 0.2
        while self.leases.held(namespace):
            try:
                more = await self.step(namespace)
                delay = 0.2
                if not more:
                    return
            except (Stale, Gone):
                await anyio.sleep(0.01)  # the record moved: look again
            except ConfbusError as exc:
                log.warning(
                    "rollout step failed; retrying",
                    extra={"namespace": namespace, "error": str(exc), "delay_s": delay},
                )
                await self.rollouts.wait(namespace, delay)
                delay = min(delay * 2, 5.0)
            except Exception:
                log.exception("rollout step crashed; retrying", extra={"namespace": namespace})
                await self.rollouts.wait(namespace, delay)
                delay = min(delay * 2, 5.0)

    async def step(self, namespace: str) -> bool:
        """One step of the namespace's rollout. False: nothing more to do for now."""
        await self.membership.warm()  # judge no node while we hear none (a broker restart)
        entry = await self.rollouts.latest(namespace)
        rec = entry.value
        if rec is None:
            return False
        if rec.outbox and not (
            self.rollouts.published(namespace, rec) and R.writes_next(rec, datetime.now(UTC))
        ):
            # Left by a crash, or a write that failed, or published by a write whose next
            # step is not at once: publish (again: a no-op by message id) and clear it.
            await self.rollouts.flush(namespace, entry)
            return True
        if rec.state in TERMINAL_STATES:
            if rec.next is not None:
                await self._start_next(namespace, rec)
                return True
            return False
        if rec.state == "paused":
            await self.rollouts.wait(namespace, 5.0)
            return True
        superseding = rec.next is not None and rec.next.mode == "supersede"
        if superseding and (not rec.planned or R.at_boundary(rec)):
            await self._supersede(namespace, rec)
            return True
        if not rec.planned:
            await self._plan(namespace, rec)
            return True
        i = rec.current_wave
        if i >= len(rec.waves):
            await self._finish(namespace, rec)
            return True
        state = rec.waves[i].state
        if state == "pending":
            await self.waves.switch(namespace, rec, i)
        elif state == "switching":
            await self.waves.recover(namespace, rec, i)
        elif state == "baking":
            await self._bake(namespace, rec, i)
        elif state in ("done", "skipped"):
            await self.rollouts.transition(
                namespace, rec, lambda c: R.replace(c, current_wave=i + 1)
            )
        else:  # a failed wave in a live record: end it (should not happen)
            why = rec.reason or f"wave {i} failed"
            await self.rollouts.transition(
                namespace, rec, lambda c: R.fail(c, i, why, actor=self.instance)
            )
        return True

    # -- the steps -----------------------------------------------------------------------------

    async def _start_next(self, namespace: str, rec: RolloutInfo) -> None:
        nxt = rec.next
        assert nxt is not None

        def change(cur: RolloutInfo | None) -> RolloutInfo | None:
            if cur is None or cur.rollout_id != rec.rollout_id or cur.next is None:
                return None
            if cur.state not in TERMINAL_STATES:
                return None
            n = cur.next
            return R.new_rollout(
                namespace, n.version, strategy=n.strategy, selector=n.selector, actor=self.instance
            )

        await self.rollouts.mutate(namespace, change)
        log.info("next rollout", extra={"namespace": namespace, "version": nxt.version})

    async def _plan(self, namespace: str, rec: RolloutInfo) -> None:
        # The three reads at once (usually those on_version just made): this is the path
        # from a publish to its switch.
        age = PLAN_READS_MAX_AGE_S
        policy, found, prod = await gather(
            self.store.policy(namespace, max_age_s=age),
            self._version_info(namespace, rec.version, max_age_s=age),
            self.targets.production_of(namespace, refresh=True, max_age_s=age),
        )
        if isinstance(found, NotFound):
            await self._refuse(namespace, rec, found.message)
            return
        info = found
        self.targets.note_version(info)
        if info.status == "production":
            # Promoted by someone else (an operator) before its rollout began: nothing to do;
            # the nodes converge to production by catch-up.
            await self.rollouts.transition(
                namespace,
                rec,
                lambda c: R.complete(
                    c, actor=self.instance, last_good=False, reason="promoted before its rollout"
                ),
                states=ACTIVE_STATES,
            )
            return
        if info.status != "approved":
            why = f"v{rec.version} is {info.status}; only an approved version rolls out"
            await self._refuse(namespace, rec, why)
            return
        try:
            strategy = parse_strategy(rec.requested_strategy or policy.strategy)
            selector = parse_selector(
                rec.selector if rec.selector is not None else dict(policy.selector)
            )
        except InvalidInput as exc:
            await self._refuse(namespace, rec, exc.message)
            return
        await self.membership.warm()
        # An agent started a moment before the publish has not been heard yet: give the
        # namespace's first heartbeat a little time before calling it empty.
        await self.membership.first_heard(namespace, within_s=FIRST_HEARTBEAT_WAIT_S)
        live = self.membership.live_nodes(namespace, selector)
        away = self.membership.away_nodes(namespace, selector)
        if not live:
            known = self.membership.known_nodes(namespace)
            if away or (not known and not selector):
                await self._without_switch(namespace, rec, selector, away)
                return
            await self._refuse(
                namespace, rec, _no_targets(namespace, selector, known, self.membership)
            )
            return
        waves = strategy.waves(live)

        def plan(c: RolloutInfo) -> RolloutInfo:
            return R.planned(
                c,
                policy,
                strategy=str(strategy),
                selector=selector,
                waves=waves,
                away=away,
                previous_version=prod.version if prod else None,
                actor=self.instance,
            )

        log.info(
            "rollout planned",
            extra={
                "namespace": namespace,
                "version": rec.version,
                "strategy": str(strategy),
                "waves": [len(w) for w in waves],
            },
        )
        if rec.state == "running":
            # The plan and its first wave's start in one write: the switch follows at once.
            await self.waves.switch(namespace, plan(rec), 0, plan=plan)
        else:  # paused before it was planned: plan now, start when resumed
            await self.rollouts.transition(
                namespace, rec, plan, states=ACTIVE_STATES, planned=False
            )

    async def _refuse(self, namespace: str, rec: RolloutInfo, reason: str) -> None:
        """End the rollout before any wave: ``rollout.failed`` with ``wave: -1``."""
        await self.rollouts.transition(
            namespace, rec, lambda c: R.refuse(c, reason, actor=self.instance), states=ACTIVE_STATES
        )

    async def _version_info(
        self, namespace: str, version: int, *, max_age_s: float
    ) -> VersionInfo | NotFound:
        try:
            return await self.store.version(namespace, version, max_age_s=max_age_s)
        except NotFound as exc:
            return exc

    async def _without_switch(
        self, namespace: str, rec: RolloutInfo, selector: dict[str, str], away: list[str]
    ) -> None:
        """No live node to switch: the version becomes production (for its selector's nodes)
        and every node catches up to it when it joins or comes back — the same end as a rollout
        whose nodes all went away before their wave began. ``away``: the nodes that will."""
        if away:
            reason = (
                f"no live node follows this namespace: promoted; {len(away)} away "
                f"({', '.join(away[:10])}) catch up when they are back"
            )
        else:
            reason = "no agent follows this namespace yet: promoted; nodes catch up when they join"
        await self._promote(namespace, R.replace(rec, selector=selector), reason)
        await self.rollouts.transition(
            namespace,
            rec,
            lambda c: R.complete(
                R.replace(
                    c,
                    planned=True,
                    strategy=c.requested_strategy or "all-at-once",
                    selector=selector,
                    away=away,
                ),
                actor=self.instance,
                last_good=False,
                reason=reason,
            ),
            states=ACTIVE_STATES,
        )

    async def _supersede(self, namespace: str, rec: RolloutInfo) -> None:
        assert rec.next is not None
        by = rec.next.version
        await self.rollouts.transition(
            namespace,
            rec,
            lambda c: R.supersede(c, by, actor=self.instance),
            states=ACTIVE_STATES,
        )
        log.info("rollout superseded", extra={"namespace": namespace, "by_version": by})

    async def _bake(self, namespace: str, rec: RolloutInfo, i: int) -> None:
        w = rec.waves[i]
        committed = w.committed_at or datetime.now(UTC)
        left = (committed + timedelta(seconds=rec.bake_s) - datetime.now(UTC)).total_seconds()
        if left > 0:
            # Interruptible: a pause, an abort or a newer version wakes us up.
            await self.rollouts.wait(namespace, left)
            return
        nodes = R.switched_nodes(rec, i)
        reply = await self._verdict(namespace, rec.version, nodes, committed)
        passed = reply.verdict == "pass" or (
            reply.verdict == "no_data" and rec.on_missing_data == "pass"
        )
        alert = None
        if not passed:
            alert = Alert(
                alert_id=f"distributor:{rec.rollout_id}:bake{i}",
                namespace=namespace,
                version=rec.version,
                rule="rollout bake",
                nodes=reply.unhealthy_nodes or nodes,
                source="distributor",
                summary=(
                    f"rollout {rec.rollout_id} of v{rec.version} stopped: the health verdict "
                    f"after wave {i} is {reply.verdict}"
                    + (f" ({reply.reason})" if reply.reason else "")
                ),
            )
        entry = await self.rollouts.transition(
            namespace,
            rec,
            lambda c: W.record_verdict(
                c,
                i,
                verdict=reply.verdict,
                samples=reply.samples,
                reason=reply.reason,
                passed=passed,
                actor=self.instance,
                alert=alert,
            ),
            publish=False,
        )
        await self.rollouts.flush(namespace, entry, clear=not _writes_next(entry))

    async def _verdict(
        self, namespace: str, version: int, nodes: list[str], since: datetime
    ) -> health_api.VerdictReply:
        try:
            return await call(
                self.bus,
                health_api.VERDICT,
                health_api.VerdictRequest(
                    namespace=namespace, version=version, nodes=nodes, since=since
                ),
                timeout=self.verdict_timeout_s,
                # One try: no health-watcher answering is itself the answer (no data).
                retry_for=0,
            )
        except ConfbusError as exc:
            # No health-watcher (yet), or it cannot judge: that is missing data, never a pass.
            return health_api.VerdictReply(
                verdict="no_data", reason=f"no verdict from the health-watcher: {exc.message}"
            )

    async def _promote(self, namespace: str, rec: RolloutInfo, reason: str) -> None:
        prod = await self.targets.production_of(namespace, refresh=True)
        if prod is not None and prod.version >= rec.version:
            return  # promoted already (a step repeated after a crash)
        # Production for the nodes its selector matched only: the others keep theirs.
        await self.targets.scope(namespace, rec.version, rec.selector or {})
        try:
            info = await self.store.promote(namespace, rec.version, self.instance, reason)
        except (Conflict, NotFound):
            prod = await self.targets.production_of(namespace, refresh=True)
            if prod is not None and prod.version >= rec.version:
                return
            raise
        self.targets.set_production(info)

    async def _finish(self, namespace: str, rec: RolloutInfo) -> None:
        switched = R.switched_nodes(rec)
        reason = f"rollout {rec.rollout_id}: {len(switched)} node(s) in {len(rec.waves)} wave(s)"
        try:
            await self._promote(namespace, rec, reason)
        except Permanent as exc:
            # E.g. the version was rejected by an operator mid-rollout: it cannot be production.
            why = f"switched everywhere but cannot be promoted: {exc.message}"
            index = len(rec.waves) - 1
            await self.rollouts.transition(
                namespace, rec, lambda c: R.fail(c, index, why, actor=self.instance)
            )
            return
        final = rec.waves[-1] if rec.waves else None
        last_good = final is not None and final.verdict == "pass"
        if last_good:
            try:
                await self.store.mark_good(
                    namespace, rec.version, self.instance, f"{reason}; final bake passed with data"
                )
            except Permanent as exc:
                log.warning("could not mark last known good", extra={"error": exc.message})
                last_good = False
        await self.rollouts.transition(
            namespace, rec, lambda c: R.complete(c, actor=self.instance, last_good=last_good)
        )
        log.info(
            "rollout completed",
            extra={"namespace": namespace, "version": rec.version, "last_good": last_good},
        )


def _writes_next(entry: Entry[RolloutInfo]) -> bool:
    """The next step writes the record at once: it drops the events just published from the
    outbox, no write of their own (``record.writes_next``)."""
    return entry.value is not None and R.writes_next(entry.value, datetime.now(UTC))


def _no_targets(
    namespace: str, selector: dict[str, str], known: list[str], membership: Membership
) -> str:
    if selector:
        sel = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        return f"no live agent of {namespace} matches the selector {sel} ({len(known)} known)"
    states = ", ".join(f"{n} ({membership.liveness(n)})" for n in known[:10])
    return f"no live agent of {namespace}: known nodes are {states}"
