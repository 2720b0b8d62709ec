"""``Puller`` against a real nats-server: a lone message is returned when it arrives, not when
the pull's timeout runs out; what queued up comes as one batch, capped; an idle pull ends
empty. (The latency tail of nats-py's ``fetch`` it replaces shows in the benchmarks: publish →
all applied.)"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from confbus.runtime.bus import Bus
from confbus.runtime.pull import Puller
from confbus.schemas.streams import CFG_EVENTS
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

LONG = 30.0  # a pull's timeout far beyond the test's own bound


@pytest.fixture
async def puller(bus: Bus) -> AsyncIterator[Puller]:
    """A started ``Puller`` of the durable consumer ``t`` of every event; stopped after."""
    await bus.js.add_consumer(
        CFG_EVENTS.name,
        ConsumerConfig(
            durable_name="t", ack_policy=AckPolicy.EXPLICIT, filter_subject="cfg.event.>"
        ),
    )
    started = await Puller(bus.nc, CFG_EVENTS.name, "t").start()
    try:
        yield started
    finally:
        await started.stop()


async def _publish(bus: Bus, n: int) -> None:
    for i in range(n):
        await bus.publish("cfg.event.app.x", f"m{i}".encode())


async def test_a_lone_message_on_an_idle_consumer_is_returned_when_it_arrives(
    bus: Bus, puller: Puller
) -> None:
    got: list[bytes] = []

    async def pull() -> None:
        got.extend(m.data for m in await puller.fetch(50, timeout=LONG))

    async def waiting() -> bool:  # the server holds the pull: the consumer is idle
        info = await bus.js.consumer_info(CFG_EVENTS.name, "t")
        return bool(info.num_waiting)

    with anyio.fail_after(5):  # a pull that waited for a whole batch would take 30 s
        async with anyio.create_task_group() as tg:
            tg.start_soon(pull)
            await eventually(waiting, what="the pull waiting on the server")
            await bus.publish("cfg.event.app.x", b"one")
    assert got == [b"one"]


async def test_queued_messages_come_as_one_batch_and_an_empty_pull_ends(
    bus: Bus, puller: Puller
) -> None:
    await _publish(bus, 10)
    with anyio.fail_after(5):
        msgs = await puller.fetch(50, timeout=LONG)
    assert [m.data for m in msgs] == [f"m{i}".encode() for i in range(10)]
    for m in msgs:
        await m.ack()
    with anyio.fail_after(5):
        assert await puller.fetch(50, timeout=0.3) == []


async def test_a_batch_is_capped(bus: Bus, puller: Puller) -> None:
    await _publish(bus, 7)
    with anyio.fail_after(5):
        first = await puller.fetch(3, timeout=LONG)
        second = await puller.fetch(50, timeout=LONG)
    assert [m.data for m in first] == [b"m0", b"m1", b"m2"]
    assert [m.data for m in second] == [f"m{i}".encode() for i in range(3, 7)]
