"""Epoch markers: once a successor's marker is stored, the stream refuses the prepares of the
older epoch (docs/design.md §4.1) — on one nats-server and on a 3-node cluster with R3 streams,
whose per-subject checks run on the stream leader."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats.js.errors
import pytest
from prometheus_client import CollectorRegistry

from confbus.coordinator.epochs import PrepareRefused
from confbus.coordinator.head import Heads
from confbus.coordinator.metrics import CoordinatorMetrics
from confbus.coordinator.twophase import Coordinator
from confbus.runtime.bus import Bus, connect
from confbus.runtime.codec import encode
from confbus.runtime.errors import Fenced
from confbus.schemas import subjects
from confbus.schemas.streams import CFG_TXN
from confbus.schemas.txn import EpochMarker, Prepare, TxnHead, decode_epoch_marker
from tests.faults.cluster import NatsCluster, provision_r3

pytestmark = pytest.mark.anyio

NS = "web"
SHA = "0" * 64


@pytest.fixture
async def r3_bus(tmp_path: Path) -> AsyncIterator[Bus]:
    cluster = NatsCluster(tmp_path / "cluster").start()
    try:
        await provision_r3(cluster)
        bus = await connect(cluster.url, name="test")
        try:
            yield bus
        finally:
            await bus.close()
    finally:
        cluster.stop()


@pytest.fixture(params=["bus", "r3_bus"])
def stream_bus(request: pytest.FixtureRequest) -> Bus:
    """One nats-server, or a 3-node cluster with R3 streams."""
    bus: Bus = request.getfixturevalue(request.param)
    return bus


async def coordinator(bus: Bus, name: str) -> Coordinator:
    return Coordinator(
        bus, await Heads.open(bus), name, CoordinatorMetrics.create(CollectorRegistry())
    )


async def begin(coord: Coordinator, txid: str) -> TxnHead:
    """``coord`` leads ``NS`` and writes its transaction on the head: what ``switch`` does
    before it publishes the prepare."""
    head = await coord.lead(NS)
    value = TxnHead(
        namespace=NS,
        epoch=head.value.epoch,
        leader=coord.instance,
        txid=txid,
        state="preparing",
        version=1,
        sha256=SHA,
        participants=["n1"],
        timeout_s=1.0,
    )
    await coord.heads.cas(head, value)
    return value


def prepare_of(head: TxnHead) -> bytes:
    assert head.txid is not None
    return encode(
        Prepare(
            txid=head.txid,
            namespace=NS,
            version=1,
            sha256=SHA,
            format="json",
            content=b"{}",
            participants=["n1"],
            epoch=head.epoch,
            timeout_s=1.0,
        )
    )


async def publish(coord: Coordinator, head: TxnHead) -> None:
    assert head.txid is not None
    await coord.markers.publish_prepare(
        NS,
        head.epoch,
        subjects.txn_prepare(NS, head.txid),
        prepare_of(head),
        msg_id=f"{head.txid}:prepare",
    )


async def stored(bus: Bus, subject: str) -> int:
    """How many messages the stream holds on ``subject``."""
    info = await bus.js.stream_info(CFG_TXN.name, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def test_a_zombies_prepare_is_refused_once_its_successor_leads(stream_bus: Bus) -> None:
    bus = stream_bus
    zombie = await coordinator(bus, "zombie")
    successor = await coordinator(bus, "successor")
    mine = await begin(zombie, "e1-zombie")
    # Paused here, between the head's compare-and-set and the prepare's publish; meanwhile the
    # successor takes the namespace over (epoch 2, its marker) and aborts the transaction.
    await successor.lead(NS)
    with pytest.raises(PrepareRefused) as refused:
        await publish(zombie, mine)
    assert (refused.value.epoch, refused.value.newer) == (1, 2)
    assert await stored(bus, subjects.txn_prepare(NS, "e1-zombie")) == 0
    marker = await bus.js.get_last_msg(CFG_TXN.name, subjects.txn_epoch(NS))
    assert decode_epoch_marker(marker.data or b"").epoch == 2
    # The successor's own prepares pass; the abort of the zombie's transaction is recorded.
    theirs = await begin(successor, "e2-successor")
    await publish(successor, theirs)
    assert await stored(bus, subjects.txn_prepare(NS, "e2-successor")) == 1
    assert await stored(bus, subjects.txn_decision(NS, "e1-zombie")) == 1


async def test_a_retried_prepare_is_stored_once(stream_bus: Bus) -> None:
    bus = stream_bus
    coord = await coordinator(bus, "c1")
    head = await begin(coord, "e1-retried")
    for _ in range(3):  # its ack lost, say: the same prepare again
        await publish(coord, head)
    assert await stored(bus, subjects.txn_prepare(NS, "e1-retried")) == 1


async def test_markers_only_go_up(stream_bus: Bus) -> None:
    bus = stream_bus
    first = await coordinator(bus, "first")
    second = await coordinator(bus, "second")
    await first.lead(NS)
    await second.lead(NS)  # epoch 2
    # The first, late, opens its epoch again: it finds a newer marker and writes none.
    with pytest.raises(Fenced):
        await first.markers.open(NS, 1)
    # Nor does a marker written over the first one's sequence land.
    with pytest.raises(nats.js.errors.APIError):
        await bus.js.publish(
            subjects.txn_epoch(NS),
            encode(EpochMarker(namespace=NS, epoch=1)),
            headers={"Nats-Expected-Last-Subject-Sequence": "1"},
        )
    assert await stored(bus, subjects.txn_epoch(NS)) == 2
    marker = await bus.js.get_last_msg(CFG_TXN.name, subjects.txn_epoch(NS))
    assert decode_epoch_marker(marker.data or b"").epoch == 2


async def test_an_aged_out_marker_is_opened_again_by_its_leader(bus: Bus) -> None:
    coord = await coordinator(bus, "c1")
    head = await begin(coord, "e1-first")
    await publish(coord, head)
    # Seven days later the marker has aged out of the stream (purged here): the leader's next
    # prepare is refused once, and it writes its epoch's marker again — the head says it leads.
    await bus.js.purge_stream(CFG_TXN.name, subject=subjects.txn_epoch(NS))
    nxt = msgspec.structs.replace(head, txid="e1-second")
    await publish(coord, nxt)
    assert await stored(bus, subjects.txn_prepare(NS, "e1-second")) == 1
    assert await stored(bus, subjects.txn_epoch(NS)) == 1
