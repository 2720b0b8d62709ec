"""Awaiting independent requests at once, with plain exceptions.

``anyio``'s task groups raise an ``ExceptionGroup``; callers that handle one request's
``NotFound`` want that exception itself. ``gather`` runs its awaitables concurrently, waits for
all of them (each has its own timeout), and returns their results in order — or raises the
exception of the first one (in argument order) that failed."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar, overload

import anyio

T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")


@overload
async def gather(a: Awaitable[T1], b: Awaitable[T2], /) -> tuple[T1, T2]: ...
@overload
async def gather(a: Awaitable[T1], b: Awaitable[T2], c: Awaitable[T3], /) -> tuple[T1, T2, T3]: ...
async def gather(*aws: Awaitable[Any]) -> tuple[Any, ...]:
    outcomes = await _all(aws)
    for out in outcomes:
        if isinstance(out, _Failed):
            raise out.exc
    return tuple(outcomes)


async def settle(a: Awaitable[T1], b: Awaitable[T2], /) -> tuple[T1 | Exception, T2 | Exception]:
    """Both at once (``a`` started first), each one's result or exception: for a caller that
    must undo what one did when the other failed."""
    first, second = (o.exc if isinstance(o, _Failed) else o for o in await _all((a, b)))
    return first, second


class _Failed:
    """An exception an awaitable raised (a result may itself be an exception object)."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


async def _all(aws: Sequence[Awaitable[Any]]) -> list[Any]:
    """Run ``aws`` concurrently, started in argument order; each one's result or ``_Failed``."""
    outcomes: list[Any] = [None] * len(aws)

    async def run(i: int, aw: Awaitable[Any]) -> None:
        try:
            outcomes[i] = await aw
        except Exception as exc:  # handed back, not raised into the task group
            outcomes[i] = _Failed(exc)

    async with anyio.create_task_group() as tg:
        for i, aw in enumerate(aws):
            tg.start_soon(run, i, aw)
    return outcomes
