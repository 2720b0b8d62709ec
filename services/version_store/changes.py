"""Consuming ``CFG_CHANGES``: validate a batch, group-commit it, announce each outcome, then ack.

One fetched batch goes through four steps, and only after the last does the consumer ack:

1. **decide** each change on its own: the namespace's policy (read once per namespace per
   batch), the format, size and JSON Schema (``validate``), the strategy, the rollback target.
   A refused change becomes a rejection; nothing about it is stored.
2. **commit** every accepted change with ONE ``store.append`` (one transaction, one fsync). The
   store numbers them, and maps a change id it already holds to that version (``duplicate``) or
   refuses it when the bytes differ, as it refuses a stale ``base`` (``conflict``).
3. **announce**: ``version.created`` for each new version, ``version.rejected`` (with the reason
   and where) for each refusal, after remembering the refusal for ``change_status``. Every event
   has a message id, so announcing twice within the stream's window is a no-op.
4. **ack** (the consumer does it when the handler returns).

A crash between 2 and 4 redelivers the batch: the store answers ``duplicate`` for what it
committed, and the event log is consulted so that each version is announced exactly once. So is
it for a ``duplicate`` on a *first* delivery of a version stored in the last
``RECHECK_WITHIN`` — a broker that died between 2 and 4 may deliver it again with its delivery
count lost. Older, it is a publisher's retry of a change long done: nothing new is said.
``StoreUnavailable`` fails the whole batch, which the consumer naks with backoff — a store
outage never dead-letters good changes; only undecodable messages (and a body whose namespace is
not its subject's) go to ``CFG_DLQ``.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import anyio
import anyio.to_thread
import msgspec
from nats.aio.msg import Msg

from confbus.runtime.bus import Bus, Outgoing
from confbus.runtime.consumer import Delivery
from confbus.runtime.errors import ConfbusError, InvalidInput, Unavailable
from confbus.runtime.events import emit, event_subject
from confbus.runtime.failpoints import failpoint
from confbus.schemas import subjects
from confbus.schemas.base import DECODE_ERRORS, project, utcnow
from confbus.schemas.changes import ChangeProposed
from confbus.schemas.events import Event, VersionCreated, VersionRejected
from confbus.schemas.names import ChangeId, Namespace
from confbus.schemas.policy import Policy, policy_digest
from confbus.schemas.sealing import content_sha256
from confbus.schemas.variants import has_variants
from confbus.schemas.versions import VersionInfo
from confbus.version_store.errors import InvalidConfig, NotFound, StoreError, VersionConflict
from confbus.version_store.eventlog import Announced, scan
from confbus.version_store.metrics import StoreMetrics
from confbus.version_store.policycheck import check_strategy
from confbus.version_store.rejections import Rejection, Rejections
from confbus.version_store.storage import AppendResult, NewVersion, Store
from confbus.version_store.storage.base import NewStatus
from confbus.version_store.trustcheck import check_sealing, check_signatures
from confbus.version_store.validate import validate
from confbus.version_store.variantcheck import Members, validate_variants

log = logging.getLogger("confbus.version_store")

_APPROVED_BEFORE = ("approved", "production", "superseded")
# A first delivery of a change stored this recently may be a redelivery whose count a broker
# restart lost (its announcement maybe lost with it): longer than any redelivery takes.
RECHECK_WITHIN = timedelta(minutes=10)
# How long an announcement may wait for CFG_EVENTS' ack before its change is naked (and
# announced on the redelivery). A stream whose leader died answers nothing until its election
# (4-9 s); meanwhile the batches behind wait for this one, and its publisher has its outcome
# already (the store, and the event itself: core subscribers get it without the stream's ack).
ANNOUNCE_TRY_S = 1.0


def created_msg_id(namespace: str, version: int) -> str:
    return f"version:{namespace}:{version}:created"


class _Addressed(msgspec.Struct):
    """Just enough of a change that did not decode to answer its publisher."""

    namespace: Namespace
    change_id: ChangeId
    author: str = ""


_decode_addressed = msgspec.json.Decoder(_Addressed).decode
# msgspec ends its messages with "- at `$.path`" or, for a mapping's key, "- at `key` in `$.path`".
_WHERE = re.compile(r"- at (`key` in )?`(\$[^`]*)`")


async def reject_undecodable(bus: Bus, rejections: Rejections, msg: Msg, reason: str) -> None:
    """A change that cannot be decoded (a bad selector, a wrong type) is dead-lettered by the
    consumer; if it still names its namespace and change id, say so to its publisher too: a
    ``version.rejected`` event and a recorded rejection, with msgspec's path as ``where``."""
    try:
        addr = _decode_addressed(msg.data)
    except DECODE_ERRORS:
        return  # nobody to answer
    if msg.subject not in subjects.change_subjects(addr.namespace):
        return
    m = _WHERE.search(reason)
    where = "" if m is None else m.group(2) + (" (a key)" if m.group(1) else "")
    detail = _WHERE.sub("", reason.removeprefix("undecodable: ")).strip()
    # No sha256: the content did not decode, so no retry can match it anyway.
    record, event = _rejected(
        addr.namespace, addr.change_id, addr.author, "", f"invalid change: {detail}", where
    )
    await rejections.remember(record)
    await emit(bus, event, msg_id=rejected_msg_id(addr.namespace, addr.change_id))


