"""The Python client: what the CLI is built on, and what services use to react.

```python
async with Client("nats://127.0.0.1:4222") as client:
    async for event in client.events("cfg.event.payments.>", since=timedelta(hours=1)):
        print(event)
```
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.abc
import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from confbus.runtime.api import call
from confbus.runtime.bus import DEFAULT_NATS_URL, Bus, connect
from confbus.runtime.codec import encode
from confbus.runtime.errors import InvalidInput, NotFound, Permanent, Unavailable
from confbus.schemas import subjects
from confbus.schemas.api import dist as dist_api
from confbus.schemas.api import rollback as rollback_api
from confbus.schemas.api import store as store_api
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.changes import ChangeProposed
from confbus.schemas.changes import msg_id as change_msg_id
from confbus.schemas.events import (
    AnyEvent,
    NodeApplied,
    RollbackCompleted,
    RollbackStarted,
    RollbackStuck,
    VersionCreated,
    VersionRejected,
    decode_event,
)
from confbus.schemas.health import Alert, decode_alert
from confbus.schemas.names import CHANGE_ID_PATTERN, Format, InvalidName, check_name
from confbus.schemas.policy import Policy
from confbus.schemas.state import rollout_key
from confbus.schemas.streams import CFG_ALERTS, CFG_EVENTS, MAX_PAYLOAD
from confbus.schemas.versions import VersionInfo

log = logging.getLogger("confbus.client")

Rep = TypeVar("Rep")

_LAST_NATS_TIME = datetime(2262, 1, 1, tzinfo=UTC)


class StreamedEvent(msgspec.Struct, frozen=True):
    """An event as read from ``CFG_EVENTS``, with where it sits in the stream."""

    seq: int
    subject: str
    time: datetime | None
    event: AnyEvent | None  # None: a type this build does not know (a newer confbus)
    raw: bytes


class Client:
    """confbus over NATS: publish changes and wait for their rollout, read versions and the audit
    stream, steer rollouts and rollbacks. Use it as ``async with Client(url) as client:``; every
    method raises a ``ConfbusError`` (``Unavailable`` when it is worth retrying)."""

    def __init__(
        self,
        nats_url: str = DEFAULT_NATS_URL,
        *,
        name: str = "confbus-client",
        user: str | None = None,
        password: str | None = None,
        creds: str | None = None,
        tls_ca: str | None = None,
        connect_timeout: float = 2.0,
    ) -> None:
        self.nats_url = nats_url
        self._kw: dict[str, Any] = dict(
            name=name,
            user=user,
            password=password,
            creds=creds,
            tls_ca=tls_ca,
            connect_timeout=connect_timeout,
        )
        self._bus: Bus | None = None

    @property
    def bus(self) -> Bus:
        assert self._bus is not None, "use 'async with Client(...)'"
        return self._bus

    async def __aenter__(self) -> Client:
        # A CLI must fail fast when confbus is down, not reconnect forever.
        self._bus = await connect(self.nats_url, max_reconnect_attempts=3, **self._kw)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bus is not None:
            await self._bus.close()

    async def call(
        self, service: str, op: str, request: Any, reply_type: type[Rep], timeout: float = 5.0
    ) -> Rep:
        return await call(self.bus, service, op, request, reply_type, timeout=timeout)

    # -- the audit stream --------------------------------------------------------------------

    async def events(
        self,
        subject_filter: str = subjects.EVENTS_ALL,
        *,
        since: datetime | timedelta | None = None,
        from_seq: int | None = None,
        follow: bool = False,
        on_subscribed: Callable[[], object] | None = None,
        stall_timeout: float = 10.0,
    ) -> AsyncIterator[StreamedEvent]:
        """Events of ``CFG_EVENTS`` in stream order, from an ordered (ephemeral) consumer.

        Without ``follow`` it stops at the end of the stream as it was when it started: at the
        stream's last sequence, or when the server says nothing more matches the filter. With
        ``follow`` it starts at new events (unless ``since``/``from_seq`` say otherwise) and
        never stops; ``on_subscribed`` is called once the consumer exists, so a caller can
        tell when an event published from then on will be seen.

        A naive ``since`` is local time. Raises ``Unavailable`` when the stream is missing
        (NATS without confbus), or when the server stops delivering mid-replay.
        """
        if isinstance(since, timedelta):
            since = datetime.now(UTC) - since
        elif since is not None and since.tzinfo is None:
            since = since.astimezone()
        config = ConsumerConfig()
        if from_seq is not None:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = from_seq
        elif since is not None:
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            # nats-server keeps times as int64 nanoseconds: past 2262 they wrap to "everything".
            config.opt_start_time = min(since.astimezone(UTC), _LAST_NATS_TIME)
        elif follow:
            config.deliver_policy = DeliverPolicy.NEW
        else:
            config.deliver_policy = DeliverPolicy.ALL
        try:
            last = (await self.bus.js.stream_info(CFG_EVENTS.name)).state.last_seq
            if not follow and (last == 0 or (from_seq is not None and from_seq > last)):
                return
            sub = await self.bus.js.subscribe(
                subject_filter, stream=CFG_EVENTS.name, ordered_consumer=True, config=config
            )
        except nats.js.errors.NotFoundError as exc:
            raise Unavailable(
                f"no {CFG_EVENTS.name} stream at {self.nats_url}: is confbus running there?"
            ) from exc
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
            raise Unavailable(f"JetStream at {self.nats_url} is not answering: {exc!r}") from exc
        try:
            if on_subscribed is not None:
                on_subscribed()
            if not follow:
                info = await sub.consumer_info()
                delivered = info.delivered.consumer_seq if info.delivered else 0
                if not info.num_pending and not delivered:
                    return  # nothing in the stream matches the filter
            while True:
                try:
                    msg = await sub.next_msg(timeout=None if follow else stall_timeout)
                except nats.errors.TimeoutError as exc:
                    raise Unavailable(
                        f"replay of {CFG_EVENTS.name} stalled: nothing for {stall_timeout}s"
                    ) from exc
                except nats.errors.ConnectionClosedError as exc:
                    raise Unavailable(f"lost the connection to {self.nats_url}") from exc
                md = msg.metadata
                seq = md.sequence.stream
                if not follow and seq > last:
                    return  # published after we started: not part of this replay
                try:
                    event: AnyEvent | None = decode_event(msg.data)
                except DECODE_ERRORS:
                    event = None
                yield StreamedEvent(seq, msg.subject, md.timestamp, event, msg.data)
                # num_pending: what still matches the filter after this message.
                if not follow and (seq >= last or md.num_pending == 0):
                    return
        finally:
            # A closed connection has no subscription left to remove.
            with anyio.CancelScope(shield=True), contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    # == version store: changes and cfg.api.store.* ===============================================
    # Owned by the version-store work (issue 3). ``publish`` is the hook the rollout's ``--wait``
    # builds on: it returns once the version exists (or raises ``ChangeRejected``).

    async def store_call(
        self, op: str, request: Any, reply_type: type[Rep], timeout: float = 10.0
    ) -> Rep:
        return await self.call(store_api.SERVICE, op, request, reply_type, timeout=timeout)

    async def publish(
        self,
        namespace: str,
        content: bytes,
        *,
        format: Format | None = None,
        change_id: str | None = None,
        author: str = "",
        message: str = "",
        base: int | None = None,
        rollback_of: int | None = None,
        strategy: str | None = None,
        selector: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> VersionInfo:
        """Propose ``content`` as the next version of ``namespace`` and wait for the outcome.

        Returns the stored version (``status`` says ``approved`` or ``draft``: waiting for an
        approval); raises ``ChangeRejected`` with the reason, ``InvalidInput`` for what is refused
        before publishing (a bad namespace or change id), ``Unavailable`` when no outcome came
        within ``timeout`` (the change may still be queued: publishing it again with the same
        change id is safe). Without ``change_id`` one is derived (``default_change_id``).
        """
        check_namespace(namespace)
        sha = hashlib.sha256(content).hexdigest()
        if change_id is None:
            change_id = await self.default_change_id(namespace, sha, base)
        check_change_id(change_id)
        change = ChangeProposed(
            namespace=namespace,
            change_id=change_id,
            content=content,
            format=format,
            author=author,
            message=message,
            base=base,
            rollback_of=rollback_of,
            strategy=strategy,
            selector=selector,
        )

        async def send() -> bool:
            ack = await self.bus.publish(
                subjects.change(namespace),
                encode(change),
                msg_id=change_msg_id(namespace, change_id),
            )
            return bool(ack.duplicate)

        return await self.submit(change, send, timeout)

    async def submit(
        self, change: ChangeProposed, send: Callable[[], Awaitable[bool]], timeout: float
    ) -> VersionInfo:
        """Send ``change`` with ``send`` (which says whether the stream took it as a duplicate)
        and wait for its outcome: the stored version, or ``ChangeRejected``; ``Unavailable``
        after ``timeout``. ``publish`` sends it on ``cfg.change.<ns>``; an author-pinned
        publish through the version-store's ``propose`` endpoint (the CLI) sends it there."""
        namespace, change_id = change.namespace, change.change_id
        size = len(encode(change))
        if size > MAX_PAYLOAD:
            raise InvalidInput(
                f"the change is {size} bytes on the wire (content {len(change.content)} bytes, "
                f"base64): more than the bus carries ({MAX_PAYLOAD})",
                where="content",
            )
        sha = hashlib.sha256(change.content).hexdigest()
        send_event, receive = anyio.create_memory_object_stream[AnyEvent](100)

        async def on_event(msg: Msg) -> None:
            try:
                event = decode_event(msg.data)
            except DECODE_ERRORS:
                return
            if isinstance(event, VersionCreated | VersionRejected) and event.change_id == change_id:
                with contextlib.suppress(anyio.WouldBlock):
                    send_event.send_nowait(event)

        # Subscribe before sending, so the outcome cannot slip past.
        sub = await self.bus.nc.subscribe(subjects.event(namespace, "version.>"), cb=on_event)
        try:
            with anyio.move_on_after(timeout) as scope:
                duplicate = await send()
                return await self._outcome(change, sha, duplicate, receive)
            assert scope.cancelled_caught
            raise Unavailable(
                f"{namespace}: no outcome for change {change_id} within {timeout:g}s — it may "
                "still be queued (is the version store running?); publishing it again with "
                f"--id {change_id} is safe"
            )
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
            send_event.close()
            receive.close()

    async def _outcome(
        self,
        change: ChangeProposed,
        sha: str,
        duplicate: bool,
        events: anyio.abc.ObjectReceiveStream[AnyEvent],
    ) -> VersionInfo:
        """Wait for the outcome of a published change: its event, or its recorded status (the
        event may have been emitted before we subscribed, or long ago for a retried change)."""
        ns, cid = change.namespace, change.change_id
        while True:
            try:
                status = await self.change_status(ns, cid)
            except Unavailable:
                status = None  # the store is down: the change waits in the stream; so do we
            if status is not None and status.status == "stored" and status.version is not None:
                return await self._stored(change, sha, status.version, status.sha256)
            if status is not None and status.status == "rejected" and duplicate:
                # Our publish was a duplicate of an earlier one: its rejection is our answer,
                # unless that earlier attempt sent other bytes under the same id.
                raise _rejected_as(change, sha, status)
            # Not decided yet: the event says when. Re-check now and then in case we missed it
            # (a reconnect drops core messages).
            with anyio.move_on_after(_STATUS_RECHECK_S):
                event = await events.receive()
                if isinstance(event, VersionCreated):
                    return await self._stored(change, sha, event.version, event.sha256)
                if isinstance(event, VersionRejected):
                    if duplicate:
                        continue  # check the recorded bytes (status) before blaming ours
                    raise ChangeRejected(ns, cid, event.reason, event.where)

    async def _stored(
        self, change: ChangeProposed, sha: str, version: int, stored_sha: str
    ) -> VersionInfo:
        if stored_sha and stored_sha != sha:
            raise ChangeRejected(
                change.namespace,
                change.change_id,
                f"change id {change.change_id!r} is already version {version} with other "
                f"content (sha256 {stored_sha[:12]}…, yours {sha[:12]}…); publish it with a "
                "new change id",
                "change_id",
            )
        return (await self.get(change.namespace, str(version), content=False)).info

    async def default_change_id(self, namespace: str, sha: str, base: int | None = None) -> str:
        """A change id for content published without ``--id``: ``auto-<sha256[:24]>-<n>``, where
        ``n`` is the version it goes on top of (``base``, else the newest now).

        A retry of the same content is the same change (idempotent) — also after it was stored:
        when the newest version already is this content under such an id, that id is reused. The
        same content published again after other versions is a new change (``n`` moved on).
        """
        prefix = f"auto-{sha[:24]}"
        if base is not None:
            return f"{prefix}-{base}"
        try:
            latest = (await self.get(namespace, "latest", content=False)).info
        except NotFound:
            return f"{prefix}-0"
        if latest.sha256 == sha and latest.change_id == f"{prefix}-{latest.parent or 0}":
            return latest.change_id
        return f"{prefix}-{latest.version}"

    async def change_status(self, namespace: str, change_id: str) -> store_api.ChangeStatusReply:
        return await self.store_call(
            "change_status",
            store_api.ChangeStatusRequest(namespace=namespace, change_id=change_id),
            store_api.ChangeStatusReply,
        )

    async def dry_run(self, change: ChangeProposed) -> store_api.DryRunReply:
        return await self.store_call(
            "dry_run", store_api.DryRunRequest(change=change), store_api.DryRunReply, timeout=30.0
        )

    async def get(
        self, namespace: str, ref: str | int = "latest", *, content: bool = True
    ) -> store_api.VersionReply:
        """A version by number or ``latest``/``production``/``last-good``; ``NotFound`` if none."""
        return await self.store_call(
            "get",
            store_api.GetRequest(namespace=namespace, ref=str(ref), content=content),
            store_api.VersionReply,
        )

    async def history(
        self, namespace: str, *, limit: int = 50, before: int | None = None
    ) -> list[VersionInfo]:
        """Up to ``limit`` versions, newest first (below ``before`` if given), page by page."""
        out: list[VersionInfo] = []
        while len(out) < limit:
            page = await self.store_call(
                "history",
                store_api.HistoryRequest(
                    namespace=namespace, before=before, limit=min(limit - len(out), 1000)
                ),
                store_api.HistoryReply,
            )
            out.extend(page.versions)
            if page.next_before is None or not page.versions:
                break
            before = page.next_before
        return out

    async def diff(self, namespace: str, a: str | int, b: str | int) -> store_api.DiffReply:
        return await self.store_call(
            "diff",
            store_api.DiffRequest(namespace=namespace, a=str(a), b=str(b)),
            store_api.DiffReply,
        )

    async def approve(self, namespace: str, version: int, approver: str) -> VersionInfo:
        req = store_api.ApproveRequest(namespace=namespace, version=version, approver=approver)
        return (await self.store_call("approve", req, store_api.VersionReply)).info

    async def reject(
        self, namespace: str, version: int, actor: str, reason: str = ""
    ) -> VersionInfo:
        req = store_api.RejectRequest(
            namespace=namespace, version=version, actor=actor, reason=reason
        )
        return (await self.store_call("reject", req, store_api.VersionReply)).info

    async def promote(
        self, namespace: str, version: int, actor: str, reason: str = ""
    ) -> VersionInfo:
        req = store_api.PromoteRequest(
            namespace=namespace, version=version, actor=actor, reason=reason
        )
        return (await self.store_call("promote", req, store_api.VersionReply)).info

    async def mark_good(
        self, namespace: str, version: int, actor: str, reason: str = ""
    ) -> VersionInfo:
        req = store_api.MarkGoodRequest(
            namespace=namespace, version=version, actor=actor, reason=reason
        )
        return (await self.store_call("mark_good", req, store_api.VersionReply)).info

    async def policy(self, namespace: str) -> Policy:
        return await self.store_call(
            "policy_get", store_api.PolicyGetRequest(namespace=namespace), Policy
        )

    async def set_policy(self, policy: Policy, actor: str = "") -> Policy:
        return await self.store_call(
            "policy_set", store_api.PolicySetRequest(policy=policy, actor=actor), Policy
        )

    async def namespaces(self) -> list[str]:
        reply = await self.store_call(
            "namespaces", store_api.NamespacesRequest(), store_api.NamespacesReply
        )
        return reply.namespaces

    async def export_namespace(self, namespace: str, page_bytes: int = 1 << 20) -> NamespaceBackup:
        """One consistent snapshot of a namespace (policy, versions with content, pointers),
        fetched in pages of about ``page_bytes`` of content."""
        op, session, offset = "export", "", 0
        versions: list[store_api.ExportedVersion] = []
        while True:
            page = await self.store_call(
                op,
                store_api.ExportRequest(
                    namespace=namespace, session=session, offset=offset, max_bytes=page_bytes
                ),
                store_api.ExportReply,
                timeout=30.0,
            )
            versions.extend(page.versions)
            offset += len(page.versions)
            if page.done:
                return NamespaceBackup(
                    namespace=namespace,
                    versions=versions,
                    production=page.production,
                    last_good=page.last_good,
                    policy=page.policy,
                )
            # The snapshot lives on the replica that took it.
            op, session = f"export_{page.replica}", page.session

    async def import_namespace(self, backup: NamespaceBackup, page_bytes: int = 1 << 20) -> int:
        """Restore a namespace into the store; returns the versions written (0: already there).
        The store checks everything (hashes, numbering, pointers) and writes all or nothing."""
        pages: list[list[store_api.ExportedVersion]] = [[]]
        size = 0
        for v in backup.versions:
            if pages[-1] and size + len(v.content) > page_bytes:
                pages.append([])
                size = 0
            pages[-1].append(v)
            size += len(v.content)
        op, session = "import", ""
        for i, chunk in enumerate(pages):
            last = i == len(pages) - 1
            reply = await self.store_call(
                op,
                store_api.ImportRequest(
                    namespace=backup.namespace,
                    session=session,
                    versions=chunk,
                    done=last,
                    production=backup.production if last else None,
                    last_good=backup.last_good if last else None,
                    policy=backup.policy if last else None,
                ),
                store_api.ImportReply,
                timeout=60.0,
            )
            op, session = f"import_{reply.replica}", reply.session
            if last:
                return reply.imported or 0
        raise AssertionError("unreachable")  # pragma: no cover

    # == reacting: alerts, applied configs, rollbacks (issue 6) =================================

    async def alerts(
        self,
        namespace: str | None = None,
        *,
        since: datetime | timedelta | None = None,
        on_subscribed: Callable[[], object] | None = None,
    ) -> AsyncIterator[Alert]:
        """Alerts as they are raised on ``cfg.alert.<ns>`` (every namespace when None).

        New alerts only, or every alert stored since ``since``; firing and resolved alike (see
        ``alert.state``), from the health-watcher, Alertmanager, the distributor (a failed
        bake) and the rollbacker (a stuck rollback: ``source="rollbacker"``). Alerts of a type
        this build does not know are skipped. It never ends: break out of the loop to stop.
        ``on_subscribed`` is called once the consumer exists (from then on nothing is missed).
        """
        subject = subjects.alert(check_namespace(namespace)) if namespace else subjects.ALERTS_ALL
        config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
        if since is not None:
            if isinstance(since, timedelta):
                since = datetime.now(UTC) - since
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = min(since.astimezone(UTC), _LAST_NATS_TIME)
        try:
            sub = await self.bus.js.subscribe(
                subject, stream=CFG_ALERTS.name, ordered_consumer=True, config=config
            )
        except nats.js.errors.NotFoundError as exc:
            raise Unavailable(
                f"no {CFG_ALERTS.name} stream at {self.nats_url}: is confbus running there?"
            ) from exc
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
            raise Unavailable(f"JetStream at {self.nats_url} is not answering: {exc!r}") from exc
        try:
            if on_subscribed is not None:
                on_subscribed()
            while True:
                try:
                    msg = await sub.next_msg(timeout=None)
                except nats.errors.ConnectionClosedError as exc:
                    raise Unavailable(f"lost the connection to {self.nats_url}") from exc
                try:
                    alert = decode_alert(msg.data)
                except DECODE_ERRORS:
                    continue
                yield alert
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def watch(
        self,
        namespace: str,
        *,
        node: str | None = None,
        since: datetime | timedelta | None = None,
        on_subscribed: Callable[[], object] | None = None,
    ) -> AsyncIterator[NodeApplied]:
        """Each config a node of ``namespace`` applied, as it happens: the ``node.applied``
        events (node, version, sha256, txid, previous version) in stream order.

        One per node and version: the commit of an atomic switch (a rollout wave, a rollback
        batch — a rollback is a newer version with the old content), or a catch-up. New ones
        only, or from ``since`` on; only ``node``'s if given. It never ends.
        """
        ns = check_namespace(namespace)
        flt = subjects.node_applied(ns, node) if node else f"{subjects.event(ns, 'node.applied')}.*"
        async for item in self.events(flt, since=since, follow=True, on_subscribed=on_subscribed):
            ev = item.event
            if isinstance(ev, NodeApplied) and (node is None or ev.node == node):
                yield ev

    async def rollback(
        self,
        namespace: str,
        *,
        to: int | None = None,
        reason: str = "",
        strategy: str | None = None,
        actor: str = "",
        wait: bool = False,
        timeout: float = 300.0,
    ) -> rollback_api.RollbackReply:
        """Roll ``namespace`` back to version ``to`` (None: its last known good), as a new
        version, batch by batch (``strategy``: ``all-at-once`` or ``batches:N``; None: the
        policy's).

        Returns the rollbacker's answer (``state`` ``started`` or ``refused`` with the
        reason). With ``wait``: once it ended — ``completed`` (``new_version`` runs everywhere)
        or ``stuck`` (the reason; nothing further is switched) — and ``Unavailable`` if it did
        not end within ``timeout`` (it goes on).
        """
        req = rollback_api.RollbackRequest(
            namespace=check_namespace(namespace),
            to=to,
            reason=reason,
            strategy=strategy,
            actor=actor,
        )
        if not wait:
            return await self.call(
                rollback_api.SERVICE, "start", req, rollback_api.RollbackReply, timeout=15.0
            )
        # Read the rollback's events from where the stream is now: none can slip past.
        last = (await self.bus.js.stream_info(CFG_EVENTS.name)).state.last_seq
        reply = await self.call(
            rollback_api.SERVICE, "start", req, rollback_api.RollbackReply, timeout=15.0
        )
        if reply.state != "started":
            return reply
        rid = reply.rollback_id
        with anyio.move_on_after(timeout):
            flt = subjects.event(namespace, "rollback.>")
            async for item in self.events(flt, from_seq=last + 1, follow=True):
                ev = item.event
                if isinstance(ev, RollbackStarted) and ev.rollback_id == rid:
                    reply = msgspec.structs.replace(reply, new_version=ev.new_version)
                elif isinstance(ev, RollbackCompleted) and ev.rollback_id == rid:
                    return msgspec.structs.replace(
                        reply, state="completed", new_version=ev.new_version
                    )
                elif isinstance(ev, RollbackStuck) and ev.rollback_id == rid:
                    return msgspec.structs.replace(reply, state="stuck", reason=ev.reason)
        raise Unavailable(
            f"rollback {rid} of {namespace} did not end within {timeout:g}s; it goes on "
            f"(confbus replay '{namespace}.rollback.>' shows where it is)"
        )

    # -- rollouts (the distributor, cfg.api.dist.*) — added with issue 5 -------------------------

    async def fleet_status(self, namespace: str) -> dist_api.StatusReply:
        """Production version and, per node: liveness, applied version, sha256, target."""
        return await self.call(
            dist_api.SERVICE,
            "status",
            dist_api.StatusRequest(namespace=check_namespace(namespace)),
            dist_api.StatusReply,
        )

    async def rollout_info(self, namespace: str) -> dist_api.RolloutInfo | None:
        """The namespace's current or last rollout (from the distributor; straight from
        ``CFG_STATE`` when no distributor answers)."""
        check_namespace(namespace)
        try:
            reply = await self.call(
                dist_api.SERVICE,
                "rollout",
                dist_api.RolloutRequest(namespace=namespace),
                dist_api.RolloutReply,
            )
            return reply.rollout
        except Unavailable:
            return await self._rollout_record(namespace)

    async def rollout_control(
        self, op: str, namespace: str, *, reason: str = "", actor: str = ""
    ) -> dist_api.RolloutInfo:
        """``pause``, ``resume`` or ``abort`` the namespace's rollout (``Conflict`` if there is
        none in a state that allows it)."""
        if op not in ("pause", "resume", "abort"):
            raise InvalidInput(f"unknown rollout control {op!r}", where="op")
        reply = await self.call(
            dist_api.SERVICE,
            op,
            dist_api.ControlRequest(
                namespace=check_namespace(namespace), actor=actor, reason=reason
            ),
            dist_api.RolloutReply,
            timeout=10.0,
        )
        assert reply.rollout is not None
        return reply.rollout

    async def wait_rollout(
        self,
        namespace: str,
        version: int,
        timeout: float = 600.0,
        progress: Callable[[AnyEvent], object] | None = None,
        *,
        since: datetime | timedelta | None = None,
    ) -> dist_api.RolloutInfo:
        """Wait until the rollout of ``version`` ends, and return it.

        It ends ``completed``, ``failed``, ``superseded`` (a newer version took over, also
        before it started) or ``rolled_back``. ``progress`` is called with each
        ``cfg.event.<ns>.rollout.*`` event of this version as it comes (started, each wave,
        each bake, paused, resumed, the end). Rollout events since ``since`` (default: the
        last 10 minutes) are replayed first, so a rollout that ran before the call is seen
        too; the ``rollout.<ns>`` record in ``CFG_STATE`` is checked as well. Raises
        ``RolloutWaitTimeout`` (an ``Unavailable``) after ``timeout`` seconds.
        """
        check_namespace(namespace)
        found: list[dist_api.RolloutInfo] = []

        async def from_events(scope: anyio.CancelScope) -> None:
            async for item in self.events(
                f"cfg.event.{namespace}.rollout.>",
                since=since if since is not None else timedelta(minutes=10),
                follow=True,
            ):
                ev = item.event
                if ev is None or getattr(ev, "version", None) != version:
                    continue
                if progress is not None:
                    progress(ev)
                tag = ev.__struct_config__.tag
                if tag in _ROLLOUT_ENDS:
                    record = await self._rollout_record(namespace)
                    if record is not None and record.rollout_id == getattr(ev, "rollout_id", ""):
                        found.append(record)
                    else:
                        found.append(_rollout_from_event(ev, _ROLLOUT_ENDS[tag]))
                    scope.cancel()
                    return

        async def from_record(scope: anyio.CancelScope) -> None:
            while True:
                rec = await self._rollout_record(namespace)
                if rec is not None and rec.version == version and not rec.active:
                    await anyio.sleep(1.0)  # let the event (and progress) come first
                    found.append(rec)
                    scope.cancel()
                    return
                await anyio.sleep(1.0)

        try:
            with anyio.fail_after(timeout):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(from_events, tg.cancel_scope)
                    tg.start_soon(from_record, tg.cancel_scope)
        except TimeoutError:
            raise RolloutWaitTimeout(namespace, version, timeout) from None
        return found[0]

    async def _rollout_record(self, namespace: str) -> dist_api.RolloutInfo | None:
        try:
            kv = await self.bus.kv("CFG_STATE")
            entry = await kv.get(rollout_key(namespace))
        except (nats.js.errors.NotFoundError, nats.js.errors.BucketNotFoundError):
            return None
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise Unavailable(f"CFG_STATE at {self.nats_url} is not answering: {exc!r}") from exc
        if not entry.value:
            return None
        try:
            rec = dist_api.decode_rollout_info(entry.value)
        except DECODE_ERRORS:
            return None
        return msgspec.structs.replace(rec, outbox=[], revision=entry.revision or 0)


