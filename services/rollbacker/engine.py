"""Deciding whether a rollback starts: from an alert, from an operator, or by taking over one
that another replica (or our previous self) left running.

The facts (policy, production, last known good, when the version went out) are read first;
the decision itself is one compare-and-set on the namespace's ledger, made on the ledger as it
is at that moment — so a redelivered alert, a second replica or a restart sees what was decided
and decides nothing twice.

Automatic rollbacks (alerts), in order::

    our own alert (source rollbacker), resolved       → ignored
    alert id already in the ledger                    → duplicate
    policy.rollback.automatic off; an alert about an older version than production;
    production went out longer than window_s ago
    (a distributor's failed bake is never too old)    → ignored
    a rollback of the namespace is running            → busy
    a stuck rollback waits for an operator            → held
    production already runs the last known good bytes → ignored
    (but a version that passed its bake is suspect for
    window_s: then the last known good before it is the
    target, and the version loses its mark — suspect.py)
    no last known good                                → refused: rollback.stuck + an alert
                                                        (announced once per version)
    within cooldown_s of the last rollback,
    or max_per_window in cap_window_s                 → cooldown / cap
    otherwise                                         → started

A manual rollback (``cfg.api.rollback.start``) is refused only when one is running, when
there is nothing to go back to, when production already has those bytes, or when the
namespace's current policy would refuse the target's bytes (its schema or format changed since)
— unless ``force``, and then the force and what it overrode are in the rollback's reason, which
its events carry with the operator as actor. It is not held back by the cooldown or the cap (an
operator decided), but it counts for them. An alert's rollback is never held up by the policy
check: it restores bytes that were good, during an incident.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass, field

import anyio
import msgspec
from anyio.abc import TaskGroup

from confbus.rollbacker import plan
from confbus.rollbacker.announce import Announcer
from confbus.rollbacker.driver import Driver
from confbus.rollbacker.judged import Judged, announce_judgement
from confbus.rollbacker.ledger import Ledgers
from confbus.rollbacker.metrics import RollbackerMetrics
from confbus.rollbacker.peers import Peers
from confbus.rollbacker.records import prune, rate_limit, with_alert, with_rollback
from confbus.rollbacker.suspect import good_before
from confbus.schemas.api.rollback import RollbackReply, RollbackRequest
from confbus.schemas.api.store import VersionReply
from confbus.schemas.base import utcnow as now_utc
from confbus.schemas.changes import ChangeProposed
from confbus.schemas.health import Alert
from confbus.schemas.policy import Policy
from confbus.schemas.state import Ledger, Rollback, SeenAlert

log = logging.getLogger("confbus.rollbacker")


def alert_rollback_id(namespace: str, alert_id: str) -> str:
    """The same alert always maps to the same rollback (and change id, and version)."""
    return "rb-" + hashlib.sha256(f"{namespace}\0{alert_id}".encode()).hexdigest()[:16]


def change_id_of(rollback_id: str) -> str:
    return "rollback-" + rollback_id.removeprefix("rb-")


@dataclass(frozen=True)
class Facts:
    """What the decision needs from the other services, read before the compare-and-set."""

    policy: Policy
    from_version: int | None
    from_sha256: str | None
    last_good: VersionReply | None  # what to go back to (the one before, for a suspect version)
    ignore: str = ""  # a reason to ignore the alert, found while reading the facts
    revokes: int | None = None  # the suspect version that is the last known good now


@dataclass
class Engine:
    peers: Peers
    ledgers: Ledgers
    driver: Driver
    announcer: Announcer
    metrics: RollbackerMetrics
    instance: str
    tg: TaskGroup
    driving: set[str] = field(default_factory=set)  # namespaces driven by this replica
    running: list[str] = field(default_factory=list)  # with a running rollback, at the last sweep

    # -- automatic ----------------------------------------------------------------------------

    async def on_alert(self, alert: Alert, *, redelivered: bool = False) -> str:
        """Judge one alert and leave its event; returns the outcome (for metrics and tests).
        ``redelivered``: the bus delivers it again (we may have judged it and stopped before
        the ack) — then the judgement we recorded is announced again, not a duplicate."""
        judged = await self._judge(alert)
        self.metrics.alerts.labels(judged.outcome).inc()
        log.info(
            "alert judged",
            extra={
                "namespace": alert.namespace,
                "alert_id": alert.alert_id,
                "outcome": judged.outcome,
                "detail": judged.detail,
            },
        )
        await announce_judgement(
            self.peers.bus, alert, judged, actor=self.instance, redelivered=redelivered
        )
        return judged.outcome

    async def _judge(self, alert: Alert) -> Judged:
        ns = alert.namespace
        if alert.source == "rollbacker":
            return Judged("ignored", "the rollbacker's own alert", alert.version)
        if alert.state != "firing":
            return Judged("ignored", "resolved", alert.version)
        ledger = await self.ledgers.read(ns)
        earlier = ledger.seen(alert.alert_id)
        if earlier is not None:
            return Judged.again(earlier, alert.version)
        facts = await self._facts(alert)
        rollback_id = alert_rollback_id(ns, alert.alert_id)
        now = now_utc()
        announce: list[Rollback] = []

        def decide(ledger: Ledger) -> tuple[Ledger | None, Judged]:
            announce.clear()
            earlier = ledger.seen(alert.alert_id)
            if earlier is not None:
                return None, Judged.again(earlier, alert.version)
            ledger = prune(ledger, facts.policy.rollback, now)

            def record(outcome: str, detail: str, rb_id: str | None = None) -> Ledger:
                seen = SeenAlert(
                    alert_id=alert.alert_id,
                    at=now,
                    outcome=outcome,
                    rollback_id=rb_id,
                    detail=detail,
                )
                return with_alert(ledger, seen)

            def judged(outcome: str, detail: str, rb_id: str | None = None) -> Judged:
                return Judged(outcome, detail, facts.from_version, rb_id)

            if facts.ignore:
                return record("ignored", facts.ignore), judged("ignored", facts.ignore)
            running = ledger.running
            if running is not None:
                detail = f"rollback {running.rollback_id} is running"
                rb_id = running.rollback_id
                return record("busy", detail, rb_id), judged("busy", detail, rb_id)
            held = ledger.holding(facts.from_version)
            if held is not None:
                detail = f"rollback {held.rollback_id} is stuck and waits for an operator"
                rb_id = held.rollback_id
                return record("held", detail, rb_id), judged("held", detail, rb_id)
            good = facts.last_good
            if facts.revokes is None and good is not None and good.info.sha256 == facts.from_sha256:
                detail = f"v{facts.from_version} already has the last known good bytes"
                return record("ignored", detail), judged("ignored", detail)
            if good is None:
                detail = "nothing known-good to go back to (no version passed a bake with data)"
                if facts.revokes is not None:
                    detail = f"v{facts.revokes} is the last known good and no version was before it"
                rb = self._new(
                    rollback_id, alert, facts, to_version=0, state="refused", detail=detail
                )
                already = any(
                    r.state == "refused" and r.from_version == facts.from_version
                    for r in ledger.rollbacks
                )
                if not already:
                    announce.append(rb)
                out = with_rollback(record("refused", detail, rollback_id), rb)
                return out, judged("refused", detail, rollback_id)
            limited = rate_limit(ledger, facts.policy.rollback, now)
            if limited is not None:
                out = record(limited.kind, limited.detail)
                return out, judged(limited.kind, limited.detail)
            rb = self._new(rollback_id, alert, facts, to_version=good.info.version)
            out = with_rollback(record("started", "", rollback_id), rb)
            detail = f"rolling v{facts.from_version} back to v{good.info.version}'s config"
            if facts.revokes is not None:
                detail += f"; v{facts.revokes} loses its last-known-good mark"
            active = msgspec.structs.replace(out, active=rollback_id)
            return active, judged("started", detail, rollback_id)

        _, result = await self.ledgers.change(ns, decide)
        for rb in announce:
            self.metrics.rollbacks.labels("refused").inc()
            await self.announcer.stuck(rb, -1, None, rb.detail, facts.policy)
        if result.outcome == "started":
            self.spawn(ns, rollback_id)
        return result

    async def _facts(self, alert: Alert) -> Facts:
        ns = alert.namespace
        policy = await self.peers.policy(ns)
        prod = await self.peers.version(ns, "production")
        last_good = await self.peers.version(ns, "last-good")
        prod_version = prod.info.version if prod is not None else None
        from_version = alert.version if alert.version is not None else prod_version
        ignore = ""
        if from_version is None:
            ignore = "the namespace has no production version and the alert names none"
        elif prod_version is not None and from_version < prod_version:
            ignore = f"the alert is about v{from_version}; production is v{prod_version} already"
        elif not policy.rollback.automatic:
            ignore = "automatic rollbacks are off in the namespace's policy"
        elif alert.source != "distributor":
            ignore = await self._outside_window(ns, from_version, prod, policy)
        from_sha = None
        revokes = None
        if from_version is not None and not ignore:
            info = prod if prod is not None and prod.info.version == from_version else None
            info = info or await self.peers.version(ns, from_version)
            from_sha = info.info.sha256 if info is not None else None
            suspect = (
                info is not None
                and info.info.rollback_of is None  # a rollback restores known-good bytes
                and last_good is not None
                and last_good.info.version == from_version
            )
            if suspect:
                revokes = from_version
                before = await good_before(self.peers.bus, ns, from_version)
                last_good = await self.peers.version(ns, before) if before else None
        return Facts(policy, from_version, from_sha, last_good, ignore, revokes)

    async def _outside_window(
        self, ns: str, version: int, prod: VersionReply | None, policy: Policy
    ) -> str:
        if prod is None or version > prod.info.version:
            return ""  # still being rolled out: it is going out right now
        went_out = await self.peers.went_out_at(ns, version) or prod.info.created_at
        age = (now_utc() - went_out).total_seconds()
        if age > policy.rollback.window_s:
            return (
                f"v{version} became production {age:.0f}s ago, beyond its suspect window "
                f"(rollback.window_s) of {policy.rollback.window_s:g}s"
            )
        return ""

    def _new(
        self,
        rollback_id: str,
        alert: Alert,
        facts: Facts,
        *,
        to_version: int,
        state: str = "running",
        detail: str = "",
    ) -> Rollback:
        now = now_utc()
        what = alert.summary or f"{alert.rule or 'alert'}"
        if alert.value is not None and alert.threshold is not None:
            what += f" ({alert.value:g} vs {alert.threshold:g})"
        return Rollback(
            rollback_id=rollback_id,
            namespace=alert.namespace,
            trigger="alert",
            alert_id=alert.alert_id,
            actor=self.instance,
            reason=f"alert {alert.alert_id} from {alert.source}: {what}"[:500],
            from_version=facts.from_version,
            to_version=to_version,
            to_sha256=facts.last_good.info.sha256 if facts.last_good else "",
            change_id=change_id_of(rollback_id),
            strategy=facts.policy.rollback.strategy,
            state="running" if state == "running" else "refused",
            started_at=now,
            updated_at=now,
            finished_at=None if state == "running" else now,
            detail=detail,
            owner=self.instance,  # driven by whoever holds the namespace's lease (driver.py)
            revokes_last_good=facts.revokes,
        )

    # -- manual -------------------------------------------------------------------------------

    async def manual(self, req: RollbackRequest) -> RollbackReply:
        ns = req.namespace
        policy = await self.peers.policy(ns)
        strategy = req.strategy or policy.rollback.strategy
        plan.batch_count(strategy)  # InvalidInput (400) for a strategy we cannot run
        prod = await self.peers.version(ns, "production")
        from_version = prod.info.version if prod is not None else None
        ref = req.to if req.to is not None else "last-good"
        target = await self.peers.version(ns, ref, content=True)

        def refused(detail: str, to: int = 0) -> RollbackReply:
            self.metrics.rollbacks.labels("refused").inc()
            return RollbackReply(
                rollback_id="",
                namespace=ns,
                from_version=from_version,
                to_version=to,
                new_version=None,
                state="refused",
                reason=detail,
            )

        if target is None:
            if req.to is None:
                return refused(
                    "nothing known-good to go back to: no version of "
                    f"{ns} passed a bake with data; give --to VERSION"
                )
            return refused(f"{ns} has no version {req.to}", req.to)
        to = target.info.version
        if target.info.status in ("draft", "rejected"):
            return refused(
                f"v{to} is {target.info.status}; only a version that was approved "
                "can be rolled back to",
                to,
            )
        if prod is not None and prod.info.sha256 == target.info.sha256:
            return refused(f"production v{prod.info.version} already has v{to}'s bytes", to)
        token = secrets.token_hex(8)
        rollback_id = f"rb-{token}"
        actor = req.actor or "operator"
        reason = req.reason or "manual rollback"
        unfit = await self._unfit(target, actor, change_id_of(rollback_id) + "-check")
        if unfit and not req.force:
            return refused(
                f"v{to} does not pass {ns}'s current policy: {unfit}; "
                f"--force rolls back to it anyway (recorded)",
                to,
            )
        if unfit:
            reason = f"{reason} [forced by {actor} past the current policy: {unfit}]"
        now = now_utc()
        rb = Rollback(
            rollback_id=rollback_id,
            namespace=ns,
            trigger="manual",
            actor=actor,
            reason=reason,
            from_version=from_version,
            to_version=to,
            to_sha256=target.info.sha256,
            change_id=change_id_of(rollback_id),
            strategy=strategy,
            started_at=now,
            updated_at=now,
            owner=self.instance,
        )

        def claim(ledger: Ledger) -> tuple[Ledger | None, str]:
            running = ledger.running
            if running is not None:
                return None, f"rollback {running.rollback_id} of {ns} is running"
            ledger = prune(ledger, policy.rollback, now)
            return msgspec.structs.replace(with_rollback(ledger, rb), active=rollback_id), ""

        _, busy = await self.ledgers.change(ns, claim)
        if busy:
            return refused(busy, to)
        self.spawn(ns, rollback_id)
        return RollbackReply(
            rollback_id=rollback_id,
            namespace=ns,
            from_version=from_version,
            to_version=to,
            new_version=None,
            state="started",
            reason=rb.reason,
        )

    async def _unfit(self, target: VersionReply, actor: str, change_id: str) -> str:
        """Why the namespace's current policy would refuse ``target``'s bytes as a new change
        (empty: it would not). The policy may have changed since the version was stored; the
        version-store says, with the rule it always applies (a dry run: nothing is stored)."""
        if target.content is None:
            return ""
        change = ChangeProposed(
            namespace=target.info.namespace,
            change_id=change_id,
            content=target.content,
            format=target.info.format,
            author=actor,
        )
        reply = await self.peers.check(change)
        if reply.ok:
            return ""
        return f"{reply.reason} (at {reply.where})" if reply.where else reply.reason

    # -- driving and taking over ---------------------------------------------------------------

    def spawn(self, namespace: str, rollback_id: str) -> None:
        if namespace in self.driving:
            return
        self.driving.add(namespace)
        self.tg.start_soon(self._drive, namespace, rollback_id)

    async def _drive(self, namespace: str, rollback_id: str) -> None:
        try:
            await self.driver.drive(namespace, rollback_id)
        except Exception:  # a bug must not take the service down; a takeover resumes it
            log.exception("rollback driver failed", extra={"rollback_id": rollback_id})
        finally:
            self.driving.discard(namespace)

    async def resume(self) -> int:
        """Drive the running rollbacks nobody drives here: ours from before a restart, or a
        dead replica's. The driver takes the namespace's lease first (a live replica's lease
        means it drives it). Returns how many drivers were started."""
        started = 0
        running = []
        for ns in await self.ledgers.with_running():
            if ns in self.driving:
                continue
            rb = (await self.ledgers.read(ns)).running
            if rb is not None:
                started += 1
                running.append(ns)
                self.spawn(ns, rb.rollback_id)
        self.running = running
        return started

    async def resume_loop(self, interval_s: float) -> None:
        while True:
            try:
                await self.resume()
            except Exception as exc:  # retried next round; never kills the service
                log.warning("resume sweep failed", extra={"error": repr(exc)})
            # Until the next sweep, the replicas driving the other running rollbacks are
            # watched: one that dies is taken over now (docs/design.md §4.6).
            with anyio.move_on_after(interval_s):
                if not await self.driver.leases.watch(self.running):
                    await anyio.sleep_forever()
