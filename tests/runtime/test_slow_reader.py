"""A reader of a long backlog that is busy between messages is not cut off as a slow consumer.

JetStream lets a flow-controlled push consumer (every ordered consumer: ``confbus replay``, an
agent catching up on ``CFG_TXN``, the historian, ``status --at``) run 32 MiB ahead of its client.
A server that buffers less than that for one client cuts a client off when it reads a long
backlog while busy (benchmarks/timetravel found it at a million events); the embedded server's
``max_pending`` is above that window.
"""

from __future__ import annotations

import time

import anyio
import pytest
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from confbus.procs.nats import NatsServer
from confbus.runtime.bus import Bus
from confbus.schemas.streams import CFG_EVENTS

pytestmark = pytest.mark.anyio

MESSAGES = 800
BODY = b"x" * 60_000  # 48 MB in all: more than the flow-control window


async def test_a_busy_reader_of_a_long_backlog_is_not_cut_off(
    bus: Bus, nats_server: NatsServer
) -> None:
    for i in range(MESSAGES):
        await bus.js.publish(f"cfg.event.web.blob{i % 7}", BODY)
    seen = 0
    done = anyio.Event()

    async def on_msg(msg: Msg) -> None:
        nonlocal seen
        busy_until = time.perf_counter() + 0.003
        while time.perf_counter() < busy_until:  # CPU-bound work (a fold, say): meanwhile
            pass  # the event loop, and so the socket, is not served
        seen += 1
        if msg.metadata.sequence.stream >= MESSAGES:
            done.set()

    sub = await bus.js.subscribe(
        "cfg.event.web.>",
        stream=CFG_EVENTS.name,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        cb=on_msg,
    )
    try:
        with anyio.fail_after(120):
            await done.wait()
    finally:
        await sub.unsubscribe()
    log = (nats_server.data_dir / "nats-server.log").read_text(errors="replace")
    assert "Slow Consumer" not in log, log[-2000:]
    assert seen == MESSAGES  # read once each: no reset of the consumer, no repeat