# -- rollouts: values and errors of the section above ------------------------------------------

_ROLLOUT_ENDS: dict[str, dist_api.RolloutState] = {
    "rollout.completed": "completed",
    "rollout.failed": "failed",
    "rollout.superseded": "superseded",
    "rollout.rolled_back": "rolled_back",
}


class RolloutWaitTimeout(Unavailable):
    """``wait_rollout`` gave up: the rollout had not ended within the time it was given."""

    def __init__(self, namespace: str, version: int, timeout: float) -> None:
        self.namespace = namespace
        self.version = version
        super().__init__(f"the rollout of {namespace} v{version} did not end within {timeout}s")


def _rollout_from_event(ev: Any, state: dist_api.RolloutState) -> dist_api.RolloutInfo:
    """The end of a rollout whose record has moved on (a newer rollout of the namespace)."""
    return dist_api.RolloutInfo(
        rollout_id=ev.rollout_id,
        namespace=ev.namespace,
        version=ev.version,
        strategy="",
        state=state,
        report=list(getattr(ev, "report", [])),
        reason=ev.reason,
        superseded_by=getattr(ev, "by_version", None),
        finished_at=ev.at,
        updated_at=ev.at,
    )


# -- version store: values and errors of the section above ------------------------------------

_STATUS_RECHECK_S = 2.0
_CHANGE_ID_RE = re.compile(CHANGE_ID_PATTERN)


