"""The version-store under bad input and a failing store: garbage never crashes it, an outage
never dead-letters a good change, a version whose announcement died with the broker is announced
when its change comes again; and the service on etcd."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from confbus.client import Client
from confbus.procs.etcd import ETCD_HINT, EtcdCluster, etcd_binary
from confbus.procs.nats import NatsServer
from confbus.procs.proc import Proc
from confbus.runtime import failpoints
from confbus.runtime.bus import Bus
from confbus.runtime.codec import encode
from confbus.runtime.consumer import Consumer
from confbus.runtime.retry import Backoff
from confbus.schemas import subjects
from confbus.schemas.base import decode_envelope
from confbus.schemas.changes import ChangeProposed, decode_change, msg_id
from confbus.schemas.dlq import DeadLetter, decode_dead_letter
from confbus.schemas.events import VersionCreated
from confbus.schemas.policy import Policy
from confbus.schemas.streams import CFG_CHANGES, CFG_DLQ
from confbus.version_store.changes import ChangeHandler
from confbus.version_store.metrics import StoreMetrics
from confbus.version_store.rejections import Rejections
from confbus.version_store.service import change_consumer
from confbus.version_store.storage.sqlite import SqliteStore
from tests.helpers import eventually
from tests.version_store.test_service_helpers import Stack, drained, events_of, stack

pytestmark = pytest.mark.anyio
__all__ = ["stack"]

GARBAGE_NS = "garbage"


def _json_values() -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
        ),
        max_leaves=8,
    )


def _almost_changes() -> st.SearchStrategy[bytes]:
    """Messages that look like changes, wrong in every field a fuzzer can think of."""
    b64 = st.binary(max_size=48).map(lambda b: base64.b64encode(b).decode())
    fields = st.fixed_dictionaries(
        {
            "type": st.sampled_from(["change.proposed", "change.proposed", "change.future", 7]),
            "namespace": st.sampled_from([GARBAGE_NS, GARBAGE_NS, "other-ns", "Bad.NS", ""]),
            "change_id": st.sampled_from(["c1", "c2", "c3"]) | st.text(max_size=12),
            "content": b64 | st.text(max_size=12) | st.integers(),
        },
        optional={
            "format": st.sampled_from(["json", "yaml", "toml", "text", "xml", None, 3]),
            "base": st.none() | st.integers(-2, 4) | st.text(max_size=3),
            "rollback_of": st.none() | st.integers(-1, 4),
            "author": st.text(max_size=8),
            "strategy": st.none() | st.sampled_from(["canary:2", "fast"]),
            "selector": st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
            "schema_version": st.integers(0, 3),
        },
    )
    return fields.map(lambda d: json.dumps(d).encode())


def _odd_changes() -> st.SearchStrategy[bytes]:
    """Well-formed changes with odd content and odd requests: these reach the handler."""
    return st.builds(
        ChangeProposed,
        namespace=st.just(GARBAGE_NS),
        change_id=st.sampled_from(["c1", "c2", "c3", "c4", "x.y:z@1+2"]),
        content=st.binary(max_size=64) | st.sampled_from([b"{}", b"[1, 2]", b'{"a": 1}', b"a: 1"]),
        format=st.sampled_from(["json", "yaml", "toml", "text", None]),
        author=st.text(max_size=6),
        base=st.none() | st.integers(0, 5) | st.integers(-(2**63), 2**63 - 1),
        rollback_of=st.none() | st.integers(-3, 5),
        strategy=st.none() | st.sampled_from(["canary:2", "linear:10%", "fast", ""]),
    ).map(encode)


def _garbage(n: int, seed: int) -> list[bytes]:
    """``n`` payloads drawn by Hypothesis (collected, then published in one go)."""
    out: list[bytes] = []
    payloads = (
        st.binary(max_size=120)
        | st.text(max_size=80).map(str.encode)
        | _json_values().map(lambda v: json.dumps(v).encode())
        | _almost_changes()
        | _odd_changes()
        | _odd_changes()
    )

    @hypothesis_seed(seed)
    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(payloads)
    def collect(payload: bytes) -> None:
        out.append(payload)

    collect()
    return out


def _fate(payload: bytes) -> str:
    """What the consumer must do with ``payload`` on ``cfg.change.garbage`` (see consumer.py)."""
    try:
        change = decode_change(payload)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        try:
            decode_envelope(payload)
            known = True
        except (msgspec.ValidationError, msgspec.DecodeError):
            known = False
        if known and "Invalid value" in str(exc) and "$.type" in str(exc):
            return "skipped"
        return "dlq"
    return "decided" if change.namespace == GARBAGE_NS else "dlq"


async def _letters(bus: Bus) -> list[DeadLetter]:
    out: list[DeadLetter] = []
    info = await bus.js.stream_info(CFG_DLQ.name)
    if not info.state.messages:
        return out
    sub = await bus.js.subscribe(subjects.dlq(CFG_CHANGES.name), ordered_consumer=True)
    try:
        while True:
            msg = await sub.next_msg(timeout=5)
            out.append(decode_dead_letter(msg.data))
            if msg.metadata.num_pending == 0:
                return out
    finally:
        await sub.unsubscribe()


async def test_garbage_on_cfg_change_never_crashes_the_service(stack: Stack) -> None:
    seed = int(os.environ.get("CONFBUS_TEST_SEED") or random.randrange(2**32))
    print(f"garbage seed: {seed} (CONFBUS_TEST_SEED={seed} to replay)")
    payloads = _garbage(200, seed)
    fates = [_fate(p) for p in payloads]
    async with stack.client() as client:
        before = len(
            [lt for lt in await _letters(client.bus) if lt.subject == subjects.change(GARBAGE_NS)]
        )
        for payload in payloads:
            await client.bus.publish(subjects.change(GARBAGE_NS), payload)
        await drained(client.bus)
        letters = [
            lt for lt in await _letters(client.bus) if lt.subject == subjects.change(GARBAGE_NS)
        ]
        assert len(letters) - before == fates.count("dlq"), f"seed {seed}"
        assert not [lt for lt in letters if lt.reason.startswith("handler failed")], f"seed {seed}"
        assert stack.service.alive()
        # Still answering, and still storing.
        info = await client.publish("after-garbage", b'{"ok": true}', change_id="after")
        assert (await client.get("after-garbage", info.version)).content == b'{"ok": true}'
        # What was stored is numbered without gaps, announced once, and intact.
        history = await client.history(GARBAGE_NS, limit=1000)
        assert [v.version for v in history] == list(range(len(history), 0, -1))
        events = [e for e in await events_of(client, GARBAGE_NS) if isinstance(e, VersionCreated)]
        assert sorted(e.version for e in events) == [v.version for v in reversed(history)]
        for v in history:
            got = await client.get(GARBAGE_NS, v.version)
            assert got.content is not None
            assert hashlib.sha256(got.content).hexdigest() == v.sha256


async def test_store_outage_redelivers_and_never_dead_letters(bus: Bus, tmp_path: Path) -> None:
    """A store that cannot write (another process holds SQLite's write lock) makes the batch
    nak with backoff; once it can write again, the change is stored — and nothing went to DLQ."""
    path = tmp_path / "store.db"
    registry = CollectorRegistry()
    async with SqliteStore(path, busy_timeout_s=0.05) as store:
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # the outage: nobody else may write
        try:
            consumer = await _store_consumer(bus, store, registry)
            change = ChangeProposed(namespace="outage", change_id="c1", content=b"{}")
            await bus.publish(subjects.change("outage"), change, msg_id=msg_id("outage", "c1"))
            created = await bus.nc.subscribe("cfg.event.outage.version.created", max_msgs=1)
            async with anyio.create_task_group() as tg:
                await tg.start(consumer.run)

                async def retried_thrice() -> bool:
                    retried = registry.get_sample_value(
                        "confbus_version_store_changes_messages_total", {"outcome": "retried"}
                    )
                    return (retried or 0) >= 3

                await eventually(retried_thrice, what="three redeliveries during the outage")
                locker.execute("ROLLBACK")  # the store is back
                msg = await created.next_msg(timeout=10)
                tg.cancel_scope.cancel()
        finally:
            locker.close()
    event = msgspec.json.decode(msg.data, type=VersionCreated)
    assert (event.namespace, event.version, event.change_id) == ("outage", 1, "c1")
    assert (await bus.js.stream_info(CFG_DLQ.name)).state.messages == 0


async def _store_consumer(
    bus: Bus, store: SqliteStore, registry: CollectorRegistry | None = None
) -> Consumer[ChangeProposed]:
    """The version-store's consumer of ``CFG_CHANGES`` on ``store``, in this process; its
    metrics in ``registry`` (a new one if None)."""
    registry = registry or CollectorRegistry()
    handler = ChangeHandler(
        bus, store, await Rejections.open(bus), StoreMetrics.create(registry), lambda ok, _: None
    )
    return change_consumer(handler, registry, batch=16, backoff=Backoff(base_s=0.05, cap_s=0.2))


async def test_a_version_not_announced_before_the_broker_died_is_announced_on_a_first_delivery(
    bus: Bus, tmp_path: Path
) -> None:
    """Stored, then the broker died before ``version.created`` was published. The restarted
    server may deliver the change again as if for the first time (the consumer's delivery count
    died with it): the version must still be announced, or whoever waits for it waits forever."""
    change = ChangeProposed(namespace="lost", change_id="c1", content=b"{}")
    created = await bus.nc.subscribe("cfg.event.lost.version.created", max_msgs=1)
    async with SqliteStore(tmp_path / "store.db") as store:
        # Committed, then held before its announcement until we cut it off.
        failpoints.arm("version_store.after_commit", "delay:60")
        try:
            consumer = await _store_consumer(bus, store)
            await bus.publish(subjects.change("lost"), change, msg_id=msg_id("lost", "c1"))
            async with anyio.create_task_group() as tg:
                await tg.start(consumer.run)

                async def stored() -> bool:
                    return bool(await store.history("lost", limit=1))

                await eventually(stored, what="the change stored")
                tg.cancel_scope.cancel()
        finally:
            failpoints.disarm_all()
        # The delivery count lost: the same message comes again as a first delivery.
        await bus.js.delete_consumer(CFG_CHANGES.name, "version-store")
        consumer = await _store_consumer(bus, store)
        async with anyio.create_task_group() as tg:
            await tg.start(consumer.run)
            msg = await created.next_msg(timeout=10)
            tg.cancel_scope.cancel()
    event = msgspec.json.decode(msg.data, type=VersionCreated)
    assert (event.namespace, event.version, event.change_id) == ("lost", 1, "c1")


@pytest.mark.etcd
async def test_service_on_etcd(tmp_path: Path, nats_server: NatsServer) -> None:
    if etcd_binary() is None:
        pytest.skip(ETCD_HINT)
    cluster = EtcdCluster.on_loopback(tmp_path / "etcd").start()
    service = Proc.service(
        "version_store",
        nats_server.url,
        tmp_path,
        "--store",
        f"etcd://{','.join(cluster.endpoints)}",
    )
    try:
        service.start()
        versions: list[int] = []
        async with Client(nats_server.url) as client:
            await client.set_policy(Policy(namespace="on-etcd", format="text"))

            async def one(i: int) -> None:
                info = await client.publish("on-etcd", f"{i}".encode(), change_id=f"c{i}")
                versions.append(info.version)

            async with anyio.create_task_group() as tg:
                for i in range(40):
                    tg.start_soon(one, i)
            events = await events_of(client, "on-etcd")
            history = await client.history("on-etcd", limit=100)
        assert sorted(versions) == list(range(1, 41))
        assert sorted(e.version for e in events if isinstance(e, VersionCreated)) == sorted(
            versions
        )
        assert [v.version for v in history] == list(range(40, 0, -1))
    finally:
        service.stop()
        cluster.stop()
