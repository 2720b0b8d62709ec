"""The historian's loop: read ``CFG_EVENTS``, fold each namespace, write checkpoints and the
cursor (the account of why is in the package docstring)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import anyio
import msgspec
import nats.errors
import nats.js.errors
from anyio.abc import TaskStatus
from nats.js.kv import KeyValue

from confbus.historian.metrics import HistorianMetrics
from confbus.runtime.bus import Bus
from confbus.runtime.follow import Follower
from confbus.runtime.kvlist import kv_forget, kv_keys
from confbus.runtime.service import ServiceContext
from confbus.schemas import subjects
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.events import AnyEvent, decode_event
from confbus.schemas.fleet import (
    CURSOR_KEY,
    CheckpointCorrupt,
    Cursor,
    FleetState,
    check_checkpoint,
    checkpoint_key,
    checkpoint_keys_of,
    checkpoint_seq,
    decode_cursor,
    encode_checkpoint,
    parse_checkpoint,
)
from confbus.schemas.fold import fold, new_state
from confbus.schemas.names import InvalidName, check_name
from confbus.schemas.streams import CFG_CHECKPOINTS, CFG_EVENTS

log = logging.getLogger("confbus.historian")

_encode = msgspec.json.Encoder().encode
GC_EVERY_S = 600.0
# Checkpoints of a namespace tried, newest first, before folding it from the stream's start.
LOAD_TRIES = 4


def add_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("historian")
    g.add_argument(
        "--every",
        type=int,
        default=2000,
        help="a checkpoint of a namespace after this many of its events; a reader then folds "
        "at most about twice that (default %(default)s: well under a second)",
    )
    g.add_argument(
        "--idle",
        type=float,
        default=60.0,
        help="seconds after which a namespace's events not yet in a checkpoint get one "
        "(default %(default)s)",
    )
    g.add_argument("--tick", type=float, default=1.0, help=argparse.SUPPRESS)


async def main(ctx: ServiceContext, task_status: TaskStatus[None]) -> None:
    args = ctx.args
    kv = await ctx.bus.kv(CFG_CHECKPOINTS.name)
    metrics = HistorianMetrics.create(ctx.registry)
    historian = Historian(ctx.bus, kv, metrics, every=max(1, args.every), idle_s=args.idle)
    await historian.open()
    async with anyio.create_task_group() as tg:
        await tg.start(historian.follow)
        tg.start_soon(historian.ticks, args.tick)
        task_status.started()


@dataclass
class Unsaved:
    first_seq: int  # the first of the namespace's events not in a checkpoint
    since: float  # monotonic time it was read


class Historian:
    def __init__(
        self, bus: Bus, kv: KeyValue, metrics: HistorianMetrics, *, every: int, idle_s: float
    ) -> None:
        self.bus, self.kv, self.metrics = bus, kv, metrics
        self.every, self.idle_s = every, idle_s
        self.states: dict[str, FleetState] = {}
        self.unsaved: dict[str, Unsaved] = {}
        self.kept_events: dict[str, int] = {}  # state.events at the last kept checkpoint
        self.tails: dict[str, str] = {}  # the key of a tail checkpoint the next one replaces
        self.position = 0  # every event up to here is folded
        self.created = ""
        self.first_seq = 1
        self.first_at: datetime | None = None
        self.cursor_saved = -1
        self.last_gc = time.monotonic()

    async def open(self) -> None:
        """Where to start: the cursor, if it is of this stream and still in it."""
        info = await self.bus.js.stream_info(CFG_EVENTS.name)
        self.created = info.created.isoformat() if info.created else ""
        self.first_seq = max(1, info.state.first_seq)
        if self.first_seq > 1:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                self.first_at = (await self.bus.js.get_msg(CFG_EVENTS.name, self.first_seq)).time
        cursor = await self._read_cursor()
        start = self.first_seq
        if cursor is not None and cursor.stream_created == self.created:
            start = max(start, cursor.seq + 1)
        self.position = start - 1
        self.cursor_saved = self.position
        log.info("starting", extra={"from_seq": start, "first_seq": self.first_seq})

    async def _read_cursor(self) -> Cursor | None:
        try:
            entry = await self.kv.get(CURSOR_KEY)
            return decode_cursor(entry.value or b"")
        except nats.js.errors.KeyNotFoundError:
            return None
        except DECODE_ERRORS:
            log.warning("unreadable cursor: folding from the stream's start")
            return None

    # -- reading -------------------------------------------------------------------------------

    async def follow(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # runtime.follow, not nats-py's ordered consumer: after a broker restart it reads on
        # within a second, from the event after the last one folded.
        follower = Follower(
            self.bus, CFG_EVENTS.name, subjects.EVENTS_ALL, start_seq=self.position + 1
        )
        async with follower as f:
            task_status.started()
            while True:
                msg = await f.next()
                md = msg.metadata
                await self.take(md.sequence.stream, msg.subject, md.timestamp, msg.data)

    async def take(self, seq: int, subject: str, at: datetime | None, data: bytes) -> None:
        """Fold the event stored at ``seq``; checkpoint its namespace every ``every`` events."""
        namespace = namespace_of(subject)
        if namespace is None:
            self.position = max(self.position, seq)
            return  # not an event subject (a reader of a namespace never sees it either)
        state = self.states.get(namespace) or await self._load(namespace)
        if seq > state.seq:
            try:
                event: AnyEvent | None = decode_event(data)
            except DECODE_ERRORS:
                event = None
            fold(state, seq, at, event)
            if namespace not in self.unsaved:
                self.unsaved[namespace] = Unsaved(seq, time.monotonic())
            self.metrics.events.inc()
        self.position = max(self.position, seq)
        if state.events - self.kept_events.get(namespace, 0) >= self.every:
            await self.checkpoint(namespace, kept=True)

    async def _load(self, namespace: str) -> FleetState:
        """The namespace's newest usable checkpoint, else a fold from the stream's start. Either
        holds every event of it up to the cursor (docs/design.md §8.10)."""
        keys = await kv_keys(self.bus, CFG_CHECKPOINTS.name, checkpoint_keys_of(namespace))
        ordered = sorted(keys, key=lambda k: checkpoint_seq(k) or 0, reverse=True)
        state = None
        for key in ordered[:LOAD_TRIES]:
            try:
                entry = await self.kv.get(key)
                state = check_checkpoint(
                    parse_checkpoint(entry.value or b""),
                    key=key,
                    namespace=namespace,
                    stream_created=self.created,
                    first_seq=self.first_seq,
                )
                break
            except (CheckpointCorrupt, nats.js.errors.KeyNotFoundError) as exc:
                log.warning("checkpoint skipped", extra={"key": key, "reason": str(exc)})
        if state is None:
            state = new_state(
                namespace,
                origin_seq=self.first_seq,
                origin_at=self.first_at,
                stream_created=self.created,
            )
        self.states[namespace] = state
        self.kept_events[namespace] = state.events
        self.metrics.namespaces.set(len(self.states))
        return state

    # -- writing -------------------------------------------------------------------------------

    async def checkpoint(self, namespace: str, *, kept: bool) -> None:
        state = self.states[namespace]
        # Nothing of the namespace between its last event and here: the state is as of here.
        state.seq = max(state.seq, self.position)
        key = checkpoint_key(namespace, state.seq)
        data = encode_checkpoint(state)  # a snapshot: folding goes on while we write it
        events = state.events
        unsaved = self.unsaved.pop(namespace, None)
        old_tail = self.tails.pop(namespace, None)
        try:
            await self.kv.put(key, data)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            # Only time is lost: readers fold from an older checkpoint.
            self.metrics.failures.inc()
            log.warning("checkpoint not written", extra={"key": key, "error": repr(exc)})
            if unsaved is not None:
                newer = self.unsaved.get(namespace)
                self.unsaved[namespace] = unsaved if newer is None else earlier(unsaved, newer)
            if old_tail is not None:
                self.tails[namespace] = old_tail
            return
        self.metrics.checkpoints.labels("kept" if kept else "tail").inc()
        self.metrics.checkpoint_bytes.set(len(data))
        if kept:
            self.kept_events[namespace] = events
        else:
            self.tails[namespace] = key
        if old_tail is not None and old_tail != key:
            # Superseded by the one just written, which covers more.
            await self._forget(old_tail)

    async def _forget(self, key: str) -> None:
        try:
            await kv_forget(self.bus, CFG_CHECKPOINTS.name, key)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.info("could not remove a checkpoint", extra={"key": key, "error": repr(exc)})

    def cursor(self) -> int:
        """Every namespace's events up to here are in a checkpoint."""
        if not self.unsaved:
            return self.position
        return min(u.first_seq for u in self.unsaved.values()) - 1

    async def save_cursor(self) -> None:
        seq = self.cursor()
        if seq <= self.cursor_saved:
            return
        try:
            await self.kv.put(CURSOR_KEY, _encode(Cursor(seq=seq, stream_created=self.created)))
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.warning("cursor not written", extra={"error": repr(exc)})
            return
        self.cursor_saved = seq

    # -- the clock -----------------------------------------------------------------------------

    async def ticks(self, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            try:
                await self.tick()
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                log.warning("tick failed", extra={"error": repr(exc)})

    async def tick(self) -> None:
        now = time.monotonic()
        for namespace, unsaved in list(self.unsaved.items()):
            if now - unsaved.since >= self.idle_s:
                await self.checkpoint(namespace, kept=False)
        await self.save_cursor()
        info = await self.bus.js.stream_info(CFG_EVENTS.name)
        self.metrics.lag.set(max(0, info.state.last_seq - self.position))
        if info.state.first_seq > self.first_seq:
            self.first_seq = info.state.first_seq
        if now - self.last_gc >= GC_EVERY_S:
            self.last_gc = now
            await self.gc()

    async def gc(self) -> None:
        """Remove checkpoints older than the stream's first event: nobody can fold on from them."""
        for key in await kv_keys(self.bus, CFG_CHECKPOINTS.name, "*.*"):
            seq = checkpoint_seq(key)
            if seq is not None and seq < self.first_seq - 1:
                await self._forget(key)


def earlier(a: Unsaved, b: Unsaved) -> Unsaved:
    """The earlier of two 'not saved since' marks (a failed write, and events since it)."""
    return a if a.first_seq <= b.first_seq else b


def namespace_of(subject: str) -> str | None:
    """``cfg.event.<ns>.<type…>`` → ``<ns>``; None for anything a namespace's reader (filter
    ``cfg.event.<ns>.>``) would not see."""
    tokens: Sequence[str] = subject.split(".", 3)
    if len(tokens) < 4 or tokens[0] != "cfg" or tokens[1] != "event":
        return None
    try:
        return check_name(tokens[2], "namespace")
    except InvalidName:
        return None