class ChangeRejected(Permanent):
    """The version-store refused a change; ``reason`` says what, ``where`` where."""

    def __init__(self, namespace: str, change_id: str, reason: str, where: str = "") -> None:
        self.namespace = namespace
        self.change_id = change_id
        self.reason = reason
        super().__init__(f"{namespace}: change {change_id} rejected: {reason}", where=where)


class NamespaceBackup(msgspec.Struct, frozen=True, kw_only=True):
    """Every version of a namespace with its content, pointers and policy (``confbus backup``)."""

    namespace: str
    versions: list[store_api.ExportedVersion]
    production: int | None = None
    last_good: int | None = None
    policy: Policy | None = None


def check_namespace(namespace: str) -> str:
    try:
        return check_name(namespace, "namespace")
    except InvalidName as exc:
        raise InvalidInput(str(exc), where="namespace") from None


def check_change_id(change_id: str) -> str:
    if not _CHANGE_ID_RE.fullmatch(change_id):
        raise InvalidInput(
            f"invalid change id {change_id!r}: letters, digits and ._:@+- (up to 128, starting "
            "with a letter or digit)",
            where="change_id",
        )
    return change_id


def _rejected_as(
    change: ChangeProposed, sha: str, status: store_api.ChangeStatusReply
) -> ChangeRejected:
    ns, cid = change.namespace, change.change_id
    if status.sha256 and status.sha256 != sha:
        return ChangeRejected(
            ns,
            cid,
            f"change id {cid!r} was used recently for other content (sha256 "
            f"{status.sha256[:12]}…), which was rejected: {status.reason} — publish yours "
            "with a new change id",
            "change_id",
        )
    return ChangeRejected(ns, cid, status.reason, status.where)
