"""The embedded backend: one SQLite file (WAL, ``synchronous=FULL``) through aiosqlite.

Writes go through one connection, serialised by an anyio lock, each batch in one
``BEGIN IMMEDIATE … COMMIT`` (group commit: one fsync per batch, not per change). ``IMMEDIATE``
takes SQLite's write lock before reading the heads, so several processes sharing the file still
number versions without gap or duplicate; the other waits up to ``busy_timeout_s``. Reads use a
second connection, so they never see a write transaction half done.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path

import aiosqlite
import anyio
import anyio.to_thread

from confbus.runtime.opening import OpenClose
from confbus.schemas.policy import Policy
from confbus.schemas.versions import VersionInfo
from confbus.version_store.errors import (
    NotFound,
    QuotaExceeded,
    StoreError,
    StoreUnavailable,
    VersionConflict,
)
from confbus.version_store.storage import base, rules
from confbus.version_store.storage import sqlite_rows as sql
from confbus.version_store.storage.sqlite_schema import MIGRATIONS
from confbus.version_store.validate import check_policy

# Reader connections, each with its own thread: reads run side by side (WAL lets them, and
# SQLite lets go of the GIL while it works) — the distributor asks three things at once on
# the path from a publish to its switch.
READERS = 3


class SqliteStore(OpenClose):
    """``SqliteStore(path)``; use as ``async with SqliteStore(path) as store: ...``."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._writer: aiosqlite.Connection | None = None
        self._readers: list[aiosqlite.Connection] = []
        self._idle: list[aiosqlite.Connection] = []
        self._wlock = anyio.Lock()
        self._rslots = anyio.Semaphore(READERS)

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            with _mapped():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._writer = await self._connect()
                await self._migrate(self._writer)
                for _ in range(READERS):
                    self._readers.append(await self._connect())
                self._idle = list(self._readers)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close()
            raise

    async def close(self) -> None:
        readers, self._readers, self._idle = self._readers, [], []
        for conn in [*readers, self._writer]:
            if conn is not None:
                await conn.close()
        self._writer = None

    async def _connect(self) -> aiosqlite.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch is one transaction.
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        await conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        await conn.execute("PRAGMA journal_mode = WAL")
        # FULL: fsync the WAL at every commit; an acked version survives a power cut.
        await conn.execute("PRAGMA synchronous = FULL")
        await conn.execute("PRAGMA foreign_keys = ON")
        return conn

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        await db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        async with _immediate_transaction(db):
            rows = await db.execute_fetchall("SELECT max(version) FROM schema_migrations")
            current = next(iter(rows))[0] or 0
            known = MIGRATIONS[-1][0]
            if current > known:
                raise StoreError(
                    f"{self.path} has schema version {current}; this confbus knows only up to "
                    f"{known} — upgrade confbus before opening it"
                )
            for number, description, statements in MIGRATIONS:
                if number <= current:
                    continue
                for statement in statements:
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, datetime('now'))",
                    (number, description),
                )

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        db = self._conn(self._writer)
        # IMMEDIATE: take the write lock before reading heads, so two processes sharing the
        # file cannot both plan version n+1.
        async with self._wlock, _immediate_transaction(db):
            yield db

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._rslots:
            if not self._idle:
                raise StoreUnavailable(f"SQLite store {self.path} is not open")
            conn = self._idle.pop()
            try:
                yield conn
            finally:
                if conn in self._readers:  # not closed meanwhile
                    self._idle.append(conn)

    def _conn(self, conn: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if conn is None:
            raise StoreUnavailable(f"SQLite store {self.path} is not open")
        return conn

    # -- writes ---------------------------------------------------------------------------------

    async def append(self, batch: list[base.NewVersion]) -> list[base.AppendResult]:
        if not batch:
            return []
        with _mapped():
            async with self._write() as db:
                namespaces = sorted({item.namespace for item in batch})
                newest = {h.namespace: h.newest for h in await sql.heads(db, namespaces)}
                keys = sorted({(item.namespace, item.change_id) for item in batch})
                existing = {
                    (i.namespace, i.change_id): i for i in await sql.by_change_ids(db, keys)
                }
                plan = rules.plan_batch(batch, newest, existing)
                if plan.new:
                    await sql.insert(db, plan.new)
                    touched = sorted({sv.info.namespace for sv in plan.new})
                    await db.executemany(
                        "INSERT INTO namespaces (namespace, newest) VALUES (?, ?) "
                        "ON CONFLICT (namespace) DO UPDATE SET newest = excluded.newest",
                        [(ns, plan.newest[ns]) for ns in touched],
                    )
        return plan.results

    async def approve(self, namespace: str, version: int, approver: str) -> VersionInfo:
        with _mapped():
            async with self._write() as db:
                info = await sql.info(db, namespace, version)
                if rules.check_approve(info, approver):
                    await db.execute(
                        "UPDATE versions SET status = 'approved', approved_by = ? "
                        "WHERE namespace = ? AND version = ?",
                        (approver, namespace, version),
                    )
                    info = await sql.info(db, namespace, version)
        return info

    async def promote(self, namespace: str, version: int) -> base.Promotion:
        with _mapped():
            async with self._write() as db:
                info = await sql.info(db, namespace, version)
                head = await sql.head(db, namespace)
                if not rules.check_promote(info):
                    return base.Promotion(info=info, previous=None)
                if head.production is not None:
                    await sql.set_status(db, namespace, head.production, "superseded")
                await sql.set_status(db, namespace, version, "production")
                await db.execute(
                    "UPDATE namespaces SET production = ? WHERE namespace = ?", (version, namespace)
                )
                info = await sql.info(db, namespace, version)
        return base.Promotion(info=info, previous=head.production)

    async def reject(self, namespace: str, version: int) -> VersionInfo:
        with _mapped():
            async with self._write() as db:
                info = await sql.info(db, namespace, version)
                if rules.check_reject(info):
                    await sql.set_status(db, namespace, version, "rejected")
                    info = await sql.info(db, namespace, version)
        return info

    async def mark_last_good(self, namespace: str, version: int) -> VersionInfo:
        with _mapped():
            async with self._write() as db:
                rules.check_last_good(await sql.info(db, namespace, version))
                await db.execute(
                    "UPDATE namespaces SET last_good = ? WHERE namespace = ?", (version, namespace)
                )
                return await sql.info(db, namespace, version)

    async def set_policy(self, policy: Policy) -> None:
        check_policy(policy)
        with _mapped():
            async with self._write() as db:
                await db.execute(
                    "INSERT INTO policies (namespace, policy) VALUES (?, ?) "
                    "ON CONFLICT (namespace) DO UPDATE SET policy = excluded.policy",
                    (policy.namespace, sql.encode(policy)),
                )

    async def import_(self, data: base.NamespaceExport) -> int:
        rules.check_export(data)
        ns = data.namespace
        with _mapped():
            async with self._write() as db:
                head = await sql.head(db, ns)
                if head.newest:
                    if await sql.export(db, ns) == data:
                        return 0
                    raise VersionConflict(
                        ns,
                        f"already has {head.newest} versions that differ from the import; "
                        "restore into an empty store or another namespace",
                    )
                await sql.insert(db, data.versions)
                await db.execute(
                    "INSERT INTO namespaces VALUES (?, ?, ?, ?) ON CONFLICT (namespace) DO UPDATE "
                    "SET newest = excluded.newest, production = excluded.production, "
                    "last_good = excluded.last_good",
                    (ns, len(data.versions), data.production, data.last_good),
                )
                if data.policy is not None:
                    await db.execute(
                        "INSERT OR REPLACE INTO policies VALUES (?, ?)",
                        (ns, sql.encode(data.policy)),
                    )
        return len(data.versions)

    # -- reads ----------------------------------------------------------------------------------

    async def head(self, namespace: str) -> base.Head:
        with _mapped():
            async with self._read() as db:
                return await sql.head(db, namespace)

    async def get(self, namespace: str, version: int) -> base.StoredVersion:
        with _mapped():
            async with self._read() as db:
                rows = await db.execute_fetchall(
                    f"SELECT {sql.COLS}, b.content {sql.FROM} JOIN blobs b ON b.sha256 = v.sha256 "
                    "WHERE v.namespace = ? AND v.version = ?",
                    (namespace, version),
                )
        for row in rows:
            return sql.stored(row)
        raise NotFound(namespace, f"version {version}")

    async def resolve(self, namespace: str, ref: base.VersionRef) -> VersionInfo:
        want = rules.parse_ref(namespace, ref)
        with _mapped():
            async with self._read() as db:
                if isinstance(want, int):
                    return await sql.info(db, namespace, want)
                # One query (not the head, then the version): every hop to the connection's
                # thread counts on the path from a publish to its switch.
                found = await db.execute_fetchall(sql.NAMED_SQL[want], (namespace,))
        for row in found:
            return sql.info_of(row)
        raise NotFound(namespace, f"{want} version")

    async def history(
        self, namespace: str, before: int | None = None, limit: int = 50
    ) -> list[VersionInfo]:
        with _mapped():
            async with self._read() as db:
                rows = await db.execute_fetchall(
                    sql.HISTORY_SQL,
                    (namespace, sql.NO_LIMIT if before is None else before, max(limit, 0)),
                )
        return [sql.info_of(row) for row in rows]

    async def by_change_id(self, namespace: str, change_id: str) -> VersionInfo | None:
        with _mapped():
            async with self._read() as db:
                found = await sql.by_change_ids(db, [(namespace, change_id)])
        return found[0] if found else None

    async def get_policy(self, namespace: str) -> Policy:
        with _mapped():
            async with self._read() as db:
                rows = await db.execute_fetchall(
                    "SELECT policy FROM policies WHERE namespace = ?", (namespace,)
                )
        for (raw,) in rows:
            return sql.decode_policy(raw)
        return Policy(namespace=namespace)

    async def namespaces(self) -> list[str]:
        with _mapped():
            async with self._read() as db:
                rows = await db.execute_fetchall(
                    "SELECT namespace FROM namespaces UNION SELECT namespace FROM policies "
                    "ORDER BY 1"
                )
        return [row[0] for row in rows]

    async def export(self, namespace: str) -> base.NamespaceExport:
        with _mapped():
            async with self._read() as db:
                # One read transaction: versions, pointers and policy from the same snapshot.
                try:
                    await db.execute("BEGIN")
                    return await sql.export(db, namespace)
                finally:
                    with anyio.CancelScope(shield=True):
                        await _rollback(db)  # read-only: ending it is all that is needed

    async def check_integrity(self, namespace: str) -> base.IntegrityReport:
        corrupt: list[int] = []
        missing: list[int] = []
        checked, expected, after = 0, 1, 0
        with _mapped():
            while True:
                async with self._read() as db:
                    # Pages, so a namespace of 100k versions is never all in memory at once.
                    rows = list(
                        await db.execute_fetchall(
                            "SELECT v.version, v.sha256, b.content FROM versions v "
                            "LEFT JOIN blobs b ON b.sha256 = v.sha256 "
                            "WHERE v.namespace = ? AND v.version > ? ORDER BY v.version LIMIT 256",
                            (namespace, after),
                        )
                    )
                if not rows:
                    break
                hashes = await anyio.to_thread.run_sync(sql.hash_all, [r[2] for r in rows])
                for (version, sha, content), actual in zip(rows, hashes, strict=True):
                    missing.extend(range(expected, version))
                    expected, after, checked = version + 1, version, checked + 1
                    if content is None:
                        missing.append(version)
                    elif actual != sha:
                        corrupt.append(version)
            newest = (await self.head(namespace)).newest
        missing.extend(range(expected, newest + 1))
        return base.IntegrityReport(
            namespace=namespace, checked=checked, corrupt=corrupt, missing=sorted(missing)
        )


@asynccontextmanager
async def _immediate_transaction(db: aiosqlite.Connection) -> AsyncIterator[None]:
    """``BEGIN IMMEDIATE`` (SQLite's write lock, taken at once) … ``COMMIT``; on any error, a
    failed ``COMMIT`` included, ``ROLLBACK``. Neither ending is cut short by a cancellation."""
    try:
        # Inside the try: a cancelled await does not stop the statement in aiosqlite's thread,
        # so BEGIN may still take effect. The ROLLBACK below is queued behind it on the same
        # thread and undoes it; no transaction is ever left open.
        await db.execute("BEGIN IMMEDIATE")
        yield
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _rollback(db)
        raise
    try:
        with anyio.CancelScope(shield=True):
            await db.execute("COMMIT")
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _rollback(db)
        raise


async def _rollback(db: aiosqlite.Connection) -> None:
    # SQLite may have rolled back already (e.g. after a failed COMMIT): nothing left to undo.
    with suppress(sqlite3.OperationalError):
        await db.execute("ROLLBACK")


@contextmanager
def _mapped() -> Iterator[None]:
    """Translate SQLite's errors into the store's: busy/locked/IO retry, a full disk is quota."""
    try:
        yield
    except sqlite3.OperationalError as e:
        text = str(e)
        if "full" in text:
            raise QuotaExceeded(f"SQLite store is out of space: {text}") from e
        raise StoreUnavailable(f"SQLite store unavailable: {text}") from e
    except sqlite3.DatabaseError as e:
        if isinstance(e, sqlite3.IntegrityError):
            raise  # a broken invariant is a bug, not an outage
        raise StoreUnavailable(f"SQLite store unavailable: {e}") from e
