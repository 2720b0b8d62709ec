"""Fault injection on a real 3-member etcd cluster: the leader dies mid-stream, nothing acked is
lost. The cluster is started once for the module (with a short election timeout)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import anyio
import pytest

from confbus.procs.etcd import ETCD_HINT, EtcdCluster, etcd_binary
from confbus.version_store.storage import NewVersion
from confbus.version_store.storage.etcd import EtcdStore
from tests.helpers import etcd_leader

pytestmark = [pytest.mark.anyio, pytest.mark.etcd]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    if etcd_binary() is None:
        pytest.skip(ETCD_HINT)
    c = EtcdCluster.on_loopback(tmp_path_factory.mktemp("etcd3"), 3, fast_election=True).start()
    try:
        yield c
    finally:
        c.stop()


async def test_leader_killed_during_appends_loses_no_acked_version(cluster: EtcdCluster) -> None:
    prefix = f"/fault-{uuid.uuid4().hex[:8]}/"
    leader = await etcd_leader(cluster.endpoints)
    leader_endpoint = cluster.member(leader).endpoint
    followers = [e for e in cluster.endpoints if e != leader_endpoint]
    # One client starts on the leader (it must rotate away from the corpse), one on a follower
    # (its requests fail with "leader changed" / time out during the election).
    clients = [
        EtcdStore([leader_endpoint, *followers], prefix=prefix, request_timeout_s=2.0),
        EtcdStore([*followers, leader_endpoint], prefix=prefix, request_timeout_s=2.0),
    ]
    acked: list[tuple[int, str, int, str]] = []  # (writer, change id, version, sha256)
    kill_after, per_writer = 20, 40
    killed = anyio.Event()

    async def writer(w: int, store: EtcdStore) -> None:
        for i in range(per_writer):
            item = NewVersion.build("orders", f"w{w}-{i}", b"writer %d change %d" % (w, i))
            (result,) = await store.append([item])
            assert result.outcome == "stored", result
            assert result.info is not None
            acked.append((w, item.change_id, result.info.version, item.sha256))
            if len(acked) == kill_after and not killed.is_set():
                cluster.kill(leader)
                killed.set()

    with anyio.fail_after(60):
        async with clients[0], clients[1], anyio.create_task_group() as tg:
            for w, store in enumerate(clients):
                tg.start_soon(writer, w, store)

    assert killed.is_set()
    assert clients[0].conn.rotations >= 1  # it really had to move off the dead leader
    new_leader = await etcd_leader(followers)
    assert new_leader != leader
    async with EtcdStore(followers, prefix=prefix) as check:
        history = list(reversed(await check.history("orders", limit=1000)))
        assert [v.version for v in history] == list(range(1, len(acked) + 1))
        by_version = {v.version: v for v in history}
        for _, change_id, version, sha in acked:
            assert (by_version[version].change_id, by_version[version].sha256) == (change_id, sha)
        for w in range(len(clients)):
            mine = [version for writer_, _, version, _ in acked if writer_ == w]
            assert mine == sorted(mine), "a writer's acked versions must increase"
        assert (await check.check_integrity("orders")).ok
