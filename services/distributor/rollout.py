"""Rollouts: recording the intent, and one driver per namespace that runs the waves.

The version-event consumer only **records** a rollout's intent in ``rollout.<ns>`` (a quick
compare-and-set, then ack); the driver of the namespace — on the replica holding the
``lease.distributor.<ns>`` lease — does the rest, one step per loop, each step a
compare-and-set on the record (see ``record`` for the states):

1. plan: read the policy, parse the strategy and selector, wait for membership to be warm,
   take the live agents of the namespace (narrowed by the selector), split them into waves —
   or refuse (``rollout.failed``, wave -1, with the reason; nothing switched);
2. per wave: record ``switching`` (with the participants and the time) *before* asking the
   coordinator for one atomic switch (for the first wave, in the same write as the plan),
   then record its outcome: committed → bake; aborted by a ``no`` → failed; aborted only by
   missed deadlines → retried once without those nodes, unless the rollout's excluded share
   would pass ``max_excluded`` → failed;
3. bake: wait until ``committed_at + bake_s`` (wall time in the record, so a restarted driver
   waits only what is left), then ask ``cfg.api.health.verdict`` about the nodes switched so
   far; no health-watcher is ``no_data``, which the policy's ``on_missing_data`` turns into a
   pass or a fail. A fail stops the rollout and hands it to the rollbacker (an ``Alert`` on
   ``cfg.alert.<ns>``, ``source="distributor"``, id from the rollout id);
4. after the last wave's clean bake: promote (store ``promote``), and mark last known good
   (store ``mark_good``) only on a ``pass`` verdict — never on ``no_data``.

Each write is a compare-and-set on the copy of the record this replica holds (its own last
write, or what the watch showed): no read first, and a stale copy only costs a failed
compare-and-set and a read. The events of a write go out from the record's outbox right
after it, and are then dropped from the outbox by a write of their own — or, in front of a
switch, by the write of its outcome (a driver restarted meanwhile publishes them again: a
no-op, by their message ids).

A restarted driver resumes where the record says: a wave whose commit is recorded is never
re-run; a wave left in ``switching`` is resolved from the coordinator's head and decision
records (a committed one is recorded, not re-run; one still preparing is waited for; one that
never reached the coordinator is re-run once the request can no longer be in flight).
Terminal records (completed, failed, superseded, rolled_back) are never driven again.

A newer approved version is recorded as ``next``: with ``on_newer_version="supersede"`` the
driver ends the running rollout as ``superseded`` at its next wave boundary (not in the middle
of a switch; a bake in progress is cut short) and starts the newer one; with ``"queue"`` the
newer one starts when the running one ends. Only the newest waiting version is kept — one
replaced while waiting gets a ``rollout.superseded`` event of its own.

Versions with ``rollback_of`` are created by the rollbacker, which switches them batch by
batch itself: the distributor does not start a rollout for them. It ends the namespace's
rollout as ``rolled_back`` on ``rollback.started`` (or on ``cfg.api.dist.abort`` with
``rolled_back=true``), and their ``txn.committed`` events raise node targets like any other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from anyio.abc import TaskGroup

from confbus.distributor import record as R
from confbus.distributor.kvstate import Entry, Leases, Stale, StateKV, rollout_key
from confbus.distributor.membership import Membership
from confbus.distributor.metrics import DistributorMetrics
from confbus.distributor.store import Store
from confbus.distributor.strategy import parse_selector, parse_strategy
from confbus.distributor.targets import Targets
from confbus.distributor.txnlog import abort_votes, created_event, find_decision, read_head
from confbus.runtime.api import call
from confbus.runtime.bus import Bus
from confbus.runtime.concurrency import gather, settle
from confbus.runtime.errors import ConfbusError, Conflict, InvalidInput, NotFound, Permanent
from confbus.runtime.events import emit
from confbus.runtime.failpoints import failpoint
from confbus.schemas import subjects
from confbus.schemas.api import dist as dist_api
from confbus.schemas.api import health as health_api
from confbus.schemas.api.dist import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    ControlRequest,
    PendingVersion,
    RolloutInfo,
    decode_rollout_info,
)
from confbus.schemas.api.operation import Operation
from confbus.schemas.api.txn import switch_deadline_s
from confbus.schemas.events import RollbackStarted, RolloutSuperseded, VoteRecord
from confbus.schemas.health import Alert
from confbus.schemas.versions import VersionInfo

log = logging.getLogger("confbus.distributor")

Change = Callable[[RolloutInfo | None], RolloutInfo | None]

# The plan may use the reads ``on_version`` made of the version, the policy and production:
# an answer this old is no staler than the plan's own reads would be after a slow step.
PLAN_READS_MAX_AGE_S = 0.5

# A switch request can sit at the coordinator this long (its own deadline, plus a queue
# behind another transaction of the namespace) before we may conclude it never ran.
IN_FLIGHT_GRACE_S = 10.0


class Gone(Exception):
    """The record is no longer this driver's to move (another rollout, or ended)."""


