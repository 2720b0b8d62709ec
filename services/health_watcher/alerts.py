"""Alerts on ``cfg.alert.<ns>``: raised and resolved by the namespace's lease holder.

``alert_id`` is ``<ns>:<version>:<rule>:<first-bad-window-start>`` (unix seconds): the same
condition keeps its id for as long as it lasts. It is published with ``Nats-Msg-Id`` = the id
(``<id>:resolved`` for the resolution, which carries the same ``alert_id``), so a retried
publish is a no-op within ``CFG_ALERTS``' duplicate window, and the rollbacker acts once per id.

The firing alerts of a namespace live in ``CFG_STATE`` under ``health.alerts.<ns>`` (the
*alert book*, written by compare-and-set), so that a replica taking the namespace over keeps the
same ids, resolves what its predecessor raised, and publishes what it had recorded but not yet
published (the book is written before the publish: an outbox). The book carries the epoch of
its writer's lease, and a writer with an older one is refused: a replica that lost the
namespace can no longer change it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec
import nats.errors

from confbus.health_watcher.metrics import WatcherMetrics
from confbus.health_watcher.rules import Hysteresis, Point, RuleOutcome, evaluate, fmt, in_window
from confbus.health_watcher.windows import SampleStore
from confbus.runtime.bus import Bus
from confbus.runtime.errors import ConfbusError, Fenced
from confbus.runtime.kv import Entry, StateKV
from confbus.runtime.leases import Leases
from confbus.schemas import subjects
from confbus.schemas.health import Alert
from confbus.schemas.policy import HealthRule, Policy
from confbus.schemas.state import AlertBook, FiringAlert, alert_book_key, decode_alert_book

log = logging.getLogger("confbus.health_watcher.alerts")


def slug(rule_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", rule_name)[:64] or "rule"


def alert_id(namespace: str, version: int, rule_name: str, window_start: float) -> str:
    return f"{namespace}:{version}:{slug(rule_name)}:{int(window_start)}"


def entry_key(version: int, rule_name: str) -> str:
    return f"{version}:{rule_name}"


@dataclass
class Alerter:
    """One namespace's alert book, and the publishing of its alerts."""

    namespace: str
    bus: Bus
    kv: StateKV
    leases: Leases
    metrics: WatcherMetrics
    entry: Entry[AlertBook] = field(default_factory=lambda: Entry(AlertBook(), 0))
    loaded: bool = False

    @property
    def book(self) -> AlertBook:
        return self.entry.value or AlertBook()

    async def load(self) -> None:
        self.entry = await self.kv.read(alert_book_key(self.namespace), decode_alert_book)
        self.loaded = True

    async def _change(self, fn: Callable[[AlertBook], AlertBook | None]) -> None:
        """Compare-and-set ``fn`` on the book, first against our copy of it. The book carries
        the epoch of the lease its writer held: ``Fenced`` if a newer holder wrote it (we lost
        the namespace, whatever our clock says), ``NotHeld`` if we know we did."""
        grant = self.leases.require(self.namespace)

        def change(cur: AlertBook | None) -> AlertBook | None:
            book = cur or AlertBook()
            if book.epoch > grant.epoch:
                raise Fenced(
                    f"the alert book of {self.namespace} is kept by a newer lease holder "
                    f"(epoch {book.epoch} > {grant.epoch})"
                )
            new = fn(book)
            return None if new is None else msgspec.structs.replace(new, epoch=grant.epoch)

        key = alert_book_key(self.namespace)
        self.entry, _ = await self.kv.mutate(key, decode_alert_book, change, hint=self.entry)

    async def fire(self, version: int, outcome: RuleOutcome, nodes: Sequence[str]) -> bool:
        """Record and publish the alert; False if it could not be (tried again later)."""
        try:
            return await self._fire(version, outcome, nodes)
        except (ConfbusError, nats.errors.Error, msgspec.DecodeError) as exc:
            log.warning("alert not raised", extra={"namespace": self.namespace, "error": repr(exc)})
            return False

    async def resolve(self, version: int, rule_name: str, why: str) -> bool:
        """Publish the resolution and forget the alert; False if it could not be."""
        try:
            return await self._resolve(version, rule_name, why)
        except (ConfbusError, nats.errors.Error, msgspec.DecodeError) as exc:
            log.warning(
                "alert not resolved", extra={"namespace": self.namespace, "error": repr(exc)}
            )
            return False

    async def _fire(self, version: int, outcome: RuleOutcome, nodes: Sequence[str]) -> bool:
        rule = outcome.rule
        key = entry_key(version, rule.name)
        entry = self.book.firing.get(key)
        if entry is None:
            entry = FiringAlert(
                alert_id=alert_id(self.namespace, version, rule.name, outcome.window_start),
                version=version,
                rule=rule.name,
                value=outcome.value,
                threshold=rule.threshold,
                nodes=sorted(nodes),
                summary=summary(self.namespace, version, outcome, nodes),
                since=outcome.window_start,
            )
            new = entry

            def record(book: AlertBook) -> AlertBook | None:
                # Recorded already (a predecessor's last act): its id stands.
                return None if key in book.firing else _with(book, key, new)

            await self._change(record)
            entry = self.book.firing.get(key)
            if entry is None:
                return False
        return await self._publish_firing(key, entry)

    async def _publish_firing(self, key: str, entry: FiringAlert) -> bool:
        alert = Alert(
            alert_id=entry.alert_id,
            namespace=self.namespace,
            version=entry.version,
            state="firing",
            rule=entry.rule,
            value=entry.value,
            threshold=entry.threshold,
            nodes=entry.nodes,
            summary=entry.summary,
        )
        if not await self._publish(alert, entry.alert_id):
            return False
        if not entry.published:

            def mark(book: AlertBook) -> AlertBook | None:
                cur = book.firing.get(key)
                if cur is None or cur.published:
                    return None
                return _with(book, key, msgspec.structs.replace(cur, published=True))

            try:
                await self._change(mark)
            except ConfbusError as exc:
                log.info("alert book not updated", extra={"error": repr(exc)})
        return True

    async def _resolve(self, version: int, rule_name: str, why: str) -> bool:
        key = entry_key(version, rule_name)
        entry = self.book.firing.get(key)
        if entry is None:
            return True
        alert = Alert(
            alert_id=entry.alert_id,
            namespace=self.namespace,
            version=version,
            state="resolved",
            rule=rule_name,
            threshold=entry.threshold,
            nodes=entry.nodes,
            summary=why,
        )
        if not await self._publish(alert, f"{entry.alert_id}:resolved"):
            return False
        # Published first, then forgotten: a crash in between republishes a duplicate, which
        # the stream drops.
        await self._change(lambda book: _with(book, key, None) if key in book.firing else None)
        return True

    async def republish_pending(self) -> None:
        """After taking a namespace over: publish what the predecessor recorded but may not
        have published."""
        for key, entry in list(self.book.firing.items()):
            if not entry.published:
                await self._publish_firing(key, entry)

    async def _publish(self, alert: Alert, msg_id: str) -> bool:
        if not self.leases.held(self.namespace):
            return False  # a replica that lost its lease says nothing more
        try:
            ack = await self.bus.publish(subjects.alert(self.namespace), alert, msg_id=msg_id)
        except (ConfbusError, nats.errors.Error) as exc:
            log.warning("alert not published", extra={"alert_id": msg_id, "error": repr(exc)})
            return False
        if not ack.duplicate:
            self.metrics.alerts.labels(alert.state, "rules").inc()
            log.info(
                "alert",
                extra={"alert_id": alert.alert_id, "state": alert.state, "summary": alert.summary},
            )
        return True


