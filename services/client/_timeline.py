"""The fleet at a past moment, from ``CFG_EVENTS`` (docs/design.md §8.10): ``Client.status_at``,
``why`` and ``diff_fleet``.

A moment is a stream sequence, a time (every event stored at or before it, to the
microsecond) or a duration ago. ``reconstruct`` starts from the newest intact checkpoint at or
before the moment (``CFG_CHECKPOINTS``, written by the historian), else from the start of the
stream, and folds the namespace's events up to the moment with ``confbus.schemas.fold``. A
checkpoint is used only when it is intact (its checksum), of this namespace, of this stream (its
creation time), at the sequence its key names, and not older than the stream's first event
(events after it must all still be there): anything else is skipped with the reason, and
costs only time.

The answers are the Structs of ``confbus.client._fleet``, computed from the folded states.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio
import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from confbus.client._connection import Connection
from confbus.client._events import Events
from confbus.client._fleet import FleetAt, FleetDiff, Why, diff, fleet_at, why
from confbus.client._names import check_namespace, check_node
from confbus.runtime.errors import InvalidInput, NotFound, Unavailable
from confbus.runtime.kvlist import kv_keys
from confbus.runtime.since import Moment
from confbus.schemas import subjects
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.events import AnyEvent, decode_event
from confbus.schemas.fleet import (
    CheckpointCorrupt,
    FleetState,
    check_checkpoint,
    checkpoint_keys_of,
    checkpoint_seq,
    parse_checkpoint,
)
from confbus.schemas.fold import fold, new_state
from confbus.schemas.names import check_name
from confbus.schemas.streams import CFG_CHECKPOINTS, CFG_EVENTS

log = logging.getLogger("confbus.client")

_LAST_NATS_TIME = datetime(2262, 1, 1, tzinfo=UTC)
# Checkpoints tried before folding from the stream's start instead.
MAX_CHECKPOINT_TRIES = 4


@dataclass(frozen=True)
class StreamBounds:
    first_seq: int
    last_seq: int
    created: str


@dataclass
class Reconstruction:
    state: FleetState
    checkpoint_seq: int = 0  # 0: folded from the stream's start
    events_read: int = 0
    skipped_checkpoints: list[str] = field(default_factory=list)  # "key: why not used"


async def bounds(client: Connection) -> StreamBounds:
    try:
        info = await client.bus.js.stream_info(CFG_EVENTS.name)
    except nats.js.errors.NotFoundError as exc:
        raise Unavailable(f"no {CFG_EVENTS.name} stream: is confbus running there?") from exc
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
        raise Unavailable(f"JetStream is not answering: {exc!r}") from exc
    created = info.created.isoformat() if info.created else ""
    return StreamBounds(info.state.first_seq, info.state.last_seq, created)


async def moment_seq(client: Connection, at: Moment, edges: StreamBounds) -> int:
    """The stream sequence of a moment: every event up to it was stored at or before it."""
    if isinstance(at, int):
        if at < 0:
            raise InvalidInput(f"--at {at}: a stream sequence is >= 0")
        return min(at, edges.last_seq)
    when = datetime.now(UTC) - at if isinstance(at, timedelta) else at
    if when.tzinfo is None:
        when = when.astimezone()
    # The first event stored after the moment, to the microsecond; everything before it is in.
    start = min(when.astimezone(UTC) + timedelta(microseconds=1), _LAST_NATS_TIME)
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=start.isoformat(),  # type: ignore[arg-type]
        ack_policy=AckPolicy.NONE,
        filter_subject=subjects.EVENTS_ALL,
        # Never pulled from: the server deletes it after this long (a reader may not delete
        # consumers, docs/security.md).
        inactive_threshold=2.0,
        mem_storage=True,
    )
    try:
        # A new consumer's "delivered" is the sequence before its first: the answer, with no
        # message read.
        info = await client.bus.js.add_consumer(CFG_EVENTS.name, config)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
        raise Unavailable(f"JetStream is not answering: {exc!r}") from exc
    delivered = info.delivered.stream_seq if info.delivered else 0
    return min(delivered, edges.last_seq)


async def stored_time(client: Connection, seq: int) -> datetime | None:
    if seq < 1:
        return None
    try:
        return (await client.bus.js.get_msg(CFG_EVENTS.name, seq)).time
    except nats.js.errors.NotFoundError:
        return None


async def reconstruct(
    client: Connection, namespace: str, seq: int, edges: StreamBounds, *, checkpoints: bool = True
) -> Reconstruction:
    """The namespace's fleet after every event up to ``seq``."""
    check_name(namespace, "namespace")
    if seq < edges.first_seq - 1:
        since = await stored_time(client, edges.first_seq)
        raise NotFound(
            f"seq {seq} is before what {CFG_EVENTS.name} still holds: its oldest event is seq "
            f"{edges.first_seq}" + (f", stored {since:%Y-%m-%dT%H:%M:%SZ}" if since else "")
        )
    skipped: list[str] = []
    start = await _from_checkpoint(client, namespace, seq, edges, skipped) if checkpoints else None
    if start is not None:
        rec = Reconstruction(start, checkpoint_seq=start.seq, skipped_checkpoints=skipped)
    else:
        rec = Reconstruction(await _empty(client, namespace, edges), skipped_checkpoints=skipped)
    state = rec.state
    if state.seq < seq:
        rec.events_read = await fold_range(client, state, seq)
    # Nothing of the namespace between its last event and the moment: the state is as of then.
    state.seq = max(state.seq, seq)
    return rec


