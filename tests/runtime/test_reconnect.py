"""What a broker restart costs a connection's requests and a durable consumer, against a real
nats-server SIGKILLed and started again on its port and store."""

from __future__ import annotations

import time
from collections.abc import Sequence

import anyio
import nats.errors
import pytest
from nats.aio.msg import Msg

from confbus.procs.nats import NatsServer
from confbus.runtime.bus import Bus, connect
from confbus.schemas import subjects
from confbus.schemas.changes import ChangeProposed
from confbus.schemas.streams import CFG_CHANGES
from tests.helpers import eventually, restart_nats
from tests.runtime.test_consumer import make_consumer

pytestmark = pytest.mark.anyio


async def test_a_request_in_flight_when_the_broker_dies_fails_at_once(
    nats_server: NatsServer, bus: Bus
) -> None:
    asker = await connect(nats_server.url, name="asker")

    asked = anyio.Event()

    async def slow(msg: Msg) -> None:
        asked.set()
        await anyio.sleep(3.0)  # the answer would come long after the kill
        await msg.respond(b"late")

    await bus.nc.subscribe("slow", cb=slow)
    await bus.nc.flush()
    failed = anyio.Event()
    took: list[float] = []

    async def ask() -> None:
        started = time.monotonic()
        with pytest.raises(nats.errors.TimeoutError):
            await asker.nc.request("slow", b"?", timeout=30)
        took.append(time.monotonic() - started)
        failed.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            with anyio.fail_after(10):
                await asked.wait()  # the request is out, its answer 3 s away
            nats_server.kill()
            with anyio.fail_after(10):
                await failed.wait()
    finally:
        nats_server.restart()
        await asker.close()
    # Not after its 30 s: its reply could only ever have gone to the lost connection.
    assert took[0] < 2.0


async def test_a_pull_waiting_when_the_broker_restarts_is_made_again_at_once(
    nats_server: NatsServer, bus: Bus
) -> None:
    got: list[str] = []
    arrived = anyio.Event()

    async def handler(batch: Sequence[object]) -> None:
        got.extend(d.value.change_id for d in batch)  # type: ignore[attr-defined]
        arrived.set()

    # A pull waits up to 20 s for a message: without the reconnect waking it, the one lost
    # with the old server would be waited for that long.
    consumer = make_consumer(bus, handler, fetch_timeout_s=20.0)
    async with anyio.create_task_group() as tg:
        await tg.start(consumer.run)

        async def pulling() -> bool:  # the consumer's long pull is out, waiting
            info = await bus.js.consumer_info(CFG_CHANGES.name, consumer.durable)
            return bool(info.num_waiting)

        await eventually(pulling, timeout=10)
        await restart_nats(nats_server, bus, timeout=10)
        change = ChangeProposed(namespace="ns1", change_id="after", content=b"{}")

        async def published() -> bool:
            try:
                await bus.publish(subjects.change("ns1"), change, msg_id="ns1:after")
            except Exception:  # JetStream still recovering its streams: again
                return False
            return True

        await eventually(published, timeout=10)
        reconnected_at = time.monotonic()
        with anyio.fail_after(10):
            await arrived.wait()
        took = time.monotonic() - reconnected_at
        tg.cancel_scope.cancel()
    assert got == ["after"]
    assert took < 3.0
