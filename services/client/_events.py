"""Reading the streams: the audit log (``CFG_EVENTS``), alerts (``CFG_ALERTS``) and what each
node applied."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import anyio
import msgspec
import nats.errors
import nats.js.errors
from nats.js.api import DeliverPolicy

from confbus.client._connection import Connection
from confbus.client._names import check_namespace
from confbus.runtime.errors import Permanent, Unavailable
from confbus.runtime.follow import Follower
from confbus.runtime.retry import retry_unavailable
from confbus.schemas import subjects
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.events import AnyEvent, NodeApplied, decode_event
from confbus.schemas.health import Alert, decode_alert
from confbus.schemas.streams import CFG_ALERTS, CFG_EVENTS

# nats-server keeps times as int64 nanoseconds: past 2262 they wrap to "everything".
_LAST_NATS_TIME = datetime(2262, 1, 1, tzinfo=UTC)


class StreamedEvent(msgspec.Struct, frozen=True):
    """An event as read from ``CFG_EVENTS``, with where it sits in the stream."""

    seq: int
    subject: str
    time: datetime | None
    event: AnyEvent | None  # None: a type this build does not know (a newer confbus)
    raw: bytes


def _start_time(since: datetime | timedelta) -> datetime:
    """``since`` as the UTC time a consumer starts at (a naive time is local time)."""
    if isinstance(since, timedelta):
        since = datetime.now(UTC) - since
    return min(since.astimezone(UTC), _LAST_NATS_TIME)


class Events(Connection):
    """The client's stream readers."""

    async def _stream_end(self, stream: str, deadline: float) -> int:
        """The stream's last sequence, asked again while the bus comes back (a broker
        restarting) until ``deadline`` (monotonic); ``Unavailable`` saying why — at once when
        the stream is not there at all (NATS without confbus)."""

        async def ask() -> int:
            try:
                return (await self.bus.js.stream_info(stream)).state.last_seq
            except nats.js.errors.NotFoundError as exc:
                raise Permanent(
                    f"no {stream} stream at {self.nats_url}: is confbus running there?"
                ) from exc
            except nats.errors.Error as exc:
                raise Unavailable(
                    f"JetStream at {self.nats_url} is not answering: {exc!r}"
                ) from exc

        try:
            return await retry_unavailable(ask, what=f"reading {stream}", deadline=deadline)
        except Permanent as exc:
            raise Unavailable(str(exc)) from exc

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
        """Events of ``CFG_EVENTS`` in stream order, from an ordered (ephemeral) consumer that
        comes back within a second of a reconnect (``confbus.runtime.follow``).

        Without ``follow`` it stops at the end of the stream as it was when it started: at the
        stream's last sequence, or when the server says nothing more matches the filter. With
        ``follow`` it starts at new events (unless ``since``/``from_seq`` say otherwise) and
        never stops; ``on_subscribed`` is called once the consumer exists, so a caller can
        tell when an event published from then on will be seen.

        A naive ``since`` is local time. Raises ``Unavailable`` when the stream is missing
        (NATS without confbus), or when the server stops delivering mid-replay.
        """
        start_seq = 0
        deliver = DeliverPolicy.NEW if follow else DeliverPolicy.ALL
        start_time = None
        if from_seq is not None:
            start_seq = max(1, from_seq)
        elif since is not None:
            deliver = DeliverPolicy.BY_START_TIME
            start_time = _start_time(since)

        last = await self._stream_end(CFG_EVENTS.name, time.monotonic() + stall_timeout)
        if not follow and (last == 0 or (from_seq is not None and from_seq > last)):
            return
        # Comes back by itself after a reconnect (a broker restart): a --wait rides it out.
        reader = Follower(
            self.bus,
            CFG_EVENTS.name,
            subject_filter,
            start_seq=start_seq,
            deliver=deliver,
            start_time=start_time,
        )
        async with reader:
            if on_subscribed is not None:
                on_subscribed()
            if not follow and reader.created and not reader.pending_at_start:
                return  # nothing in the stream matches the filter
            while True:
                try:
                    with anyio.fail_after(None if follow else stall_timeout):
                        msg = await reader.next()
                except TimeoutError as exc:
                    raise Unavailable(
                        f"replay of {CFG_EVENTS.name} stalled: nothing for {stall_timeout}s"
                    ) from exc
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
        deliver, start_time = DeliverPolicy.NEW, None
        if since is not None:
            deliver, start_time = DeliverPolicy.BY_START_TIME, _start_time(since)
        # Comes back by itself after a reconnect (a broker restart).
        reader = Follower(
            self.bus, CFG_ALERTS.name, subject, deliver=deliver, start_time=start_time
        )
        async with reader:
            if on_subscribed is not None:
                on_subscribed()
            while True:
                msg = await reader.next()
                try:
                    alert = decode_alert(msg.data)
                except DECODE_ERRORS:
                    continue
                yield alert

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