async def fold_range(
    client: Connection, state: FleetState, upto: int, stall_s: float = 10.0
) -> int:
    """Fold the namespace's events after ``state.seq`` up to ``upto``; returns how many.

    An ordered consumer whose callback folds each event as it arrives: no task, no queue per
    message, which is most of the cost of reading a long range (the benchmark's figure)."""
    js = client.bus.js
    done = anyio.Event()
    count = 0

    async def on_event(msg: Msg) -> None:
        nonlocal count
        if done.is_set():
            return
        md = msg.metadata
        seq = md.sequence.stream
        if seq > upto:
            done.set()
            return
        try:
            event: AnyEvent | None = decode_event(msg.data)
        except DECODE_ERRORS:
            event = None
        fold(state, seq, md.timestamp, event)
        count += 1
        if seq >= upto or md.num_pending == 0:
            done.set()

    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=state.seq + 1
    )
    try:
        sub = await js.subscribe(
            subjects.events_of(state.namespace),
            stream=CFG_EVENTS.name,
            ordered_consumer=True,
            config=config,
            cb=on_event,
        )
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
        raise Unavailable(f"JetStream is not answering: {exc!r}") from exc
    try:
        info = await sub.consumer_info()
        delivered = info.delivered.consumer_seq if info.delivered else 0
        if not info.num_pending and not delivered and not count:
            return 0  # nothing of the namespace after state.seq
        while not done.is_set():
            before = count
            with anyio.move_on_after(stall_s):
                await done.wait()
            if not done.is_set() and count == before:
                raise Unavailable(f"reading {CFG_EVENTS.name} stalled: nothing for {stall_s}s")
        return count
    finally:
        with anyio.CancelScope(shield=True), contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


async def _empty(client: Connection, namespace: str, edges: StreamBounds) -> FleetState:
    first = max(1, edges.first_seq)
    origin_at = await stored_time(client, first) if first > 1 else None
    return new_state(namespace, origin_seq=first, origin_at=origin_at, stream_created=edges.created)


