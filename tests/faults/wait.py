"""Waiting on a condition with a deadline (never a bare sleep as synchronisation)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import anyio

Probe = Callable[[], bool | Awaitable[bool]]


async def _check(probe: Probe) -> bool:
    value = probe()
    if inspect.isawaitable(value):
        value = await value
    return bool(value)


async def until(probe: Probe, timeout: float, *, every: float = 0.1, what: str = "") -> bool:
    """Poll ``probe`` until it is true (True) or ``timeout`` passes (False, or AssertionError
    when ``what`` names the condition)."""
    with anyio.move_on_after(timeout):
        while True:
            if await _check(probe):
                return True
            await anyio.sleep(every)  # poll interval
    if what:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
    return False
