"""The consume loop against a real nats-server: ack, nak with backoff, DLQ, unknown tags."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import msgspec
import pytest
from prometheus_client import CollectorRegistry

from confbus.runtime.bus import Bus
from confbus.runtime.consumer import Consumer, Delivery, per_key
from confbus.runtime.errors import InvalidInput, Unavailable
from confbus.runtime.metrics import ConsumerMetrics
from confbus.runtime.retry import Backoff
from confbus.schemas import subjects
from confbus.schemas.changes import ChangeProposed, decode_change
from confbus.schemas.dlq import DeadLetter, decode_dead_letter
from confbus.schemas.streams import CFG_CHANGES, CFG_DLQ
from tests.helpers import eventually

pytestmark = pytest.mark.anyio


def change(ns: str, cid: str) -> ChangeProposed:
    return ChangeProposed(namespace=ns, change_id=cid, content=b"{}")


async def dlq_letters(bus: Bus, n: int) -> list[DeadLetter]:
    sub = await bus.js.subscribe(subjects.dlq(CFG_CHANGES.name), ordered_consumer=True)
    out: list[DeadLetter] = []
    with anyio.fail_after(10):
        while len(out) < n:
            msg = await sub.next_msg(timeout=10)
            out.append(decode_dead_letter(msg.data))
    await sub.unsubscribe()
    return out


async def drained(bus: Bus) -> None:
    """Wait until every change is acked or terminated (the work queue empties): the consumer
    acks after its handler returns, so "handled" is not yet "acked"."""

    async def empty() -> bool:
        return (await bus.js.stream_info(CFG_CHANGES.name)).state.messages == 0

    await eventually(empty, what="the work queue drained")


async def consume_until(
    done: anyio.Event, consumer: Consumer[ChangeProposed], *, drain: bool = False
) -> None:
    """Run ``consumer`` until ``done`` is set (10 s at most); ``drain``: and until the stream
    holds nothing more for it."""
    async with anyio.create_task_group() as tg:
        await tg.start(consumer.run)
        with anyio.fail_after(10):
            await done.wait()
        if drain:
            await drained(consumer.bus)
        tg.cancel_scope.cancel()


def make_consumer(bus: Bus, handler: object, **kw: object) -> Consumer[ChangeProposed]:
    return Consumer(
        bus=bus,
        stream=CFG_CHANGES,
        durable="test",
        decode=decode_change,
        handler=handler,  # type: ignore[arg-type]
        metrics=ConsumerMetrics.create(CollectorRegistry(), "test", "changes"),
        backoff=Backoff(base_s=0.05, cap_s=0.2),
        **kw,  # type: ignore[arg-type]
    )


async def test_undecodable_goes_to_dlq_and_consuming_continues(bus: Bus) -> None:
    seen: list[str] = []
    done = anyio.Event()

    async def handler(batch: Sequence[Delivery[ChangeProposed]]) -> None:
        for d in batch:
            seen.append(d.value.change_id)
        if "after" in seen:
            done.set()

    await bus.publish(subjects.change("ns1"), b"not json at all", msg_id="garbage")
    await bus.publish(subjects.change("ns1"), b'{"type":"change.proposed","namespace":"BAD.NS"}')
    await bus.publish(subjects.change("ns1"), change("ns1", "after"), msg_id="ns1:after")
    await consume_until(done, make_consumer(bus, handler), drain=True)
    assert seen == ["after"]
    letters = await dlq_letters(bus, 2)
    reasons = [lt.reason for lt in letters]
    assert "undecodable" in reasons[0]
    assert "$.namespace" in reasons[1]  # msgspec's path tells where
    assert letters[0].data == b"not json at all"
    info = await bus.js.stream_info(CFG_CHANGES.name)
    assert info.state.messages == 0  # terminated and acked: the work queue is empty


async def test_transient_error_is_redelivered_not_dead_lettered(bus: Bus) -> None:
    attempts = 0
    done = anyio.Event()

    async def handler(batch: Sequence[Delivery[ChangeProposed]]) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 4:
            raise Unavailable("store is down")
        done.set()

    await bus.publish(subjects.change("ns1"), change("ns1", "c1"), msg_id="ns1:c1")
    await consume_until(done, make_consumer(bus, handler))
    assert attempts == 4
    info = await bus.js.stream_info(CFG_DLQ.name)
    assert info.state.messages == 0


async def test_permanent_error_dead_letters_only_that_item(bus: Bus) -> None:
    good: list[str] = []
    done = anyio.Event()

    async def handler(batch: Sequence[Delivery[ChangeProposed]]) -> None:
        for d in batch:
            if d.value.change_id == "bad":
                d.fail(InvalidInput("content is wrong", where="$.x"))
            else:
                good.append(d.value.change_id)
        if "g2" in good:
            done.set()

    for cid in ("g1", "bad", "g2"):
        await bus.publish(subjects.change("ns1"), change("ns1", cid), msg_id=f"ns1:{cid}")
    await consume_until(done, make_consumer(bus, handler, batch=10))
    assert good == ["g1", "g2"]
    [letter] = await dlq_letters(bus, 1)
    assert "content is wrong (at $.x)" in letter.reason


async def test_unknown_newer_tag_is_acked_and_skipped(bus: Bus) -> None:
    seen: list[str] = []
    done = anyio.Event()

    async def handler(batch: Sequence[Delivery[ChangeProposed]]) -> None:
        seen.extend(d.value.change_id for d in batch)
        done.set()

    future = msgspec.json.encode({"type": "change.from_the_future", "namespace": "ns1"})
    await bus.publish(subjects.change("ns1"), future)
    await bus.publish(subjects.change("ns1"), change("ns1", "now"))
    await consume_until(done, make_consumer(bus, handler), drain=True)
    assert seen == ["now"]
    assert (await bus.js.stream_info(CFG_DLQ.name)).state.messages == 0
    assert (await bus.js.stream_info(CFG_CHANGES.name)).state.messages == 0


async def test_bug_is_retried_then_dead_lettered(bus: Bus) -> None:
    async def handler(batch: Sequence[Delivery[ChangeProposed]]) -> None:
        raise ZeroDivisionError("a bug")

    await bus.publish(subjects.change("ns1"), change("ns1", "c1"))
    async with anyio.create_task_group() as tg:
        await tg.start(make_consumer(bus, handler).run)
        [letter] = await dlq_letters(bus, 1)
        tg.cancel_scope.cancel()
    assert "ZeroDivisionError" in letter.reason
    assert letter.deliveries == 5


async def test_cancelled_consumer_lets_the_connection_drain_fast(bus: Bus) -> None:
    async def handler(batch: Sequence[Delivery[ChangeProposed]]) -> None:
        return None

    async with anyio.create_task_group() as tg:
        await tg.start(make_consumer(bus, handler, fetch_timeout_s=0.2).run)
        await anyio.sleep(0.5)  # let at least one fetch time out (the nats-py drain quirk)
        tg.cancel_scope.cancel()
    with anyio.fail_after(5):  # without the unsubscribe this waits the 30 s drain_timeout
        await bus.nc.drain()


async def test_a_poisoned_batch_costs_only_the_poisoned_message(bus: Bus) -> None:
    """The handler fails the whole batch whenever the poison is in it (as a group commit
    would); the good messages beside it are handled alone and stored, never dead-lettered."""
    stored: set[str] = set()

    async def handler(batch: Sequence[Delivery[ChangeProposed]]) -> None:
        if any(d.value.change_id == "poison" for d in batch):
            raise ZeroDivisionError("validation blew up")
        stored.update(d.value.change_id for d in batch)

    cids = ["g1", "g2", "poison", "g3", "g4"]
    for cid in cids:
        await bus.publish(subjects.change("ns1"), change("ns1", cid), msg_id=f"ns1:{cid}")
    async with anyio.create_task_group() as tg:
        await tg.start(make_consumer(bus, handler, batch=10).run)
        [letter] = await dlq_letters(bus, 1)
        await drained(bus)
        tg.cancel_scope.cancel()
    assert stored == {"g1", "g2", "g3", "g4"}
    assert "ZeroDivisionError" in letter.reason and b'"poison"' in letter.data
    assert (await bus.js.stream_info(CFG_DLQ.name)).state.messages == 1
    assert (await bus.js.stream_info(CFG_CHANGES.name)).state.messages == 0


async def test_deep_nesting_is_dead_lettered_and_a_secret_stream_keeps_only_a_hash(
    bus: Bus,
) -> None:
    import hashlib

    seen: list[str] = []
    done = anyio.Event()

    async def handler(batch: Sequence[Delivery[ChangeProposed]]) -> None:
        seen.extend(d.value.change_id for d in batch)
        done.set()

    deep = b'{"type":"change.proposed","x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    await bus.publish(subjects.change("ns1"), deep, msg_id="deep")
    await bus.publish(subjects.change("ns1"), change("ns1", "after"), msg_id="ns1:after")
    await consume_until(done, make_consumer(bus, handler, keep_data=False))
    assert seen == ["after"]
    [letter] = await dlq_letters(bus, 1)
    assert "nested too deeply" in letter.reason
    assert letter.data == b""
    assert letter.data_sha256 == hashlib.sha256(deep).hexdigest()
    assert letter.data_size == len(deep)


async def test_a_consumer_deleted_by_hand_is_made_again_and_consuming_goes_on(bus: Bus) -> None:
    seen: list[str] = []
    got = {"before": anyio.Event(), "after": anyio.Event()}

    async def handler(batch: Sequence[Delivery[ChangeProposed]]) -> None:
        for d in batch:
            seen.append(d.value.change_id)
            got[d.value.change_id].set()

    async with anyio.create_task_group() as tg:
        await tg.start(make_consumer(bus, handler, fetch_timeout_s=0.5).run)
        await bus.publish(subjects.change("ns1"), change("ns1", "before"), msg_id="b")
        with anyio.fail_after(10):
            await got["before"].wait()

        await drained(bus)  # the first change acked
        await bus.js.delete_consumer(CFG_CHANGES.name, "test")
        await bus.publish(subjects.change("ns1"), change("ns1", "after"), msg_id="a")
        with anyio.fail_after(20):
            await got["after"].wait()
        tg.cancel_scope.cancel()
    assert seen == ["before", "after"]


async def test_per_key_handles_namespaces_side_by_side_each_in_order(bus: Bus) -> None:
    """ns1's first change waits until ns2's changes were handled: they were, in the same batch,
    so the namespaces ran side by side; each namespace's own changes kept their order, and a
    failure in one namespace dead-letters that change only."""
    order: list[str] = []
    ns2_done = anyio.Event()
    all_done = anyio.Event()

    async def handle(value: ChangeProposed, _msg: object) -> None:
        if value.change_id == "a1":
            with anyio.fail_after(5):  # only reached if ns2 runs beside ns1
                await ns2_done.wait()
        if value.change_id == "b-bad":
            raise InvalidInput("bad change", where="$.x")
        order.append(value.change_id)
        if value.change_id == "b2":
            ns2_done.set()
        if len(order) == 4:
            all_done.set()

    for ns, cid in (("ns1", "a1"), ("ns2", "b1"), ("ns1", "a2"), ("ns2", "b-bad"), ("ns2", "b2")):
        await bus.publish(subjects.change(ns), change(ns, cid), msg_id=f"{ns}:{cid}")
    handler = per_key(handle, key=lambda c: c.namespace)
    await consume_until(all_done, make_consumer(bus, handler, batch=10), drain=True)
    assert [c for c in order if c.startswith("a")] == ["a1", "a2"]
    assert [c for c in order if c.startswith("b")] == ["b1", "b2"]
    assert order.index("b2") < order.index("a1")
    [letter] = await dlq_letters(bus, 1)
    assert "bad change" in letter.reason and letter.subject == subjects.change("ns2")
