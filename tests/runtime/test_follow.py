"""``Follower`` against a real nats-server that is killed and restarted, or loses the consumer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import nats.errors
import nats.js.errors
import pytest
from nats.js.api import DeliverPolicy, StreamConfig

from confbus.procs.nats import NatsServer
from confbus.runtime.bus import Bus, connect
from confbus.runtime.follow import Follower
from tests.helpers import eventually, restart_nats

pytestmark = pytest.mark.anyio

STREAM = "FOLLOWED"


@pytest.fixture
async def sbus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    b = await connect(nats_server.url, name="test-follow")
    await b.js.add_stream(StreamConfig(name=STREAM, subjects=["f.>"]))
    try:
        yield b
    finally:
        await b.close()


async def publish(bus: Bus, subject: str, data: bytes) -> int:
    """Publish once the stream takes it (JetStream answers 503 while a restarted server
    recovers its streams)."""

    async def attempt() -> int | None:
        try:
            return (await bus.js.publish(subject, data, timeout=1.0)).seq
        except (nats.errors.Error, nats.js.errors.Error):
            return None

    return await eventually(attempt, timeout=20, what=f"a publish to {subject}")


async def test_resumes_after_the_last_message_as_soon_as_the_server_is_back(
    sbus: Bus, nats_server: NatsServer
) -> None:
    for i in range(1, 4):
        await publish(sbus, "f.a", b"%d" % i)
    changes: list[bool] = []
    async with Follower(sbus, STREAM, "f.>", start_seq=2, on_live=changes.append) as f:
        with anyio.fail_after(5):
            assert [(await f.next()).data for _ in range(2)] == [b"2", b"3"]
        assert f.live

        back = await restart_nats(nats_server, sbus)
        assert not f.live  # told of the reconnect: its consumer may be gone
        seq = await publish(sbus, "f.a", b"4")
        with anyio.fail_after(5):
            msg = await f.next()
        delivered_after = time.monotonic() - back

    assert (msg.data, msg.metadata.sequence.stream) == (b"4", seq)  # nothing twice, no gap
    assert changes == [True, False, True]
    # nats-py's ordered consumer came back only when its heartbeat check fired: 10-20 s.
    print(f"next message {delivered_after:.3f}s after the reconnect")
    assert delivered_after < 3.0


async def test_a_reconnect_that_left_the_consumer_in_place_keeps_it(sbus: Bus) -> None:
    # As when our connection moves to another cluster node and the consumer lives on a third:
    # creating a new one would need the cluster's meta leader, which may be electing.
    changes: list[bool] = []
    async with Follower(sbus, STREAM, "f.>", on_live=changes.append) as f:
        await publish(sbus, "f.a", b"1")
        with anyio.fail_after(5):
            assert (await f.next()).data == b"1"
        sbus.note_reconnected()  # told of a reconnect; the server still has the consumer
        assert not f.live
        await publish(sbus, "f.a", b"2")
        with anyio.fail_after(5):
            assert (await f.next()).data == b"2"
        assert f.live and f.created == 1
    assert changes == [True, False, True]


async def test_a_consumer_lost_under_a_live_connection_is_recreated_from_the_next_message(
    sbus: Bus,
) -> None:
    async with Follower(sbus, STREAM, "f.>", heartbeat_s=0.2) as f:
        await publish(sbus, "f.a", b"1")
        with anyio.fail_after(5):
            assert (await f.next()).data == b"1"
        # As when the cluster node holding it dies while our connection is to another one.
        (info,) = await sbus.js.consumers_info(STREAM)
        await sbus.js.delete_consumer(STREAM, info.name)
        await publish(sbus, "f.a", b"2")
        with anyio.fail_after(5):
            msg = await f.next()
        assert msg.data == b"2"
        assert msg.metadata.consumer != info.name  # from the consumer that replaced it


async def test_new_only_does_not_skip_what_came_while_the_consumer_was_being_replaced(
    sbus: Bus, nats_server: NatsServer
) -> None:
    await publish(sbus, "f.a", b"old")
    async with Follower(sbus, STREAM, "f.>", deliver=DeliverPolicy.NEW) as f:
        await restart_nats(nats_server, sbus)
        await publish(sbus, "f.a", b"new")  # maybe before the consumer is back
        with anyio.fail_after(10):
            assert (await f.next()).data == b"new"


async def test_a_backlog_bigger_than_the_flow_control_window_arrives_whole_and_in_order(
    sbus: Bus,
) -> None:
    payload = b"x" * 65536
    n = 400  # 25 MiB: the server waits for flow-control answers along the way
    for i in range(n):
        await sbus.js.publish("f.big", payload + b"%d" % i)
    async with Follower(sbus, STREAM, "f.big") as f:
        assert f.pending_at_start == n
        with anyio.fail_after(60):
            for i in range(n):
                msg = await f.next()
                assert msg.data.endswith(b"x%d" % i), i
                if i % 50 == 0:
                    await anyio.sleep(0.05)  # a slow reader: the server must wait for it
        assert f.created == 1  # no gap, no reset