async def _from_checkpoint(
    client: Connection, namespace: str, seq: int, edges: StreamBounds, skipped: list[str]
) -> FleetState | None:
    """The newest usable checkpoint at or before ``seq``; what was passed over goes to
    ``skipped`` ("key: why")."""
    for key in (await checkpoint_keys(client, namespace, seq))[:MAX_CHECKPOINT_TRIES]:
        try:
            state = await load_checkpoint(client, key, namespace, edges)
        except CheckpointCorrupt as exc:
            log.warning("checkpoint skipped", extra={"key": key, "reason": str(exc)})
            skipped.append(f"{key}: {exc}")
            continue
        return state
    return None


async def checkpoint_keys(client: Connection, namespace: str, seq: int) -> list[str]:
    """The namespace's checkpoint keys at or before ``seq``, newest first."""
    found = []
    for key in await kv_keys(client.bus, CFG_CHECKPOINTS.name, checkpoint_keys_of(namespace)):
        at = checkpoint_seq(key)
        if at is not None and at <= seq:
            found.append((at, key))
    return [key for _, key in sorted(found, reverse=True)]


async def load_checkpoint(
    client: Connection, key: str, namespace: str, edges: StreamBounds
) -> FleetState:
    """The checkpoint at ``key`` if it may be used here; ``CheckpointCorrupt`` says why not."""
    kv = await client.bus.kv(CFG_CHECKPOINTS.name)
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        raise CheckpointCorrupt("gone (deleted or expired)") from None
    return check_checkpoint(
        parse_checkpoint(entry.value or b""),
        key=key,
        namespace=namespace,
        stream_created=edges.created,
        first_seq=edges.first_seq,
    )


# -- the three questions --------------------------------------------------------------------------


class Timeline(Events):
    """The client's reading of the past (docs/design.md §8.10)."""

    async def status_at(self, namespace: str, at: Moment) -> FleetAt:
        """The fleet as it was at ``at`` (a stream sequence, a time, or a duration ago): per
        node its applied version and sha256, target, liveness and wave; the namespace's
        production, last known good and rollout. ``NotFound`` when the stream no longer holds
        that moment."""
        ns = check_namespace(namespace)
        edges = await bounds(self)
        seq = await moment_seq(self, at, edges)
        rec = await reconstruct(self, ns, seq, edges)
        return fleet_at(
            rec.state,
            at=await _shown_time(self, at, seq),
            checkpoint_seq=rec.checkpoint_seq,
            events_read=rec.events_read,
        )

    async def why(self, namespace: str, node: str, at: Moment | None = None) -> Why:
        """The chain of events that put ``node`` on its version (now, or at ``at``), newest
        first, each step with its event's stream sequence. ``NotFound`` for a node no event
        of the namespace names up to then."""
        ns = check_namespace(namespace)
        check_node(node)
        edges = await bounds(self)
        seq = await moment_seq(self, edges.last_seq if at is None else at, edges)
        rec = await reconstruct(self, ns, seq, edges)
        return why(rec.state, node, at=await _shown_time(self, at, seq))

    async def diff_fleet(self, namespace: str, before: Moment, after: Moment) -> FleetDiff:
        """The nodes whose applied version changed between two moments, and what changed it."""
        ns = check_namespace(namespace)
        edges = await bounds(self)
        lo = await moment_seq(self, before, edges)
        hi = await moment_seq(self, after, edges)
        if hi < lo:
            raise InvalidInput(f"--to (seq {hi}) is before --from (seq {lo})", where="to")
        a = (await reconstruct(self, ns, lo, edges)).state
        b = (await reconstruct(self, ns, hi, edges)).state
        return msgspec.structs.replace(
            diff(a, b),
            from_at=await _shown_time(self, before, lo),
            to_at=await _shown_time(self, after, hi),
        )


async def _shown_time(client: Connection, at: Moment | None, seq: int) -> datetime | None:
    """The moment as asked (a time), else the stored time of its sequence."""
    if isinstance(at, datetime):
        return at if at.tzinfo is not None else at.astimezone()
    if isinstance(at, timedelta):
        return datetime.now(UTC) - at
    return await stored_time(client, seq)