def rejected_msg_id(namespace: str, change_id: str, policy: str = "") -> str:
    # A change judged afresh under another policy may be rejected again: its own event.
    suffix = f"@{policy}" if policy else ""
    return f"change:{namespace}:{change_id}:rejected{suffix}"


def decide(
    change: ChangeProposed,
    policy: Policy,
    target: VersionInfo | None,
    members: Mapping[str, Mapping[str, str]] | None = None,
) -> NewVersion:
    """The version to store for ``change``, or ``InvalidConfig`` saying why not.

    ``target`` is the version ``change.rollback_of`` names (None if it names nothing);
    ``members`` the labels of the namespace's current members, whose variants are validated
    when the change has overlays. Pure and CPU-bound: runs in a worker thread, never on the
    event loop.
    """
    ns = change.namespace
    if change.strategy is not None:
        check_strategy(change.strategy)
    status: NewStatus = "draft" if policy.require_approval else "approved"
    if change.rollback_of is not None:
        # A rollback restores bytes that were validated when first stored; the policy may have
        # changed since, and refusing the way back during an incident helps nobody.
        if target is None:
            raise InvalidConfig(f"rollback_of {change.rollback_of} names no version", "rollback_of")
        fmt = target.format
        if change.format is not None and change.format != fmt:
            raise InvalidConfig(
                f"version {target.version} is {fmt}, this rollback says {change.format}", "format"
            )
        if content_sha256(change.content) != target.sha256:
            raise InvalidConfig(
                f"a rollback must carry the exact bytes of version {target.version} "
                f"(sha256 {target.sha256[:12]}…); these differ",
                "rollback_of",
            )
        if target.status in _APPROVED_BEFORE:
            status = "approved"  # approved once; restoring it needs no second approval
        check_sealing(change, policy, fmt)
    else:
        fmt = change.format or policy.format
        if fmt != policy.format:
            raise InvalidConfig(
                f"namespace {ns!r} holds {policy.format} (its policy's format); this change is "
                f"{fmt} — set the format first: confbus policy {ns} --format {fmt}",
                "format",
            )
        # Sealed bytes cannot be validated here: every agent validates the plaintext it opens.
        if has_variants(change.content):
            validate_variants(change.content, fmt, policy, members or {})
        elif not check_sealing(change, policy, fmt):
            validate(change.content, fmt, policy)
    check_signatures(change, policy, fmt)
    if status == "draft" and not change.author:
        raise InvalidConfig(
            f"namespace {ns!r} requires approval by someone other than the author, so a change "
            "needs an author",
            "author",
        )
    return project(
        change, NewVersion, sha256=content_sha256(change.content), format=fmt, status=status
    )


# A change, its namespace's policy, the version it rolls back to, the members' labels.
_Work = tuple[ChangeProposed, Policy, VersionInfo | None, Mapping[str, Mapping[str, str]]]


def _decide_all(items: list[_Work]) -> list[NewVersion | InvalidConfig]:
    out: list[NewVersion | InvalidConfig] = []
    for change, policy, target, members in items:
        try:
            out.append(decide(change, policy, target, members))
        except InvalidConfig as exc:
            out.append(exc)
    return out


def created_event(change: ChangeProposed, info: VersionInfo) -> VersionCreated:
    return project(
        info, VersionCreated, actor=info.author, strategy=change.strategy, selector=change.selector
    )


@dataclass
class _Outcome:
    """What one delivery came to; ``event`` is None when there is nothing (new) to say."""

    item: Delivery[ChangeProposed]
    kind: str  # stored | duplicate | rejected
    event: Event | None = None
    rejection: Rejection | None = None
    # Said already? ``event`` is looked for in the log from this time on (None: it cannot be).
    check_from: datetime | None = None