@dataclass
class Rollouts:
    bus: Bus
    kv: StateKV
    store: Store
    membership: Membership
    targets: Targets
    leases: Leases
    metrics: DistributorMetrics
    instance: str
    verdict_timeout_s: float = 10.0
    records: dict[str, Entry[RolloutInfo]] = field(default_factory=dict)
    busy: dict[str, set[str]] = field(default_factory=dict)  # nodes in a wave switch now
    # Nodes of a namespace with a catch-up switch in flight (set by the service).
    catching_up: Callable[[str], set[str]] = field(default=lambda _ns: set())
    drivers: set[str] = field(default_factory=set)
    _wake: dict[str, anyio.Event] = field(default_factory=dict)
    _any: anyio.Event = field(default_factory=anyio.Event)
    # Revision of our last write of each record: while the record is still there, a step
    # starts from it instead of reading it back.
    _written: dict[str, int] = field(default_factory=dict)
    # Outbox items published but still in the stored record: the next write drops them.
    _sent: dict[str, set[str]] = field(default_factory=dict)

    # -- reading and writing the record ----------------------------------------------------

    async def read(self, namespace: str) -> Entry[RolloutInfo]:
        entry = await self.kv.read(rollout_key(namespace), decode_rollout_info)
        self._remember(namespace, entry)
        return entry

    def _remember(self, namespace: str, entry: Entry[RolloutInfo]) -> None:
        # Only forward: tasks of this process (the driver, the consumer, the API) and the
        # watch each learn of revisions, and may come back in any order.
        cur = self.records.get(namespace)
        if cur is None or entry.revision >= cur.revision:
            self.records[namespace] = entry

    async def latest(self, namespace: str) -> Entry[RolloutInfo]:
        """The record as our own last write left it, if no one has written it since (as far
        as the watch shows); else read. Either is as fresh as a read: every write is a
        compare-and-set, so a record that moved in the meantime makes the next one fail."""
        cur = self.records.get(namespace)
        if cur is not None and cur.revision == self._written.get(namespace):
            return cur
        return await self.read(namespace)

    async def mutate(self, namespace: str, change: Change) -> tuple[Entry[RolloutInfo], bool]:
        """Compare-and-set ``change`` on the record, first against the copy we hold (no read
        when it is current), dropping outbox items already published."""
        dropped: set[str] = set()

        def write(cur: RolloutInfo | None) -> RolloutInfo | None:
            new = change(cur)
            dropped.clear()
            if new is None:
                return None
            sent = self._sent.get(namespace)
            if not sent or not new.outbox:
                return new
            dropped.update(i.msg_id for i in new.outbox if i.msg_id in sent)
            return R.replace(new, outbox=[i for i in new.outbox if i.msg_id not in sent])

        entry, wrote = await self.kv.mutate(
            rollout_key(namespace), decode_rollout_info, write, hint=self.records.get(namespace)
        )
        self._remember(namespace, entry)
        if wrote:
            self._written[namespace] = entry.revision
            if dropped:
                self._sent[namespace] -= dropped
            self.kick(namespace)
        return entry, wrote

    def observed(self, namespace: str, entry: Entry[RolloutInfo]) -> None:
        """A change seen by the ``rollout.*`` watch (ours or another replica's)."""
        self._remember(namespace, entry)
        self.kick(namespace)

    def kick(self, namespace: str) -> None:
        ev = self._wake.get(namespace)
        if ev is not None:
            ev.set()
        self._any.set()

    async def _wait(self, namespace: str, timeout: float) -> None:
        ev = self._wake.setdefault(namespace, anyio.Event())
        with anyio.move_on_after(max(0.0, timeout)):
            await ev.wait()
        if ev.is_set():
            self._wake[namespace] = anyio.Event()

    async def flush(self, namespace: str, entry: Entry[RolloutInfo], *, clear: bool = True) -> None:
        """Publish the record's outbox, then remove what was published — at once, or with
        ``clear=False`` by the next write (one the caller is about to make). Until then a
        restarted driver publishes it again, a no-op by its message id."""
        rec = entry.value
        if rec is None or not rec.outbox:
            return
        sent = self._sent.setdefault(namespace, set())
        if len(sent) > 256:  # ids another replica cleared: forget them (at worst, a no-op again)
            sent.clear()
        for item in rec.outbox:
            if item.msg_id in sent:
                continue
            if item.event is not None:
                await emit(self.bus, item.event, msg_id=item.msg_id)
            elif item.alert is not None:
                await self.bus.publish(
                    subjects.alert(namespace), item.alert, msg_id=item.alert.alert_id
                )
            sent.add(item.msg_id)
        if not clear:
            return

        def change(cur: RolloutInfo | None) -> RolloutInfo | None:
            if cur is None or not any(i.msg_id in sent for i in cur.outbox):
                return None
            return cur  # mutate drops what was sent

        await self.mutate(namespace, change)

    # -- intent (the version-event consumer) ---------------------------------------------------

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
        # for the plan, which follows at once (PLAN_READS_MAX_AGE_S).
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

        def change(cur: RolloutInfo | None) -> RolloutInfo | None:
            replaced.clear()
            if cur is not None and cur.version >= version:
                return None
            if cur is not None and cur.next is not None and cur.next.version >= version:
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

        entry, wrote = await self.mutate(namespace, change)
        if wrote:
            log.info("rollout recorded", extra={"namespace": namespace, "version": version})
        for old in replaced:
            await emit(
                self.bus,
                RolloutSuperseded(
                    namespace=namespace,
                    actor=self.instance,
                    reason=f"v{version} came while v{old.version} was still waiting to start",
                    rollout_id=f"{namespace}-v{old.version}-waiting",
                    version=old.version,
                    by_version=version,
                ),
                msg_id=f"rollout:{namespace}-v{old.version}-waiting:superseded",
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

        entry, wrote = await self.mutate(namespace, change)
        if wrote:
            self.metrics.rollouts.labels("rolled_back").inc()
            await self.flush(namespace, entry)
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

        entry, wrote = await self.mutate(req.namespace, change)
        if problem or entry.value is None:
            raise Conflict(problem[0] if problem else f"no rollout of {req.namespace}")
        if wrote:
            if op is dist_api.ABORT:
                self.metrics.rollouts.labels("failed").inc()
            await self.flush(req.namespace, entry)
        return R.replace(entry.value, revision=entry.revision)

    # -- supervision -------------------------------------------------------------------------

    def wants_driver(self, namespace: str) -> bool:
        entry = self.records.get(namespace)
        rec = entry.value if entry else None
        return rec is not None and (rec.active or bool(rec.outbox) or rec.next is not None)

    async def supervise(self, tg: TaskGroup) -> None:
        """Start a driver for each namespace that has work, on the replica holding its lease."""
        while True:
            for ns in list(self.records):
                if ns not in self.drivers and self.leases.held(ns) and self.wants_driver(ns):
                    self.drivers.add(ns)
                    tg.start_soon(self._drive_guarded, ns)
            self._any = anyio.Event()
            with anyio.move_on_after(0.5):
                await self._any.wait()

    async def _drive_guarded(self, namespace: str) -> None:
        try:
            await self.drive(namespace)
        finally:
            self.drivers.discard(namespace)
            self.busy.pop(namespace, None)

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
                await self._wait(namespace, delay)
                delay = min(delay * 2, 5.0)
            except Exception:
                log.exception("rollout step crashed; retrying", extra={"namespace": namespace})
                await self._wait(namespace, delay)
                delay = min(delay * 2, 5.0)

    async def step(self, namespace: str) -> bool:
        """One step of the namespace's rollout. False: nothing more to do for now."""
        entry = await self.latest(namespace)
        rec = entry.value
        if rec is None:
            return False
        if rec.outbox:  # left by a crash, or a write that failed: publish and clear it
            await self.flush(namespace, entry)
            return True
        if rec.state in TERMINAL_STATES:
            if rec.next is not None:
                await self._start_next(namespace, rec)
                return True
            return False
        if rec.state == "paused":
            await self._wait(namespace, 5.0)
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
            await self._switch(namespace, rec, i)
        elif state == "switching":
            await self._recover(namespace, rec, i)
        elif state == "baking":
            await self._bake(namespace, rec, i)
        elif state in ("done", "skipped"):
            await self._transition(namespace, rec, lambda c: R.replace(c, current_wave=i + 1))
        else:  # a failed wave in a live record: end it (should not happen)
            why = rec.reason or f"wave {i} failed"
            await self._transition(namespace, rec, lambda c: R.fail(c, i, why, actor=self.instance))
        return True

    async def _transition(
        self,
        namespace: str,
        rec: RolloutInfo,
        fn: Callable[[RolloutInfo], RolloutInfo],
        *,
        states: tuple[str, ...] = ("running",),
        planned: bool | None = None,
        publish: bool = True,
    ) -> Entry[RolloutInfo]:
        """Apply ``fn`` if the record is still this rollout in one of ``states`` (and planned
        or not, if ``planned`` says), then publish its outbox (``publish=False``: the caller
        will)."""

        def change(cur: RolloutInfo | None) -> RolloutInfo | None:
            if cur is None or cur.rollout_id != rec.rollout_id or cur.state not in states:
                return None
            if planned is not None and cur.planned != planned:
                return None
            return R.replace(fn(cur), holder=self.instance)

        entry, wrote = await self.mutate(namespace, change)
        if not wrote:
            raise Gone(namespace)
        if entry.value is not None:
            if entry.value.state != rec.state and entry.value.state in TERMINAL_STATES:
                self.metrics.rollouts.labels(entry.value.state).inc()
            if publish:
                await self.flush(namespace, entry)
        return entry

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

        await self.mutate(namespace, change)
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
            why = found.message
            await self._transition(
                namespace,
                rec,
                lambda c: R.refuse(c, why, actor=self.instance),
                states=ACTIVE_STATES,
            )
            return
        info = found
        self.targets.note_version(info)
        if info.status == "production":
            # Promoted by someone else (an operator) before its rollout began: nothing to do;
            # the nodes converge to production by catch-up.
            await self._transition(
                namespace,
                rec,
                lambda c: R.complete(
                    c, actor=self.instance, last_good=False, reason="promoted before its rollout"
                ),
                states=ACTIVE_STATES,
            )
            return
        if info.status != "approved":
            await self._transition(
                namespace,
                rec,
                lambda c: R.refuse(
                    c,
                    f"v{rec.version} is {info.status}; only an approved version rolls out",
                    actor=self.instance,
                ),
                states=ACTIVE_STATES,
            )
            return
        try:
            strategy = parse_strategy(rec.requested_strategy or policy.strategy)
            selector = parse_selector(
                rec.selector if rec.selector is not None else dict(policy.selector)
            )
        except InvalidInput as exc:
            reason = exc.message
            await self._transition(
                namespace,
                rec,
                lambda c: R.refuse(c, reason, actor=self.instance),
                states=ACTIVE_STATES,
            )
            return
        await self.membership.warm()
        live = self.membership.live_nodes(namespace, selector)
        if not live:
            known = self.membership.known_nodes(namespace)
            if not known and not selector:
                await self._bootstrap(namespace, rec, prod)
                return
            reason = _no_targets(namespace, selector, known, self.membership)
            await self._transition(
                namespace,
                rec,
                lambda c: R.refuse(c, reason, actor=self.instance),
                states=ACTIVE_STATES,
            )
            return
        waves = strategy.waves(live)

        def plan(c: RolloutInfo) -> RolloutInfo:
            return R.planned(
                c,
                strategy=str(strategy),
                selector=selector,
                waves=waves,
                bake_s=policy.bake_s,
                max_excluded=policy.max_excluded,
                vote_timeout_s=policy.vote_timeout_s,
                on_missing_data=policy.on_missing_data,
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
            await self._switch(namespace, plan(rec), 0, plan=plan)
        else:  # paused before it was planned: plan now, start when resumed
            await self._transition(namespace, rec, plan, states=ACTIVE_STATES, planned=False)

    async def _version_info(
        self, namespace: str, version: int, *, max_age_s: float
    ) -> VersionInfo | NotFound:
        try:
            return await self.store.version(namespace, version, max_age_s=max_age_s)
        except NotFound as exc:
            return exc

    async def _bootstrap(self, namespace: str, rec: RolloutInfo, prod: VersionInfo | None) -> None:
        """No agent follows the namespace yet: nothing to switch. The version becomes
        production so that agents joining later catch up to it."""
        reason = "no agent follows this namespace yet: promoted; nodes catch up when they join"
        await self._promote(namespace, rec, reason)
        await self._transition(
            namespace,
            rec,
            lambda c: R.complete(
                R.replace(c, planned=True, strategy=c.requested_strategy or "all-at-once"),
                actor=self.instance,
                last_good=False,
                reason=reason,
            ),
            states=ACTIVE_STATES,
        )

    async def _supersede(self, namespace: str, rec: RolloutInfo) -> None:
        assert rec.next is not None
        by = rec.next.version
        await self._transition(
            namespace,
            rec,
            lambda c: R.supersede(c, by, actor=self.instance),
            states=ACTIVE_STATES,
        )
        log.info("rollout superseded", extra={"namespace": namespace, "by_version": by})

    async def _switch(
        self,
        namespace: str,
        rec: RolloutInfo,
        i: int,
        *,
        plan: Callable[[RolloutInfo], RolloutInfo] | None = None,
    ) -> None:
        """Start wave ``i``'s attempt (recorded first), ask for the switch, record its outcome.

        ``plan``: the record is not planned yet — ``rec`` is as it will be once ``plan`` is
        applied, and the same write records the plan and this attempt."""
        todo = R.wave_nodes(rec, i)
        already = [n for n in todo if (self.membership.applied(namespace, n) or 0) >= rec.version]
        down = [n for n in todo if n not in already and not self.membership.is_live(n)]
        nodes = [n for n in todo if n not in already and n not in down]
        total = max(1, len(rec.targets))
        would_exclude = R.excluded_count(rec) + len(down)
        if down and would_exclude / total > rec.max_excluded + 1e-9:
            reason = (
                f"wave {i}: {', '.join(down)} not live; leaving them out would exclude "
                f"{would_exclude} of {total} targets ({would_exclude / total:.0%}), over "
                f"max_excluded {rec.max_excluded:.0%}"
            )
            await self._transition(
                namespace,
                rec,
                lambda c: R.fail(plan(c) if plan else c, i, reason, actor=self.instance),
                planned=plan is None,
            )
            return
        timeout = rec.vote_timeout_s or 5.0
        # No new catch-up for these nodes from here on; let one in flight finish first, so
        # that the wave and a one-node switch do not trip over each other at the agent.
        self.busy[namespace] = set(nodes)
        with anyio.move_on_after(timeout + 5.0):
            while set(nodes) & self.catching_up(namespace):  # noqa: ASYNC110
                await anyio.sleep(0.05)
        try:
            entry = await self._transition(
                namespace,
                rec,
                lambda c: R.start_attempt(
                    plan(c) if plan else c,
                    i,
                    nodes=nodes,
                    already=already,
                    down=down,
                    actor=self.instance,
                ),
                planned=plan is None,
                publish=not nodes,  # else with the switch request, below
            )
        except BaseException:
            self.busy.pop(namespace, None)
            raise
        if not nodes:
            self.busy.pop(namespace, None)
            return  # nothing to switch in this wave: it bakes with the nodes switched so far
        assert entry.value is not None
        started = time.monotonic()
        # The attempt's events (``rollout.started`` before a first wave) and the switch
        # request at once, the events first: neither call yields before its message is on
        # the connection, so the server has the events before the request, and the stream
        # stores them long before anything the switch leads to. What was published is
        # dropped from the outbox by the write of the outcome; what was not, is published
        # by that write's flush.
        try:
            published, answered = await settle(
                self.flush(namespace, entry, clear=False),
                self.store.switch(
                    namespace,
                    rec.version,
                    nodes,
                    timeout,
                    self.instance,
                    sha256=self.targets.known_sha256(namespace, rec.version),
                ),
            )
        finally:
            self.busy.pop(namespace, None)
        if isinstance(published, Exception):
            log.warning("rollout events not published yet", extra={"error": repr(published)})
        if isinstance(answered, Permanent):
            why = f"wave {i}: the coordinator refused the switch: {answered}"
            await self._transition(
                namespace,
                entry.value,
                lambda c: R.fail(c, i, why, actor=self.instance),
                states=ACTIVE_STATES,
            )
            return
        if isinstance(answered, Exception):
            # Unavailable (a timeout, no coordinator): the wave stays "switching" and the next
            # step finds out from the head and the decision records what happened.
            raise answered
        reply = answered
        switch_s = time.monotonic() - started
        self.metrics.wave_switch_seconds.observe(switch_s)
        if reply.outcome == "commit":
            await failpoint("distributor.after_wave_committed")
        await self._record(namespace, entry.value, i, reply.txid, reply.outcome, reply.votes,
                           switch_s)  # fmt: skip

    async def _record(
        self,
        namespace: str,
        rec: RolloutInfo,
        i: int,
        txid: str,
        outcome: str,
        votes: list[VoteRecord],
        switch_s: float | None,
        decision_reason: str = "",
    ) -> None:
        def change(cur: RolloutInfo | None) -> RolloutInfo | None:
            if cur is None or cur.rollout_id != rec.rollout_id or i >= len(cur.waves):
                return None
            w = cur.waves[i]
            if txid in w.txids or w.state != "switching":
                return None  # recorded already
            if outcome == "commit":
                out = R.record_commit(
                    cur, i, txid=txid, votes=votes, switch_s=switch_s, actor=self.instance
                )
            else:
                out = R.record_abort(
                    cur,
                    i,
                    txid=txid,
                    votes=votes,
                    actor=self.instance,
                    decision_reason=decision_reason,
                )
            return R.replace(out, holder=self.instance)

        entry, wrote = await self.mutate(namespace, change)
        if not wrote or entry.value is None:
            return
        if outcome == "commit":
            self.metrics.waves.labels("committed").inc()
        elif entry.value.waves[i].state == "pending":
            self.metrics.waves.labels("retrying").inc()
        else:
            self.metrics.waves.labels("aborted").inc()
        if entry.value.state in TERMINAL_STATES and rec.state not in TERMINAL_STATES:
            self.metrics.rollouts.labels(entry.value.state).inc()
        if outcome == "commit":
            nodes = [v.node for v in votes] or entry.value.waves[i].switch_nodes
            await self.targets.raise_to(namespace, nodes, rec.version, txid)
        await failpoint("distributor.after_wave_recorded")
        await self.flush(namespace, entry)

    async def _recover(self, namespace: str, rec: RolloutInfo, i: int) -> None:
        """A wave left ``switching``: find what became of its attempt before doing anything."""
        w = rec.waves[i]
        since = w.switch_started_at or rec.started_at or datetime.now(UTC)
        decision = await find_decision(
            self.bus, namespace, rec.version, w.switch_nodes, since, exclude=w.txids
        )
        if decision is None:
            head = await read_head(self.bus, namespace)
            if (
                head is not None
                and head.txid is not None
                and head.txid not in w.txids
                and head.version == rec.version
                and set(head.participants) == set(w.switch_nodes)
            ):
                if head.state == "preparing":
                    reply = await self.store.resolve(namespace, head.txid)
                    if reply.state == "pending" or reply.decision is None:
                        log.info("waiting for the wave's transaction", extra={"txid": head.txid})
                        await self._wait(namespace, 0.25)
                        return
                    decision = reply.decision
                else:
                    # Decided on the head; its record may be a moment behind.
                    await self._wait(namespace, 0.1)
                    return
        if decision is not None:
            log.info(
                "recovered the outcome of a wave",
                extra={"namespace": namespace, "wave": i, "txid": decision.txid},
            )
            votes: list[VoteRecord] = []
            if decision.outcome == "abort":
                ev = await abort_votes(self.bus, namespace, decision.txid, since)
                votes = ev.votes if ev is not None else []
                if not votes:
                    votes = [
                        VoteRecord(node=n, vote="missing", reason="unknown (recovered)")
                        for n in w.switch_nodes
                    ]
            await self._record(
                namespace,
                rec,
                i,
                decision.txid,
                decision.outcome,
                votes,
                None,
                decision_reason=decision.reason,
            )
            return
        timeout = rec.vote_timeout_s or 5.0
        in_flight_until = since + timedelta(seconds=switch_deadline_s(timeout) + IN_FLIGHT_GRACE_S)
        left = (in_flight_until - datetime.now(UTC)).total_seconds()
        if left > 0:
            await self._wait(namespace, min(left, 0.5))
            return
        # Never reached the coordinator (and can no longer): run the attempt again.
        log.info("re-running a wave whose switch never ran", extra={"wave": i})

        def undo(c: RolloutInfo) -> RolloutInfo:
            wave = R.replace(c.waves[i], state="pending", attempts=max(0, c.waves[i].attempts - 1))
            return R.set_wave(c, i, wave)

        await self._transition(namespace, rec, undo, states=ACTIVE_STATES)

    async def _bake(self, namespace: str, rec: RolloutInfo, i: int) -> None:
        w = rec.waves[i]
        committed = w.committed_at or datetime.now(UTC)
        left = (committed + timedelta(seconds=rec.bake_s) - datetime.now(UTC)).total_seconds()
        if left > 0:
            # Interruptible: a pause, an abort or a newer version wakes us up.
            await self._wait(namespace, left)
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
        await self._transition(
            namespace,
            rec,
            lambda c: R.record_verdict(
                c,
                i,
                verdict=reply.verdict,
                samples=reply.samples,
                reason=reply.reason,
                passed=passed,
                actor=self.instance,
                alert=alert,
            ),
        )

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
            await self._transition(
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
        await self._transition(
            namespace, rec, lambda c: R.complete(c, actor=self.instance, last_good=last_good)
        )
        log.info(
            "rollout completed",
            extra={"namespace": namespace, "version": rec.version, "last_good": last_good},
        )


def _no_rollout(namespace: str, rec: RolloutInfo | None, op: str) -> str:
    if rec is None:
        return f"cannot {op}: {namespace} has no rollout"
    return (
        f"cannot {op}: the rollout of {namespace} (v{rec.version}, {rec.rollout_id}) is {rec.state}"
    )


def _no_targets(
    namespace: str, selector: dict[str, str], known: list[str], membership: Membership
) -> str:
    if selector:
        sel = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        return f"no live agent of {namespace} matches the selector {sel} ({len(known)} known)"
    states = ", ".join(f"{n} ({membership.liveness(n)})" for n in known[:10])
    return f"no live agent of {namespace}: known nodes are {states}"
