"""One storage contract, two backends: every test taking ``backend`` or ``store`` runs against a
real SQLite file and a real etcd (one member per module, a fresh key prefix per test)."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aetcd
import pytest

from confbus.procs.etcd import ETCD_HINT, EtcdCluster, etcd_binary
from confbus.version_store.storage import Store
from confbus.version_store.storage.etcd import EtcdStore
from confbus.version_store.storage.sqlite import SqliteStore


@dataclass
class Backend:
    """How a test reaches one storage: ``make()`` is another client of the *same* data,
    ``fresh()`` a client of new, empty storage; ``corrupt`` flips a stored byte behind the
    store's back (what a disk or an operator could do)."""

    name: str
    make: Callable[[], Store]
    fresh: Callable[[], Store]
    corrupt: Callable[[str, int], Awaitable[None]]


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    if etcd_binary() is None:
        pytest.skip(ETCD_HINT)
    cluster = EtcdCluster.on_loopback(tmp_path_factory.mktemp("etcd")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _sqlite_backend(tmp_path: Path) -> Backend:
    path = tmp_path / "store.db"

    async def corrupt(ns: str, version: int) -> None:
        with sqlite3.connect(path) as db:
            db.execute(
                "UPDATE blobs SET content = CAST(content || x'00' AS BLOB) WHERE sha256 = "
                "(SELECT sha256 FROM versions WHERE namespace = ? AND version = ?)",
                (ns, version),
            )

    return Backend(
        "sqlite",
        make=lambda: SqliteStore(path),
        fresh=lambda: SqliteStore(tmp_path / f"fresh-{uuid.uuid4().hex}.db"),
        corrupt=corrupt,
    )


def _etcd_backend(cluster: EtcdCluster) -> Backend:
    prefix = f"/test-{uuid.uuid4().hex[:12]}/"

    async def corrupt(ns: str, version: int) -> None:
        store = EtcdStore(cluster.endpoints, prefix=prefix)
        async with store:
            info = (await store.get(ns, version)).info
        host, port = cluster.endpoints[0].rsplit(":", 1)
        async with aetcd.Client(host, int(port)) as client:
            key = f"{prefix}blob/{info.sha256}".encode()
            found = await client.get(key)
            await client.put(key, bytes(found.value) + b"\x00")

    return Backend(
        "etcd",
        make=lambda: EtcdStore(cluster.endpoints, prefix=prefix),
        fresh=lambda: EtcdStore(cluster.endpoints, prefix=f"/test-{uuid.uuid4().hex[:12]}/"),
        corrupt=corrupt,
    )


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return _sqlite_backend(tmp_path)
    return _etcd_backend(request.getfixturevalue("etcd_server"))


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    async with backend.make() as s:
        yield s
