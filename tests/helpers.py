"""Waiting on events instead of sleeping: every wait has a deadline."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 10.0,
    every: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns something truthy, or fail after ``timeout``."""
    with anyio.fail_after(timeout, shield=False):
        while True:
            value = await probe()
            if value:
                return value
            await anyio.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")  # pragma: no cover
