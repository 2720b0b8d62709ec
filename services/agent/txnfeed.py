"""One reading of ``CFG_TXN`` per agent host, fanned out to its agents (docs/design.md §5.5).

A host (``confbus.agent.host``; a lone ``confbus agent`` is a host of one) reads each namespace's
transactions once — one ``Follower``, so one server-side consumer and one copy of each record in
memory — and hands every record to each of its agents that follows the namespace, through a
``Tap`` of the agent's own. What was the agent's stays the agent's:

- **its position**: a tap starts at the agent's own resume point (the sequence after the one it
  persisted, or the stream's end for an agent with no state) and is handed only the records
  from there on, in stream order, each once;
- **catch-up**: a tap that starts behind what the feed has handed out already (an agent
  restarted on older state, one that joins the host late) rewinds the feed to its start
  (``Follower.rewind``): the feed reads the stream again from there, and the taps that had
  those records already skip them;
- **readiness**: a tap is ``live`` while the feed's consumer is in place, and its ``on_live``
  hears each change, as with a follower of its own (an agent's heartbeat says it is ready to
  vote only then).

The feed's task only moves records from the follower into the taps' queues (no await between
taking a record and queueing it for every tap), so a slow agent delays nobody else; each agent
handles its records in its own task, as before. A feed with no taps left stops, and its
consumer goes with it.

The stream's end, which an agent with no state starts from (``confbus.agent.instance``), is
asked once for all the agents of a host that ask at the same time (``TxnReader.stream_end``):
a host of 500 starting together asked 500 times, and under load most of them timed out and
read the whole history instead.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup
from nats.aio.msg import Msg

from confbus.agent.instance import txn_stream_end
from confbus.runtime.bus import Bus
from confbus.runtime.follow import Follower
from confbus.runtime.opening import OpenClose
from confbus.schemas import subjects
from confbus.schemas.streams import CFG_TXN

log = logging.getLogger("confbus.agent")


@dataclass(eq=False)
class Tap(OpenClose):
    """One agent's reading of one namespace's transactions from its host's feed:
    ``async with reader.tap(ns, start_seq) as tap: msg = await tap.next()``."""

    reader: TxnReader
    namespace: str
    start_seq: int  # the first stream sequence this agent wants
    on_live: Callable[[bool], None] | None = None
    _feed: _Feed | None = field(default=None, init=False)
    _queue: deque[Msg] = field(default_factory=deque, init=False)
    _want: int = field(default=0, init=False)  # the next sequence to queue (older: seen)
    _arrived: anyio.Event | None = field(default=None, init=False)

    @property
    def live(self) -> bool:
        """A consumer is in place for this tap's feed: a record published now reaches it."""
        return self._feed is not None and self._feed.follower.live

    async def open(self) -> None:
        self._want = self.start_seq
        self._feed = await self.reader._join(self)

    async def close(self) -> None:
        if self._feed is not None:
            self.reader._leave(self._feed, self)  # (``live`` says what it last was)
        self._queue.clear()

    async def next(self) -> Msg:
        """The next record of the namespace from ``start_seq`` on, in stream order, each once."""
        while not self._queue:
            self._arrived = anyio.Event()
            await self._arrived.wait()
        return self._queue.popleft()

    def _put(self, msg: Msg, seq: int) -> None:
        if seq < self._want:
            return  # before this agent's start, or queued already (the feed was rewound)
        self._want = seq + 1
        self._queue.append(msg)
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None


@dataclass(eq=False)
class _Feed:
    follower: Follower
    taps: list[Tap] = field(default_factory=list)
    opened: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None  # opening failed (the stream is missing)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)

    def add(self, tap: Tap) -> None:
        self.taps.append(tap)
        self.follower.rewind(tap.start_seq)  # nothing if the feed is not past it yet

    def on_live(self, live: bool) -> None:
        for tap in self.taps:
            if tap.on_live is not None:
                tap.on_live(live)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        with self.scope:
            try:
                await self.follower.open()
            except BaseException as exc:
                self.error = exc
                raise
            finally:
                self.opened.set()
            try:
                task_status.started()
                while True:
                    msg = await self.follower.next()
                    seq = msg.metadata.sequence.stream
                    for tap in self.taps:  # no await in between: every tap, in order
                        tap._put(msg, seq)
            finally:
                with anyio.CancelScope(shield=True):
                    await self.follower.close()


@dataclass(eq=False)
class _Asking:
    done: anyio.Event = field(default_factory=anyio.Event)
    end: int = 0  # 0 also when asking failed: the whole history is read then


@dataclass(eq=False)
class TxnReader:
    """A host's reading of ``CFG_TXN``: one feed per namespace its agents follow, its tasks in
    ``tg`` (the host's), each started by the first tap of its namespace."""

    bus: Bus
    tg: TaskGroup
    feeds: dict[str, _Feed] = field(default_factory=dict, init=False)
    _asking: _Asking | None = field(default=None, init=False)  # the stream's end, in flight

    async def stream_end(self) -> int:
        """``txn_stream_end``, one question for every agent that asks while it is out: an
        answer to a question asked before an agent's is never past the end that agent would
        have been told, so it misses no record (it may read a few more)."""
        asking = self._asking
        if asking is None:
            self._asking = asking = _Asking()
            try:
                asking.end = await txn_stream_end(self.bus)
            finally:
                self._asking = None
                asking.done.set()
        else:
            await asking.done.wait()
        return asking.end

    def tap(
        self, namespace: str, start_seq: int, on_live: Callable[[bool], None] | None = None
    ) -> Tap:
        return Tap(self, namespace, max(1, start_seq), on_live)

    async def _join(self, tap: Tap) -> _Feed:
        feed = self.feeds.get(tap.namespace)
        if feed is None:
            follower = Follower(
                self.bus, CFG_TXN.name, subjects.txn_of(tap.namespace), start_seq=tap.start_seq
            )
            feed = self.feeds[tap.namespace] = _Feed(follower)
            follower.on_live = feed.on_live
            feed.add(tap)
            try:
                await self.tg.start(feed.run)
            except BaseException:
                self._leave(feed, tap)
                raise
        else:
            if tap.start_seq < feed.follower.next_seq:
                log.info(
                    "reading transactions again for an agent behind the others",
                    extra={"namespace": tap.namespace, "from_seq": tap.start_seq},
                )
            feed.add(tap)
            await feed.opened.wait()
            if feed.error is not None:
                self._leave(feed, tap)
                raise feed.error
        if tap.on_live is not None and feed.follower.live:
            tap.on_live(True)
        return feed

    def _leave(self, feed: _Feed, tap: Tap) -> None:
        if tap in feed.taps:
            feed.taps.remove(tap)
        if not feed.taps:
            feed.scope.cancel()
            if self.feeds.get(tap.namespace) is feed:
                del self.feeds[tap.namespace]
