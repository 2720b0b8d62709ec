"""A rollbacker that dies in the middle of a rollback: the next one (a restart, or another
replica) takes it over once the lease has run out, and finishes it without doing anything
twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from confbus.procs.nats import NatsServer
from confbus.runtime.bus import Bus
from tests.helpers import eventually
from tests.rollbacker.world import GOOD, NS, policy, world

pytestmark = pytest.mark.anyio


async def test_a_rollback_killed_after_its_first_batch_is_finished_by_the_next_process(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    pol = policy(strategy="batches:2")
    async with world(nats_server, bus, tmp_path, pol=pol, start_rollbacker=False) as w:
        first = w.start_rollbacker(env={"CONFBUS_FAILPOINTS": "rollbacker.after_batch=kill"})
        _, v2 = await w.seed()
        await w.alert("a-1", v2)
        await w.tap.wait_type("rollback.batch")
        assert first.wait_exit(20) != 0  # SIGKILLed by the failpoint: no clean-up at all
        ledger = await w.ledger()
        running = ledger.running
        assert running is not None and len(running.done) == 1
        assert [w.read(n) for n in w.nodes].count(GOOD) == 2
        w.start_rollbacker()  # a new instance id: it waits for the dead one's lease
        await w.tap.wait_type("rollback.completed")
        assert all(w.read(n) == GOOD for n in w.nodes)
        assert [getattr(b, "batch", None) for b in w.tap.of("rollback.batch")] == [0, 1]
        assert len(w.tap.of("rollback.started")) == 1
        assert w.store.newest(NS) == 3  # the change id mapped to the same version
        resumed = ("confbus_rollbacker_rollbacks_total", 'outcome="resumed"', 1)
        await eventually(lambda: w.metric_at_least(*resumed), what="the takeover counted")
        final = (await w.ledger()).find(running.rollback_id)
        assert final is not None and final.state == "completed"
