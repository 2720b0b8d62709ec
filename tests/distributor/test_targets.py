"""Raising nodes' targets in CFG_STATE (a real nats-server): the two raisers of one wave — the
rollout driver and the ``txn.committed`` handler — write each key once between them."""

from __future__ import annotations

import anyio
import pytest
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from confbus.distributor.store import Store
from confbus.distributor.targets import Targets
from confbus.runtime.bus import Bus
from confbus.runtime.kv import StateKV
from confbus.schemas.state import decode_target, target_key
from confbus.schemas.streams import CFG_STATE

pytestmark = pytest.mark.anyio

NS = "web"


async def targets_on(bus: Bus) -> Targets:
    return Targets(StateKV(await bus.kv(CFG_STATE.name)), Store(bus))


async def count_writes(bus: Bus) -> tuple[list[str], Subscription]:
    writes: list[str] = []

    async def on_write(msg: Msg) -> None:
        writes.append(msg.subject)

    sub = await bus.nc.subscribe(f"$KV.{CFG_STATE.name}.target.>", cb=on_write)
    await bus.nc.flush()
    return writes, sub


async def test_two_raisers_of_one_wave_write_each_key_once(bus: Bus) -> None:
    nodes = [f"n{i:02d}" for i in range(20)]
    targets = await targets_on(bus)
    writes, sub = await count_writes(bus)
    async with anyio.create_task_group() as tg:
        tg.start_soon(targets.raise_to, NS, nodes, 2, "txn-2")  # the driver
        tg.start_soon(targets.raise_to, NS, nodes, 2, "txn-2")  # the txn.committed handler
    await bus.nc.flush()
    await sub.unsubscribe()
    assert sorted(writes) == sorted(f"$KV.{CFG_STATE.name}.{target_key(NS, n)}" for n in nodes)
    kv = StateKV(await bus.kv(CFG_STATE.name))
    for n in nodes:
        entry = await kv.read(target_key(NS, n), decode_target)
        assert entry.value is not None and (entry.value.version, entry.value.txid) == (2, "txn-2")
    assert targets._writing == {}  # nothing left behind


async def test_a_higher_raise_does_not_wait_for_a_lower_one_and_wins(bus: Bus) -> None:
    nodes = ["a", "b", "c"]
    targets = await targets_on(bus)
    async with anyio.create_task_group() as tg:
        tg.start_soon(targets.raise_to, NS, nodes, 2, "txn-2")
        tg.start_soon(targets.raise_to, NS, nodes, 3, "txn-3")
    kv = StateKV(await bus.kv(CFG_STATE.name))
    for n in nodes:
        entry = await kv.read(target_key(NS, n), decode_target)
        assert entry.value is not None and entry.value.version == 3  # never lowered
        assert targets.txn_target(NS, n) == 3