def _outcome(
    item: Delivery[ChangeProposed],
    decided: NewVersion | InvalidConfig,
    result: AppendResult | None,
    policy: str,
) -> _Outcome:
    """``policy``: the digest of the policy ``decided`` was judged under."""
    change = item.value
    # A repeat (a redelivery, or again alone after its batch failed) may follow a failure
    # before the announcement: whatever it says is checked against the log from the change on.
    check_from = item.msg.metadata.timestamp if item.repeated else None
    if isinstance(decided, InvalidConfig):
        record, rejected = _rejection(change, decided, policy)
        return _Outcome(item, "rejected", rejected, record, check_from)
    assert result is not None
    if result.outcome == "stored":
        assert result.info is not None
        return _Outcome(item, "stored", created_event(change, result.info), None, check_from)
    if result.outcome == "duplicate":
        assert result.info is not None
        # On a first delivery: a redelivery whose count a broker restart lost if the
        # version is recent (checked from its creation on), else a publisher's retry of a
        # change announced long ago.
        if check_from is None and utcnow() - result.info.created_at < RECHECK_WITHIN:
            check_from = result.info.created_at
        created = created_event(change, result.info) if check_from is not None else None
        return _Outcome(item, "duplicate", created, None, check_from)
    error: StoreError = result.error or InvalidConfig("refused by the store")
    record, rejected = _rejection(change, error)
    return _Outcome(item, "rejected", rejected, record, check_from)


def _rejection(
    change: ChangeProposed, error: ConfbusError, policy: str = ""
) -> tuple[Rejection, VersionRejected]:
    """``policy``: the digest of the policy that refused it ("" when none did: a conflict
    with what the store holds is no matter of policy)."""
    where = error.where
    if isinstance(error, VersionConflict) and not where:
        where = "change_id" if error.existing is not None else "base"
    reason = error.message
    # VersionConflict says "<ns>: …"; the event already names the namespace.
    reason = reason.removeprefix(f"{change.namespace}: ")
    return _rejected(
        change.namespace,
        change.change_id,
        change.author,
        content_sha256(change.content),
        reason,
        where,
        policy,
    )


def _rejected(
    namespace: str,
    change_id: str,
    author: str,
    sha256: str,
    reason: str,
    where: str,
    policy: str = "",
) -> tuple[Rejection, VersionRejected]:
    """A refused change: the record ``change_status`` answers from, and its event."""
    record = Rejection(
        namespace=namespace,
        change_id=change_id,
        sha256=sha256,
        reason=reason,
        where=where,
        policy=policy,
    )
    event = VersionRejected(
        namespace=namespace, actor=author, reason=reason, change_id=change_id, where=where
    )
    return record, event


