"""The SQL the SQLite backend runs, and the mapping between rows and the store's values.

Every function takes the connection it runs on, so the same statement serves a read on the
reader connection and a step of a write transaction on the writer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import aiosqlite
import msgspec

from confbus.schemas.policy import Policy
from confbus.schemas.sealing import content_sha256
from confbus.schemas.signing import Signature
from confbus.schemas.versions import VersionInfo
from confbus.version_store.errors import NotFound
from confbus.version_store.storage.base import Head, NamespaceExport, StoredVersion

COLS = (
    "v.namespace, v.version, v.change_id, v.sha256, v.size, v.format, v.parent, v.author, "
    "v.message, v.created_at, v.status, v.rollback_of, v.approved_by, v.strategy, v.selector, "
    "n.last_good IS v.version, v.signatures"
)
FROM = "FROM versions v JOIN namespaces n ON n.namespace = v.namespace"
# A backwards range scan of the primary key: O(limit) at any history length (a test checks the
# query plan uses the key and no temporary sort).
HISTORY_SQL = (
    f"SELECT {COLS} {FROM} WHERE v.namespace = ? AND v.version < ? ORDER BY v.version DESC LIMIT ?"
)
NO_LIMIT = 2**62
_CHUNK = 400  # (namespace, change_id) pairs per query: well under SQLite's variable limit
encode = msgspec.json.Encoder().encode
decode_policy = msgspec.json.Decoder(Policy).decode
_decode_selector = msgspec.json.Decoder(dict[str, str] | None).decode
_decode_signatures = msgspec.json.Decoder(list[Signature]).decode

# A named version in one query; the head's column is NULL (or newest 0) when there is none.
NAMED_SQL = {
    name: f"SELECT {COLS} {FROM} WHERE v.namespace = ? AND v.version = n.{column}"
    for name, column in (
        ("latest", "newest"),
        ("production", "production"),
        ("last-good", "last_good"),
    )
}


async def heads(db: aiosqlite.Connection, namespaces: Sequence[str]) -> list[Head]:
    out: list[Head] = []
    for i in range(0, len(namespaces), _CHUNK):
        chunk = namespaces[i : i + _CHUNK]
        rows = await db.execute_fetchall(
            "SELECT namespace, newest, production, last_good FROM namespaces "
            f"WHERE namespace IN ({','.join('?' * len(chunk))})",
            chunk,
        )
        out.extend(Head(namespace=r[0], newest=r[1], production=r[2], last_good=r[3]) for r in rows)
    return out


async def head(db: aiosqlite.Connection, namespace: str) -> Head:
    found = await heads(db, [namespace])
    return found[0] if found else Head(namespace=namespace)


async def by_change_ids(
    db: aiosqlite.Connection, keys: Sequence[tuple[str, str]]
) -> list[VersionInfo]:
    by_ns: dict[str, list[str]] = {}
    for ns, change_id in keys:
        by_ns.setdefault(ns, []).append(change_id)
    out: list[VersionInfo] = []
    for ns, change_ids in by_ns.items():
        for i in range(0, len(change_ids), _CHUNK):
            chunk = change_ids[i : i + _CHUNK]
            # One namespace per query: "ns = ? AND change_id IN (...)" is an index search,
            # where a row-value "(ns, change_id) IN (VALUES ...)" scans the whole index.
            rows = await db.execute_fetchall(
                f"SELECT {COLS} {FROM} WHERE v.namespace = ? AND v.change_id IN "
                f"({','.join('?' * len(chunk))})",
                [ns, *chunk],
            )
            out.extend(info_of(row) for row in rows)
    return out


async def info(db: aiosqlite.Connection, namespace: str, version: int) -> VersionInfo:
    rows = await db.execute_fetchall(
        f"SELECT {COLS} {FROM} WHERE v.namespace = ? AND v.version = ?", (namespace, version)
    )
    for row in rows:
        return info_of(row)
    raise NotFound(namespace, f"version {version}")


async def set_status(db: aiosqlite.Connection, namespace: str, version: int, status: str) -> None:
    await db.execute(
        "UPDATE versions SET status = ? WHERE namespace = ? AND version = ?",
        (status, namespace, version),
    )


async def insert(db: aiosqlite.Connection, versions: Iterable[StoredVersion]) -> None:
    versions = list(versions)
    # OR IGNORE: identical bytes are stored once, whoever wrote them first.
    await db.executemany(
        "INSERT OR IGNORE INTO blobs (sha256, content) VALUES (?, ?)",
        [(sv.info.sha256, sv.content) for sv in versions],
    )
    await db.executemany(
        "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [_row(sv) for sv in versions],
    )


async def export(db: aiosqlite.Connection, namespace: str) -> NamespaceExport:
    pointers = await head(db, namespace)
    rows = await db.execute_fetchall(
        f"SELECT {COLS}, b.content {FROM} JOIN blobs b ON b.sha256 = v.sha256 "
        "WHERE v.namespace = ? ORDER BY v.version",
        (namespace,),
    )
    policy_rows = await db.execute_fetchall(
        "SELECT policy FROM policies WHERE namespace = ?", (namespace,)
    )
    policy = next((decode_policy(r[0]) for r in policy_rows), None)
    return NamespaceExport(
        namespace=namespace,
        versions=[stored(row) for row in rows],
        production=pointers.production,
        last_good=pointers.last_good,
        policy=policy,
    )


def _row(sv: StoredVersion) -> tuple[Any, ...]:
    i = sv.info
    return (
        i.namespace, i.version, i.change_id, i.sha256, i.size, i.format, i.parent, i.author,
        i.message, i.created_at.isoformat(), i.status, i.rollback_of, i.approved_by,
        sv.strategy, None if sv.selector is None else encode(sv.selector),
        encode(sv.signatures) if sv.signatures else None,
    )  # fmt: skip


def info_of(row: Any) -> VersionInfo:
    return VersionInfo(
        namespace=row[0],
        version=row[1],
        change_id=row[2],
        sha256=row[3],
        size=row[4],
        format=row[5],
        parent=row[6],
        author=row[7],
        message=row[8],
        created_at=datetime.fromisoformat(row[9]),
        status=row[10],
        rollback_of=row[11],
        approved_by=row[12],
        last_good=bool(row[15]),
    )


def stored(row: Any) -> StoredVersion:
    return StoredVersion(
        info=info_of(row),
        content=as_bytes(row[17]),
        strategy=row[13],
        selector=None if row[14] is None else _decode_selector(row[14]),
        signatures=[] if row[16] is None else _decode_signatures(row[16]),
    )


def as_bytes(value: Any) -> bytes:
    # A row altered behind our back may hold TEXT where we wrote a BLOB; hash what is there.
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)


def hash_all(contents: list[Any]) -> list[str | None]:
    return [None if c is None else content_sha256(as_bytes(c)) for c in contents]
