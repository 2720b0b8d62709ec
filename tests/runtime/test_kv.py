"""``confbus.runtime.kv`` against a real nats-server: the one compare-and-set loop applies every
change once, decides on the record as it is now (a stale guess costs a read, never a write over
someone else's), and reads a value it cannot decode as absent without losing its place; a watch
mirrors a family of keys and is back within a second of a broker restart."""

from __future__ import annotations

import time

import anyio
import msgspec
import pytest
from nats.aio.msg import Msg

from confbus.procs.nats import NatsServer
from confbus.runtime.bus import Bus, connect
from confbus.runtime.errors import InvalidInput, Stale, Unavailable
from confbus.runtime.kv import KEYS_IDLE_S, Entry, KVMirror, StateKV
from confbus.schemas.state import ROLLOUTS, rollout_key, target_key
from confbus.schemas.streams import CFG_STATE
from tests.helpers import eventually, restart_nats

pytestmark = pytest.mark.anyio

KEY = "test.counter"


class Counter(msgspec.Struct, frozen=True):
    n: int = 0


decode = msgspec.json.Decoder(Counter).decode


def bump(cur: Counter | None) -> Counter:
    return Counter((cur.n if cur else 0) + 1)


async def test_concurrent_changes_from_two_replicas_are_each_applied_once(bus: Bus) -> None:
    a = await StateKV.open(bus, CFG_STATE)
    b = await StateKV.open(bus, CFG_STATE)
    async with anyio.create_task_group() as tg:
        for kv in (a, b) * 10:
            tg.start_soon(kv.mutate, KEY, decode, bump)
    assert (await a.read(KEY, decode)).value == Counter(20)


async def test_a_stale_guess_costs_a_read_and_is_never_written_over_a_newer_record(
    bus: Bus,
) -> None:
    a = await StateKV.open(bus, CFG_STATE)
    b = await StateKV.open(bus, CFG_STATE)
    guess, _ = await a.mutate(KEY, decode, bump)  # n=1, as a last wrote it
    await b.mutate(KEY, decode, bump)  # n=2: a's copy is stale now
    entry, wrote = await a.mutate(KEY, decode, bump, hint=guess)
    assert wrote and entry.value == Counter(3)

    # The guess says "set it", the record says "already done": the record wins.
    def to_three(cur: Counter | None) -> Counter | None:
        return None if cur is not None and cur.n >= 3 else Counter(3)

    entry, wrote = await a.mutate(KEY, decode, to_three, hint=guess)
    assert not wrote and entry.value == Counter(3)
    assert (await b.read(KEY, decode)).revision == entry.revision


async def test_an_unreadable_value_reads_as_absent_and_still_orders_writes(bus: Bus) -> None:
    kv = await StateKV.open(bus, CFG_STATE)
    rev = await kv.kv.put(KEY, b"\x00 not a record")
    assert await kv.read(KEY, decode) == Entry(None, rev)
    with pytest.raises(Stale):
        await kv.cas(KEY, Counter(1), 0)  # "create" on a key that exists
    assert await kv.cas(KEY, Counter(1), rev) > rev
    assert (await kv.read(KEY, decode)).value == Counter(1)


async def test_keys_lists_the_live_keys_of_one_family(bus: Bus) -> None:
    kv = await StateKV.open(bus, CFG_STATE)
    for key in (rollout_key("web"), rollout_key("api"), target_key("web", "n1")):
        await kv.cas(key, Counter(), 0)
    await kv.delete(rollout_key("api"))
    assert await kv.keys(ROLLOUTS) == [rollout_key("web")]
    # A deleted key is created again at its marker's revision, not at 0.
    gone = await kv.read(rollout_key("api"), decode)
    assert gone.value is None and gone.revision > 0
    assert await kv.cas(rollout_key("api"), Counter(), gone.revision) > gone.revision


