"""When an agent's next heartbeat goes out."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

# Each wait between heartbeats is 80–100 % of the interval, at random (``heartbeat_delay``).
HEARTBEAT_SPREAD = 0.2


def heartbeat_delay(interval_s: float, draw: Callable[[], float] = random.random) -> float:
    """The wait before the next heartbeat. Never longer than the interval — what a heartbeat
    advertises and what the distributor judges liveness by — and random within its last fifth:
    agents started together (a fleet rebooted at once, or one process hosting many agents)
    would otherwise beat together for ever, every beat a burst of work for their hosts, the bus
    and the distributor at the same instant."""
    return interval_s * (1.0 - HEARTBEAT_SPREAD * draw())


class BeatTimer:
    """The heartbeat loop's wait: until the next beat is due, or sooner when ``now`` is
    called (readiness to vote changed, another agent claimed the node id). A ``now`` while the
    loop is not waiting — between ``begin`` and ``wait``, the beat being sent — makes the next
    ``wait`` return at once.

    One timer handle and one future per wait, on the asyncio loop the agent runs on (nats-py
    runs only there). ``anyio.move_on_after`` around an ``anyio.Event`` cost several times as
    much per beat — a cancel scope, an event, and at every expiry a cancellation raised
    through the wait and caught — and a host of 250 agents waits ~125 times a second.
    Cancelling the waiting task (its task group stopping) cancels the wait as any await."""

    __slots__ = ("_early", "_waiting")

    def __init__(self) -> None:
        self._waiting: asyncio.Future[None] | None = None
        self._early = False

    def now(self) -> None:
        """Beat now, not at the next interval."""
        waiting = self._waiting
        if waiting is None:
            self._early = True
        elif not waiting.done():
            waiting.set_result(None)

    def begin(self) -> None:
        """A beat is being sent: a ``now`` from here on is answered by the next one."""
        self._early = False

    async def wait(self, delay_s: float) -> None:
        if self._early:
            self._early = False
            return
        loop = asyncio.get_running_loop()
        self._waiting = waiting = loop.create_future()
        due = loop.call_later(delay_s, _wake, waiting)
        try:
            await waiting
        finally:
            due.cancel()
            self._waiting = None


def _wake(waiting: asyncio.Future[None]) -> None:
    if not waiting.done():
        waiting.set_result(None)
