"""Awaiting independent requests at once, with plain exceptions.

``anyio``'s task groups raise an ``ExceptionGroup``; callers that handle one request's
``NotFound`` want that exception itself. ``gather`` runs its awaitables concurrently, waits for
all of them (each has its own timeout), and returns their results in order — or raises the
exception of the first one (in argument order) that failed."""

from __future__ import annotations

from collections.abc import Awaitable
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
    results: list[Any] = [None] * len(aws)
    errors: list[Exception | None] = [None] * len(aws)

    async def run(i: int, aw: Awaitable[Any]) -> None:
        try:
            results[i] = await aw
        except Exception as exc:  # re-raised below, in argument order
            errors[i] = exc

    async with anyio.create_task_group() as tg:
        for i, aw in enumerate(aws):
            tg.start_soon(run, i, aw)
    for exc in errors:
        if exc is not None:
            raise exc
    return tuple(results)


async def settle(a: Awaitable[T1], b: Awaitable[T2], /) -> tuple[T1 | Exception, T2 | Exception]:
    """Both at once, each one's result or exception (for a caller that must undo what one
    did when the other failed)."""
    results: list[Any] = [None, None]

    async def run(i: int, aw: Awaitable[Any]) -> None:
        try:
            results[i] = await aw
        except Exception as exc:
            results[i] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, 0, a)
        tg.start_soon(run, 1, b)
    return results[0], results[1]
