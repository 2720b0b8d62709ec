"""``confbus.runtime.leases`` against a real nats-server: take, renew, expire, hand over with a
new epoch, stop acting the moment a lease is lost, and take over at once from a holder whose
connection is gone (``confbus.runtime.presence``) — but never from one that is only paused."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import anyio
import msgspec
import pytest
from anyio.abc import TaskStatus
from nats.js.kv import KeyValue

from confbus.procs.nats import NatsServer
from confbus.runtime.bus import Bus, connect
from confbus.runtime.codec import encode
from confbus.runtime.leases import RELEASED, Grant, Leases, NotHeld
from confbus.runtime.presence import PROBE_GAP_S
from confbus.schemas.state import LeaseRecord, decode_lease, lease_key, replica_key
from confbus.schemas.streams import CFG_STATE
from confbus.schemas.subjects import lease_presence
from tests.helpers import eventually

pytestmark = pytest.mark.anyio
NOT_TAKEN = Grant("-", "-", 0, 0, "-")


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


async def test_a_life_ended_by_another_loses_every_lease_at_the_next_renewal(
    kv: KeyValue,
) -> None:
    a = Leases(kv, "test", "a", ttl_s=0.9)
    assert await a.acquire("web") is not None
    assert await a.acquire("api") is not None
    lost: list[str] = []
    both = anyio.Event()

    async with anyio.create_task_group() as tg:
        await tg.start(a.keep)

        async def work(name: str) -> None:
            with a.guard(name):
                await anyio.sleep_forever()
            lost.append(name)
            if len(lost) == 2:
                both.set()

        tg.start_soon(work, "web")
        tg.start_soon(work, "api")
        # Another replica ended a's life (it judged a gone, say a partitioned a): a's next
        # renewal, a compare-and-set on its own last revision, fails and a stops everything.
        key = replica_key("test", "a")
        entry = await kv.get(key)
        ended = msgspec.structs.replace(decode_lease(entry.value or b""), expires_at=RELEASED)
        await kv.update(key, encode(ended), last=entry.revision)
        with anyio.fail_after(5):
            await both.wait()
        assert not a.held("web") and not a.held("api")
        tg.cancel_scope.cancel()
    b = Leases(kv, "test", "b", ttl_s=30.0)
    assert [(await b.acquire(n) or NOT_TAKEN).epoch for n in ("web", "api")] == [2, 2]


async def test_a_renewal_delivered_after_its_life_was_ended_cannot_revive_it(
    kv: KeyValue,
) -> None:
    """The race one record for many names opens, closed by compare-and-set: b ends a's
    expired life at the revision it read, so a renewal of a's that lands later fails."""
    clock = Clock()
    a = Leases(kv, "test", "a", ttl_s=0.6, skew_s=0.0, clock=clock)
    b = Leases(kv, "test", "b", ttl_s=30.0)
    assert await a.acquire("web") is not None
    taken = await eventually(lambda: b.acquire("web"), timeout=5, what="b takes the lease")
    assert taken.epoch == 2
    # a was paused before it could see its trust run out (its clock did not move): its
    # renewal — as if sent before the pause — must fail, and a must lose the name.
    assert not await a.renew("web")
    assert not a.held("web")
    record = decode_lease((await kv.get(lease_key("test", "web"))).value or b"")
    assert record.holder == "b" and record.epoch == 2


async def test_a_restarted_replica_takes_its_own_lease_back_in_a_new_term(kv: KeyValue) -> None:
    before = Leases(kv, "test", "coordinator-1", ttl_s=30.0)
    assert (await before.acquire("web")) is not None
    after = Leases(kv, "test", "coordinator-1", ttl_s=30.0)  # same --instance, new process
    grant = await after.acquire("web")
    assert grant is not None and grant.epoch == 2
    assert await Leases(kv, "test", "coordinator-2").acquire("web") is None


async def replica(nats_server: NatsServer, name: str) -> tuple[Bus, Leases]:
    """A replica on its own connection, as its own process is: closing it is the process dying
    (the kernel closes its socket)."""
    conn = await connect(nats_server.url, name=name)
    return conn, Leases.on_bus(conn, await conn.kv(CFG_STATE.name), "test", name, ttl_s=30.0)