async def test_a_watch_mirrors_a_family_and_hears_writes_within_a_second_of_a_broker_restart(
    bus: Bus, nats_server: NatsServer
) -> None:
    kv = await StateKV.open(bus, CFG_STATE)
    web, api = rollout_key("web"), rollout_key("api")
    await kv.cas(web, Counter(1), 0)
    await kv.cas(api, Counter(1), 0)
    await kv.cas(target_key("web", "n1"), Counter(1), 0)  # another family: not mirrored
    send, seen = anyio.create_memory_object_stream[tuple[str, Counter | None, int]](100)

    def on_entry(key: str, value: bytes | None, revision: int) -> None:
        send.send_nowait((key, decode(value) if value is not None else None, revision))

    async def next_entry() -> tuple[str, Counter | None, int]:
        with anyio.fail_after(5):
            return await seen.receive()

    async with anyio.create_task_group() as tg:
        await tg.start(kv.watch, ROLLOUTS, on_entry)
        # Every current value before ``started``.
        current = {seen.receive_nowait()[:2] for _ in range(2)}
        assert current == {(web, Counter(1)), (api, Counter(1))}
        rev = await kv.cas(web, Counter(2), (await kv.read(web, decode)).revision)
        assert await next_entry() == (web, Counter(2), rev)
        await kv.delete(api)
        assert (await next_entry())[:2] == (api, None)

        reconnected = await restart_nats(nats_server, bus)

        async def write() -> int | None:
            try:
                return await kv.cas(web, Counter(3), rev)
            except Unavailable:
                return None  # JetStream recovering its streams

        rev = await eventually(write, timeout=20, what="a write after the restart")
        assert await next_entry() == (web, Counter(3), rev)
        heard_after = time.monotonic() - reconnected
        tg.cancel_scope.cancel()
    # nats-py's kv.watch heard it only when its ordered consumer's heartbeat check fired
    # (10-20 s).
    print(f"write heard {heard_after:.3f}s after the reconnect")
    assert heard_after < 3.0


async def test_a_mirror_holds_each_key_as_last_written_and_leaves_out_what_reads_as_absent(
    bus: Bus,
) -> None:
    kv = await StateKV.open(bus, CFG_STATE)
    web, api, odd = rollout_key("web"), rollout_key("api"), rollout_key("odd")
    await kv.cas(web, Counter(1), 0)
    await kv.cas(target_key("web", "n1"), Counter(1), 0)  # another family: not mirrored
    mirror = KVMirror(kv, ROLLOUTS, decode)
    assert mirror.values is None  # not running: callers fall back to listing the keys

    async with anyio.create_task_group() as tg:
        await tg.start(mirror.run)
        assert mirror.values == {web: Counter(1)}  # the current values before ``started``
        await kv.cas(api, Counter(2), 0)
        await kv.kv.put(odd, b"\x00 not a record")  # reads as absent: left out
        await kv.delete(web)

        async def settled() -> dict[str, Counter] | None:
            values = mirror.values
            return dict(values) if values == {api: Counter(2)} else None

        assert await eventually(settled, timeout=5, what="the mirror after three writes")
        tg.cancel_scope.cancel()
    assert mirror.values is None


async def test_a_bucket_is_looked_up_once_then_its_handle_kept(
    nats_server: NatsServer, bus: Bus
) -> None:
    # A client polling a record (``wait_rollout``) asked for the stream's info before each read.
    fresh = await connect(nats_server.url, name="kv-handles")
    lookups: list[str] = []

    async def note(msg: Msg) -> None:
        lookups.append(msg.subject)

    try:
        await fresh.nc.subscribe(f"$JS.API.STREAM.INFO.KV_{CFG_STATE.name}", cb=note)
        first = await fresh.kv(CFG_STATE.name)
        await first.put(KEY, b"1")
        second = await fresh.kv(CFG_STATE.name)
        entry = await second.get(KEY)
        await fresh.nc.flush()
        assert second is first and entry.value == b"1"
        assert lookups == [f"$JS.API.STREAM.INFO.KV_{CFG_STATE.name}"]
    finally:
        await fresh.close()


async def test_a_key_listing_leaves_no_consumer_behind_for_long(bus: Bus) -> None:
    kv = await StateKV.open(bus, CFG_STATE)
    await kv.put(rollout_key("web"), Counter(1))
    for _ in range(3):  # a sweep lists the keys every second
        assert await kv.keys(ROLLOUTS) == [rollout_key("web")]
    consumers = await bus.js.consumers_info(f"KV_{CFG_STATE.name}")
    listings = [c for c in consumers if c.config.inactive_threshold is not None]
    # Each is dropped by the server KEYS_IDLE_S after its stop, not 5 minutes (nats-py's
    # default): the bucket's 1000-consumer cap is never reached by listings.
    assert listings and all(c.config.inactive_threshold == KEYS_IDLE_S for c in listings)


class Blob(msgspec.Struct, frozen=True):
    text: str


async def test_a_value_larger_than_the_bucket_holds_is_refused_for_good_not_as_down(
    bus: Bus,
) -> None:
    """Retrying the same bytes can never succeed: ``InvalidInput`` (permanent, names the key
    and the size), never ``Unavailable`` (which every caller retries); nothing is written."""
    kv = await StateKV.open(bus, CFG_STATE)
    big = Blob("x" * CFG_STATE.max_value_size)
    with pytest.raises(InvalidInput, match=rf"{KEY} is \d+ bytes: more than it may hold"):
        await kv.cas(KEY, big, 0)
    with pytest.raises(InvalidInput, match=rf"{KEY} is \d+ bytes: more than it may hold"):
        await kv.put(KEY, big)
    assert await kv.read(KEY, decode) == Entry(None, 0)
