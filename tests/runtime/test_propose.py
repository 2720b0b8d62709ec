"""Publishing a change (``runtime.propose.publish_change``) and the two change streams of a
replicated stack (docs/design.md §3.1): on one nats-server there is only ``CFG_CHANGES``; on a
3-node cluster a change goes to ``CFG_CHANGES_ALT`` when ``CFG_CHANGES``' leader is dead, and
the version-store keeps the two streams (and its consumers of them) led by different servers."""

from __future__ import annotations

import time
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import CollectorRegistry

from confbus.runtime.bus import Bus, connect
from confbus.runtime.propose import FIRST_ACK_S, publish_change
from confbus.schemas.streams import CFG_CHANGES, CFG_CHANGES_ALT
from confbus.version_store.metrics import StoreMetrics
from confbus.version_store.placement import place_once
from confbus.version_store.service import DURABLE
from tests.faults.cluster import NatsCluster, provision_r3, stream_leader
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

NS = "web"


async def test_one_server_has_one_change_stream_and_publishes_there(bus: Bus) -> None:
    with pytest.raises(nats.js.errors.NotFoundError):
        await bus.js.stream_info(CFG_CHANGES_ALT.name)
    ack = await publish_change(bus, NS, b"{}", msg_id="web:c1")
    assert (ack.stream, ack.duplicate) == (CFG_CHANGES.name, None)
    again = await publish_change(bus, NS, b"{}", msg_id="web:c1")  # no ALT to copy it to
    assert (again.stream, again.duplicate) == (CFG_CHANGES.name, True)


async def leaders(bus: Bus, stream: str) -> set[str]:
    info = await bus.js.stream_info(stream)
    consumer = await bus.js.consumer_info(stream, DURABLE)
    assert info.cluster is not None and consumer.cluster is not None
    return {str(info.cluster.leader), str(consumer.cluster.leader)}


async def test_a_dead_stream_leader_does_not_stop_publishes(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path / "cluster").start()
    try:
        await provision_r3(cluster)
        bus = await connect(cluster.url, name="test")
        try:
            for stream in (CFG_CHANGES, CFG_CHANGES_ALT):
                config = ConsumerConfig(durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT)
                await bus.js.add_consumer(stream.name, config)
            metrics = StoreMetrics.create(CollectorRegistry())

            async def apart() -> bool:
                try:
                    await place_once(bus, DURABLE, metrics)
                    first = await leaders(bus, CFG_CHANGES.name)
                    alt = await leaders(bus, CFG_CHANGES_ALT.name)
                except (TimeoutError, nats.errors.Error):
                    return False  # a consumer just created, still electing its leader
                return len(alt) == 1 and not first & alt

            # The ALT stream and its consumer end on one server that leads neither of the others.
            await eventually(apart, timeout=20, every=0.2, what="the change streams led apart")

            # A publish repeated (no outcome came): a duplicate for CFG_CHANGES, copied to ALT.
            assert (await publish_change(bus, NS, b"{}", msg_id="web:c1")).duplicate is None
            again = await publish_change(bus, NS, b"{}", msg_id="web:c1")
            assert (again.stream, again.duplicate) == (CFG_CHANGES.name, True)
            alt_info = await bus.js.stream_info(CFG_CHANGES_ALT.name)
            assert alt_info.state.messages == 1

            # The server leading CFG_CHANGES dies: the next change is taken by ALT at once, not
            # after the raft election (4-9 s).
            dead = await stream_leader(bus, CFG_CHANGES.name)
            cluster.kill(dead)
            started = time.monotonic()
            ack = await publish_change(bus, NS, b"{}", msg_id="web:c2")
            took = time.monotonic() - started
            assert ack.stream == CFG_CHANGES_ALT.name
            assert took < FIRST_ACK_S + 2.0, took  # the wait for CFG_CHANGES, and a reconnect
        finally:
            await bus.close()
    finally:
        cluster.stop()
