"""The rollback ledger in a real ``CFG_STATE``: a running rollback is changed only by the replica
that took it under the namespace's lease, at that lease's epoch — a replica that lost it (paused,
cut off) is refused, and cannot take it back with its old epoch."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from confbus.rollbacker.ledger import Ledgers
from confbus.rollbacker.records import with_rollback
from confbus.runtime.bus import Bus
from confbus.runtime.errors import Fenced
from confbus.runtime.kv import StateKV
from confbus.schemas.state import Ledger, Rollback
from confbus.schemas.streams import CFG_STATE

pytestmark = pytest.mark.anyio

NS = "web"
RB = "rb-1"


async def started(bus: Bus) -> Ledgers:
    ledgers = Ledgers(await StateKV.open(bus, CFG_STATE))
    now = datetime.now(UTC)
    rb = Rollback(
        rollback_id=RB,
        namespace=NS,
        trigger="manual",
        to_version=1,
        change_id="rollback-1",
        strategy="all-at-once",
        started_at=now,
        updated_at=now,
        owner="a",  # decided by a; driven by whoever takes the lease
    )

    def start(ledger: Ledger) -> tuple[Ledger | None, None]:
        return msgspec.structs.replace(with_rollback(ledger, rb), active=RB), None

    await ledgers.change(NS, start)
    return ledgers


async def test_only_the_driver_at_its_epoch_changes_a_running_rollback(bus: Bus) -> None:
    ledgers = await started(bus)
    taken, resumed = await ledgers.take(NS, RB, "a", 1)
    assert taken is not None and (taken.owner, taken.epoch) == ("a", 1) and not resumed

    # a's lease ran out; b took the namespace at epoch 2 and takes the rollback over.
    taken, resumed = await ledgers.take(NS, RB, "b", 2)
    assert taken is not None and (taken.owner, taken.epoch) == ("b", 2) and resumed

    def promote(r: Rollback) -> Rollback:
        return msgspec.structs.replace(r, step="promote")

    with pytest.raises(Fenced) as fenced:
        await ledgers.update_rollback(NS, RB, "a", 1, promote)
    assert fenced.value.holder == "b"
    with pytest.raises(Fenced):
        await ledgers.take(NS, RB, "a", 1)  # nor can it take it back with its old epoch
    rb = (await ledgers.read(NS)).running
    assert rb is not None and rb.step == "create" and rb.owner == "b"

    def complete(r: Rollback) -> Rollback:
        return msgspec.structs.replace(r, state="completed", step="done")

    done = await ledgers.update_rollback(NS, RB, "b", 2, complete)
    assert done.state == "completed"
    ledger = await ledgers.read(NS)
    assert ledger.active is None and ledger.find(RB) == done


async def test_a_restarted_replica_resumes_its_rollback_in_a_new_term(bus: Bus) -> None:
    ledgers = await started(bus)
    await ledgers.take(NS, RB, "a", 1)
    taken, resumed = await ledgers.take(NS, RB, "a", 2)  # same instance, new process, new epoch
    assert taken is not None and taken.epoch == 2 and resumed
    with pytest.raises(Fenced):
        await ledgers.update_rollback(NS, RB, "a", 1, lambda r: r)
