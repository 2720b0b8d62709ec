"""Raising nodes' targets in CFG_STATE (a real nats-server): the two raisers of one wave — the
rollout driver and the ``txn.committed`` handler — write the namespace's record once between
them; the per-node keys of the layout before are still read, and forgetting a node drops it
from both."""

from __future__ import annotations

import anyio
import pytest
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from confbus.distributor.store import Store
from confbus.distributor.targets import Targets, forget_target
from confbus.runtime.bus import Bus
from confbus.runtime.kv import StateKV
from confbus.schemas.state import TargetRecord, decode_targets, target_key, targets_key
from confbus.schemas.streams import CFG_STATE
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

NS = "web"


async def targets_on(bus: Bus) -> Targets:
    return Targets(StateKV(await bus.kv(CFG_STATE.name), bus), Store(bus))


async def count_writes(bus: Bus) -> tuple[list[str], Subscription]:
    writes: list[str] = []

    async def on_write(msg: Msg) -> None:
        writes.append(msg.subject)

    sub = await bus.nc.subscribe(f"$KV.{CFG_STATE.name}.target.>", cb=on_write)
    await bus.nc.flush()
    return writes, sub


async def read_targets(bus: Bus) -> dict[str, tuple[int, str | None]]:
    kv = StateKV(await bus.kv(CFG_STATE.name))
    entry = await kv.read(targets_key(NS), decode_targets)
    assert entry.value is not None
    return {n: (g.version, g.txid) for g in entry.value.groups for n in g.nodes}


async def test_two_raisers_of_one_wave_write_the_namespace_record_once(bus: Bus) -> None:
    nodes = [f"n{i:02d}" for i in range(20)]
    targets = await targets_on(bus)
    writes, sub = await count_writes(bus)
    async with anyio.create_task_group() as tg:
        tg.start_soon(targets.raise_to, NS, nodes, 2, "txn-2")  # the driver
        tg.start_soon(targets.raise_to, NS, nodes, 2, "txn-2")  # the txn.committed handler
    await bus.nc.flush()
    await sub.unsubscribe()
    assert writes == [f"$KV.{CFG_STATE.name}.{targets_key(NS)}"]
    assert await read_targets(bus) == dict.fromkeys(nodes, (2, "txn-2"))
    assert all(targets.txn_target(NS, n) == 2 for n in nodes)


async def test_a_higher_raise_beside_a_lower_one_wins(bus: Bus) -> None:
    nodes = ["a", "b", "c"]
    targets = await targets_on(bus)
    async with anyio.create_task_group() as tg:
        tg.start_soon(targets.raise_to, NS, nodes, 2, "txn-2")
        tg.start_soon(targets.raise_to, NS, nodes, 3, "txn-3")
    assert await read_targets(bus) == dict.fromkeys(nodes, (3, "txn-3"))  # never lowered
    assert all(targets.txn_target(NS, n) == 3 for n in nodes)


async def test_a_catch_up_raises_its_node_alone_and_the_others_keep_theirs(bus: Bus) -> None:
    targets = await targets_on(bus)
    await targets.raise_to(NS, ["a", "b", "c"], 2, "txn-2")
    await targets.raise_to(NS, ["b"], 3, "txn-3")
    await targets.raise_to(NS, ["b"], 2, "txn-2b")  # lower: nothing written
    assert await read_targets(bus) == {"a": (2, "txn-2"), "b": (3, "txn-3"), "c": (2, "txn-2")}


async def test_a_replica_watching_sees_the_raises_and_the_layout_before(bus: Bus) -> None:
    writer, watcher = await targets_on(bus), await targets_on(bus)
    kv = StateKV(await bus.kv(CFG_STATE.name), bus)
    # A node's target in the per-node layout (written before target.<ns>): still read.
    await kv.cas(target_key(NS, "old"), TargetRecord(version=5, txid="txn-5"), 0)
    async with anyio.create_task_group() as tg:
        await tg.start(watcher.watch)
        await writer.raise_to(NS, ["a", "old"], 4, "txn-4")

        async def seen_a() -> bool:
            return watcher.txn_target(NS, "a") == 4

        await eventually(seen_a, what="the raise, seen by the watching replica")
        assert watcher.txn_target(NS, "old") == 5  # the higher of the two layouts
        await forget_target(kv, NS, "old")

        async def old_gone() -> bool:
            return watcher.txn_target(NS, "old") is None

        await eventually(old_gone, what="the forgotten node gone from both layouts")
        tg.cancel_scope.cancel()
    assert await read_targets(bus) == {"a": (4, "txn-4")}
