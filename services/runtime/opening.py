"""Things used as ``async with thing:`` — ``open()`` on entry, ``close()`` however the block ends.

A class subclasses ``OpenClose`` and says only how it opens and how it closes; the context
manager protocol is written once, here. ``OpenClose`` is a ``Protocol`` so that a contract
(the version store's ``Store``) can extend it too and callers of the contract get
``async with`` from the same declaration.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self


class OpenClose(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
