"""Calling again what is safe to call again, while the bus comes back.

A broker restarting, a stream electing a leader, a service not yet resubscribed after its own
reconnect: for a second or a few, calls get no responders, a 503 or a timeout — ``Unavailable``.
A call that is safe to repeat (a change published under its message id, a read) is made again,
with backoff, until the caller's deadline; the final error says what was tried, how often and
for how long. Anything else (``Permanent``: the request itself is wrong) is raised at once.

This is the one retry policy: ``confbus.runtime.api.call`` applies it to every request/reply
call as the operation's declaration allows (``Operation.retry_safe``), and the client's
publish and stream reads use it directly. How long to keep trying is the caller's budget:
a command's ``--timeout`` is set once for everything it calls (``budget``).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

import anyio

from confbus.runtime.errors import Unavailable

log = logging.getLogger("confbus.retry")

T = TypeVar("T")


@dataclass
class Backoff:
    """Exponential backoff with full jitter and a cap (AWS architecture blog)."""

    base_s: float = 0.2
    cap_s: float = 30.0

    def ceiling(self, attempts: int) -> float:
        """The wait after ``attempts`` tries without jitter: ``base_s`` doubling, ``cap_s`` at
        most (for a schedule that must be the same wherever it is computed)."""
        return min(self.cap_s, self.base_s * 2.0 ** max(0, attempts - 1))

    def delay(self, attempts: int) -> float:
        ceiling = self.ceiling(attempts)
        return random.uniform(ceiling / 2, ceiling)


BACKOFF = Backoff(base_s=0.1, cap_s=2.0)

# The monotonic time by which the work under way must be done (a command's --timeout): calls
# made inside ``budget`` keep retrying until then, unless told otherwise.
_DEADLINE: ContextVar[float] = ContextVar("confbus_retry_deadline", default=math.inf)


@contextmanager
def budget(seconds: float) -> Iterator[float]:
    """Calls made inside may retry for ``seconds`` from now in all (never past a budget
    around this one); yields the deadline (monotonic)."""
    deadline = min(_DEADLINE.get(), time.monotonic() + seconds)
    token = _DEADLINE.set(deadline)
    try:
        yield deadline
    finally:
        _DEADLINE.reset(token)


def budget_deadline() -> float:
    """The deadline (monotonic) of the ``budget`` around the caller; ``inf`` outside one."""
    return _DEADLINE.get()


def _retry_all(exc: Unavailable) -> str:
    return ""


async def retry_unavailable(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    deadline: float = math.inf,
    backoff: Backoff = BACKOFF,
    refuse: Callable[[Unavailable], str] = _retry_all,
) -> T:
    """``await call()`` until it does not raise ``Unavailable``, or ``deadline`` (monotonic)
    would pass before the next try; then the last ``Unavailable``, saying so. With no deadline
    the caller's cancel scope bounds it.

    ``refuse`` says why an ``Unavailable`` must not be retried (an act that may have been
    carried out, where a repeat could act twice): that error is raised at once, saying so.
    The final error's cause is what the last try ran into (a NATS error), as a single try's."""
    started = time.monotonic()
    tries = 0
    while True:
        tries += 1
        try:
            return await call()
        except Unavailable as exc:
            why_not = refuse(exc)
            if why_not:
                raise Unavailable(f"{exc} (not retried: {why_not})") from (exc.__cause__ or exc)
            delay = backoff.delay(tries)
            if time.monotonic() + delay >= deadline:
                if tries == 1 and deadline - started <= 0:
                    raise  # no budget to retry at all: the error as it is
                spent = time.monotonic() - started
                raise Unavailable(
                    f"{what}: tried {tries} times over {spent:.1f}s; last: {exc}"
                ) from (exc.__cause__ or exc)
            log.info("retrying", extra={"what": what, "error": str(exc), "delay_s": delay})
            await anyio.sleep(delay)
