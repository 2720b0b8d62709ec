"""What only the SQLite backend promises: its file format, durability settings and query plans."""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import time
from pathlib import Path

import anyio
import pytest

from confbus.runtime.concurrency import gather
from confbus.version_store.errors import NotFound, StoreError, StoreUnavailable
from confbus.version_store.storage import NewVersion, Store, open_store
from confbus.version_store.storage.sqlite import READERS, SqliteStore
from confbus.version_store.storage.sqlite_rows import HISTORY_SQL
from confbus.version_store.storage.sqlite_schema import MIGRATIONS

pytestmark = pytest.mark.anyio


def nv(ns: str, change_id: str, content: bytes) -> NewVersion:
    return NewVersion.build(ns, change_id, content)


async def test_file_settings_and_migrations(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SqliteStore(path):
        pass
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        applied = [r[0] for r in db.execute("SELECT version FROM schema_migrations")]
        assert applied == [m[0] for m in MIGRATIONS]
        indexes = {r[1] for r in db.execute("PRAGMA index_list('versions')")}
        assert any("autoindex_versions_2" in name for name in indexes)  # UNIQUE(ns, change_id)
    async with SqliteStore(path):  # re-opening applies nothing twice
        pass
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(MIGRATIONS)


async def test_refuses_a_file_from_a_newer_confbus(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SqliteStore(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_migrations VALUES (999, 'future', 'now')")
    with pytest.raises(StoreError, match="schema version 999"):
        await SqliteStore(path).open()


async def test_history_query_uses_the_primary_key_without_sorting(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SqliteStore(path):
        pass
    with sqlite3.connect(path) as db:
        plan = " | ".join(
            r[3] for r in db.execute("EXPLAIN QUERY PLAN " + HISTORY_SQL, ("a", 9, 5))
        )
    assert "SEARCH v USING PRIMARY KEY (namespace=? AND version<?)" in plan, plan
    assert "TEMP B-TREE" not in plan, plan


async def test_versions_survive_reopen_and_content_is_stored_once(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SqliteStore(path) as store:
        await store.append([nv("ns", f"c{i}", b"same bytes") for i in range(5)])
    async with SqliteStore(path) as store:
        assert (await store.head("ns")).newest == 5
        assert (await store.get("ns", 5)).content == b"same bytes"
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM blobs").fetchone()[0] == 1


async def test_reads_do_not_wait_for_each_other(tmp_path: Path) -> None:
    # The distributor asks for a version, the policy and production at once: one read in
    # progress must not hold the others up (each reader has its connection and thread).
    async with SqliteStore(tmp_path / "s.db") as store:
        await store.append([nv("ns", "c1", b"v1")])
        with anyio.fail_after(5):
            async with contextlib.AsyncExitStack() as held:
                for _ in range(READERS - 1):
                    await held.enter_async_context(store._read())  # reads in progress
                got = await gather(store.get("ns", 1), store.resolve("ns", "latest"))
        assert got[0].content == b"v1" and got[1].version == 1
        with pytest.raises(NotFound, match="production version"):
            await store.resolve("ns", "production")  # one query, as before: none yet


async def test_a_cancelled_append_leaves_no_transaction_behind(tmp_path: Path) -> None:
    # Cancel at many points: before BEGIN runs, during it, mid-batch, around COMMIT. Whatever
    # was cut, the next append must work and numbering must stay gap-free.
    delays = [i * 0.00005 for i in range(60)] + [0.001, 0.002, 0.004, 0.008]
    async with SqliteStore(tmp_path / "s.db") as store:
        for attempt, delay in enumerate(delays):
            batch = [nv("ns", f"a{attempt}-{i}", b"%d" % i) for i in range(200)]
            with anyio.CancelScope() as scope:
                scope.cancel()  # cancelled at its first await
                await store.append(batch)
            with anyio.move_on_after(delay):
                await store.append(batch)
        results = await store.append([nv("ns", "after", b"x")])
        assert results[0].outcome == "stored"
        history = await store.history("ns", limit=10_000)
        assert [v.version for v in history] == list(range(len(history), 0, -1))


async def test_history_stays_fast_at_100k_versions(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "s.db") as store:
        for start in range(0, 100_000, 5000):
            await store.append(
                [nv("big", f"c{i}", b"%d" % (i % 7)) for i in range(start, start + 5000)]
            )
        started = time.perf_counter()
        for before in (None, 50_000, 1000):
            page = await store.history("big", before=before, limit=50)
            assert len(page) == 50
        elapsed = time.perf_counter() - started
        assert (await store.head("big")).newest == 100_000
    assert elapsed < 0.5, f"three history pages took {elapsed:.3f}s"


async def test_open_store_urls(tmp_path: Path) -> None:
    store: Store = open_store(f"sqlite://{tmp_path}/a/b.db")
    assert isinstance(store, SqliteStore) and store.path == tmp_path / "a" / "b.db"
    async with store:
        await store.append([nv("ns", "c", b"x")])
    assert (tmp_path / "a" / "b.db").exists()
    with pytest.raises(ValueError, match="unknown store"):
        open_store("mysql://localhost/db")


def test_an_etcd_url_without_its_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aetcd", None)  # as after `pip install confbus`
    for name in [m for m in sys.modules if m.startswith("confbus.version_store.storage.etcd")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ValueError, match=r"pip install 'confbus\[etcd\]'"):
        open_store("etcd://127.0.0.1:2379")


async def test_closed_store_is_unavailable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    with pytest.raises(StoreUnavailable):
        await store.head("ns")
