"""``confbus.runtime.leases`` against a real nats-server: take, renew, expire, hand over with a
new epoch, and stop acting the moment a lease is lost."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from nats.js.kv import KeyValue

from confbus.runtime.bus import Bus
from confbus.runtime.codec import encode
from confbus.runtime.leases import Leases, NotHeld
from confbus.schemas.state import LeaseRecord, decode_lease, lease_key
from confbus.schemas.streams import CFG_STATE
from tests.helpers import eventually

pytestmark = pytest.mark.anyio


@dataclass
class Clock:
    """A monotonic clock the test moves: a paused holder, without pausing the test."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def kv(bus: Bus) -> KeyValue:
    return await bus.kv(CFG_STATE.name)


async def test_one_holder_at_a_time_and_a_new_epoch_per_holder(kv: KeyValue) -> None:
    a = Leases(kv, "test", "a", ttl_s=5.0)
    b = Leases(kv, "test", "b", ttl_s=5.0)

    first = await a.acquire("web")
    assert first is not None and first.epoch == 1 and a.held("web")
    assert await b.acquire("web") is None and not b.held("web")
    assert await b.current_holder("web") == "a"

    assert await a.renew("web")
    again = await a.acquire("web")  # ours already: a renewal, the same term
    assert again is not None and again.epoch == 1

    await a.release("web")
    assert not a.held("web")
    taken = await b.acquire("web")
    assert taken is not None and taken.epoch == 2
    assert await a.acquire("web") is None


async def test_an_expired_lease_is_taken_over(kv: KeyValue) -> None:
    a = Leases(kv, "test", "a", ttl_s=0.6, skew_s=0.0)
    b = Leases(kv, "test", "b", ttl_s=0.6, skew_s=0.0)
    assert await a.acquire("web") is not None

    # Nobody renews a's lease (a crashed): after its TTL, b gets it, with the next epoch.
    taken = await eventually(lambda: b.acquire("web"), timeout=5, what="b takes the lease")
    assert taken.epoch == 2
    assert not a.held("web")  # a's own trust ran out before b could take it
    record = decode_lease((await kv.get(lease_key("test", "web"))).value or b"")
    assert record.holder == "b" and record.epoch == 2


async def test_a_holder_that_cannot_renew_in_time_stops_at_once(kv: KeyValue) -> None:
    clock = Clock()
    a = Leases(kv, "test", "a", ttl_s=3.0, clock=clock)
    assert await a.acquire("web") is not None
    stopped = anyio.Event()

    async with anyio.create_task_group() as tg:
        await tg.start(a.keep)

        async def work() -> None:
            with a.guard("web") as scope:
                await anyio.sleep_forever()
            assert scope.cancelled_caught
            stopped.set()

        tg.start_soon(work)
        await anyio.wait_all_tasks_blocked()
        clock.now += 2.5  # paused past the trust (2/3 of the TTL): it must not act on
        assert not a.held("web")
        with anyio.fail_after(5):
            await stopped.wait()
        tg.cancel_scope.cancel()
    with pytest.raises(NotHeld), a.guard("web"):
        pass


async def test_a_lease_taken_by_another_is_lost_at_the_next_renewal(kv: KeyValue) -> None:
    a = Leases(kv, "test", "a", ttl_s=0.9)
    assert await a.acquire("web") is not None
    lost = anyio.Event()

    async with anyio.create_task_group() as tg:
        await tg.start(a.keep)

        async def work() -> None:
            with a.guard("web"):
                await anyio.sleep_forever()
            lost.set()

        tg.start_soon(work)
        # Another replica took it (say a partitioned a looked dead to it): a stops.
        entry = await kv.get(lease_key("test", "web"))
        stolen = LeaseRecord(
            holder="b", epoch=2, expires_at=datetime.now(UTC) + timedelta(seconds=9)
        )
        await kv.update(lease_key("test", "web"), encode(stolen), last=entry.revision)
        with anyio.fail_after(5):
            await lost.wait()
        assert not a.held("web")
        tg.cancel_scope.cancel()


async def test_a_restarted_replica_takes_its_own_lease_back_in_a_new_term(kv: KeyValue) -> None:
    before = Leases(kv, "test", "coordinator-1", ttl_s=30.0)
    assert (await before.acquire("web")) is not None
    after = Leases(kv, "test", "coordinator-1", ttl_s=30.0)  # same --instance, new process
    grant = await after.acquire("web")
    assert grant is not None and grant.epoch == 2
    assert await Leases(kv, "test", "coordinator-2").acquire("web") is None
