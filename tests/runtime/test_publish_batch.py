"""``Bus.publish_batch`` against a real nats-server: a batch lands whole, once, in order — also
when it repeats a message id the stream holds already (a redelivery), and on a stream that
refuses atomic batches."""

from __future__ import annotations

import pytest
from nats.js.api import StreamConfig

from confbus.runtime import bus as bus_module
from confbus.runtime.bus import Bus, Outgoing
from confbus.runtime.errors import InvalidInput
from confbus.schemas.streams import CFG_EVENTS
from tests.e2e.helpers import read_messages

pytestmark = pytest.mark.anyio


async def _bodies(bus: Bus, stream: str) -> list[bytes]:
    return [m.data for m in await read_messages(bus, stream, ">")]


def _items(prefix: str, n: int) -> list[Outgoing]:
    return [
        Outgoing(f"cfg.event.app.t{i % 3}", f"{prefix}{i}".encode(), f"{prefix}{i}")
        for i in range(n)
    ]


async def test_a_batch_lands_whole_and_in_order(bus: Bus) -> None:
    results = await bus.publish_batch(_items("a", 50))
    assert results == [None] * 50
    assert await _bodies(bus, CFG_EVENTS.name) == [f"a{i}".encode() for i in range(50)]


async def test_a_batch_repeating_a_stored_id_stores_the_rest_once(bus: Bus) -> None:
    await bus.publish("cfg.event.app.t1", b"a7", msg_id="a7")  # announced before a crash
    results = await bus.publish_batch(_items("a", 10))
    assert results == [None] * 10
    bodies = await _bodies(bus, CFG_EVENTS.name)
    assert sorted(bodies) == sorted(f"a{i}".encode() for i in range(10))  # a7 once
    # and the same batch again (a second redelivery) adds nothing
    assert await bus.publish_batch(_items("a", 10)) == [None] * 10
    assert len(await _bodies(bus, CFG_EVENTS.name)) == 10


async def test_batches_larger_than_the_server_limit_are_split(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bus_module, "ATOMIC_BATCH_MAX", 4)
    assert await bus.publish_batch(_items("b", 10)) == [None] * 10
    assert await _bodies(bus, CFG_EVENTS.name) == [f"b{i}".encode() for i in range(10)]


async def test_a_stream_without_atomic_batches_gets_each_message(bus: Bus) -> None:
    await bus.js.add_stream(StreamConfig(name="OLD", subjects=["old.>"]))
    items = [Outgoing(f"old.{i}", f"m{i}".encode(), f"m{i}") for i in range(5)]
    assert await bus.publish_batch(items) == [None] * 5
    assert sorted(await _bodies(bus, "OLD")) == sorted(f"m{i}".encode() for i in range(5))


async def test_an_item_that_cannot_be_stored_is_reported_alone(bus: Bus) -> None:
    items = [*_items("c", 3), Outgoing("nowhere.at.all", b"x", "x")]
    results = await bus.publish_batch(items)
    assert results[:3] == [None] * 3
    assert results[3] is not None
    assert sorted(await _bodies(bus, CFG_EVENTS.name)) == [b"c0", b"c1", b"c2"]


async def test_a_message_larger_than_the_stream_holds_is_refused_for_good(bus: Bus) -> None:
    """Permanent, said with the subject and size — not reported as the bus not answering."""
    await bus.js.add_stream(StreamConfig(name="SMALL", subjects=["small.>"], max_msg_size=100))
    with pytest.raises(InvalidInput, match=r"small\.one is 101 bytes: more than it may hold"):
        await bus.publish("small.one", b"x" * 101, msg_id="too-big")
    assert await bus.publish("small.one", b"x" * 50, msg_id="fits")  # headers count too
