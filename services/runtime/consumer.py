"""The consume loop: durable pull consumers with explicit acks.

The handler's outcome decides what happens to each message:

- it returns → **ack** (only now: a crash before this point redelivers);
- it raises ``Unavailable`` → **nak with backoff**, forever: a store outage must not
  dead-letter good messages;
- it raises ``Permanent`` (or the bytes do not decode) → a copy goes to ``CFG_DLQ`` with the
  reason, *then* the message is **terminated** — never silently dropped;
- a message whose ``type`` tag this build does not know comes from a newer confbus: it is
  **acked and skipped** with one log line;
- any other exception is a bug: nak with backoff a few times, then dead-letter it with the
  exception, so one poisoned message cannot stall the stream or crash the service.

Handlers receive a whole batch (``fetch`` returns what is available, up to ``batch``) so a
service can group-commit many messages in one store transaction. When a batch fails as a whole
with anything but ``Unavailable``, each of its messages is handled again alone, so one poisoned
message cannot take the good ones beside it to the DLQ (handlers are idempotent: every retried
path carries an idempotency key).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio
import msgspec
import nats.errors
import nats.js.errors
from anyio.abc import TaskStatus
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from confbus.runtime.bus import Bus
from confbus.runtime.errors import Permanent, Unavailable
from confbus.runtime.metrics import ConsumerMetrics
from confbus.runtime.pull import Puller
from confbus.runtime.retry import Backoff
from confbus.schemas import subjects
from confbus.schemas.base import DECODE_ERRORS, decode_envelope
from confbus.schemas.dlq import DeadLetter
from confbus.schemas.streams import StreamSpec

log = logging.getLogger("confbus.consumer")

T = TypeVar("T")

# Unexpected exceptions (bugs) are retried this many deliveries, then dead-lettered.
MAX_BUG_DELIVERIES = 5
# After a refused pull: how long to wait for the consumer's info (it answers once its leader
# is back: in a cluster, a raft election of 4-9 s after its node died).
TROUBLE_CHECK_S = 1.0


@dataclass
class Delivery(Generic[T]):
    """One decoded message and what the handler decided for it."""

    msg: Msg
    value: T
    error: BaseException | None = field(default=None, init=False)
    # Handled again alone after its batch failed: its earlier attempt may have done part of
    # the work (stored, not announced), just as on a redelivery.
    rehandled: bool = field(default=False, init=False)

    @property
    def subject(self) -> str:
        return self.msg.subject

    @property
    def deliveries(self) -> int:
        return self.msg.metadata.num_delivered

    @property
    def repeated(self) -> bool:
        """Handled before (a redelivery, or again after its batch failed): idempotent handlers
        check what an earlier attempt left behind."""
        return self.rehandled or self.deliveries > 1

    @property
    def stream_seq(self) -> int:
        return self.msg.metadata.sequence.stream

    def fail(self, error: BaseException) -> None:
        """Mark this item of a batch as failed; the others are still acked."""
        self.error = error


BatchHandler = Callable[[Sequence[Delivery[T]]], Awaitable[None]]


def per_message(handler: Callable[[T, Msg], Awaitable[None]]) -> BatchHandler[T]:
    """Adapt a one-message handler to the batch interface."""

    async def run(batch: Sequence[Delivery[T]]) -> None:
        for item in batch:
            try:
                await handler(item.value, item.msg)
            except Exception as exc:
                item.fail(exc)

    return run


def per_key(
    handler: Callable[[T, Msg], Awaitable[None]], key: Callable[[T], str]
) -> BatchHandler[T]:
    """Adapt a one-message handler to the batch interface, the messages of one ``key`` (say a
    namespace) in their order and the keys side by side: one namespace's slow step (a store
    round trip, a compare-and-set) does not hold back the others' messages of the batch. Each
    message is still acked only after its own handler returned (the consumer acks a batch once
    all of it is handled)."""

    in_order = per_message(handler)

    async def one_key(items: list[Delivery[T]]) -> None:
        await in_order(items)

    async def run(batch: Sequence[Delivery[T]]) -> None:
        groups: dict[str, list[Delivery[T]]] = {}
        for item in batch:
            groups.setdefault(key(item.value), []).append(item)
        if len(groups) == 1:
            await in_order(batch)  # no task to start
            return
        async with anyio.create_task_group() as tg:
            for items in groups.values():
                tg.start_soon(one_key, items)

    return run


@dataclass
class Consumer(Generic[T]):
    bus: Bus
    stream: StreamSpec
    durable: str
    decode: Callable[[bytes], T]
    handler: BatchHandler[T]
    metrics: ConsumerMetrics
    filter_subject: str | None = None
    batch: int = 1
    fetch_timeout_s: float = 1.0
    # False for streams that may carry secret config (CFG_CHANGES): a dead letter then keeps
    # the bytes' sha256 and size, not the bytes; the publisher still has its file.
    keep_data: bool = True
    # Told about each message that cannot be decoded, with the reason, before it is
    # dead-lettered: a service may still answer its sender (the version-store emits
    # version.rejected, so a publisher waiting on the change learns why). Best effort.
    on_undecodable: Callable[[Msg, str], Awaitable[None]] | None = None
    ack_wait_s: float = 30.0
    backoff: Backoff = field(default_factory=Backoff)
    # Where a consumer created now starts: ALL (a work queue), or NEW for a follower that must
    # not act on the history it finds (notifications of what happened before it existed).
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=self.deliver_policy,
            ack_wait=self.ack_wait_s,
            max_deliver=-1,  # we decide when a message is hopeless, not a counter
            max_ack_pending=max(1000, self.batch * 4),
        )
        config.filter_subject = self.filter_subject or self.stream.subjects[0]
        await self._ensure_consumer(config)
        puller = await Puller(self.bus.nc, self.stream.name, self.durable).start()
        # A pull in flight when the connection broke is gone: pull again at once.
        unlisten = self.bus.on_reconnect(puller.wake)
        task_status.started()
        try:
            while True:
                try:
                    msgs = await puller.fetch(self.batch, timeout=self.fetch_timeout_s)
                except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError):
                    await anyio.sleep(0.5)  # reconnecting: the client retries by itself
                    continue
                except Exception as exc:  # the bus hiccupped; the loop must outlive it
                    log.warning("fetch failed", extra={"error": repr(exc)})
                    await anyio.sleep(0.5)
                    continue
                if msgs:
                    await self._process(msgs)
                elif puller.trouble is not None:
                    # The consumer is gone (deleted by hand?) or JetStream is electing a
                    # leader: back off, then make sure the consumer exists.
                    await anyio.sleep(0.5)
                    with contextlib.suppress(Exception):
                        # Briefly: a consumer whose leader died does not answer until a new one
                        # is elected, and the next pull is what tells when it has been.
                        await self._ensure_consumer(config, timeout=TROUBLE_CHECK_S)
        finally:
            # Unsubscribe before any drain: a late status reply to a pull request would
            # otherwise make nc.drain() wait its whole drain_timeout (30 s).
            unlisten()
            with anyio.CancelScope(shield=True):
                await puller.stop()

    async def _ensure_consumer(self, config: ConsumerConfig, timeout: float | None = None) -> None:
        """Create the durable consumer unless it exists (then it is used as it is, as nats-py's
        ``pull_subscribe`` does: its position is what matters)."""
        js = self.bus.js
        try:
            await js.consumer_info(self.stream.name, self.durable, timeout=timeout)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(self.stream.name, config, timeout=timeout)

    async def _process(self, msgs: list[Msg]) -> None:
        batch: list[Delivery[T]] = []
        for msg in msgs:
            try:
                batch.append(Delivery(msg, self.decode(msg.data)))
            except DECODE_ERRORS as exc:
                await self._guarded(self._undecodable(msg, exc), msg)
        if not batch:
            return
        with self.metrics.handle_seconds.time():
            error = await self._handle(batch)
            if error is not None and len(batch) > 1 and not isinstance(error, Unavailable):
                # Failed as a whole: find the culprit by handling each message alone.
                for item in batch:
                    if item.error is error:
                        item.error = None
                        item.rehandled = True
                        item.error = await self._handle([item])
        for item in batch:
            await self._guarded(self._settle(item), item.msg)

    async def _handle(self, batch: list[Delivery[T]]) -> BaseException | None:
        """Run the handler; if it raised, every item it did not judge shares the exception."""
        try:
            await self.handler(batch)
        except Exception as exc:
            for item in batch:
                if item.error is None:
                    item.fail(exc)
            return exc
        return batch[0].error if len(batch) == 1 else None

    async def _guarded(self, settle: Awaitable[None], msg: Msg) -> None:
        """Settling can fail too (the DLQ publish, a lost connection): then the message is
        simply not acked, and JetStream redelivers it after ``ack_wait``."""
        try:
            await settle
        except Exception as exc:
            log.warning(
                "could not settle message", extra={"subject": msg.subject, "error": repr(exc)}
            )

    async def _undecodable(self, msg: Msg, exc: Exception) -> None:
        if isinstance(exc, RecursionError):
            await self._dead_letter(msg, "undecodable: JSON nested too deeply")
            return
        try:
            envelope = decode_envelope(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            envelope = None
        if envelope is not None and "Invalid value" in str(exc) and "$.type" in str(exc):
            # A tag we do not know: a newer confbus wrote it. Not ours to judge.
            log.info(
                "skipping message of unknown type from a newer confbus",
                extra={"type": envelope.type, "subject": msg.subject},
            )
            self.metrics.messages.labels("skipped").inc()
            await msg.ack()
            return
        reason = f"undecodable: {exc}"
        if self.on_undecodable is not None:
            try:
                await self.on_undecodable(msg, reason)
            except Exception as hook_exc:  # the dead letter below is the record that counts
                log.warning("on_undecodable failed", extra={"error": repr(hook_exc)})
        await self._dead_letter(msg, reason)

    async def _settle(self, item: Delivery[T]) -> None:
        err = item.error
        if err is None:
            # Ack only after the handler's durable work: a crash before this line redelivers.
            await item.msg.ack()
            self.metrics.messages.labels("acked").inc()
        elif isinstance(err, Unavailable):
            delay = self.backoff.delay(item.deliveries)
            log.warning(
                "transient failure, redelivering",
                extra={"subject": item.subject, "error": str(err), "delay_s": round(delay, 3)},
            )
            self.metrics.messages.labels("retried").inc()
            await item.msg.nak(delay=delay)
        elif isinstance(err, Permanent):
            await self._dead_letter(item.msg, str(err))
        elif isinstance(err, RecursionError):  # deeply nested input: no retry will help
            await self._dead_letter(item.msg, "input nested too deeply")
        elif item.deliveries < MAX_BUG_DELIVERIES:
            log.error(
                "handler bug, redelivering",
                exc_info=err,
                extra={"subject": item.subject, "deliveries": item.deliveries},
            )
            self.metrics.messages.labels("retried").inc()
            await item.msg.nak(delay=self.backoff.delay(item.deliveries))
        else:
            await self._dead_letter(item.msg, f"handler failed {item.deliveries} times: {err!r}")

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        md = msg.metadata
        letter = DeadLetter(
            stream=self.stream.name,
            subject=msg.subject,
            stream_seq=md.sequence.stream,
            reason=reason,
            data=msg.data if self.keep_data else b"",
            data_sha256=hashlib.sha256(msg.data).hexdigest(),
            data_size=len(msg.data),
            headers=dict(msg.headers or {}),
            deliveries=md.num_delivered,
            consumer=self.durable,
        )
        # Copy first, then terminate: a crash in between redelivers, and the msg id makes
        # the second copy a no-op.
        await self.bus.publish(
            subjects.dlq(self.stream.name),
            letter,
            msg_id=f"{self.stream.name}:{md.sequence.stream}",
        )
        await msg.term()
        self.metrics.messages.labels("dead_lettered").inc()
        log.warning(
            "dead-lettered",
            extra={"subject": msg.subject, "stream_seq": md.sequence.stream, "reason": reason},
        )
