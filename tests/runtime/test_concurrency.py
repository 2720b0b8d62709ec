"""``gather``: independent awaitables at once, results in order, plain exceptions; ``settle``:
both at once, each one's result or exception."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from confbus.runtime.concurrency import gather, settle
from confbus.runtime.errors import NotFound

pytestmark = pytest.mark.anyio


async def test_results_come_back_in_order_and_the_calls_overlap() -> None:
    first, second = anyio.Event(), anyio.Event()

    async def a() -> int:
        first.set()
        await second.wait()  # only returns if b runs meanwhile
        return 1

    async def b() -> str:
        await first.wait()
        second.set()
        return "two"

    with anyio.fail_after(5):
        assert await gather(a(), b()) == (1, "two")


async def test_the_first_failure_in_argument_order_is_raised_as_itself() -> None:
    finished: list[str] = []
    broke = anyio.Event()

    async def missing() -> None:
        await broke.wait()  # fails after ``broken`` in time, but comes first in the arguments
        finished.append("missing")
        raise NotFound("version 7 of ns")

    async def broken() -> None:
        finished.append("broken")
        broke.set()
        raise ValueError("later in the arguments")

    async def fine() -> int:
        await broke.wait()
        finished.append("fine")
        return 3

    with anyio.fail_after(5), pytest.raises(NotFound, match="version 7"):
        await gather(missing(), broken(), fine())
    assert sorted(finished) == ["broken", "fine", "missing"]  # every call ran to its end


async def test_settle_hands_back_each_result_or_exception_after_both_ran() -> None:
    first = anyio.Event()

    async def fails() -> int:
        await first.wait()  # overlaps with ``works``
        raise NotFound("version 7 of ns")

    async def works() -> str:
        first.set()
        await anyio.lowlevel.checkpoint()
        return "began"

    with anyio.fail_after(5):
        got, began = await settle(fails(), works())
    assert isinstance(got, NotFound) and began == "began"
