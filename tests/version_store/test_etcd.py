"""What only the etcd backend promises: key layout, txn limits, quota, compaction, endpoints."""

from __future__ import annotations

import logging
import time
import uuid

import aetcd
import pytest
from aetcd import rpc

from confbus.procs.etcd import EtcdCluster
from confbus.procs.ports import free_port
from confbus.version_store.errors import QuotaExceeded, StoreUnavailable
from confbus.version_store.storage import NewVersion, open_store
from confbus.version_store.storage.etcd import EtcdStore
from tests.version_store.tcp_proxy import reply_losing_proxy

pytestmark = [pytest.mark.anyio, pytest.mark.etcd]


def nv(ns: str, change_id: str, content: bytes) -> NewVersion:
    return NewVersion.build(ns, change_id, content)


def fresh_prefix() -> str:
    return f"/test-{uuid.uuid4().hex[:12]}/"


async def keys(endpoint: str, prefix: bytes) -> list[bytes]:
    host, port = endpoint.rsplit(":", 1)
    async with aetcd.Client(host, int(port)) as client:
        return [kv.key for kv in await client.get_prefix(prefix, keys_only=True)]


async def test_key_layout_and_content_once(etcd_server: EtcdCluster) -> None:
    prefix = fresh_prefix()
    async with EtcdStore(etcd_server.endpoints, prefix=prefix) as store:
        await store.append([nv("ns", f"c{i}", b"same") for i in range(3)])
    found = set(await keys(etcd_server.endpoints[0], prefix.encode()))
    p = prefix.encode()
    assert {
        p + b"nsidx/ns",
        p + b"ns/ns/head",
        p + b"ns/ns/v/0000000001",
        p + b"ns/ns/v/0000000003",
        p + b"ns/ns/change/c2",
    } <= found
    assert len([k for k in found if k.startswith(p + b"blob/")]) == 1


async def test_a_batch_larger_than_one_txn_is_numbered_in_order(etcd_server: EtcdCluster) -> None:
    async with EtcdStore(etcd_server.endpoints, prefix=fresh_prefix(), max_txn_ops=20) as store:
        batch = [nv("ns", f"c{i}", b"%d" % i) for i in range(100)]
        results = await store.append(batch + batch[:3])
        assert [r.outcome for r in results] == ["stored"] * 100 + ["duplicate"] * 3
        assert [r.version for r in results] == [*range(1, 101), 1, 2, 3]
        assert (await store.head("ns")).newest == 100


async def test_big_configs_travel_alone_and_oversize_is_refused(etcd_server: EtcdCluster) -> None:
    async with EtcdStore(etcd_server.endpoints, prefix=fresh_prefix()) as store:
        big = [nv("ns", f"big{i}", bytes([i]) * 900_000) for i in range(3)]
        results = await store.append([*big, nv("ns", "huge", b"x" * 2_000_000)])
        assert [r.outcome for r in results] == ["stored"] * 3 + ["invalid"]
        assert results[3].error is not None and "2000000 bytes" in str(results[3].error)
        assert (await store.get("ns", 2)).content == bytes([1]) * 900_000


async def test_quota_refuses_writes_before_etcd_would(etcd_server: EtcdCluster) -> None:
    async with EtcdStore(etcd_server.endpoints, prefix=fresh_prefix(), quota_bytes=1) as store:
        with pytest.raises(QuotaExceeded, match=r"etcd database at .* MiB of its 0.0 MiB quota"):
            await store.append([nv("ns", "c1", b"x")])
        assert (await store.head("ns")).newest == 0
        assert QuotaExceeded.retry_after_s > StoreUnavailable.retry_after_s