async def test_a_holder_whose_connection_is_gone_is_taken_over_at_once(
    kv: KeyValue, bus: Bus, nats_server: NatsServer
) -> None:
    other, a = await replica(nats_server, "a")
    b = Leases.on_bus(bus, kv, "test", "b", ttl_s=30.0)
    async with anyio.create_task_group() as tg:
        await tg.start(a.keep)  # answers a's presence
        assert await a.acquire("web") is not None
        assert await b.acquire("web") is None  # a answers: it holds the lease
        tg.cancel_scope.cancel()
    # a's process dies: its socket closes and the server drops its subscriptions at once.
    await other.close()
    started = anyio.current_time()
    grant = await b.acquire("web")
    took = anyio.current_time() - started
    assert grant is not None and grant.epoch == 2, "b did not take over a's lease"
    assert PROBE_GAP_S <= took < 5.0, took  # two probes apart, not the 30 s TTL
    record = decode_lease((await kv.get(lease_key("test", "web"))).value or b"")
    assert record.holder == "b" and record.epoch == 2


async def test_a_paused_holder_is_not_taken_over(kv: KeyValue, bus: Bus) -> None:
    a = Leases(kv, "test", "a", ttl_s=30.0)
    assert await a.acquire("web") is not None

    # a is paused (SIGSTOP): the server still has its subscription, nobody answers it.
    async def paused(msg: object) -> None:
        await anyio.sleep_forever()

    sub = await bus.nc.subscribe(lease_presence("test", "a"), cb=paused)
    try:
        b = Leases.on_bus(bus, kv, "test", "b", ttl_s=30.0)
        assert await b.acquire("web") is None
        assert await b.current_holder("web") == "a"
    finally:
        await sub.unsubscribe()


async def test_pursue_takes_over_from_a_killed_holder_well_before_its_ttl(
    kv: KeyValue, bus: Bus, nats_server: NatsServer
) -> None:
    other, a = await replica(nats_server, "a")
    b = Leases.on_bus(bus, kv, "test", "b", ttl_s=30.0)
    holder = anyio.CancelScope()

    async def keep_a(*, task_status: TaskStatus[None]) -> None:
        with holder:
            await a.keep(task_status=task_status)

    async with anyio.create_task_group() as tg:
        await tg.start(keep_a)
        assert await a.acquire("web") is not None
        await tg.start(b.keep)
        await tg.start(b.pursue, lambda: ["web"])
        await eventually(lambda: b.current_holder("web"), timeout=5, what="b sees a's lease")
        assert not b.held("web")
        holder.cancel()
        await other.close()  # killed
        # pursue's next pass is 10 s away (ttl/3): its watch of a's presence finds a gone.
        started = anyio.current_time()

        async def taken() -> bool:
            return b.held("web")

        await eventually(taken, timeout=3, what="b takes a's lease over")
        assert anyio.current_time() - started >= PROBE_GAP_S
        grant = b.grant("web")
        assert grant is not None and grant.epoch == 2
        tg.cancel_scope.cancel()


async def test_a_clean_stop_hands_the_lease_over_at_once(kv: KeyValue, bus: Bus) -> None:
    a = Leases.on_bus(bus, kv, "test", "a", ttl_s=30.0)
    b = Leases.on_bus(bus, kv, "test", "b", ttl_s=30.0)
    assert await a.acquire("web") is not None
    await a.release_all()
    grant = await b.acquire("web")
    assert grant is not None and grant.epoch == 2


async def test_a_lease_of_an_older_confbus_binds_until_its_own_expiry(kv: KeyValue) -> None:
    """A record without a life (renewed on its own, by a replica of the version before replica
    leases) is honoured as it was: live until its expiry, then taken in the next epoch."""
    old = LeaseRecord(holder="old", epoch=4, expires_at=datetime.now(UTC) + timedelta(seconds=1.5))
    await kv.create(lease_key("test", "web"), encode(old))
    b = Leases(kv, "test", "b", ttl_s=30.0, skew_s=0.0)
    assert await b.acquire("web") is None
    assert await b.current_holder("web") == "old"
    taken = await eventually(lambda: b.acquire("web"), timeout=5, what="b takes the lease")
    assert taken.epoch == 5
    record = decode_lease((await kv.get(lease_key("test", "web"))).value or b"")
    # What an older replica reads: held by b, with no expiry it would ever reach.
    assert record.holder == "b" and record.life is not None and record.expires_at.year == 9999
