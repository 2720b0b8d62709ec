"""Alerts on ``cfg.alert.<ns>``: raised and resolved by the namespace's lease holder.

``alert_id`` is ``<ns>:<version>:<rule>:<first-bad-window-start>`` (unix seconds): the same
condition keeps its id for as long as it lasts. It is published with ``Nats-Msg-Id`` = the id
(``<id>:resolved`` for the resolution, which carries the same ``alert_id``), so a retried
publish is a no-op within ``CFG_ALERTS``' duplicate window, and the rollbacker acts once per id.

The firing alerts of a namespace live in ``CFG_STATE`` under ``health.alerts.<ns>`` (the
*alert book*, written by compare-and-set), so that a replica taking the namespace over keeps the
same ids, resolves what its predecessor raised, and publishes what it had recorded but not yet
published (the book is written before the publish: an outbox).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from confbus.health_watcher.lease import NamespaceLeases
from confbus.health_watcher.metrics import WatcherMetrics
from confbus.health_watcher.rules import Hysteresis, Point, RuleOutcome, evaluate, fmt, in_window
from confbus.health_watcher.windows import SampleStore
from confbus.runtime.bus import Bus
from confbus.runtime.codec import encode
from confbus.runtime.errors import ConfbusError
from confbus.schemas import subjects
from confbus.schemas.health import Alert
from confbus.schemas.policy import HealthRule, Policy

log = logging.getLogger("confbus.health_watcher.alerts")


class FiringAlert(msgspec.Struct, frozen=True, kw_only=True):
    alert_id: str
    version: int
    rule: str
    value: float | None = None
    threshold: float | None = None
    nodes: list[str] = []
    summary: str = ""
    since: float = 0.0  # unix seconds: start of the first bad window
    published: bool = False


class AlertBook(msgspec.Struct, frozen=True, kw_only=True):
    firing: dict[str, FiringAlert] = {}  # "<version>:<rule>" -> alert


_decode_book = msgspec.json.Decoder(AlertBook).decode


def book_key(namespace: str) -> str:
    return f"health.alerts.{namespace}"


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
    kv: KeyValue
    leases: NamespaceLeases
    metrics: WatcherMetrics
    book: AlertBook = field(default_factory=AlertBook)
    revision: int = 0  # 0: no book yet
    loaded: bool = False

    async def load(self) -> None:
        try:
            entry = await self.kv.get(book_key(self.namespace))
        except nats.js.errors.KeyNotFoundError:
            # Never deleted (an empty book is written instead), so absent means never written:
            # compare-and-set against revision 0 creates it.
            self.book = AlertBook()
            self.revision = 0
        else:
            self.book = _decode_book(entry.value) if entry.value else AlertBook()
            self.revision = entry.revision or 0
        self.loaded = True

    async def _write(self, book: AlertBook) -> bool:
        """Compare-and-set the book; on a conflict re-read it and say so."""
        try:
            self.revision = await self.kv.update(
                book_key(self.namespace), encode(book), last=self.revision
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            await self.load()
            return False
        self.book = book
        return True

    def _with(self, key: str, alert: FiringAlert | None) -> AlertBook:
        firing = dict(self.book.firing)
        if alert is None:
            firing.pop(key, None)
        else:
            firing[key] = alert
        return AlertBook(firing=firing)

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
            if not await self._write(self._with(key, entry)):
                # Someone else wrote the book (a predecessor's last act): take its id if it
                # recorded the same condition, else try again at the next evaluation.
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
            published = msgspec.structs.replace(entry, published=True)
            try:
                await self._write(self._with(key, published))
            except (ConfbusError, nats.errors.Error) as exc:
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
        return await self._write(self._with(key, None)) or key not in self.book.firing

    async def republish_pending(self) -> None:
        """After taking a namespace over: publish what the predecessor recorded but may not
        have published."""
        for key, entry in list(self.book.firing.items()):
            if not entry.published:
                await self._publish_firing(key, entry)

    async def _publish(self, alert: Alert, msg_id: str) -> bool:
        if not self.leases.holds(self.namespace):
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
                if not self.alerter.leases.holds(ns):
                    return
                await self._judge(version, rule, series, now, (version, rule.name) in firing)
        for version, rule_name in firing:
            if rule_name not in rules and self.alerter.leases.holds(ns):
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
