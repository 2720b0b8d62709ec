"""Calling again what is safe to call again, while the bus comes back.

A broker restarting, a stream electing a leader, a service not yet resubscribed after its own
reconnect: for a second or a few, calls get no responders, a 503 or a timeout — ``Unavailable``.
A call that is safe to repeat (a change published under its message id, a read) is made again,
with backoff, until the caller's deadline; the final error says what was tried, how often and
for how long. Anything else (``Permanent``: the request itself is wrong) is raised at once.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
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


async def retry_unavailable(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    deadline: float = math.inf,
    backoff: Backoff = BACKOFF,
) -> T:
    """``await call()`` until it does not raise ``Unavailable``, or ``deadline`` (monotonic)
    would pass before the next try; then the last ``Unavailable``, saying so. With no deadline
    the caller's cancel scope bounds it."""
    started = time.monotonic()
    tries = 0
    while True:
        tries += 1
        try:
            return await call()
        except Unavailable as exc:
            delay = backoff.delay(tries)
            if time.monotonic() + delay >= deadline:
                spent = time.monotonic() - started
                raise Unavailable(
                    f"{what}: tried {tries} times over {spent:.1f}s; last: {exc}"
                ) from exc
            log.info("retrying", extra={"what": what, "error": str(exc), "delay_s": delay})
            await anyio.sleep(delay)