def _with(book: AlertBook, key: str, alert: FiringAlert | None) -> AlertBook:
    firing = dict(book.firing)
    if alert is None:
        firing.pop(key, None)
    else:
        firing[key] = alert
    return msgspec.structs.replace(book, firing=firing)


def summary(namespace: str, version: int, outcome: RuleOutcome, nodes: Sequence[str]) -> str:
    r = outcome.rule
    value = "?" if outcome.value is None else fmt(outcome.value)
    where = f" on {', '.join(sorted(nodes)[:10])}" + (" …" if len(nodes) > 10 else "")
    return (
        f"{namespace} v{version}: {r.name}: {r.metric} {value} {r.op} {fmt(r.threshold)} "
        f"over {fmt(outcome.window_s)}s{where}"
    )


@dataclass
class NamespaceEvaluator:
    """The lease holder's judging of one namespace: every version heard from, every rule."""

    namespace: str
    alerter: Alerter
    metrics: WatcherMetrics
    streaks: dict[tuple[int, str], Hysteresis] = field(default_factory=dict)

    async def evaluate(self, policy: Policy, store: SampleStore, now: float) -> None:
        ns = self.namespace
        if not self.alerter.loaded:
            await self.alerter.load()
            await self.alerter.republish_pending()
        rules = {r.name: r for r in policy.health_rules}
        firing = {(e.version, e.rule): e for e in self.alerter.book.firing.values()}
        versions = set(store.versions(ns)) | {v for v, _ in firing}
        widest = max((r.window_s for r in rules.values()), default=0.0)
        for version in sorted(versions):
            series = store.series(ns, version, start=now - widest)
            for rule in rules.values():
                if not self.alerter.leases.held(ns):
                    return
                await self._judge(version, rule, series, now, (version, rule.name) in firing)
        for version, rule_name in firing:
            if rule_name not in rules and self.alerter.leases.held(ns):
                await self.alerter.resolve(
                    version, rule_name, f"{ns} v{version}: rule {rule_name!r} left the policy"
                )
        live = {(v, r) for v in versions for r in rules}
        for key in [k for k in self.streaks if k not in live]:
            del self.streaks[key]

    async def _judge(
        self,
        version: int,
        rule: HealthRule,
        series: dict[str, list[Point]],
        now: float,
        firing: bool,
    ) -> None:
        outcome = evaluate(rule, series, now=now)
        result = "no_data" if outcome.ok is None else ("ok" if outcome.ok else "bad")
        self.metrics.evaluations.labels(result).inc()
        h = self.streaks.get((version, rule.name))
        if h is None:
            h = self.streaks[(version, rule.name)] = Hysteresis(rule.consecutive, firing=firing)
        h.consecutive = rule.consecutive
        transition = h.observe(outcome)
        if transition == "fire":
            nodes = outcome.bad_nodes or tuple(n for n, pts in series.items() if pts)
            if not await self.alerter.fire(version, outcome, nodes):
                # Not raised (lease lost, bus down): the next fresh bad evaluation tries again.
                h.firing = False
                h.bad = max(0, h.consecutive - 1)
        elif transition == "resolve":
            why = f"{self.namespace} v{version}: recovered: {outcome.describe()}"
            if not await self.alerter.resolve(version, rule.name, why):
                h.firing = True
                h.good = max(0, h.consecutive - 1)
        elif h.firing and not any(in_window(p, now - rule.window_s, now) for p in series.values()):
            # The version's nodes went quiet or moved on (a rollback, say): nothing left to judge.
            why = (
                f"{self.namespace} v{version}: no samples in the last {fmt(rule.window_s)}s "
                "(its nodes moved to another version or stopped reporting)"
            )
            if await self.alerter.resolve(version, rule.name, why):
                h.firing = False
                h.bad = h.good = 0