@dataclass
class ChangeHandler:
    bus: Bus
    store: Store
    rejections: Rejections
    metrics: StoreMetrics
    set_health: Callable[[bool, str], None]
    # None: nobody's labels are known (the base and each overlay alone are still validated)
    members: Members | None = None

    async def __call__(self, batch: Sequence[Delivery[ChangeProposed]]) -> None:
        todo: list[Delivery[ChangeProposed]] = []
        for item in batch:
            # Subject permissions pin who may propose for a namespace: the body may not claim
            # another one. Such a message can never succeed — dead-letter it.
            if item.subject not in subjects.change_subjects(item.value.namespace):
                item.fail(
                    InvalidInput(
                        f"a change for namespace {item.value.namespace!r} arrived on "
                        f"{item.subject}",
                        where="$.namespace",
                    )
                )
            else:
                todo.append(item)
        if not todo:
            return
        self.metrics.batch_size.observe(len(todo))
        decided, digests = await self._decide(todo)

        # Group commit: one store transaction for every accepted change of the batch.
        accepted = [
            (item, nv)
            for item, nv in zip(todo, decided, strict=True)
            if not isinstance(nv, InvalidConfig)
        ]
        await failpoint("version_store.before_commit")
        started = time.monotonic()
        try:
            results = await self.store.append([nv for _, nv in accepted])
        except Unavailable as exc:
            self.set_health(False, f"store unavailable: {exc}")
            raise  # the consumer naks the whole batch with backoff
        except ConfbusError as exc:
            # The store refuses items one by one (results), never a whole batch: this is a
            # bug, not the changes' fault — retried a few times, not dead-lettered at once.
            raise RuntimeError(f"store.append failed for the whole batch: {exc!r}") from exc
        self.metrics.append_seconds.observe(time.monotonic() - started)
        self.set_health(True, "ok")
        await failpoint("version_store.after_commit")

        by_item = {id(item): result for (item, _), result in zip(accepted, results, strict=True)}
        outcomes = [
            _outcome(
                item,
                nv,
                None if isinstance(nv, InvalidConfig) else by_item[id(item)],
                digests[item.value.namespace],
            )
            for item, nv in zip(todo, decided, strict=True)
        ]
        await self._drop_announced(outcomes)
        await self._announce(outcomes)
        await failpoint("version_store.after_events")
        kinds = Counter(o.kind for o in outcomes)
        log.info(
            "batch committed",
            extra={
                "changes": len(todo),
                "stored": kinds["stored"],
                "duplicate": kinds["duplicate"],
                "rejected": kinds["rejected"],
                "seconds": round(time.monotonic() - started, 4),
            },
        )

    async def _decide(
        self, todo: list[Delivery[ChangeProposed]]
    ) -> tuple[list[NewVersion | InvalidConfig], dict[str, str]]:
        """Each change's version or rejection, and the digest of each namespace's policy
        they were judged under."""
        policies: dict[str, Policy] = {}
        for ns in sorted({item.value.namespace for item in todo}):
            policies[ns] = await self.store.get_policy(ns)
        targets: dict[tuple[str, int], VersionInfo | None] = {}
        for item in todo:
            ch = item.value
            if ch.rollback_of is not None and (ch.namespace, ch.rollback_of) not in targets:
                try:
                    info: VersionInfo | None = await self.store.resolve(
                        ch.namespace, ch.rollback_of
                    )
                except NotFound:
                    info = None
                targets[(ch.namespace, ch.rollback_of)] = info
        members = self.members
        labels = {
            ns: await members.of(ns) if members is not None else {}
            for ns in sorted({i.value.namespace for i in todo if has_variants(i.value.content)})
        }
        work: list[_Work] = [
            (
                item.value,
                policies[item.value.namespace],
                None
                if item.value.rollback_of is None
                else targets[(item.value.namespace, item.value.rollback_of)],
                labels.get(item.value.namespace, {}),
            )
            for item in todo
        ]
        decided = await anyio.to_thread.run_sync(_decide_all, work)
        return decided, {ns: policy_digest(p) for ns, p in policies.items()}

    async def _drop_announced(self, outcomes: list[_Outcome]) -> None:
        """For changes handled before, keep only the events the stream does not have yet."""
        since: dict[str, datetime] = {}
        for o in outcomes:
            if o.event is not None and o.check_from is not None:
                ns, at = o.item.value.namespace, o.check_from
                since[ns] = min(since.get(ns, at), at)
        if not since:
            return
        seen: dict[str, Announced] = {}
        for ns, at in since.items():
            seen[ns] = await scan(self.bus, ns, at)
        for o in outcomes:
            ev = o.event
            if ev is None or o.check_from is None:
                continue
            announced = seen[ev.namespace]
            if (isinstance(ev, VersionCreated) and ev.version in announced.created) or (
                isinstance(ev, VersionRejected) and ev.change_id in announced.rejected
            ):
                o.event = None

    async def _announce(self, outcomes: list[_Outcome]) -> None:
        """Remember the rejections, then publish every event of the batch as one atomic batch
        (one fsync in nats-server for the lot). An outcome not announced fails its own
        delivery only: the redelivery finds the version stored and announces it then."""
        failed: dict[int, Exception] = {}

        async def remember(o: _Outcome, rejection: Rejection) -> None:
            try:
                await self.rejections.remember(rejection)
            except Exception as exc:
                failed[id(o)] = exc

        async with anyio.create_task_group() as tg:
            for o in outcomes:
                if o.rejection is not None:
                    tg.start_soon(remember, o, o.rejection)
        sending = [(o, o.event) for o in outcomes if o.event is not None and id(o) not in failed]
        results = await self.bus.publish_batch(
            [Outgoing(event_subject(ev), ev, _event_msg_id(o, ev)) for o, ev in sending],
            timeout=ANNOUNCE_TRY_S,
        )
        for (o, _), exc in zip(sending, results, strict=True):
            if exc is not None:
                failed[id(o)] = exc
        for o in outcomes:
            exc = failed.get(id(o))
            if exc is not None:
                o.item.fail(exc if isinstance(exc, Unavailable) else Unavailable(repr(exc)))
                continue
            self.metrics.changes.labels(o.kind).inc()
            _log(o)


def _event_msg_id(o: _Outcome, ev: Event) -> str:
    if isinstance(ev, VersionCreated):
        return created_msg_id(ev.namespace, ev.version)
    assert isinstance(ev, VersionRejected)
    policy = o.rejection.policy if o.rejection is not None else ""
    return rejected_msg_id(ev.namespace, ev.change_id, policy)


def _log(o: _Outcome) -> None:
    ch = o.item.value
    ev = o.event
    extra: dict[str, object] = {"namespace": ch.namespace, "change_id": ch.change_id}
    if isinstance(ev, VersionCreated):
        extra.update(version=ev.version, status=ev.status)
        log.debug("version stored", extra=extra)  # the event is the record; batches log info
    elif isinstance(ev, VersionRejected):
        # The reason never quotes a secret namespace's content (validate sees to that).
        extra.update(reason=ev.reason, where=ev.where)
        log.info("change rejected", extra=extra)
    elif o.kind == "duplicate":
        log.debug("change already stored", extra=extra)