async def test_a_nospace_alarm_refuses_writes_as_quota(etcd_server: EtcdCluster) -> None:
    host, port = etcd_server.endpoints[0].rsplit(":", 1)
    early = EtcdStore(etcd_server.endpoints, prefix=fresh_prefix(), quota_check_interval_s=600)
    async with early, aetcd.Client(host, int(port)) as admin:
        await early.append([nv("ns", "c1", b"x")])  # its quota check is now cached as fine
        await admin.create_alarm()
        try:
            # A store that checks now sees the alarm in etcd's status...
            async with EtcdStore(etcd_server.endpoints, prefix=fresh_prefix()) as late:
                with pytest.raises(QuotaExceeded, match="NOSPACE alarm"):
                    await late.append([nv("ns", "c1", b"x")])
            # ...and one that checked before gets etcd's own refusal, mapped the same way.
            with pytest.raises(QuotaExceeded, match="space quota is exhausted"):
                await early.append([nv("ns", "c2", b"y")])
        finally:
            await admin.disarm_alarm()
        assert (await early.append([nv("ns", "c2", b"y")]))[0].outcome == "stored"


async def test_compaction_after_n_writes(etcd_server: EtcdCluster) -> None:
    async with EtcdStore(
        etcd_server.endpoints, prefix=fresh_prefix(), compact_every=5, compact_keep=2
    ) as store:
        for i in range(5):
            await store.append([nv("ns", f"c{i}", b"%d" % i)])
        assert store.compacted_revision > 0
        host, port = etcd_server.endpoints[0].rsplit(":", 1)
        async with aetcd.Client(host, int(port)) as client:
            await client.connect()
            with pytest.raises(rpc.AioRpcError) as caught:
                await client.kvstub.Range(
                    rpc.RangeRequest(key=b"x", revision=store.compacted_revision - 1)
                )
            assert caught.value.code() == rpc.StatusCode.OUT_OF_RANGE
        # Nothing the store reads was lost.
        assert [v.version for v in await store.history("ns")] == [5, 4, 3, 2, 1]
        assert (await store.check_integrity("ns")).ok


async def test_rotates_past_a_dead_endpoint(etcd_server: EtcdCluster) -> None:
    dead = f"127.0.0.1:{free_port()}"
    async with EtcdStore([dead, *etcd_server.endpoints], prefix=fresh_prefix()) as store:
        assert (await store.append([nv("ns", "c1", b"x")]))[0].outcome == "stored"
        assert store.conn.endpoint == etcd_server.endpoints[0]


async def test_no_endpoint_is_unavailable_within_the_deadline() -> None:
    store = EtcdStore(
        [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"], unavailable_after_s=1.0
    )
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="etcd unavailable"):
        await store.open()
    assert time.monotonic() - started < 5
    await store.close()


async def test_a_commit_whose_reply_is_lost_is_reported_stored_once(
    etcd_server: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The txn reaches etcd and commits, its reply is lost: the client times out, retries on
    the next endpoint, finds exactly the row it sent — and reports it stored (so the service
    announces it), not duplicate, and not as a second version."""
    direct = etcd_server.endpoints[0]
    port = int(direct.rsplit(":", 1)[1])
    async with reply_losing_proxy(port) as proxy:
        store = EtcdStore([proxy.endpoint, direct], prefix=fresh_prefix(), request_timeout_s=1.0)
        async with store:
            assert (await store.append([nv("ns", "c0", b"small")]))[0].outcome == "stored"
            content = b"x" * 200_000  # far bigger than the reads before the txn
            proxy.swallow_after(len(content))
            with caplog.at_level(logging.INFO, logger="confbus.version_store.storage.etcd"):
                (result,) = await store.append([nv("ns", "c1", content)])
            assert proxy.swallowed > 0 and store.conn.rotations == 1
            assert "confirmed after an unanswered commit" in caplog.text
            assert (result.outcome, result.version) == ("stored", 2)
            assert (await store.head("ns")).newest == 2


async def test_open_store_url(etcd_server: EtcdCluster) -> None:
    url = f"etcd://{','.join(etcd_server.endpoints)}/mine/?compact_every=7&unavailable_after_s=2"
    store = open_store(url)
    assert isinstance(store, EtcdStore)
    assert store.keys.prefix == b"/mine/" and store.compact_every == 7
    assert store.conn.unavailable_after_s == 2.0
    default = open_store("etcd://h:1")
    assert isinstance(default, EtcdStore) and default.keys.prefix == b"/confbus/"
    with pytest.raises(ValueError, match="unknown option"):
        open_store("etcd://h:1/?bogus=1")
