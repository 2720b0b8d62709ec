"""Reading a stream in order, and coming back at once when the bus does.

``Follower`` reads the messages of a stream (under one subject filter) in stream order, each
once, from a starting point — as nats-py's *ordered consumer* does: an ephemeral push consumer
without acks (no server-side state per reader worth keeping; a thousand agents must not mean a
thousand durable consumers), with flow control and idle heartbeats.

What differs is how it recovers. nats-py's ordered consumer notices a lost consumer only when
two idle heartbeats went missing — checked every 2 × 5 s — and then re-creates it once, in the
background: after a broker restart the agents, connected again within a second, heard no
prepare for ~14 s. Here the consumer is re-created, from the sequence after the last message
handed out, as soon as there is reason to think it is gone:

- the connection came back (``Bus.on_reconnect``) and the server no longer knows the consumer
  (a restarted server has forgotten it; a cluster node that died may have held it) — asked at
  once. A consumer that is still there is kept: creating one in a cluster needs its meta
  leader, which may be the node that just died and takes seconds to replace;
- nothing at all (message or heartbeat) came for ``SILENT_AFTER`` heartbeat intervals — the
  server holding the consumer died while our connection, to another node, stayed up;
- a delivery or a heartbeat shows a gap (a message lost on the way: a slow-consumer drop);
- the server says something else went wrong (a status other than heartbeat and flow control).

Creating it is retried with backoff until it works (JetStream may still be recovering its
streams, or electing a leader); a reconnect cuts the wait short. ``live`` says whether a
consumer is in place for us now, and ``on_live`` hears each change: an agent tells the
distributor with it whether it is ready to vote.

All of it happens in ``next`` — the reader is nearly always waiting there — so a follower
owns no task: it can live in an async generator (``Client.events``), which must not hold a
task group across a ``yield``.

Only the unnamed ephemeral form of consumer creation is used
(``$JS.API.CONSUMER.CREATE.<stream>``), which is all that agents and CI users may do under
``confbus up --secure``; a consumer left behind is removed by the server after
``INACTIVE_THRESHOLD_S`` without interest.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import anyio
import nats.errors
import nats.js.errors
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from confbus.runtime.bus import Bus
from confbus.runtime.errors import Unavailable
from confbus.runtime.opening import OpenClose
from confbus.runtime.retry import Backoff

log = logging.getLogger("confbus.follow")

HEARTBEAT_S = 1.0  # the consumer's idle heartbeat: how soon silence can be told from quiet
SILENT_AFTER = 2.5  # heartbeat intervals without anything before the consumer is presumed gone
INACTIVE_THRESHOLD_S = 30.0  # a consumer nobody listens to any more is removed by the server
CREATE_TIMEOUT_S = 2.0
CHECK_TIMEOUT_S = 1.0
RECREATE_BACKOFF = Backoff(base_s=0.05, cap_s=2.0)  # between attempts at a new consumer

_LAST_CONSUMER = "Nats-Last-Consumer"
_STALLED = "Nats-Consumer-Stalled"


class _StreamMissing(Unavailable):
    """The stream is not there at all when we first look: NATS without confbus."""


@dataclass(frozen=True, slots=True)
class _Item:
    generation: int
    msg: Msg


# Put in the queue to wake ``next`` up: the consumer must be re-created (a reconnect).
_POKE: Literal["poke"] = "poke"


@dataclass
class Follower(OpenClose):
    """``async with Follower(...) as f: msg = await f.next()`` — see the module docstring.

    ``start_seq`` is the first stream sequence wanted (0: as ``deliver`` says, with
    ``start_time`` for ``BY_START_TIME``). After the first message, every re-creation starts
    at the sequence after the last one ``next`` returned.
    """

    bus: Bus
    stream: str
    subject: str
    start_seq: int = 0
    deliver: DeliverPolicy = DeliverPolicy.ALL
    start_time: datetime | None = None
    headers_only: bool = False
    heartbeat_s: float = HEARTBEAT_S
    on_live: Callable[[bool], None] | None = None
    # Messages pending in the stream when the first consumer was created (how much there
    # was to catch up on).
    pending_at_start: int = field(default=0, init=False)
    live: bool = field(default=False, init=False)
    created: int = field(default=0, init=False)  # consumers created so far (re-creations + 1)
    _next_seq: int = field(default=0, init=False)
    _generation: int = field(default=0, init=False)
    _consumer_seq: int = field(default=0, init=False)  # last consumer sequence handed out
    _heard: float = field(default=0.0, init=False)  # monotonic: last sign of the consumer
    _sub: Subscription | None = field(default=None, init=False)
    _stale: str = field(default="", init=False)  # why the consumer must be re-created
    _consumer: str = field(default="", init=False)  # its name, given by the server
    _doubt: bool = field(default=False, init=False)  # reconnected: ask whether it is still there
    _send: MemoryObjectSendStream[_Item | Literal["poke"]] | None = field(default=None, init=False)
    _receive: MemoryObjectReceiveStream[_Item | Literal["poke"]] | None = field(
        default=None, init=False
    )
    _unlisten: Callable[[], None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._next_seq = self.start_seq

    @property
    def next_seq(self) -> int:
        """The stream sequence the next (re-)created consumer starts at (0: not known yet)."""
        return self._next_seq

    async def open(self) -> None:
        # Flow control bounds what is in flight; the buffer only holds what the server sent
        # ahead of the reader within that window.
        self._send, self._receive = anyio.create_memory_object_stream[_Item | Literal["poke"]](
            math.inf
        )
        self._unlisten = self.bus.on_reconnect(self._reconnected)
        try:
            await self._create()
        except _StreamMissing:
            await self.close()
            raise
        except Unavailable as exc:
            self._poke(str(exc))  # the bus is down, or JetStream not ready: next() retries

    async def close(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        with anyio.CancelScope(shield=True):
            await self._drop_subscription()
        if self._send is not None and self._receive is not None:
            self._send.close()
            self._receive.close()

    # -- reading ---------------------------------------------------------------------------

    async def next(self) -> Msg:
        """The next message of the stream under the filter, in order, each once."""
        assert self._receive is not None, "use Follower as an async context manager"
        silent_after = SILENT_AFTER * self.heartbeat_s
        while True:
            if self._stale:
                await self._recreate()
            elif self._doubt:
                await self._check()
                continue
            item: _Item | Literal["poke"] | None = None
            with anyio.move_on_after(max(0.0, self._heard + silent_after - time.monotonic())):
                item = await self._receive.receive()
            if item is None:
                if self.bus.nc.is_connected:
                    self._poke(f"nothing heard for {silent_after:g}s")
                else:
                    self._heard = time.monotonic()  # the reconnect will say when to look again
                continue
            # From here to the return, no await: a re-creation cannot slip in between.
            if item == _POKE or item.generation != self._generation:
                continue  # a wake-up, or from a consumer replaced since
            msg = item.msg
            if not msg.data and msg.headers and "Status" in msg.headers:
                await self._control(msg)
                continue
            md = msg.metadata
            if md.sequence.consumer != self._consumer_seq + 1:
                self._poke(
                    f"gap: consumer sequence {md.sequence.consumer} after {self._consumer_seq}"
                )
                continue
            self._consumer_seq = md.sequence.consumer
            if md.sequence.stream < self._next_seq:
                continue  # handed out before a re-creation already
            self._next_seq = md.sequence.stream + 1
            return msg

    async def _control(self, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get("Status", "")
        if status != "100":
            self._poke(f"status {status} {headers.get('Description', '')}".strip())
            return
        if msg.reply:
            # Flow control: every message sent before this request has been handed out.
            await self._answer(msg.reply)
            return
        last = headers.get(_LAST_CONSUMER)
        if last is not None and last.isdigit() and int(last) != self._consumer_seq:
            self._poke(f"gap: the server delivered up to {last}, we saw {self._consumer_seq}")
            return
        stalled = headers.get(_STALLED)
        if stalled:
            await self._answer(stalled)

    async def _answer(self, subject: str) -> None:
        try:
            await self.bus.nc.publish(subject, b"")
        except nats.errors.Error:
            pass  # lost with the connection: the consumer is re-created on reconnect anyway

    # -- keeping the consumer in place -------------------------------------------------------

    def _reconnected(self) -> None:
        """Not ready until we know the consumer is still there (``next`` asks at once)."""
        self._doubt = True
        self._set_live(False)
        self._wake()

    async def _check(self) -> None:
        self._doubt = False
        if self._stale or not self._consumer:
            return
        try:
            await self.bus.js.consumer_info(self.stream, self._consumer, timeout=CHECK_TIMEOUT_S)
        except nats.js.errors.NotFoundError:
            self._poke("the server no longer knows it (reconnected)")
            return
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            self._poke(f"no answer about it after the reconnect: {exc!r}")
            return
        self._heard = time.monotonic()
        self._set_live(True)

    def rewind(self, seq: int) -> None:
        """Hand messages out again from stream sequence ``seq`` (a reader that needs them
        joined behind this one: ``confbus.agent.txnfeed``). The consumer is re-created there;
        one is in place all along, so ``live`` stays as it is."""
        if 0 < seq < self._next_seq:
            self._next_seq = seq
            self._stale = self._stale or f"rewound to {seq}"
            self._wake()

    def _wake(self) -> None:
        if self._send is not None:
            try:
                self._send.send_nowait(_POKE)  # wakes a reader waiting for a message
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass

    def _poke(self, why: str) -> None:
        """The consumer is (probably) gone: have ``next`` re-create it now."""
        if not self._stale:
            log.info(
                "re-creating consumer",
                extra={"stream": self.stream, "subject": self.subject, "why": why},
            )
            self._stale = why
            self._set_live(False)
        self._wake()

    def _set_live(self, live: bool) -> None:
        if live != self.live:
            self.live = live
            if self.on_live is not None:
                self.on_live(live)

    async def _recreate(self) -> None:
        """Create the consumer again, retrying with backoff; a reconnect cuts a wait short."""
        assert self._receive is not None
        failed = 0
        while True:
            try:
                await self._create()
                return
            except Unavailable as exc:
                self._set_live(False)  # the old consumer was dropped, no new one yet
                failed += 1
                delay = RECREATE_BACKOFF.delay(failed)
                log.info(
                    "consumer not re-created yet",
                    extra={"stream": self.stream, "error": str(exc), "retry_s": delay},
                )
            with anyio.move_on_after(delay):
                while await self._receive.receive() != _POKE:
                    pass  # from a consumer given up on: dropped

    async def _create(self) -> None:
        """A new inbox and a new consumer delivering to it, from where the reader is."""
        await self._drop_subscription()
        # What the old consumer still delivers is dropped from here on.
        self._generation += 1
        generation = self._generation
        self._consumer_seq = 0
        start = self._next_seq
        assert self._send is not None
        send = self._send

        async def on_msg(msg: Msg) -> None:
            if generation == self._generation:
                self._heard = time.monotonic()
            try:
                send.send_nowait(_Item(generation, msg))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # the follower is closing

        nc = self.bus.nc
        inbox = nc.new_inbox()
        config = ConsumerConfig(
            deliver_subject=inbox,
            ack_policy=AckPolicy.NONE,
            max_deliver=1,
            ack_wait=22 * 3600,
            flow_control=True,
            idle_heartbeat=self.heartbeat_s,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=INACTIVE_THRESHOLD_S,
            filter_subject=self.subject,
            headers_only=self.headers_only or None,
        )
        if start > 0:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = start
        else:
            config.deliver_policy = self.deliver
            if self.deliver == DeliverPolicy.BY_START_TIME:
                config.opt_start_time = self.start_time
        try:
            self._sub = await nc.subscribe(inbox, cb=on_msg)
            info = await self.bus.js.add_consumer(self.stream, config, timeout=CREATE_TIMEOUT_S)
        except nats.js.errors.NotFoundError as exc:
            if generation == 1:
                raise _StreamMissing(
                    f"no {self.stream} stream at {nc.connected_url}: is confbus running there?"
                ) from exc
            # It was there: a restarted server may still be recovering it.
            raise Unavailable(f"{self.stream} is not there (yet): {exc!r}") from exc
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            raise Unavailable(f"cannot create a consumer on {self.stream}: {exc!r}") from exc
        if start == 0 and self.deliver == DeliverPolicy.NEW and info.delivered:
            # "New" means after what the stream held now: a re-creation before the first
            # message reaches us must not skip what is published from here on.
            self._next_seq = max(self._next_seq, (info.delivered.stream_seq or 0) + 1)
        if self.created == 0:
            self.pending_at_start = info.num_pending or 0
        self.created += 1
        self._consumer = info.name or ""
        self._heard = time.monotonic()
        # A rewind while the consumer was being created wants another one, from further back.
        self._stale = "" if self._next_seq >= start else self._stale
        self._set_live(True)

    async def _drop_subscription(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except nats.errors.Error:
                pass  # the connection is closed or reconnecting: nothing to unsubscribe from
